"""The hypervolume of a run's Pareto front, and how it grew as trials ended.

The hypervolume is the volume of objective space that the front dominates,
measured up to a reference point: larger is better, and it grows only when a
trial improves the front. Every objective is turned to minimisation first
(a metric in ``max`` mode is negated) and costs are measured in decades
(log10), so halving a latency counts the same at 2 ms as at 200 ms.

The reference point follows from the model and the task alone, never from
the trials observed, so two searches on the same model and data (a warm and
a cold one, say) are measured against the same point (:func:`reference_point`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from reports.figure_data import Objectives, completion_order, healthy, objectives

# Metrics in [0, 1] and in [-1, 1] (by the name after ``val_``): their worst value is the
# reference, a point no trial can be worse than.
UNIT_METRICS = {
    "accuracy", "balanced_accuracy", "f1", "f1_macro", "f1_micro", "f1_weighted",
    "precision", "recall", "auc", "roc_auc",
}  # fmt: skip
SIGNED_METRICS = {"mcc", "pearson", "spearman"}
# Costs measured on hardware (milliseconds, MiB): nothing about the model bounds them,
# so each unit gets one fixed ceiling that no realistic trial reaches, the same for every run.
FIXED_CEILINGS = {
    "infer_ms_b1": 1e4,  # 10 s per example
    "infer_ms_b32": 1e4,
    "infer_ms_b1_unmerged": 1e4,
    "infer_ms_b32_unmerged": 1e4,
    "train_step_ms": 1e5,  # 100 s per step
    "infer_peak_mb": 1e6,  # MiB: about a terabyte
    "train_peak_mb": 1e6,
}
# What an exported model carries besides its weights (tokenizer, config), in MiB.
EXPORT_ALLOWANCE_MB = 64.0
MIB = 2**20


class NoReference(ValueError):
    """An objective with no reference that follows from the model and task alone."""


def reference_point(trials: pd.DataFrame, column: str, mode: str) -> tuple[float, str, str]:
    """(reference in the column's own units, scale ``linear``/``log10``, a note saying why).

    - a metric in ``[0, 1]`` (accuracy, F1, ...): 0; in ``[-1, 1]`` (MCC, Pearson,
      Spearman): -1, its worst value;
    - ``val_loss`` (cross-entropy): ``ln(K)`` for ``K`` labels, a uniform guess's loss;
    - ``trainable_params``: ``2 x`` the model's parameter count (the smallest
      ``total_params``: the model with its head, before a method adds modules), log10:
      full fine-tuning itself still adds volume (log10 2 = 0.3 decades). Runs on one model
      with the same methods share it exactly; a run of added-module methods alone (LoRA
      only) takes their smallest count, within a fraction of a percent of the model's;
    - ``trainable_fraction``: 2 (twice full fine-tuning's 1), log10;
    - ``artifact_mb``: ``2 x`` (the model's float32 weights, 4 bytes per parameter,
      plus 64 MiB of tokenizer and config files), log10;
    - latency, step time and memory: a fixed ceiling per unit (10 s per example, 100 s
      per training step, 10^6 MiB), log10, the same for every run.

    Raises :class:`NoReference` for an objective none of these covers (a regression loss).
    """
    name = column.removeprefix("val_")
    if mode == "max" and name in UNIT_METRICS:
        return 0.0, "linear", f"{column} 0 (its worst value)"
    if mode == "max" and name in SIGNED_METRICS:
        return -1.0, "linear", f"{column} -1 (its worst value)"
    if column == "val_loss" and mode == "min":
        labels = _label_count(trials)
        if labels is None:
            raise NoReference(f"{column}: no label count (a regression loss has no chance level)")
        return (
            math.log(labels),
            "linear",
            f"{column} ln({labels}) = {math.log(labels):.4g} (a uniform guess's cross-entropy)",
        )
    if mode != "min":
        raise NoReference(f"{column} ({mode}): no known bound")
    if column == "trainable_fraction":
        return 2.0, "log10", f"{column} 2 (twice full fine-tuning's 1; log10 scale)"
    if column in FIXED_CEILINGS:
        ref = FIXED_CEILINGS[column]
        unit = "ms" if column.endswith("_ms") or "_ms_" in column else "MiB"
        return (
            ref,
            "log10",
            f"{column} {ref:g} {unit} (a fixed ceiling, the same for every run; log10)",
        )
    if column in ("trainable_params", "artifact_mb"):
        total = _model_params(trials)
        if total is None:
            raise NoReference(f"{column}: no total_params recorded")
        if column == "trainable_params":
            return (
                2.0 * total,
                "log10",
                f"{column} 2 x {total:,} (twice the model's parameters; log10 scale)",
            )
        ref = 2.0 * (4 * total / MIB + EXPORT_ALLOWANCE_MB)
        return (
            ref,
            "log10",
            f"{column} {ref:.4g} (twice the model's float32 weights, {total:,} x 4 bytes, "
            f"plus {EXPORT_ALLOWANCE_MB:g} MiB of tokenizer and config; log10 scale)",
        )
    raise NoReference(f"{column}: no known bound")


def _label_count(trials: pd.DataFrame) -> int | None:
    """The number of labels of a classification task (``label_names``), else None."""
    task = trials["task"].dropna() if "task" in trials else pd.Series(dtype=object)
    if len(task) and str(task.iloc[0]) != "classification":
        return None
    if "label_names" not in trials or not trials["label_names"].notna().any():
        return None
    try:
        labels = json.loads(str(trials["label_names"].dropna().iloc[0]))
    except ValueError:
        return None
    return len(labels) if isinstance(labels, list) and len(labels) >= 2 else None


def _model_params(trials: pd.DataFrame) -> int | None:
    """The model's own parameter count, head included: the smallest ``total_params`` of the
    run (methods that add modules, adapters or LoRA, count theirs on top)."""
    if "total_params" not in trials or not trials["total_params"].notna().any():
        return None
    return int(trials["total_params"].dropna().min())


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """The exact volume dominated by ``points`` up to ``reference``, every objective minimised.

    Points not better than the reference on every objective add nothing. Two
    objectives: one sweep; more: slices along the last objective, each a
    hypervolume one dimension down (n points, d = 3: O(n^2 log n); meant for
    fronts of a few hundred points).
    """
    ref = tuple(float(r) for r in reference)
    pts = [tuple(float(v) for v in p) for p in points]
    pts = [p for p in pts if len(p) == len(ref) and all(v < r for v, r in zip(p, ref))]
    return _volume(pts, ref)


def _volume(pts: list[tuple[float, ...]], ref: tuple[float, ...]) -> float:
    if not pts:
        return 0.0
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in pts)
    if len(ref) == 2:
        area, best_y = 0.0, ref[1]
        for x, y in sorted(pts):  # by x; each point that lowers y adds a strip to the right
            if y < best_y:
                area += (ref[0] - x) * (best_y - y)
                best_y = y
        return area
    # Slabs between successive values of the last objective: within each, the points at or
    # below its floor dominate the same (d-1)-dimensional area.
    levels = sorted({p[-1] for p in pts})
    volume = 0.0
    for i, z in enumerate(levels):
        top = levels[i + 1] if i + 1 < len(levels) else ref[-1]
        below = [p[:-1] for p in pts if p[-1] <= z]
        volume += _volume(below, ref[:-1]) * (top - z)
    return volume


def _transform(value: float, mode: str, scale: str) -> float | None:
    """A value in the minimised space: log10 for costs, negated for ``max``; None if unusable."""
    if value is None or pd.isna(value):
        return None
    v = float(value)
    if scale == "log10":
        if v <= 0:
            return None  # not a measurement a log scale can place
        v = math.log10(v)
    return -v if mode == "max" else v


def _dominates_or_equals(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x <= y for x, y in zip(a, b))


def hypervolume_curve(trials: pd.DataFrame) -> dict[str, Any]:
    """The hypervolume of the run's front (its objectives: :func:`reports.figure_data.objectives`)
    after each trial that ended without error, in the order trials ended.

    Returns plain JSON-ready values: ``objectives`` (names), ``columns``, ``modes``,
    ``scales``, ``reference`` (in the objectives' own units, see :func:`reference_point`),
    ``reference_note``, ``per_trial``: ``[{"trials": k, "hypervolume": v,
    "trial_seconds": s}, ...]`` and ``final``. ``trial_seconds`` is the trial time
    (``wall_time_s``) of every trial ended so far, failed ones included: they used the
    compute too. A trial missing an objective's value counts as ended but adds no point.
    Where an objective has no reference, ``reference`` and ``final`` are None,
    ``per_trial`` is empty and ``reference_note`` says why.
    """
    obj = objectives(trials)
    out: dict[str, Any] = {
        "objectives": list(obj.names),
        "columns": list(obj.columns),
        "modes": list(obj.modes),
    }
    try:
        refs = [reference_point(trials, c, m) for c, m in zip(obj.columns, obj.modes)]
    except NoReference as e:
        return {**out, "scales": None, "reference": None, "reference_note": f"no hypervolume: {e}",
                "per_trial": [], "final": None}  # fmt: skip
    scales = [s for _, s, _ in refs]
    ref = tuple(_transform(r, m, s) for (r, s, _), m in zip(refs, obj.modes))
    per_trial = _curve(trials, obj, scales, ref)
    return {
        **out,
        "scales": scales,
        "reference": [float(r) for r, _, _ in refs],
        "reference_note": "Reference point: " + "; ".join(n for _, _, n in refs) + ".",
        "per_trial": per_trial,
        "final": per_trial[-1]["hypervolume"] if per_trial else 0.0,
    }


def _curve(
    trials: pd.DataFrame, obj: Objectives, scales: list[str], ref: tuple[float, ...]
) -> list[dict[str, float | int]]:
    """The hypervolume after each healthy trial, in completion order."""
    ok = set(healthy(trials).index)
    front: list[tuple[float, ...]] = []
    volume, seconds, out = 0.0, 0.0, []
    ordered = completion_order(trials)
    walls = ordered["wall_time_s"] if "wall_time_s" in ordered else pd.Series(0.0, ordered.index)
    for idx, row in ordered.iterrows():
        wall = walls.loc[idx]
        seconds += 0.0 if pd.isna(wall) else float(wall)
        if idx not in ok:
            continue
        point = tuple(
            _transform(row.get(c), m, s) for c, m, s in zip(obj.columns, obj.modes, scales)
        )
        # Only a point the front does not already cover changes the volume: recompute then,
        # on the front alone (a few points), not on every trial so far.
        if None not in point and not any(_dominates_or_equals(f, point) for f in front):
            front = [f for f in front if not _dominates_or_equals(point, f)] + [point]
            volume = hypervolume(front, ref)
        out.append({"trials": len(out) + 1, "hypervolume": volume, "trial_seconds": seconds})
    return out


def hypervolume_at(trials: pd.DataFrame, trial_seconds: float) -> float | None:
    """The hypervolume of the trials that ended within the first ``trial_seconds`` of trial
    time (counted as in :func:`hypervolume_curve`); None where there is no reference point."""
    curve = hypervolume_curve(trials)
    if curve["reference"] is None:
        return None
    within = [p["hypervolume"] for p in curve["per_trial"] if p["trial_seconds"] <= trial_seconds]
    return within[-1] if within else 0.0
