"""The data behind each figure and table, computed apart from any drawing."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

# Keys of a trial's config that are not knobs worth showing.
_HIDDEN = {"method", "eval_batch_size", "seed"}
# Runs written before the ranking metric was recorded ranked by validation accuracy.
DEFAULT_RANKING = ("val_accuracy", "max")


def ranking(df: pd.DataFrame) -> tuple[str, str]:
    """The run's ranking metric and its mode (``max`` / ``min``), as the trials table records them.

    The search's first objective: its best round is the one value every
    figure, table, export and confirmation ranks trials by.
    """
    if "metric" in df and "metric_mode" in df and df["metric"].notna().any():
        return str(df["metric"].dropna().iloc[0]), str(df["metric_mode"].dropna().iloc[0])
    return DEFAULT_RANKING


def metric_label(metric: str) -> str:
    """A metric's name for axis titles: ``val_loss`` -> ``validation loss``."""
    return metric.replace("val_", "validation ", 1).replace("_", " ")


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


def scatter_data(df: pd.DataFrame) -> dict[str, Any]:
    """Points per method (x = trainable params, y = the best round of the ranking metric)
    and the frontier."""
    metric, _ = ranking(df)
    data = df.dropna(subset=["trainable_params", metric])
    methods = {}
    for method, group in data.groupby("method", sort=True):
        methods[method] = {
            "x": group["trainable_params"].astype(float).tolist(),
            "y": group[metric].astype(float).tolist(),
            "fraction": group["trainable_fraction"].astype(float).tolist(),
            "stopped": group["stopped_early"].astype(bool).tolist(),
            "trial_id": group["trial_id"].tolist(),
            "knobs": group["knobs_json"].map(knob_summary).tolist(),
        }
    front = pareto_front(healthy(data))
    return {
        "metric": metric,
        "methods": methods,
        "frontier": {
            "x": front["trainable_params"].astype(float).tolist(),
            "y": front[metric].astype(float).tolist(),
            "fraction": front["trainable_fraction"].astype(float).tolist(),
            "trial_id": front["trial_id"].tolist(),
        },
    }


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
            "max_length", "seed", "resources", "run_wall_time_s", "git_commit")  # fmt: skip
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
