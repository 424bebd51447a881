"""``peftsearch export``: a trial's best checkpoint -> files standard tools load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from reports.pareto import rank, ranking
from search.results import TRIALS_FILE
from trainables.trial import CHECKPOINT_FILE, CHECKPOINT_META, split_config


def pick_trial(trials: pd.DataFrame, trial_id: str | None) -> pd.Series:
    """The trial named ``trial_id``, or the best one by the run's ranking metric."""
    if trial_id is not None:
        rows = trials[trials["trial_id"] == trial_id]
        if rows.empty:
            raise ValueError(
                f"--trial {trial_id}: no such trial; trials: {sorted(trials['trial_id'])}"
            )
        return rows.iloc[0]
    ranked = rank(trials)
    if ranked.empty:
        raise ValueError(f"--best: no trial reported {ranking(trials)[0]}")
    return ranked.iloc[0]


def best_checkpoint(run_dir: Path, trial_id: str, metric: str, mode: str) -> Path:
    """The kept checkpoint of a trial at its best round of ``metric``."""
    dirs = [d for d in run_dir.glob(f"*_{trial_id}_*") if d.is_dir()]
    found = [c for d in dirs for c in d.glob("checkpoint_*") if (c / CHECKPOINT_FILE).exists()]
    if not found:
        raise FileNotFoundError(f"trial {trial_id}: no checkpoint under {run_dir}")
    return best_of(found, metric, mode)


def best_of(checkpoints: list[Path], metric: str, mode: str) -> Path:
    """The checkpoint at the best round of ``metric`` in ``mode`` (the earliest, on a tie).

    The one rule for "a trial's best checkpoint": what export takes and what
    the end-of-run pruning keeps.
    """
    sign = 1.0 if mode == "max" else -1.0

    def score(c: Path) -> tuple[float, int]:
        meta = checkpoint_meta(c)
        value = meta.get(metric)
        return (-float("inf") if value is None else sign * value, -meta.get("step", 0))

    return max(checkpoints, key=score)


def checkpoint_meta(checkpoint: Path) -> dict:
    """Step, accuracy and feature-cache flag of a checkpoint ({} if it has none)."""
    path = checkpoint / CHECKPOINT_META
    return json.loads(path.read_text()) if path.exists() else {}


def export_trial(run_dir: str | Path, out: str | Path, trial_id: str | None = None) -> Path:
    """Export the best trial (or ``trial_id``) of a run to ``out``; returns ``out``."""
    import torch

    from search.results import require_run
    from trainables.export import export, rebuild

    require_run(run_dir)  # a clear "not a peftsearch run" before anything else
    run_dir = Path(run_dir)
    trials = pd.read_parquet(run_dir / TRIALS_FILE)
    row = pick_trial(trials, trial_id)
    ckpt = best_checkpoint(run_dir, row["trial_id"], *ranking(trials))
    run = json.loads((run_dir / "run.json").read_text())
    labels = run.get("data", {}).get("label_names")
    if not labels:
        raise ValueError(
            f"{run_dir / 'run.json'} records no label names: re-run the search with this peftsearch"
        )
    flat = json.loads(row["config_json"])
    method, knobs, _ = split_config(flat)
    state = torch.load(ckpt / CHECKPOINT_FILE, weights_only=False)
    meta = checkpoint_meta(ckpt)
    model_name = row["model"]
    model = rebuild(
        model_name, labels, method, knobs, state["trainable"], bool(meta.get("feature_cache"))
    )
    manifest = {"base_model": model_name, "method": method, "knobs": knobs, "label_names": labels}
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    export(model, out, manifest, model_name)
    # config.json is the model's own in a transformers directory: the trial's goes beside it.
    (out / "trial_config.json").write_text(json.dumps(flat, indent=2, default=str))
    metrics = {
        k: (v.item() if hasattr(v, "item") else v)
        for k, v in row.items()
        if k not in ("config_json", "knobs_json")
    }
    metrics["checkpoint"] = meta
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    return out
