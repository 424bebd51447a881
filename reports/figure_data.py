"""The data behind each figure and table, computed apart from any drawing."""

from __future__ import annotations

import json
import math
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

# Keys of a trial's config that are not knobs worth showing.
_HIDDEN = {"method", "eval_batch_size", "seed"}
# Runs written before the ranking metric was recorded ranked by validation accuracy.
DEFAULT_RANKING = ("val_accuracy", "max")
# The cost a run's front is drawn against when the run names none (older runs, one objective).
DEFAULT_COST = "trainable_params"
# Objective names the search accepts for a trials-table column of another name.
OBJECTIVE_ALIASES = {"infer_latency_ms": "infer_ms_b1"}
# Metrics whose names are spelt otherwise in papers (axis titles, table headings).
METRIC_TITLES = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L",
                 "rougeLsum": "ROUGE-Lsum", "bleu": "BLEU", "chrf": "chrF"}  # fmt: skip
# Example generations shown per Pareto-optimal trial (seq2seq runs record a few per round).
EXAMPLES_SHOWN = 3
# What each cost column of the trials table measures, for axis titles and tables.
COST_TITLES = {
    "trainable_params": "trainable parameters",
    "trainable_fraction": "trainable parameters (%)",
    "infer_ms_b1": "inference latency, merged (ms per example, batch 1)",
    "infer_ms_b1_unmerged": "inference latency, unmerged (ms per example, batch 1)",
    "infer_ms_b32": "inference latency, merged (ms per example, batch 32)",
    "infer_ms_b32_unmerged": "inference latency, unmerged (ms per example, batch 32)",
    "infer_peak_mb": "inference peak memory (MiB, batch 32)",
    "artifact_mb": "exported model size (MiB)",
    "train_step_ms": "training step (ms)",
    "train_peak_mb": "training peak memory (MiB)",
}
# The Pareto plot's x axes, in button order: (column, button label, axis type). An axis is
# offered only where its column has values (runs before the costs were measured have none).
PARETO_AXES = (
    ("trainable_params", "trainable parameters", "log"),
    # Drawn in %: fractions span decades (a head alone to the whole model), hence log too.
    ("trainable_fraction", "trainable %", "log"),
    ("infer_ms_b1", "latency (merged)", "linear"),
    ("infer_ms_b1_unmerged", "latency (unmerged)", "linear"),
    ("infer_peak_mb", "inference memory", "linear"),
    ("artifact_mb", "artifact size", "linear"),
)
# The deployment table's cost columns: serving first, then training.
DEPLOYMENT_COLUMNS = (
    "infer_ms_b1", "infer_ms_b32", "infer_ms_b1_unmerged", "infer_ms_b32_unmerged",
    "infer_peak_mb", "artifact_mb", "trainable_params", "train_step_ms", "train_peak_mb",
)  # fmt: skip
# Knob importance needs this many finished trials of a method: below it, a forest fitted to
# a handful of points ranks knobs by noise.
MIN_IMPORTANCE_TRIALS = 5
# fANOVA's forest, smaller than Optuna's default (64 trees, depth 64): the shares move by about
# 0.02 while the importances of a 1,000-trial run take half a second instead of six.
FANOVA_TREES, FANOVA_DEPTH = 16, 8


class Objectives(NamedTuple):
    """A run's objectives: the names the user wrote, the trials-table columns they map to,
    and each one's direction (``max`` / ``min``), in the same order."""

    names: list[str]
    columns: list[str]
    modes: list[str]


def ranking(df: pd.DataFrame) -> tuple[str, str]:
    """The run's ranking metric and its mode (``max`` / ``min``), as the trials table records them.

    The search's first objective: its best round is the one value every
    figure, table, export and confirmation ranks trials by.
    """
    if "metric" in df and "metric_mode" in df and df["metric"].notna().any():
        return str(df["metric"].dropna().iloc[0]), str(df["metric_mode"].dropna().iloc[0])
    return DEFAULT_RANKING


def _json_list(df: pd.DataFrame, column: str) -> list[str] | None:
    """A run-level JSON list column (the same on every row), or None where it is missing."""
    if column not in df or not df[column].notna().any():
        return None
    value = df[column].dropna().iloc[0]
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v) for v in value]
    return None


def objectives(df: pd.DataFrame) -> Objectives:
    """The objectives the run's Pareto front is taken on, as the trials table records them.

    Runs that did not record them (older ones) and single-objective runs get the front
    the report has always drawn: [ranking metric, ``trainable_params``] in modes
    [the metric's mode, ``min``].
    """
    metric, mode = ranking(df)
    names = _json_list(df, "objectives")
    if not names:
        return Objectives([metric, DEFAULT_COST], [metric, DEFAULT_COST], [mode, "min"])
    columns = _json_list(df, "objective_columns")
    if not columns or len(columns) != len(names):
        columns = [OBJECTIVE_ALIASES.get(n, n) for n in names]
    modes = _json_list(df, "objective_modes")
    if not modes or len(modes) != len(names):
        # The first objective is the ranking metric; every other one is a cost.
        modes = [mode if c == metric else "min" for c in columns]
    if len(names) == 1:
        return Objectives([*names, DEFAULT_COST], [*columns, DEFAULT_COST], [*modes, "min"])
    return Objectives(names, columns, modes)


def has_values(df: pd.DataFrame, column: str) -> bool:
    """Whether ``column`` exists and holds a value on some row (old runs lack the cost columns)."""
    return column in df and df[column].notna().any()


def metric_title(name: str) -> str:
    """A metric's name as its paper spells it (``rougeL`` -> ``ROUGE-L``), else as given."""
    return METRIC_TITLES.get(name, name)


def metric_label(metric: str) -> str:
    """A metric's name for axis titles: ``val_loss`` -> ``validation loss``,
    ``val_rougeL`` -> ``validation ROUGE-L``."""
    split, sep, name = metric.partition("_")
    if sep and split in ("val", "test") and name in METRIC_TITLES:
        return f"{'validation' if split == 'val' else 'test'} {metric_title(name)}"
    return metric.replace("val_", "validation ", 1).replace("_", " ")


def new_parameter_share(df: pd.DataFrame) -> float | None:
    """The share (%) of the model's parameters that loading initialised anew and that train under
    every method (a warm-started encoder-decoder's cross-attention), or None where there are
    none: no method of the run can train less."""
    if not has_values(df, "new_params") or not has_values(df, "total_params"):
        return None
    row = df.dropna(subset=["new_params", "total_params"]).iloc[0]
    return (
        100 * float(row["new_params"]) / float(row["total_params"]) if row["new_params"] else None
    )


def example_generations(df: pd.DataFrame) -> list[dict[str, Any]]:
    """The Pareto-optimal trials' example generations (seq2seq runs; empty otherwise): per trial
    its id, method and knobs, and a few validation sources with their reference and the output
    of the trial's best round."""
    if not has_values(df, "examples_json"):
        return []
    held = df.drop_duplicates("trial_id").set_index("trial_id")["examples_json"]
    out = []
    for _, r in objective_front_table(df).iterrows():
        raw = held.get(r["trial_id"])
        if not isinstance(raw, str):
            continue
        examples = [
            {k: str(e.get(k, "")) for k in ("source", "reference", "output")}
            for e in json.loads(raw)[:EXAMPLES_SHOWN]
        ]
        out.append({"trial_id": r["trial_id"], "method": r["method"], "knobs": r["knobs"],
                    "examples": examples})  # fmt: skip
    return out


def rank(df: pd.DataFrame) -> pd.DataFrame:
    """Rows with a value of the ranking metric, best first (the earlier row on a tie)."""
    metric, mode = ranking(df)
    data = df.dropna(subset=[metric])
    return data.sort_values(metric, ascending=mode == "min", kind="stable")


def pareto_front(
    df: pd.DataFrame,
    x: str = "trainable_params",
    y: str | None = None,
    x_better: str = "min",
    y_better: str | None = None,
) -> pd.DataFrame:
    """The rows no other row beats on both ``x`` and ``y``, sorted by ``x``.

    ``y`` defaults to the run's ranking metric, in its mode (:func:`ranking`).
    A row is dominated when another is at least as good on both objectives
    and strictly better on one. Rows missing either value are ignored; of
    exact duplicates, the first is kept.
    """
    if y is None:
        y, y_better = ranking(df)
    data = df.dropna(subset=[x, y])
    if data.empty:
        return data
    sx = 1 if x_better == "min" else -1
    sy = 1 if y_better == "min" else -1
    # Sort by x (best first), ties broken by y (best first); then one sweep
    # keeps each row that improves on the best y seen so far.
    order = data.assign(_x=sx * data[x], _y=sy * data[y]).sort_values(["_x", "_y"], kind="stable")
    keep, best_y = [], float("inf")
    for idx, yv in zip(order.index, order["_y"]):
        if yv < best_y:
            keep.append(idx)
            best_y = yv
    return data.loc[keep].sort_values(x, ascending=x_better == "min")


def pareto_front_nd(df: pd.DataFrame, columns: list[str], modes: list[str]) -> pd.DataFrame:
    """The rows no other row beats on all of ``columns`` (each in its mode, ``max``/``min``).

    A row is dominated when another is at least as good on every column and
    strictly better on one. Rows missing any value are ignored; of exact
    duplicates, the first is kept. Sorted by the second column, then the
    others, each best first (the first cost, cheapest first, on a
    [metric, costs...] list); for two columns, the same rows as
    :func:`pareto_front`.
    """
    data = df.dropna(subset=list(columns))
    if data.empty:
        return data
    signs = [1.0 if m == "min" else -1.0 for m in modes]
    # Every column turned to "lower is better": one comparison rule for all.
    vals = np.column_stack([s * data[c].astype(float).to_numpy() for c, s in zip(columns, signs)])
    keep = []
    for i, row in enumerate(vals):
        no_worse = np.all(vals <= row, axis=1)
        dominated = np.any(no_worse & np.any(vals < row, axis=1))
        duplicate = np.any(np.all(vals[:i] == row, axis=1))
        if not dominated and not duplicate:
            keep.append(i)
    front = data.iloc[keep]
    order = [*columns[1:], columns[0]]
    return front.sort_values(
        order, ascending=[modes[columns.index(c)] == "min" for c in order], kind="stable"
    )


def knob_summary(config_json: str | None) -> str:
    """``lora_rank=8, learning_rate=0.003``: a trial's sampled settings in one line."""
    if not config_json:
        return ""
    config: dict[str, Any] = json.loads(config_json)
    parts = []
    for k, v in sorted(config.items()):
        if k in _HIDDEN or v is None:
            continue
        parts.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
    return ", ".join(parts)


def best_per_method(df: pd.DataFrame) -> pd.DataFrame:
    """The best trial of each method by the ranking metric, best method first."""
    ranked = rank(df)
    return ranked.drop_duplicates("method", keep="first")


def trial_counts(trials: pd.DataFrame) -> dict[str, int]:
    """How many trials ran, finished, were stopped early by the scheduler, and errored."""
    stopped = trials["stopped_early"].astype(bool)
    return {
        "trials": len(trials),
        "finished": int(((trials["status"] == "TERMINATED") & ~stopped).sum()),
        "stopped": int(stopped.sum()),
        "errored": int((trials["status"] == "ERROR").sum()),
    }


def method_summary(trials: pd.DataFrame) -> pd.DataFrame:
    """Per method: trials, stopped early, errored, the best value of the ranking metric,
    fewest parameters; best method first."""
    metric, mode = ranking(trials)
    by = trials.groupby("method")
    best = by[metric].max() if mode == "max" else by[metric].min()
    return pd.DataFrame(
        {
            "trials": by.size(),
            "stopped_early": by["stopped_early"].sum(),
            "errored": by["status"].apply(lambda s: int((s == "ERROR").sum())),
            f"best_{metric}": best.round(4),
            "trainable_params": by["trainable_params"].min(),
        }
    ).sort_values(f"best_{metric}", ascending=mode == "min")


def healthy(df: pd.DataFrame) -> pd.DataFrame:
    """Trials that did not fail: a failed trial's accuracy is no candidate for the front."""
    return df[df["status"] != "ERROR"] if "status" in df else df


def pareto_table(df: pd.DataFrame) -> pd.DataFrame:
    """The Pareto-optimal trials (failed ones aside) as a table for the terminal and the report."""
    front = pareto_front(healthy(df))
    metric, _ = ranking(df)
    return pd.DataFrame(
        {
            "trial_id": front["trial_id"],
            "method": front["method"],
            "knobs": front["knobs_json"].map(knob_summary),
            "trainable_params": front["trainable_params"].astype("int64"),
            "trainable_%": (100 * front["trainable_fraction"]).round(3),
            metric: front[metric].round(4),
        }
    ).reset_index(drop=True)


def objective_front_table(df: pd.DataFrame) -> pd.DataFrame:
    """The trials (failed ones aside) Pareto-optimal on the run's objectives (:func:`objectives`),
    as a table: with two or more costs, the front on all of them at once."""
    obj = objectives(df)
    present = all(c in df for c in obj.columns)
    front = pareto_front_nd(healthy(df), obj.columns, obj.modes) if present else df.iloc[:0]
    metric, _ = ranking(df)
    table = pd.DataFrame(
        {
            "trial_id": front["trial_id"],
            "method": front["method"],
            "knobs": front["knobs_json"].map(knob_summary),
            "trainable_params": front["trainable_params"].astype("Int64"),
            "trainable_%": (100 * front["trainable_fraction"]).round(3),
        }
    )
    for col in obj.columns:
        if col not in table and col not in (metric, "trainable_fraction"):
            table[col] = front[col].astype(float).round(4)
    table[metric] = front[metric].round(4)
    return table.reset_index(drop=True)


def pareto_axes(df: pd.DataFrame) -> list[dict[str, Any]]:
    """The Pareto plot's x axes that ``df`` has values for, the run's first cost first-listed
    as ``default``: each with its column, button label, title and axis type."""
    obj = objectives(df)
    costs = [c for c in obj.columns[1:] if c in df]
    known = {col for col, _, _ in PARETO_AXES}
    # A cost objective the buttons do not offer (e.g. batch-32 latency) gets a button too.
    extra = [(c, COST_TITLES.get(c, c), "linear") for c in costs if c not in known]
    axes = [
        {"column": col, "label": label, "title": COST_TITLES.get(col, col), "type": kind}
        for col, label, kind in (*PARETO_AXES, *extra)
        if has_values(df, col)
    ]
    columns = [a["column"] for a in axes]
    default = next((c for c in costs if c in columns), DEFAULT_COST)
    for a in axes:
        a["default"] = a["column"] == default
    return axes


def scatter_data(df: pd.DataFrame) -> dict[str, Any]:
    """Points per method (x = trainable params, y = the best round of the ranking metric)
    and the frontier; ``axes``: the same points and their front on every x axis the run has
    values for (:func:`pareto_axes`), x in the axis's units (the fraction in %)."""
    metric, mode = ranking(df)
    data = df.dropna(subset=["trainable_params", metric])
    axes = pareto_axes(data)
    costs = [c for c in COST_TITLES if c in data]
    methods = {}
    for method, group in data.groupby("method", sort=True):
        methods[method] = {
            "x": group["trainable_params"].astype(float).tolist(),
            "y": group[metric].astype(float).tolist(),
            "fraction": group["trainable_fraction"].astype(float).tolist(),
            "stopped": group["stopped_early"].astype(bool).tolist(),
            "trial_id": group["trial_id"].tolist(),
            "knobs": group["knobs_json"].map(knob_summary).tolist(),
            "costs": {c: _floats(group[c]) for c in costs},
        }
    front = pareto_front(healthy(data))
    for axis in axes:
        col = axis["column"]
        scale = 100.0 if col == "trainable_fraction" else 1.0
        axis["methods"] = {
            m: [None if v is None else scale * v for v in _floats(g[col])]
            for m, g in data.groupby("method", sort=True)
        }
        f = pareto_front(healthy(data), x=col, y=metric, x_better="min", y_better=mode)
        axis["frontier"] = {
            "x": [scale * v for v in f[col].astype(float)],
            "y": f[metric].astype(float).tolist(),
            "trial_id": f["trial_id"].tolist(),
        }
    return {
        "metric": metric,
        "methods": methods,
        "frontier": {
            "x": front["trainable_params"].astype(float).tolist(),
            "y": front[metric].astype(float).tolist(),
            "fraction": front["trainable_fraction"].astype(float).tolist(),
            "trial_id": front["trial_id"].tolist(),
        },
        "axes": axes,
        "default_axis": next((a["column"] for a in axes if a["default"]), DEFAULT_COST),
    }


def _floats(values: pd.Series) -> list[float | None]:
    """Plain floats, None where missing: what plotly and JSON take."""
    return [None if pd.isna(v) else float(v) for v in values]


def deployment_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per method, its best trial (:func:`best_per_method`, failed ones aside) and what it costs
    to serve and to train: latency per example (batch 1 and 32, merged and unmerged), peak
    inference memory, exported size, trainable parameters, training step time and memory.

    Only the cost columns the run measured are shown (older runs: trainable parameters).
    """
    best = best_per_method(healthy(df))
    metric, _ = ranking(df)
    table = pd.DataFrame(
        {"method": best["method"], "trial_id": best["trial_id"], metric: best[metric].round(4)}
    )
    for col in DEPLOYMENT_COLUMNS:
        if has_values(best, col):
            values = best[col].astype(float)
            table[col] = values.astype("Int64") if col == "trainable_params" else values.round(3)
    return table.reset_index(drop=True)


def deployment_measured(df: pd.DataFrame) -> bool:
    """Whether the run measured serving costs (runs before they were measured did not)."""
    return any(has_values(df, c) for c in DEPLOYMENT_COLUMNS if c != "trainable_params")


def completion_order(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials in the order they ended: by ``ended_at`` where recorded (rows without it
    after the others), else in row order (the order Tune listed them)."""
    if has_values(trials, "ended_at"):
        return trials.sort_values("ended_at", kind="stable", na_position="last")
    return trials


def curve_data(curves: pd.DataFrame, trials: pd.DataFrame) -> list[dict[str, Any]]:
    """One line per trial: the ranking metric and the loss by epoch, marked if early-stopped."""
    stopped = dict(zip(trials["trial_id"], trials["stopped_early"]))
    metric = ranking(trials)[0]
    out = []
    for trial_id, group in curves.sort_values(["trial_id", "iteration"]).groupby(
        "trial_id", sort=True
    ):
        out.append(
            {
                "trial_id": trial_id,
                "method": group["method"].iloc[0],
                "epoch": group["epoch"].tolist(),
                "metric": metric,
                "values": group[metric].tolist() if metric in group else [],
                "val_loss": group["val_loss"].tolist(),
                "stopped": bool(stopped.get(trial_id, False)),
            }
        )
    return out


def confirm_summary(confirmed: pd.DataFrame) -> pd.DataFrame:
    """The test value of the ranking metric (and accuracy), mean ± std per confirmed
    configuration, beside its validation numbers."""
    ok = confirmed[confirmed["status"] == "ok"] if len(confirmed) else confirmed
    if ok.empty:
        return pd.DataFrame()
    # Confirm tables written before the ranking metric's test value was recorded: accuracy.
    test = "test_metric" if "test_metric" in ok and ok["test_metric"].notna().any() else None
    numeric = {c: pd.to_numeric(ok[c], errors="coerce") for c in ("test_accuracy",) if c in ok}
    ok = ok.assign(**numeric, test_metric=pd.to_numeric(ok[test or "test_accuracy"]))
    g = ok.groupby(["trial_id", "method"], sort=False)
    out = g.agg(
        seeds=("seed", "count"),
        test_metric_mean=("test_metric", "mean"),
        test_metric_std=("test_metric", "std"),
        test_accuracy_mean=("test_accuracy", "mean"),
        test_accuracy_std=("test_accuracy", "std"),
        val_metric_search=("val_metric_search", "first"),
        val_metric_retrained=("best_val_metric", "mean"),
        trainable_params=("trainable_params", "first"),
        total_params=("total_params", "first"),
        knobs_json=("knobs_json", "first"),
    ).reset_index()
    for col in ("test_metric_std", "test_accuracy_std"):
        out[col] = out[col].fillna(0.0)
    metric = str(ok["metric"].dropna().iloc[0]) if "metric" in ok else DEFAULT_RANKING[0]
    out.attrs["metric"] = metric
    return out.sort_values("trainable_params").reset_index(drop=True)


def per_label_data(confirmed: pd.DataFrame, trial_ids: list[str]) -> list[dict[str, Any]]:
    """For each confirmed configuration in ``trial_ids`` (the Pareto-optimal ones) that has
    per-label figures: precision, recall and F1 per label (mean over seeds) and the confusion
    matrix (summed over seeds; rows: true label, columns: predicted)."""
    if confirmed is None or "test_per_class_json" not in confirmed:
        return []
    ok = confirmed[(confirmed["status"] == "ok") & confirmed["test_per_class_json"].notna()]
    out = []
    for trial_id in trial_ids:
        runs = ok[ok["trial_id"] == trial_id]
        if runs.empty:
            continue
        per = [json.loads(t) for t in runs["test_per_class_json"]]
        labels = json.loads(runs["label_names"].iloc[0]) if "label_names" in runs else None
        n = len(per[0]["f1"])
        labels = labels if labels and len(labels) == n else [str(i) for i in range(n)]
        mats = [json.loads(t) for t in runs["test_confusion_json"].dropna()]
        out.append(
            {
                "trial_id": trial_id,
                "method": str(runs["method"].iloc[0]),
                "seeds": len(runs),
                "labels": labels,
                **{
                    k: [sum(p[k][i] for p in per) / len(per) for i in range(n)]
                    for k in ("precision", "recall", "f1")
                },
                "support": per[0]["support"],
                "confusion": [[sum(m[r][c] for m in mats) for c in range(n)] for r in range(n)],
            }
        )
    return out


def compute_data(trials: pd.DataFrame) -> dict[str, Any]:
    """Trial time per method, and what early stopping saved.

    A trial stopped after ``iterations`` of ``planned_iterations`` rounds
    would have taken about ``wall_time_s * planned / iterations`` to finish;
    the difference is the time early stopping saved.
    """
    t = trials.dropna(subset=["wall_time_s"])
    per_method = {}
    for method, g in t.groupby("method", sort=True):
        stopped = g[g["stopped_early"]]
        per_method[method] = {
            "finished_s": float(g.loc[~g["stopped_early"], "wall_time_s"].sum()),
            "stopped_s": float(stopped["wall_time_s"].sum()),
            "trials": len(g),
            "stopped": len(stopped),
        }
    stopped = t[t["stopped_early"] & (t["iterations"] > 0)]
    full = (stopped["wall_time_s"] * stopped["planned_iterations"] / stopped["iterations"]).sum()
    used = float(t["wall_time_s"].sum())
    saved = float(full - stopped["wall_time_s"].sum())
    return {
        "per_method": per_method,
        "trial_time_s": used,
        "saved_s": saved,
        # The share of the compute that running every trial to the end would have needed.
        "saved_fraction": saved / (used + saved) if used + saved > 0 else 0.0,
    }


def knob_effects(trials: pd.DataFrame, knobs: list[str]) -> dict[str, dict[str, dict]]:
    """For each knob that varies: per method, (value, best round of the ranking metric) points."""
    out: dict[str, dict[str, dict]] = {}
    metric, _ = ranking(trials)
    data = healthy(trials).dropna(subset=[metric])
    for knob in knobs:
        if knob not in data or data[knob].dropna().nunique() < 2:
            continue
        per = {}
        for method, g in data.dropna(subset=[knob]).groupby("method", sort=True):
            per[method] = {
                "x": g[knob].tolist(),
                "y": g[metric].astype(float).tolist(),
                "trial_id": g["trial_id"].tolist(),
            }
        out[knob] = per
    return out


def run_metadata(trials: pd.DataFrame) -> dict[str, Any]:
    """Model, data, split sizes, seed, versions, resources, nodes and wall time of a run."""
    if trials.empty:
        return {}
    first = trials.iloc[0]
    keys = ("run_name", "model", "dataset", "label_names", "n_train", "n_validation", "n_test",
            "max_length", "seed", "objectives", "resources", "run_wall_time_s",
            "git_commit")  # fmt: skip
    meta = {k: first[k] for k in keys if k in trials and pd.notna(first[k])}
    for col in ("node_id", "node"):  # node ids tell apart nodes that share a host
        if col in trials and trials[col].notna().any():
            meta["nodes"] = int(trials[col].dropna().nunique())
            break
    meta["trials"] = len(trials)
    meta["trial_time_s"] = round(float(trials["wall_time_s"].fillna(0).sum()), 1)
    if "versions" in trials:
        meta["versions"] = ", ".join(
            f"{k} {v}" for k, v in json.loads(first["versions"]).items() if v
        )
    return meta


def knob_importance(trials: pd.DataFrame) -> dict[str, Any]:
    """How much each searched knob mattered to the ranking metric, per method (Optuna).

    Per method, an in-memory Optuna study is built from its trials that ended
    (failed ones aside; stopped-early ones at their best round) with the
    knobs they sampled (``knobs_json``) and their value of the ranking metric,
    then handed to fANOVA (``FanovaImportanceEvaluator``, seeded; it needs
    scikit-learn) or, without scikit-learn, PED-ANOVA. Knobs that took one
    value, or that some of the method's trials lack, are left out.

    Returns ``{"evaluator", "metric", "needed", "methods": {method: entry}}``;
    an entry is ``{"importances": {knob: share}, "trials": n}`` (shares sum
    to 1, largest first), ``{"too_few": n, "needed": k}`` below
    :data:`MIN_IMPORTANCE_TRIALS`, ``{"no_knob_varies": True, "trials": n}``,
    or ``{"error": text}`` where the evaluator failed.
    """
    metric, mode = ranking(trials)
    evaluator_name = _importance_evaluator_name()
    out: dict[str, Any] = {
        "evaluator": evaluator_name,
        "metric": metric,
        "needed": MIN_IMPORTANCE_TRIALS,
        "methods": {},
    }
    if metric not in trials or "knobs_json" not in trials:
        return out
    ended = healthy(trials)
    if "status" in ended:
        ended = ended[ended["status"] == "TERMINATED"]
    ended = ended.dropna(subset=[metric, "knobs_json"])
    log_knobs = set(trials.attrs.get("log_knobs", ()))
    for method, group in ended.groupby("method", sort=True):
        n = len(group)
        if n < MIN_IMPORTANCE_TRIALS:
            out["methods"][method] = {"too_few": n, "needed": MIN_IMPORTANCE_TRIALS}
            continue
        knobs = [json.loads(t) for t in group["knobs_json"]]
        values = group[metric].astype(float).tolist()
        try:
            entry = _method_importance(knobs, values, mode, log_knobs, evaluator_name)
        except Exception as e:  # a report never fails on one method's importance
            entry = {"error": f"{type(e).__name__}: {e}"}
        out["methods"][method] = {**entry, "trials": n} if "error" not in entry else entry
    return out


def _importance_evaluator_name() -> str:
    """fANOVA where scikit-learn imports (its random forest), else PED-ANOVA."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return "PED-ANOVA"
    return "fANOVA"


def _method_importance(
    knobs: list[dict[str, Any]],
    values: list[float],
    mode: str,
    log_knobs: set[str],
    evaluator_name: str,
) -> dict[str, Any]:
    """One method's knob importances: ``{"importances": {...}}`` or ``{"no_knob_varies": True}``."""
    import warnings

    import optuna

    distributions = _knob_distributions(knobs, log_knobs)
    if not distributions:
        return {"no_knob_varies": True}
    if len(distributions) == 1:
        # One knob varied: it explains all the knobs explain (what any evaluator returns).
        return {"importances": {next(iter(distributions)): 1.0}}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" line per method
    try:
        with warnings.catch_warnings():
            # Experimental-feature and "too few trials" notices: the report states its own limits.
            warnings.simplefilter("ignore")
            direction = "maximize" if mode == "max" else "minimize"
            study = optuna.create_study(direction=direction)
            for params, value in zip(knobs, values):
                study.add_trial(
                    optuna.trial.create_trial(
                        params={k: _knob_value(params[k]) for k in distributions},
                        distributions=distributions,
                        value=value,
                    )
                )
            evaluator = (
                optuna.importance.FanovaImportanceEvaluator(
                    n_trees=FANOVA_TREES, max_depth=FANOVA_DEPTH, seed=0
                )
                if evaluator_name == "fANOVA"
                else optuna.importance.PedAnovaImportanceEvaluator()
            )
            shares = optuna.importance.get_param_importances(
                study, evaluator=evaluator, params=list(distributions)
            )
    finally:
        optuna.logging.set_verbosity(verbosity)
    ordered = sorted(shares.items(), key=lambda kv: (-kv[1], kv[0]))
    return {"importances": {k: float(v) for k, v in ordered}}


def _knob_value(value: Any) -> Any:
    """A knob's value as an Optuna parameter: lists and dicts (e.g. target modules) as text."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def _knob_distributions(knobs: list[dict[str, Any]], log_knobs: set[str]) -> dict[str, Any]:
    """An Optuna distribution per knob that every trial sampled and that took two values or more:
    numbers on their observed range (log where the search sampled them so), the rest as
    categories."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    names = sorted(set.intersection(*(set(k) for k in knobs))) if knobs else []
    out: dict[str, Any] = {}
    for name in names:
        values = [_knob_value(k[name]) for k in knobs]
        if any(v is None for v in values):
            continue  # not sampled for every trial: no common search space to compare on
        distinct = sorted(set(values), key=lambda v: (type(v).__name__, v))
        if len(distinct) < 2:
            continue
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric and all(isinstance(v, int) for v in values):
            lo, hi = min(values), max(values)
            out[name] = IntDistribution(lo, hi, log=name in log_knobs and lo > 0)
        elif numeric and all(math.isfinite(v) for v in values):
            lo, hi = float(min(values)), float(max(values))
            out[name] = FloatDistribution(lo, hi, log=name in log_knobs and lo > 0)
        else:
            out[name] = CategoricalDistribution(distinct)
    return out
