"""Hypervolume: exact values on hand-computed fronts, the curve over time, the reference point."""

from __future__ import annotations

import itertools
import json
import math
import random

import pandas as pd
import pytest

from reports.hypervolume import hypervolume, hypervolume_at, hypervolume_curve, reference_point


def test_two_objectives_exact():
    # Three boxes up to (4, 4): 3x1 + 2x1 + 1x1 (a staircase).
    assert hypervolume([(1, 3), (2, 2), (3, 1)], (4, 4)) == pytest.approx(6.0)
    # A dominated point, a duplicate and one beyond the reference add nothing.
    assert hypervolume([(1, 3), (2, 2), (3, 1), (2, 3), (2, 2), (5, 0)], (4, 4)) == pytest.approx(6)
    assert hypervolume([], (1, 1)) == 0.0
    assert hypervolume([(1, 1)], (1, 2)) == 0.0  # on the reference's edge: no volume


def test_three_objectives_exact():
    assert hypervolume([(1, 1, 1)], (2, 2, 2)) == pytest.approx(1.0)
    # Boxes of 4 and 2 that share the cube [1, 2]^3: 4 + 2 - 1.
    assert hypervolume([(0, 0, 1), (1, 1, 0)], (2, 2, 2)) == pytest.approx(5.0)
    # Three boxes of 2, every pair (and all three) meeting in [1, 2]^3: 6 - 3 + 1.
    assert hypervolume([(0, 1, 1), (1, 0, 1), (1, 1, 0)], (2, 2, 2)) == pytest.approx(4.0)


@pytest.mark.parametrize("dims", [2, 3])
def test_exact_against_counting_unit_cells(dims):
    """On integer points, the volume is the number of unit cells some point dominates."""
    rng = random.Random(dims)
    ref = (6,) * dims
    for _ in range(20):
        points = [tuple(rng.randrange(0, 7) for _ in range(dims)) for _ in range(rng.randrange(8))]
        cells = sum(
            any(all(p[i] <= c[i] for i in range(dims)) for p in points)
            for c in itertools.product(range(6), repeat=dims)
        )
        assert hypervolume(points, ref) == pytest.approx(cells), points


def trials(rows, total=1000) -> pd.DataFrame:
    """Trials of a run ranked by validation accuracy, parameters the cost (the default)."""
    df = pd.DataFrame(
        rows, columns=["trial_id", "status", "val_accuracy", "trainable_params", "wall_time_s",
                       "ended_at"],
    )  # fmt: skip
    df["method"] = "lora"
    df["total_params"] = total
    df["metric"], df["metric_mode"] = "val_accuracy", "max"
    return df


# Listed out of completion order; t2 failed (its time still counts), t4 is dominated.
RUN = [
    ("t3", "TERMINATED", 0.8, 1000, 20.0, 300.0),
    ("t1", "TERMINATED", 0.5, 100, 10.0, 100.0),
    ("t4", "TERMINATED", 0.4, 500, 1.0, 400.0),
    ("t2", "ERROR", 0.9, 10, 5.0, 200.0),
]
# Reference (accuracy 0, 2 x 1000 parameters), parameters in decades: log10(2000) = 3.30103.
HV_T1 = 0.5 * (math.log10(2000) - 2)
HV_T3 = HV_T1 + (0.8 - 0.5) * (math.log10(2000) - 3)


def test_curve_follows_completion_order_and_counts_every_trials_time():
    curve = hypervolume_curve(trials(RUN))
    assert curve["objectives"] == ["val_accuracy", "trainable_params"]
    assert curve["scales"] == ["linear", "log10"] and curve["reference"] == [0.0, 2000.0]
    assert [p["trials"] for p in curve["per_trial"]] == [1, 2, 3]
    assert [p["trial_seconds"] for p in curve["per_trial"]] == [10.0, 35.0, 36.0]
    assert [p["hypervolume"] for p in curve["per_trial"]] == pytest.approx([HV_T1, HV_T3, HV_T3])
    assert curve["final"] == pytest.approx(HV_T3)
    assert "2 x 1,000" in curve["reference_note"]
    assert json.loads(json.dumps(curve)) == curve  # goes into run.json as it is


def test_curve_without_ended_at_uses_row_order():
    df = trials(RUN).drop(columns="ended_at")
    curve = hypervolume_curve(df)
    assert [p["trial_seconds"] for p in curve["per_trial"]] == [20.0, 30.0, 31.0]
    t3_alone = 0.8 * (math.log10(2000) - 3)
    assert [p["hypervolume"] for p in curve["per_trial"]] == pytest.approx([t3_alone, HV_T3, HV_T3])


def test_hypervolume_at_a_trial_time_budget():
    df = trials(RUN)
    assert hypervolume_at(df, 5.0) == 0.0  # nothing ended yet
    assert hypervolume_at(df, 10.0) == pytest.approx(HV_T1)
    assert hypervolume_at(df, 34.9) == pytest.approx(HV_T1)  # t3 ends at 35 s
    assert hypervolume_at(df, 1e9) == pytest.approx(HV_T3)


def test_reference_depends_on_the_model_and_task_not_on_the_trials():
    df = trials(RUN)
    better = df.assign(val_accuracy=[0.99, 0.98, 0.97, 0.96], trainable_params=[1, 2, 3, 4])
    for frame in (df, df.head(1), better):
        curve = hypervolume_curve(frame)
        assert curve["reference"] == [0.0, 2000.0]
    # Measured costs: a fixed ceiling, whatever the trials measured.
    assert reference_point(df.assign(infer_ms_b1=1.0), "infer_ms_b1", "min")[0] == 1e4
    assert reference_point(df.assign(infer_ms_b1=900.0), "infer_ms_b1", "min")[0] == 1e4
    assert reference_point(df, "val_mcc", "max")[0] == -1.0
    # From the model's parameter count alone: the fraction, the exported size.
    assert reference_point(df, "trainable_fraction", "min")[0] == 2.0
    artifact = reference_point(df.assign(artifact_mb=5000.0), "artifact_mb", "min")
    assert artifact[:2] == (2 * (4 * 1000 / 2**20 + 64), "log10")
    labels = df.assign(label_names=json.dumps(["a", "b", "c", "d"]), task="classification")
    assert reference_point(labels, "val_loss", "min")[0] == pytest.approx(math.log(4))
    assert reference_point(labels.assign(val_loss=9.0), "val_loss", "min")[0] == pytest.approx(
        math.log(4)
    )


def test_a_loss_with_no_chance_level_has_no_hypervolume():
    df = trials(RUN).assign(metric="val_loss", metric_mode="min", val_loss=0.5, task="regression")
    curve = hypervolume_curve(df)
    assert curve["reference"] is None and curve["per_trial"] == [] and curve["final"] is None
    assert "val_loss" in curve["reference_note"]
    assert hypervolume_at(df, 100.0) is None


def test_three_objectives_with_an_aliased_latency():
    df = trials(RUN)
    df["infer_ms_b1"] = [10.0, 1.0, 100.0, 1.0]
    df["objectives"] = json.dumps(["val_accuracy", "infer_latency_ms", "trainable_params"])
    df["objective_columns"] = json.dumps(["val_accuracy", "infer_ms_b1", "trainable_params"])
    df["objective_modes"] = json.dumps(["max", "min", "min"])
    curve = hypervolume_curve(df)
    assert curve["objectives"] == ["val_accuracy", "infer_latency_ms", "trainable_params"]
    assert curve["reference"] == [0.0, 1e4, 2000.0]
    # In the minimised space: (-accuracy, log10 ms, log10 params), reference (0, 4, log10 2000).
    ref = (0.0, 4.0, math.log10(2000))
    t1, t3 = (-0.5, 0.0, 2.0), (-0.8, 1.0, 3.0)
    assert curve["final"] == pytest.approx(hypervolume([t1, t3], ref))
    assert curve["final"] == pytest.approx(
        0.5 * 4 * (ref[2] - 2) + 0.8 * 3 * (ref[2] - 3) - 0.5 * 3 * (ref[2] - 3)
    )
    # Without the objective columns (an old run), the same run gives the default two.
    old = df.drop(columns=["objectives", "objective_columns", "objective_modes"])
    assert hypervolume_curve(old)["objectives"] == ["val_accuracy", "trainable_params"]
