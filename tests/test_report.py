"""Report data (computed apart from drawing) and the rendered page."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from reports.figure_data import (
    best_per_method,
    compute_data,
    curve_data,
    deployment_table,
    knob_effects,
    knob_importance,
    knob_summary,
    objective_front_table,
    pareto_front,
    pareto_front_nd,
    pareto_table,
    scatter_data,
)
from reports.html import render
from search.results import write_report


def trials_frame(rows) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["trial_id", "method", "trainable_params", "val_accuracy"])
    df["trainable_fraction"] = df["trainable_params"] / 1000
    df["stopped_early"] = False
    df["status"] = "TERMINATED"
    df["wall_time_s"] = 1.0
    df["error"] = None
    df["knobs_json"] = json.dumps({"learning_rate": 0.001})
    df["iterations"] = 4
    df["planned_iterations"] = 4
    return df


def test_pareto_front_keeps_exactly_the_non_dominated_points():
    df = trials_frame([
        ("a", "full", 1000, 0.95),
        ("b", "lora", 10, 0.90),
        ("c", "lora", 10, 0.85),      # dominated by b (same params, less accurate)
        ("d", "adapter", 50, 0.88),   # dominated by b (more params, less accurate)
        ("e", "linear_probe", 2, 0.60),
        ("f", "adapter", 100, 0.93),
        ("g", "full", 1000, None),    # no result: ignored
    ])  # fmt: skip
    front = pareto_front(df)
    assert front["trial_id"].tolist() == ["e", "b", "f", "a"]
    assert (
        front["trainable_params"].is_monotonic_increasing
        and front["val_accuracy"].is_monotonic_increasing
    )


def test_pareto_front_respects_the_preference_per_metric():
    df = pd.DataFrame({"x": [1, 2, 3], "y": [3, 2, 1]})
    assert pareto_front(df, "x", "y", "min", "max")["x"].tolist() == [1]  # (1, 3) dominates all
    assert pareto_front(df, "x", "y", "min", "min")["x"].tolist() == [1, 2, 3]  # a trade-off
    assert pareto_front(df, "x", "y", "max", "min")["x"].tolist() == [3]
    assert pareto_front(df, "x", "y", "max", "max")["x"].tolist() == [3, 2, 1]


def test_figure_data_and_tables():
    df = trials_frame([("a", "full", 1000, 0.95), ("b", "lora", 10, 0.90), ("c", "lora", 20, 0.80)])
    df.loc[2, "stopped_early"] = True
    data = scatter_data(df)
    assert set(data["methods"]) == {"full", "lora"}
    assert data["methods"]["lora"]["stopped"] == [False, True]
    assert data["frontier"]["x"] == [10.0, 1000.0] and data["frontier"]["y"] == [0.90, 0.95]
    assert data["frontier"]["trial_id"] == ["b", "a"]
    assert best_per_method(df)["trial_id"].tolist() == ["a", "b"]
    curves = pd.DataFrame(
        {
            "trial_id": ["c", "c"],
            "method": ["lora"] * 2,
            "iteration": [2, 1],
            "epoch": [0.5, 0.25],
            "val_accuracy": [0.8, 0.7],
            "val_loss": [1.0, 1.1],
        }
    )
    (line,) = curve_data(curves, df)
    assert line["epoch"] == [0.25, 0.5] and line["stopped"] is True
    assert (
        knob_summary(json.dumps({"lora_rank": 8, "learning_rate": 0.00312}))
        == "learning_rate=0.00312, lora_rank=8"
    )


def test_compute_data_counts_what_early_stopping_saved():
    df = trials_frame([("a", "full", 1000, 0.95), ("b", "lora", 10, 0.9), ("c", "lora", 20, 0.8)])
    df["wall_time_s"] = [40.0, 20.0, 5.0]
    df.loc[2, ["stopped_early", "iterations"]] = [True, 1]  # 1 of 4 rounds: 20 s to finish
    data = compute_data(df)
    assert data["per_method"]["lora"] == {
        "finished_s": 20.0, "stopped_s": 5.0, "trials": 2, "stopped": 1
    }  # fmt: skip
    assert data["trial_time_s"] == 65.0 and data["saved_s"] == 15.0
    assert data["saved_fraction"] == pytest.approx(15 / 80)


def test_knob_effects_only_for_knobs_that_vary():
    df = trials_frame([("a", "lora", 10, 0.9), ("b", "lora", 20, 0.8), ("c", "full", 1000, 0.95)])
    df["lora_rank"] = [4, 8, None]
    df["learning_rate"] = [1e-3, 1e-3, 1e-4]
    df["batch_size"] = 16
    effects = knob_effects(df, ["lora_rank", "learning_rate", "batch_size"])
    assert set(effects) == {"lora_rank", "learning_rate"}
    assert effects["lora_rank"] == {
        "lora": {"x": [4.0, 8.0], "y": [0.9, 0.8], "trial_id": ["a", "b"]}
    }


def test_user_strings_are_escaped(tmp_path):
    evil = "<script>alert(1)</script>"
    df = trials_frame([("a", "full", 1000, 0.95), ("b", "lora", 10, 0.9)])
    df["knobs_json"] = json.dumps({"note": evil})
    df["run_name"] = evil
    df["model"] = evil
    df["dataset"] = evil
    df["label_names"] = json.dumps([evil, "ok"])
    df.loc[1, "status"] = "ERROR"
    df.loc[1, "error"] = evil
    curves = pd.DataFrame(
        columns=["trial_id", "method", "iteration", "epoch", "val_accuracy", "val_loss"]
    )
    page = render(df, curves, evil)
    assert evil not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page

    df.to_parquet(tmp_path / "trials.parquet")
    curves.to_parquet(tmp_path / "curves.parquet")
    out = write_report(tmp_path)
    assert out.name == "report.html" and evil not in out.read_text()
    svg = (tmp_path / "pareto.svg").read_text()
    assert evil not in svg and "&lt;script&gt;" in svg
    assert not list(tmp_path.glob("*.tmp"))


def test_a_failed_write_leaves_the_old_file_whole_and_no_temporary(tmp_path):
    import pandas as pd

    from search.rundir import RunDir
    from trainables.atomic import atomic_write

    path = tmp_path / "trials.parquet"
    good = pd.DataFrame({"a": [1, 2, 3]})
    RunDir.at(tmp_path).write_parquet(path.name, good)
    bad = pd.DataFrame({"a": [1, "x", object()]})  # pyarrow cannot convert: fails mid-write
    with pytest.raises(Exception):  # noqa: B017 - whatever pyarrow raises
        RunDir.at(tmp_path).write_parquet(path.name, bad)
    assert pd.read_parquet(path).equals(good)

    def crash(tmp):
        tmp.write_text("<html>half a rep")
        raise KeyboardInterrupt  # Ctrl-C in the middle of writing

    (tmp_path / "report.html").write_text("<html>old</html>")
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "report.html", crash)
    assert (tmp_path / "report.html").read_text() == "<html>old</html>"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "trials.parquet"]


def _confirmed(evil: str) -> pd.DataFrame:
    """Two seeds of trial "b" (Pareto-optimal) and one of "a" (not), per-label figures each."""
    rows = []
    for tid, seed, cm in (("b", 0, [[8, 2], [1, 9]]), ("b", 1, [[9, 1], [3, 7]]),
                          ("a", 0, [[5, 5], [5, 5]])):  # fmt: skip
        rows.append({
            "trial_id": tid, "method": "lora", "seed": seed, "status": "ok", "error": None,
            "metric": "val_mcc", "test_metric": 0.5, "test_accuracy": 0.8, "test_loss": 0.4,
            "val_metric_search": 0.6, "best_val_metric": 0.55, "trainable_params": 10,
            "total_params": 1000, "knobs_json": "{}", "n_test": 20,
            "label_names": json.dumps([evil, "ok"]),
            "test_per_class_json": json.dumps({"precision": [0.9, 0.7], "recall": [0.8, 0.9],
                                               "f1": [0.85, 0.8], "support": [10, 10]}),
            "test_confusion_json": json.dumps(cm),
        })  # fmt: skip
    return pd.DataFrame(rows)


def test_per_label_figures_of_the_pareto_optimal_configurations_are_shown_escaped():
    from reports.figure_data import per_label_data

    evil = "<b>spam</b>"
    trials = trials_frame([("a", "full", 1000, 0.80), ("b", "lora", 10, 0.95)])
    confirmed = _confirmed(evil)
    (d,) = per_label_data(confirmed, ["b"])
    assert d["seeds"] == 2 and d["labels"] == [evil, "ok"]
    assert d["confusion"] == [[17, 3], [4, 16]]  # summed over the seeds
    assert d["f1"] == pytest.approx([0.85, 0.8])
    page = render(trials, pd.DataFrame(columns=["trial_id", "method", "iteration", "epoch",
                                                "val_accuracy", "val_loss"]), "run", confirmed)  # fmt: skip
    assert evil not in page and "&lt;b&gt;spam&lt;/b&gt;" in page
    # Only the front's configurations ("a" is confirmed but dominated by "b").
    assert "<h3>lora (b)</h3>" in page and "<h3>lora (a)</h3>" not in page
    assert "test mcc" in page and "0.5000 ± 0.0000" in page


def test_pareto_front_nd_keeps_the_rows_no_other_beats_on_every_objective():
    df = pd.DataFrame(
        [
            ("a", 0.90, 100, 5.0),
            ("b", 0.90, 100, 6.0),   # dominated by a (slower)
            ("c", 0.80, 10, 9.0),    # fewest parameters
            ("d", 0.85, 200, 1.0),   # fastest
            ("e", 0.70, 50, 10.0),   # dominated by c on all three
            ("f", 0.90, 100, 5.0),   # a duplicate of a: the first is kept
            ("g", 0.95, 1000, 20.0), # most accurate
            ("h", None, 1, 0.1),     # no result: ignored
        ],
        columns=["trial_id", "acc", "params", "ms"],
    )  # fmt: skip
    front = pareto_front_nd(df, ["acc", "params", "ms"], ["max", "min", "min"])
    assert front["trial_id"].tolist() == ["c", "a", "d", "g"]  # by the first cost
    # On two of them, the same rows as the 2-D front.
    two = pareto_front_nd(df, ["acc", "params"], ["max", "min"])
    assert set(two["trial_id"]) == set(pareto_front(df, "params", "acc", "min", "max")["trial_id"])


def test_pareto_front_nd_agrees_with_the_2d_front_on_random_tables():
    import random

    rng = random.Random(0)
    for _ in range(50):
        n = rng.randrange(1, 12)
        df = pd.DataFrame(
            {"x": [rng.randrange(5) for _ in range(n)], "y": [rng.randrange(5) for _ in range(n)]}
        )
        for xm, ym in (("min", "max"), ("min", "min"), ("max", "max")):
            nd = pareto_front_nd(df, ["y", "x"], [ym, xm])
            assert nd.index.tolist() == pareto_front(df, "x", "y", xm, ym).index.tolist()


def cost_frame() -> pd.DataFrame:
    """A run with the serving costs measured and latency as its cost objective."""
    df = trials_frame([
        ("a", "full", 1000, 0.95), ("b", "lora", 10, 0.90), ("c", "lora", 20, 0.80),
        ("d", "adapter", 50, 0.92),
    ])  # fmt: skip
    df["infer_ms_b1"] = [2.0, 3.0, 3.5, 4.0]  # lora merged: slower than full here
    df["infer_ms_b1_unmerged"] = [2.0, 3.5, 3.0, 4.0]
    df["infer_ms_b32"] = [0.5, 0.6, 0.55, 0.7]
    df["infer_peak_mb"] = [300.0, 310.0, 305.0, 320.0]
    df["artifact_mb"] = [90.0, 0.1, 0.2, 1.0]
    df["train_step_ms"] = [50.0, 30.0, 31.0, 35.0]
    df["train_peak_mb"] = [900.0, 400.0, 410.0, 500.0]
    df["total_params"] = 1000
    df["objectives"] = json.dumps(["val_accuracy", "infer_latency_ms"])
    df["objective_columns"] = json.dumps(["val_accuracy", "infer_ms_b1"])
    df["objective_modes"] = json.dumps(["max", "min"])
    return df


EMPTY_CURVES = pd.DataFrame(
    columns=["trial_id", "method", "iteration", "epoch", "val_accuracy", "val_loss"]
)


def test_pareto_plot_switches_x_and_its_front_among_the_measured_costs():
    from reports.html import pareto_figure

    df = cost_frame()
    fig = pareto_figure(df)
    (menu,) = fig.layout.updatemenus
    labels = [b.label for b in menu.buttons]
    assert labels == ["trainable parameters", "trainable %", "latency (merged)",
                      "latency (unmerged)", "inference memory", "artifact size"]  # fmt: skip
    # It opens on the run's cost objective, latency, with the front on latency.
    assert menu.active == 2 and fig.layout.xaxis.title.text.startswith("inference latency")
    assert fig.layout.xaxis.type == "linear"
    front_trace = fig.data[-1]
    assert list(front_trace.x) == [2.0] and list(front_trace.y) == [0.95]  # full: fastest, best
    for button, col in zip(menu.buttons, ["trainable_params", "trainable_fraction",
                                          "infer_ms_b1", "infer_ms_b1_unmerged",
                                          "infer_peak_mb", "artifact_mb"]):  # fmt: skip
        data, layout = button.args
        expected = pareto_front(df, x=col)
        scale = 100 if col == "trainable_fraction" else 1
        assert data["x"][-1] == [scale * v for v in expected[col]], col
        assert data["y"][-1] == expected["val_accuracy"].tolist(), col
        assert len(data["x"]) == len(fig.data)  # every trace gets its x
        assert layout["xaxis.type"] == ("log" if col.startswith("trainable") else "linear")
    # The artifact button's front: lora b (0.1 MB), adapter d (1 MB), full a (90 MB).
    assert menu.buttons[5].args[0]["x"][-1] == [0.1, 1.0, 90.0]


def test_old_runs_without_costs_keep_the_two_parameter_axes():
    from reports.html import pareto_figure

    df = trials_frame([("a", "full", 1000, 0.95), ("b", "lora", 10, 0.90)])
    fig = pareto_figure(df)
    assert [b.label for b in fig.layout.updatemenus[0].buttons] == [
        "trainable parameters", "trainable %",
    ]  # fmt: skip
    assert fig.layout.xaxis.type == "log" and fig.layout.updatemenus[0].active == 0
    # A cost column present but never measured offers no button either.
    fig = pareto_figure(df.assign(infer_ms_b1=None, artifact_mb=float("nan")))
    assert len(fig.layout.updatemenus[0].buttons) == 2


def test_deployment_table_gives_each_methods_best_trial_and_its_costs():
    df = cost_frame()
    df.loc[4] = df.loc[1]
    df.loc[4, ["trial_id", "status", "val_accuracy"]] = ["e", "ERROR", 0.99]  # failed: not it
    table = deployment_table(df)
    assert table["method"].tolist() == ["full", "adapter", "lora"]
    assert table["trial_id"].tolist() == ["a", "d", "b"]
    assert table.columns.tolist() == [
        "method", "trial_id", "val_accuracy", "infer_ms_b1", "infer_ms_b32",
        "infer_ms_b1_unmerged", "infer_peak_mb", "artifact_mb", "trainable_params",
        "train_step_ms", "train_peak_mb",
    ]  # fmt: skip
    lora = table.set_index("method").loc["lora"]
    assert (lora["infer_ms_b1"], lora["infer_ms_b1_unmerged"], lora["artifact_mb"]) == (
        3.0,
        3.5,
        0.1,
    )
    assert lora["trainable_params"] == 10 and lora["train_peak_mb"] == 400.0
    # An old run: its trainable parameters only, and the report says what is missing.
    old = trials_frame([("a", "full", 1000, 0.95), ("b", "lora", 10, 0.90)])
    assert deployment_table(old).columns.tolist() == [
        "method",
        "trial_id",
        "val_accuracy",
        "trainable_params",
    ]
    assert "measured no serving costs" in render(old, EMPTY_CURVES, "run")
    assert "measured no serving costs" not in render(df, EMPTY_CURVES, "run")


def test_three_objectives_give_the_front_on_all_three_as_a_table():
    df = cost_frame()
    df["objectives"] = json.dumps(["val_accuracy", "infer_latency_ms", "artifact_mb"])
    df["objective_columns"] = json.dumps(["val_accuracy", "infer_ms_b1", "artifact_mb"])
    df["objective_modes"] = json.dumps(["max", "min", "min"])
    table = objective_front_table(df)
    # c is beaten by b on all three (slower, bigger, less accurate); the rest trade off.
    assert table["trial_id"].tolist() == ["a", "b", "d"]  # by latency, fastest first
    assert {"infer_ms_b1", "artifact_mb", "val_accuracy"} <= set(table.columns)
    page = render(df, EMPTY_CURVES, "run")
    assert "Not dominated on all 3 objectives" in page
    # The plot opens on the first cost, and its front is the 2-D one on latency alone (a).
    assert "Pareto front: inference latency, merged" in page


def test_the_front_table_of_an_old_run_is_the_parameter_front():
    df = trials_frame([("a", "full", 1000, 0.95), ("b", "lora", 10, 0.90), ("c", "lora", 20, 0.8)])
    assert objective_front_table(df)["trial_id"].tolist() == ["b", "a"]
    pd.testing.assert_frame_equal(objective_front_table(df), pareto_table(df), check_dtype=False)


def importance_frame(n_lora: int, n_full: int) -> pd.DataFrame:
    """LoRA trials whose accuracy follows the learning rate, not the rank; a few full ones."""
    import random

    rng = random.Random(1)
    rows, knobs = [], []
    for i in range(n_lora):
        lr, rank = 10 ** rng.uniform(-5, -2), rng.choice([4, 8, 16])
        rows.append((f"l{i}", "lora", 10, 0.5 + 0.1 * (math.log10(lr) + 5)))
        # A list-valued knob (as JSON text, a category) and a boolean one.
        targets = rng.choice([["query", "value"], ["all"]])
        knobs.append({"learning_rate": lr, "lora_rank": rank, "lora_dropout": 0.1,
                      "lora_targets": targets, "bias": rng.random() < 0.5})  # fmt: skip
    for i in range(n_full):
        rows.append((f"f{i}", "full", 1000, 0.8 + 0.01 * i))
        knobs.append({"learning_rate": 1e-4 * (i + 1)})
    df = trials_frame(rows)
    df["knobs_json"] = [json.dumps(k) for k in knobs]
    df.attrs["log_knobs"] = ["learning_rate"]
    return df


def test_knob_importance_ranks_the_knob_that_drives_the_metric():
    df = importance_frame(n_lora=16, n_full=3)
    out = knob_importance(df)
    assert out["evaluator"] == "fANOVA" and out["metric"] == "val_accuracy"
    lora = out["methods"]["lora"]
    # lora_dropout took one value: left out.
    assert set(lora["importances"]) == {"learning_rate", "lora_rank", "lora_targets", "bias"}
    assert next(iter(lora["importances"])) == "learning_rate" and lora["trials"] == 16
    assert lora["importances"]["learning_rate"] > 0.8
    assert sum(lora["importances"].values()) == pytest.approx(1.0)
    assert out["methods"]["full"] == {"too_few": 3, "needed": 5}
    assert knob_importance(df) == out  # seeded: the same every time
    page = render(df, EMPTY_CURVES, "run")
    assert "too few trials to tell (3 of 5)" in page and "fANOVA" in page


def test_knob_importance_without_scikit_learn_and_when_the_evaluator_fails(monkeypatch):
    import optuna

    import reports.figure_data as fd

    df = importance_frame(n_lora=12, n_full=0)
    monkeypatch.setattr(fd, "_importance_evaluator_name", lambda: "PED-ANOVA")
    out = knob_importance(df)
    assert out["evaluator"] == "PED-ANOVA"
    assert set(out["methods"]["lora"]["importances"]) == {
        "learning_rate", "lora_rank", "lora_targets", "bias"
    }  # fmt: skip

    def broken(*args, **kwargs):
        raise RuntimeError("no forest today")

    monkeypatch.setattr(optuna.importance, "get_param_importances", broken)
    assert knob_importance(df)["methods"]["lora"] == {"error": "RuntimeError: no forest today"}
    page = render(df, EMPTY_CURVES, "run")
    assert "the evaluator failed: RuntimeError: no forest today" in page


def test_knob_importance_when_no_knob_varies_and_on_old_tables():
    df = importance_frame(n_lora=6, n_full=0)
    df["knobs_json"] = json.dumps({"learning_rate": 1e-3, "lora_rank": 8})
    assert knob_importance(df)["methods"]["lora"] == {"no_knob_varies": True, "trials": 6}
    old = trials_frame([("a", "full", 1000, 0.95), ("b", "lora", 10, 0.90)])
    assert knob_importance(old.drop(columns="knobs_json"))["methods"] == {}


def test_report_sections_of_an_old_run_without_the_new_columns():
    df = trials_frame([("a", "full", 1000, 0.95), ("b", "lora", 10, 0.90), ("c", "lora", 20, 0.8)])
    df["total_params"] = 1000
    page = render(df, EMPTY_CURVES, "run")
    for anchor in ('id="deployment"', 'id="hypervolume"', 'id="knob-importance"',
                   'id="fig-hypervolume"', "Reference point: val_accuracy 0"):  # fmt: skip
        assert anchor in page, anchor
    # Without total_params, no reference for the parameter count: said, not drawn.
    page = render(df.drop(columns="total_params"), EMPTY_CURVES, "run")
    assert 'id="fig-hypervolume"' not in page and "no hypervolume: trainable_params" in page


def test_seq2seq_report_names_its_metric_and_shows_the_fronts_generations_escaped():
    """A seq2seq run: axes and tables say ROUGE-L, the Pareto-optimal trials' example generations
    are shown (source, reference, output; escaped), a dominated trial's are not, and the share
    of new parameters (which train under every method) is said, with method_% beside."""
    evil = "<script>alert(1)</script>"
    rows = [("a", "full", 1000, 40.0), ("b", "lora", 150, 35.0), ("c", "bitfit", 200, 20.0)]
    trials = pd.DataFrame(rows, columns=["trial_id", "method", "trainable_params", "val_rougeL"])
    trials = trials.assign(
        total_params=1000, new_params=100, trainable_fraction=trials["trainable_params"] / 1000,
        stopped_early=False, status="TERMINATED", wall_time_s=1.0, error=None,
        knobs_json=json.dumps({"learning_rate": 0.001}), iterations=2, planned_iterations=2,
        metric="val_rougeL", metric_mode="max", task="seq2seq",
        examples_json=[json.dumps([{"source": f"{t} {evil}", "reference": "ref " + t,
                                    "output": f"OUTPUT-{t}"}] * 4) for t in ("a", "b", "c")],
    )  # fmt: skip
    curves = pd.DataFrame(columns=["trial_id", "method", "iteration", "epoch", "val_rougeL"])
    confirmed = _confirmed("x").assign(metric="val_rougeL", test_metric=30.0)
    page = render(trials, curves, "headlines", confirmed)
    assert evil not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Pareto front: trainable parameters vs validation ROUGE-L" in page
    assert "<th>test ROUGE-L</th>" in page and "<th>val ROUGE-L (search)</th>" in page
    assert 'id="examples"' in page and "OUTPUT-b" in page and "OUTPUT-a" in page
    assert "OUTPUT-c" not in page  # bitfit is dominated by lora: not on the front
    assert page.count("ref b") == 3  # EXAMPLES_SHOWN of the four recorded
    assert "10.0% of the model's parameters anew" in page and "method_%" in page
    front = objective_front_table(trials)
    assert set(front["trial_id"]) == {"a", "b"}


def test_classification_reports_have_no_generation_sections():
    trials = trials_frame([("a", "full", 1000, 0.80), ("b", "lora", 10, 0.95)])
    page = render(trials, pd.DataFrame(columns=["trial_id", "method", "iteration", "epoch",
                                                "val_accuracy", "val_loss"]), "run")  # fmt: skip
    assert 'id="examples"' not in page and "method_%" not in page
