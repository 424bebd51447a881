"""``peftsearch export``: a trial's best checkpoint -> files standard tools load."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from reports.figure_data import rank, ranking
from search.results import require_run
from search.rundir import RUN_FILE, TRIALS_FILE, RunDir
from trainables import checkpoint
from trainables.metrics import CLASSIFICATION, SEQ2SEQ
from trainables.trial import split_config


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


def best_checkpoint(run: RunDir | str | Path, trial_id: str, metric: str, mode: str) -> Path | str:
    """The kept checkpoint of a trial at its best round of ``metric`` (a local Path, or its path
    in the run's filesystem)."""
    run = run if isinstance(run, RunDir) else RunDir.at(run)
    found = [
        c for c in run.checkpoint_dirs(trial_id) if run.exists(run.inside(c, checkpoint.STATE_FILE))
    ]
    if not found:
        raise FileNotFoundError(f"trial {trial_id}: no checkpoint under {run.uri}")
    best = checkpoint.best_of(found, metric, mode, lambda c: checkpoint_meta(run, c))
    return Path(best) if run.is_local else best


def checkpoint_meta(run: RunDir, folder: str) -> dict:
    """A checkpoint's meta, read through the run's filesystem (a bucket too); {} if none."""
    return run.read_json(run.inside(folder, checkpoint.META_FILE), {})


def export_trial(
    run_dir: str | Path, out: str | Path, trial_id: str | None = None, force: bool = False
) -> Path:
    """Export the best trial (or ``trial_id``) of a run to ``out``; returns ``out``.

    ``out`` must be new or empty: export never deletes what it did not write.
    With ``force`` it may hold a previous export, which is replaced: the files
    that export listed in its manifest are removed, and only if ``out`` holds
    nothing else. ``--best`` (no ``trial_id``) ranks only the trials that did
    not fail. The checkpoint is loaded as tensors only (never unpickled).
    """
    from trainables.export import MANIFEST, export, rebuild

    run = require_run(run_dir)  # a clear "not a peftsearch run" before anything else
    trials = run.read_parquet(TRIALS_FILE)
    if trial_id is None:
        # A failed trial is no candidate, however well it did before it failed.
        trials = trials[trials["status"] != "ERROR"]
        if trials.empty:
            raise ValueError(f"--best: every trial of {run_dir} failed")
    row = pick_trial(trials, trial_id)
    out = Path(out)
    previous = _previous_export(out, force)  # before any checkpoint is loaded or file written
    ckpt = best_checkpoint(run, row["trial_id"], *ranking(trials))
    data = run.read_record().get("data", {})
    task, labels = data.get("task") or CLASSIFICATION, data.get("label_names")
    if not labels and task != SEQ2SEQ:  # a seq2seq task has none
        raise ValueError(
            f"{run.name_of(RUN_FILE)} records no label names: re-run the search with this peftsearch"
        )
    flat = json.loads(row["config_json"])
    method, knobs, _ = split_config(flat)
    with run.local_copy(str(ckpt)) as local:
        state = checkpoint.load(local)  # tensors only: a planted pickle raises, never runs
        meta = checkpoint.meta(local)
    model_name = row["model"]
    model = rebuild(
        model_name, labels or [], method, knobs, state["trainable"],
        bool(meta.get("feature_cache")), task,
    )  # fmt: skip
    manifest = {"base_model": model_name, "method": method, "knobs": knobs,
                "label_names": labels or [], "task": task}  # fmt: skip
    if task == SEQ2SEQ:  # what a source needs in front (T5's "summarize: "), for the README
        manifest["source_prefix"] = data.get("source_prefix")
    for path in previous:
        path.unlink()
    folders = {out / a for p in previous for a in p.relative_to(out).parents if a.parts}
    for folder in sorted(folders, key=lambda f: -len(f.parts)):
        folder.rmdir()  # the previous export's own subfolders, now empty
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
    # The manifest lists every file of the export: what --force may remove next time.
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    manifest_file = out / MANIFEST
    recorded = {**json.loads(manifest_file.read_text()), "files": written}
    manifest_file.write_text(json.dumps(recorded, indent=2, default=str))
    return out


def _previous_export(out: Path, force: bool) -> list[Path]:
    """The files export may remove from ``out`` before writing there.

    Nothing when ``out`` is new or empty; with ``force``, the files of a
    previous export (listed in its manifest) when ``out`` holds nothing else.
    Anything else is refused (``ValueError``: exit 2), with nothing changed.
    """
    from trainables.export import MANIFEST

    if not out.exists():
        return []
    never = "export writes into a new or empty folder and never deletes what it did not write"
    if not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder: {never}")
    if not any(out.iterdir()):
        return []
    listed = _listed_files(out)
    if not force:
        hint = "; it holds a previous export: add --force to replace it" if listed else ""
        raise ValueError(f"{out} is not empty: {never}{hint}")
    if listed is None:
        raise ValueError(
            f"--force: {out} is not an export that lists its files ({MANIFEST}), so it is "
            f"left alone: {never}"
        )
    keep = set(listed) | {str(p) for f in listed for p in Path(f).parents}
    files, unknown = [], []
    for path in out.rglob("*"):  # symbolic links are listed, never followed
        rel = str(path.relative_to(out))
        if rel not in keep or path.is_symlink():
            unknown.append(rel)
        elif path.is_file():
            files.append(path)
    if unknown:
        raise ValueError(
            f"--force: {out} holds files the previous export did not write "
            f"({', '.join(sorted(unknown)[:5])}): move them or export elsewhere; {never}"
        )
    return files


def _listed_files(out: Path) -> list[str] | None:
    """The files a previous export in ``out`` recorded in its manifest, or None."""
    from trainables.export import MANIFEST

    try:
        files = json.loads((out / MANIFEST).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return None
    ok = isinstance(files, list) and all(isinstance(f, str) for f in files)
    return files if ok else None
