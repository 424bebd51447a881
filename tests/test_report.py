"""Report data (computed apart from drawing) and the rendered page."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from reports.figure_data import (
    best_per_method,
    compute_data,
    curve_data,
    knob_effects,
    knob_summary,
    pareto_front,
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
