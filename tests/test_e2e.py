"""End to end with a real local Ray: Optuna + ASHA over four methods -> Parquet -> HTML."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import yaml
from conftest import tiny_space

import search
from search.cli import main
from search.results import KNOB_COLUMNS
from search.rundir import CURVES_FILE, REPORT_FILE, TRIALS_FILE
from search.space import validate

pytestmark = pytest.mark.slow

TRIAL_COLUMNS = [
    "trial_id", "method", "status", "trainable_params", "total_params", "trainable_fraction",
    "val_accuracy", "val_accuracy_last", "iterations", "stopped_early", "learning_rate",
    "adapter_size", "lora_rank", "wall_time_s", "error", "model", "dataset", "seed",
]  # fmt: skip
CURVE_COLUMNS = [
    "trial_id",
    "iteration",
    "epoch",
    "train_loss",
    "val_loss",
    "val_accuracy",
    "time_s",
]


@pytest.fixture(scope="module")
def finished_run(ray_local, tmp_path_factory, tiny_bert, topics_tsv):
    tmp = tmp_path_factory.mktemp("e2e")
    space = tiny_space(tiny_bert, topics_tsv, tmp / "runs", search={"num_samples": 8})
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(space))
    return search.run(path), path


def test_parquet_files_follow_the_contract(finished_run):
    res, _ = finished_run
    trials, curves = search.load_results(res.run_dir)
    assert set(TRIAL_COLUMNS) <= set(trials.columns)
    assert set(KNOB_COLUMNS) <= set(trials.columns)
    assert set(CURVE_COLUMNS) <= set(curves.columns)
    assert len(trials) == 8 and trials["trial_id"].is_unique
    assert (trials["status"] == "TERMINATED").all(), trials[["status", "error"]]
    assert trials["error"].isna().all()
    assert trials["stopped_early"].dtype == bool
    # Every trial's curve has one row per reported evaluation.
    per_trial = curves.groupby("trial_id").size().sort_index()
    assert per_trial.tolist() == trials.set_index("trial_id")["iterations"].sort_index().tolist()
    # Best reported accuracy, not the last one (ray #30004).
    best = curves.groupby("trial_id")["val_accuracy"].max().sort_index()
    assert best.tolist() == trials.set_index("trial_id")["val_accuracy"].sort_index().tolist()
    # A knob is set only for its own method.
    lora = trials["method"] == "lora"
    assert (
        trials.loc[lora, "lora_rank"].notna().all() and trials.loc[~lora, "lora_rank"].isna().all()
    )
    assert (trials["trainable_params"] <= trials["total_params"]).all()
    assert (trials["model"] == str(res.trials["model"].iloc[0])).all()
    # The linear probe trains on the frozen encoder's features, cached once by the driver.
    probe = trials["method"] == "linear_probe"
    assert probe.any()
    assert (
        trials.loc[probe, "feature_cache"].eq(True).all()
        and trials.loc[~probe, "feature_cache"].eq(False).all()
    )


def test_asha_stopped_some_trials_and_they_are_marked(finished_run):
    res, _ = finished_run
    t = res.trials
    assert t["stopped_early"].any()
    stopped = t[t["stopped_early"]]
    assert (stopped["iterations"] < stopped["planned_iterations"]).all()
    assert (
        t.loc[~t["stopped_early"], "iterations"] == t.loc[~t["stopped_early"], "planned_iterations"]
    ).all()


def test_report_is_self_contained_with_the_pareto_plot(finished_run):
    res, _ = finished_run
    page = (res.run_dir / REPORT_FILE).read_text()
    assert "Pareto front" in page and "plotly" in page.lower()
    # Opens offline: plotly.js is inline, nothing is fetched.
    assert not re.search(r"<script[^>]*\bsrc=", page) and not re.search(r"<link[^>]*\bhref=", page)
    assert "Plotly.newPlot" in page
    # Each method is in the report's own content: the inlined plotly.js (in <head>) names
    # "full", "prefix", ... whatever the run, so it is left out of the search.
    head, body = page.split("</head>", 1)
    assert "Plotly.newPlot" not in head and len(head) > 1_000_000  # plotly.js is all of <head>
    for method in res.trials["method"].unique():
        assert f"<td>{method}</td>" in body, method  # the best-trial-per-method table
        assert f'"name":"{method}"' in body, method  # its trace in the Pareto figure


def test_same_command_again_keeps_the_finished_run(finished_run, ray_local):
    res, path = finished_run
    again = search.run(path, num_samples=1)
    assert again.run_dir.name == res.run_dir.name + "-2"
    assert len(again.trials) == 1
    assert len(pd.read_parquet(res.run_dir / TRIALS_FILE)) == 8
    assert (again.run_dir / CURVES_FILE).exists()


def test_a_failing_trial_is_recorded_and_the_search_goes_on(
    ray_local, tmp_path, tiny_bert, topics_tsv
):
    space = tiny_space(
        tiny_bert,
        topics_tsv,
        tmp_path / "runs",
        # learning rate 1e30 overflows the weights: the loss is NaN at once and the trial raises.
        methods={"full": {"learning_rate": 1e30}, "linear_probe": {"learning_rate": 1e-2}},
        search={"num_samples": 4, "searcher": "random"},
        scheduler={"type": "none"},
    )
    path = tmp_path / "nan.yaml"
    path.write_text(yaml.safe_dump(space))
    res = search.run(path)
    t = res.trials
    assert len(t) == 4
    failed = t[t["method"] == "full"]
    assert len(failed) > 0 and (failed["status"] == "ERROR").all()
    assert failed["error"].str.contains("FloatingPointError: training loss is nan").all()
    ok = t[t["method"] == "linear_probe"]
    assert (ok["status"] == "TERMINATED").all() and ok["error"].isna().all()
    assert "training loss is nan" in (res.run_dir / REPORT_FILE).read_text()


def test_one_checkpoint_per_trial_is_kept_and_the_disk_use_reported(finished_run):
    res, _ = finished_run
    import torch

    for trial_dir in (d for d in res.run_dir.iterdir() if d.is_dir()):
        (ckpt,) = trial_dir.glob("checkpoint_*")
        # What export needs, without the optimizer state (2x the trained parameters).
        state = torch.load(ckpt / "state.pt", weights_only=True)
        assert "trainable" in state and "optimizer" not in state
    record = json.loads((res.run_dir / "run.json").read_text())
    assert record["status"] == "finished" and record["checkpoint_mb"] > 0
    assert res.disk["checkpoint_mb"] == record["checkpoint_mb"]


def test_every_row_of_both_tables_carries_its_provenance(finished_run):
    res, _ = finished_run
    trials, curves = search.load_results(res.run_dir)
    for df in (trials, curves):
        for col in ("run_name", "model", "dataset", "seed", "n_train", "n_validation",
                    "versions", "git_commit"):  # fmt: skip
            assert col in df and df[col].notna().all(), col
    assert json.loads(curves["versions"].iloc[0])["ray"]


def test_every_trial_row_carries_what_it_costs(finished_run):
    from search.results import COST_COLUMNS

    res, _ = finished_run
    trials, _ = search.load_results(res.run_dir)
    for col in COST_COLUMNS:
        assert trials[col].notna().all() and (trials[col] > 0).all(), col
    # Nothing to merge in full fine-tuning: as trained is as served.
    full = trials[trials["method"] == "full"]
    assert (full["infer_ms_b1"] == full["infer_ms_b1_unmerged"]).all()
    assert trials["ended_at"].notna().all()


def test_a_rerun_of_the_same_name_measures_its_own_costs(
    ray_local, tmp_path, tiny_bert, topics_tsv
):
    # Costs are shared between the trials of one search only: a second search of the same name
    # (another storage, the same Ray session) measures again instead of reusing the first's.
    reused = []
    for where in ("a", "b"):
        space = tiny_space(tiny_bert, topics_tsv, tmp_path / where, methods=["bitfit"],
                           search={"num_samples": 2, "max_concurrent": 1})  # fmt: skip
        space["experiment"]["name"] = "same"
        reused.append(search.run(validate(space)).trials["costs_reused"].tolist())
    assert reused == [[False, True], [False, True]]


def test_results_command_prints_the_tables(finished_run, capsys):
    res, _ = finished_run
    assert main(["results", str(res.run_dir), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "top 3 by validation accuracy" in out and "best_val_accuracy" in out
    assert main(["results", str(res.run_dir), "--pareto"]) == 0
    assert "Pareto front" in capsys.readouterr().out


def test_multi_objective_search_with_pareto_asha(ray_local, tmp_path, tiny_bert, topics_tsv):
    space = tiny_space(tiny_bert, topics_tsv, tmp_path / "runs", search={"num_samples": 8})
    path = tmp_path / "mo.yaml"
    path.write_text(yaml.safe_dump(space))
    # Keyword overrides: "__" for the dots of a key path.
    res = search.run(
        path,
        search__objectives=["val_accuracy", "infer_latency_ms"],
        scheduler__type="pareto_asha",
        train__epochs=2,
    )
    t = res.trials
    assert len(t) == 8 and (t["status"] == "TERMINATED").all(), t[["status", "error"]]
    # The searcher's own record: every trial that stopped early is PRUNED, never COMPLETE.
    import pickle

    (state_file,) = res.run_dir.glob("searcher-state-*.pkl")
    study = pickle.loads(state_file.read_bytes())["_ot_study"]
    states = [tr.state.name for tr in study.trials]
    assert states.count("PRUNED") == int(t["stopped_early"].sum())
    assert states.count("COMPLETE") == int((~t["stopped_early"]).sum())
    front = {tuple(tr.values) for tr in study.best_trials}
    done = t[~t["stopped_early"]]
    # Optuna was told each trial's best round (trials.parquet's val_accuracy), not its last,
    # and the latency objective is the batch-1 merged latency column.
    assert front <= set(zip(done["val_accuracy"], done["infer_ms_b1"]))
    assert json.loads(t["objective_columns"].iloc[0]) == ["val_accuracy", "infer_ms_b1"]


def test_time_budget_ends_the_search_as_finished(ray_local, tmp_path, tiny_bert, topics_tsv):
    space = tiny_space(
        tiny_bert,
        topics_tsv,
        tmp_path / "runs",
        search={"num_samples": 200, "time_budget_s": 6, "max_concurrent": 2},
    )
    path = tmp_path / "budget.yaml"
    path.write_text(yaml.safe_dump(space))
    res = search.run(path)
    assert res.complete and 0 < len(res.trials) < 200
    record = json.loads((res.run_dir / "run.json").read_text())
    assert record["status"] == "finished" and record["stopped_by_time_budget"] is True


def test_report_figure_data_from_a_real_run(finished_run):
    """The figures' data, checked apart from the drawing."""
    from reports.figure_data import compute_data, curve_data, healthy, pareto_front, scatter_data

    res, _ = finished_run
    trials, curves = search.load_results(res.run_dir)
    data = scatter_data(trials)
    assert sum(len(p["x"]) for p in data["methods"].values()) == len(trials)
    for method, pts in data["methods"].items():
        mine = trials[trials["method"] == method]
        assert sorted(pts["trial_id"]) == sorted(mine["trial_id"])
        assert sum(pts["stopped"]) == int(mine["stopped_early"].sum())
    front = pareto_front(healthy(trials))
    assert data["frontier"]["trial_id"] == front["trial_id"].tolist()
    assert data["frontier"]["x"] == sorted(data["frontier"]["x"])  # cheaper first ...
    assert data["frontier"]["y"] == sorted(data["frontier"]["y"])  # ... and less accurate
    lines = curve_data(curves, trials)
    assert {c["trial_id"] for c in lines} == set(trials["trial_id"])
    for c in lines:
        row = trials.set_index("trial_id").loc[c["trial_id"]]
        assert len(c["epoch"]) == row["iterations"] and c["stopped"] == row["stopped_early"]
    compute = compute_data(trials)
    assert compute["trial_time_s"] == pytest.approx(trials["wall_time_s"].sum())
    assert compute["saved_s"] > 0  # ASHA stopped some trials
    assert (res.run_dir / "pareto.svg").read_text().startswith("<svg")


def test_report_renders_in_headless_chromium_without_js_errors(finished_run, tmp_path):
    import subprocess

    from browser import dump_dom, flags

    res, _ = finished_run
    page = res.run_dir / "report.html"
    dom, status = dump_dom(page, tmp_path / "profile")
    assert status["errors"] == []
    # Pareto front, hypervolume, curves, compute, knob effects: all drawn.
    assert status["figures"] == 5
    assert "fig-hypervolume" in status["figure_ids"]
    # The x-axis buttons: the parameter axes always; the measured costs where the run has them.
    buttons = status["pareto_buttons"]
    assert buttons[:2] == ["trainable parameters", "trainable %"], buttons
    assert set(buttons) <= {"trainable parameters", "trainable %", "latency (merged)",
                            "latency (unmerged)", "inference memory", "artifact size"}  # fmt: skip
    assert 'id="knob-importance"' in dom and "Reference point:" in dom
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            *flags(tmp_path / "profile"),
            "--window-size=1200,3000",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
    )
    assert shot.stat().st_size > 50_000  # a drawn page, not a blank one


def test_confirm_retrains_on_seeds_and_reads_test_once(finished_run, ray_local):
    from search.confirm import confirm

    res, _ = finished_run
    # The search itself was never given the test split.
    assert (res.trials["data_splits"] == "train,validation").all()
    df = confirm(res.run_dir, seeds=2, top=2, quiet=True)
    assert len(df) == 4 and (df["status"] == "ok").all(), df[["status", "error"]]
    assert sorted(df["seed"].unique()) == [0, 1]
    assert df["test_accuracy"].between(0, 1).all()
    # Test is read once per run, at the retraining's best validation round (earliest on a tie).
    assert (df["test_evaluations"] == 1).all()
    for _, row in df.iterrows():
        rounds = json.loads(row["val_rounds_json"])
        assert len(rounds) == 4  # every validation round of the retraining, recorded
        assert row["test_step"] == max(rounds, key=lambda r: r[1])[0]
        assert row["best_val_accuracy"] == max(r[1] for r in rounds)
    top2 = res.trials.sort_values("val_accuracy", ascending=False)["trial_id"].head(2)
    assert set(df["trial_id"]) == set(top2)
    assert (res.run_dir / "confirm.parquet").exists()
    page = (res.run_dir / "report.html").read_text()
    assert "Confirmed on the test split" in page and " ± " in page
    assert "Not confirmed yet" not in page
