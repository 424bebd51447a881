"""Tune's experiment folder -> the trials and curves tables (the contracts).

The trials table: one row per trial; the curves table: one row per
reported evaluation. Both are rebuilt from the whole experiment folder, so a
resumed run lists every trial exactly once. Writes are atomic.
"""

from __future__ import annotations

import json
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from reports.figure_data import DEFAULT_RANKING
from search.rundir import CONFIRM_FILE, CURVES_FILE, FIGURE_FILE, REPORT_FILE, TRIALS_FILE, RunDir
from search.space import COST
from trainables.costs import COSTS
from trainables.costs import column as cost_column
from trainables.loop import LOG_SHARED_KNOBS, SHARED_COLUMNS
from trainables.methods import METHODS
from trainables.trial import flat_config

CURVE_COLUMNS = ["train_loss", "val_loss", "val_accuracy", "epoch", "step", "time_s"]
# A seq2seq trial's example generations of a round (JSON text; trainables.loop.evaluate_seq2seq).
EXAMPLES = "val_examples"
# Columns of every validation metric a trial reports: the best round (in its mode), the last.
BASE_METRICS = (("val_accuracy", "max"), ("val_loss", "min"))
KNOB_COLUMNS = sorted({k.name for m in METHODS.values() for k in m.knobs})
# Knobs on a log scale: recorded in the trials table's metadata (DataFrame.attrs), which the
# report reads (reports/ does not import trainables).
LOG_KNOBS = sorted({*LOG_SHARED_KNOBS, *(k for m in METHODS.values() for k in m.log_knobs())})
VERSION_PACKAGES = ("peftsearch", "torch", "transformers", "peft", "ray", "optuna")
# What each trial costs to serve and to train (trainables.costs), measured: its last result's.
COST_COLUMNS = [c for c in COSTS if c != "trainable_params"]


@dataclass
class RunResults:
    """What a run produced: the two tables and where they are."""

    run: RunDir
    trials: pd.DataFrame
    curves: pd.DataFrame
    report: Path | str | None = None
    complete: bool = True  # False: interrupted; the same command resumes it
    disk: dict[str, Any] = field(default_factory=dict)  # checkpoint disk use, once finished

    @property
    def run_dir(self) -> Path | str:
        """The run folder: a local path, or the storage URI."""
        return self.run.local if self.run.is_local else self.run.uri


def versions() -> dict[str, str]:
    """Package versions, recorded with every result."""
    out = {"python": platform.python_version()}
    for pkg in VERSION_PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def git_commit() -> str | None:
    """The peftsearch checkout's commit, where there is one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _error_text(trial) -> str | None:
    if trial.status != "ERROR":
        return None
    try:
        text = Path(trial.error_file).read_text() if trial.error_file else ""
    except OSError:
        text = ""
    # Tune's error file is a traceback; its last lines name the exception.
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return "\n".join(lines[-3:]) if lines else "trial failed (no error file)"


def _trial_config(trial) -> dict[str, Any]:
    """The trial's flat config: ``<method>.<key>`` names stripped to ``<key>``."""
    return flat_config(trial.config or {})


def trial_rows(run: RunDir, space=None, live_trials=None) -> tuple[list[dict], list[dict]]:
    """(trial rows, curve rows) from a Tune experiment folder.

    ``live_trials``: the driver's own Trial objects after ``fit()``, when it
    has them. They win over the folder's saved state, which Ray 2.60 can
    leave stale: with ``CheckpointConfig(num_to_keep=...)``, a trial whose
    process was killed is saved as RUNNING although Tune recorded its error.
    ``knobs_json`` holds the values the searcher sampled (with ``space``
    known), ``config_json`` the whole trial config.
    """
    from ray.tune import ExperimentAnalysis

    metric, mode = (space.metric, space.mode) if space is not None else DEFAULT_RANKING
    path, fs = run.tune_path
    analysis = ExperimentAnalysis(path, storage_filesystem=fs, trials=live_trials)
    frames = analysis.trial_dataframes
    trials, curves = [], []
    for trial in analysis.trials:
        config = _trial_config(trial)
        df = frames.get(trial.trial_id)
        if df is not None and "training_iteration" in df:
            # A trial retried from a checkpoint may report a round twice: keep the later one.
            df = df.drop_duplicates("training_iteration", keep="last").reset_index(drop=True)
        has_rows = df is not None and len(df) > 0 and metric in df
        last = trial.last_result or {}
        iterations = int(df["training_iteration"].max()) if has_rows else 0
        planned = last.get("planned_iterations")
        # The best round of the ranking metric (the earliest, on a tie): what every consumer
        # ranks this trial by (Optuna, the front, the report, export, confirm).
        best = (df[metric].idxmax() if mode == "max" else df[metric].idxmin()) if has_rows else None
        row = {
            "trial_id": trial.trial_id,
            "method": config["method"],
            "status": trial.status,
            "trainable_params": last.get("trainable_params"),
            "total_params": last.get("total_params"),
            "trainable_fraction": last.get("trainable_fraction"),
            "new_params": last.get("new_params"),  # loading's new parameters: train under all
            **metric_values(df if has_rows else None, metric, mode),
            "best_iteration": int(df["training_iteration"][best]) if has_rows else None,
            "iterations": iterations,
            "planned_iterations": planned,
            # Terminated before its planned evaluations without an error: the scheduler stopped it.
            "stopped_early": bool(
                trial.status == "TERMINATED" and planned is not None and iterations < planned
            ),
            "wall_time_s": last.get("time_total_s"),
            "ended_at": last.get("timestamp"),  # when its last result came: completion order
            **{c: last.get(c) for c in COST_COLUMNS},
            "costs_reused": last.get("costs_reused"),  # measured by another trial of its structure
            "feature_cache": last.get("feature_cache"),
            "layer_cache_k": last.get("layer_cache_k"),
            "precision_used": last.get("precision_used"),  # what precision: auto chose
            "data_splits": last.get("data_splits"),  # what the trial was given: never test
            "error": _error_text(trial),
            "num_failures": int(getattr(trial, "num_failures", 0) or 0),
            "node": last.get("hostname"),
            "node_id": last.get("node_id"),
            "gpu_ids": last.get("gpu_ids"),
            "config_json": json.dumps(config, sort_keys=True, default=str),
            "knobs_json": json.dumps(_sampled(config, space), sort_keys=True, default=str),
            "examples_json": best_examples(df, best) if has_rows else None,
        }
        row.update({k: config.get(k) for k in SHARED_COLUMNS})
        row.update({k: knob_cell(k, config.get(k)) for k in KNOB_COLUMNS})
        trials.append(row)
        if has_rows:
            columns = curve_columns(metric, reported_figures(df))
            for _, r in df.iterrows():
                curves.append(
                    {
                        "trial_id": trial.trial_id,
                        "method": config["method"],
                        "iteration": int(r["training_iteration"]),
                        **{
                            c: (float(r[c]) if c in r and pd.notna(r[c]) else None) for c in columns
                        },
                    }
                )
    return trials, curves


def reported_figures(df: pd.DataFrame) -> list[str]:
    """Every numeric validation figure in a trial's results (``val_rouge1``, ..., ``val_chrf``
    for seq2seq), not the example generations."""
    return [
        c for c in df.columns
        if c.startswith("val_") and c != EXAMPLES and pd.api.types.is_numeric_dtype(df[c])
    ]  # fmt: skip


def best_examples(df: pd.DataFrame, best) -> str | None:
    """The example generations (JSON text) of a seq2seq trial's best round; None otherwise."""
    if EXAMPLES not in df or best is None:
        return None
    value = df[EXAMPLES][best]
    if isinstance(value, (list, dict)):  # a result reported as a list, not text
        return json.dumps(value)
    return value if isinstance(value, str) else None


def knob_cell(key: str, value: Any) -> Any:
    """A knob's value as its trials-table cell: a list as its canonical text.

    One column holds every trial's value, and Parquet takes one type per column:
    ``layers`` is ``all``, ``top_4``, a mask ``0b0011`` or a list ``[0, 3]``, so the
    list is recorded as text too (sorted, as it selects: ``[0, 3]``, YAML that reads
    back to the same value in ``--set layers=[0, 3]``). ``config_json`` keeps the value.
    """
    if isinstance(value, (list, tuple)):
        return json.dumps(sorted(value) if key == "layers" else list(value))
    return value


def metric_values(df: pd.DataFrame | None, metric: str, mode: str) -> dict[str, float | None]:
    """``val_<m>`` (the best round, in its mode) and ``val_<m>_last`` for the ranking metric,
    validation accuracy (classification) and loss; None where a trial did not report it."""
    out: dict[str, float | None] = {}
    for name, how in (*BASE_METRICS, (metric, mode)):
        values = df[name].dropna() if df is not None and name in df else None
        ok = values is not None and len(values) > 0
        out[name] = float(values.max() if how == "max" else values.min()) if ok else None
        out[f"{name}_last"] = float(values.iloc[-1]) if ok else None
    return out


def curve_columns(metric: str, reported: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The curves table's metric columns: the ranking metric's too, then every other validation
    figure ``reported`` (in order of name)."""
    base = CURVE_COLUMNS + ([metric] if metric not in CURVE_COLUMNS else [])
    return base + sorted(set(reported) - set(base))


def _sampled(config: dict[str, Any], space) -> dict[str, Any]:
    method = config.get("method")
    if space is None or method not in getattr(space, "methods", {}):
        return {k: v for k, v in config.items() if k != "method"}
    searched = {k for k, d in space.method_space(method).items() if d.kind != "fixed"}
    return {k: v for k, v in config.items() if k in searched}


def collect(
    run: RunDir,
    space=None,
    data=None,
    write: bool = True,
    live_trials=None,
    wall_time_s: float | None = None,
) -> RunResults:
    """Build both tables from a run folder, write them and the report."""
    trials, curves = trial_rows(run, space, live_trials)
    metric = space.metric if space is not None else DEFAULT_RANKING[0]
    trials_df = pd.DataFrame(trials, columns=_trial_columns(metric))
    reported = {c for row in curves for c in row if c.startswith("val_")}
    curves_df = pd.DataFrame(
        curves, columns=["trial_id", "method", "iteration", *curve_columns(metric, reported)]
    )
    meta = _run_meta(run, space, data)
    meta["run_wall_time_s"] = None if wall_time_s is None else round(wall_time_s, 1)
    # Provenance on every row of both tables: each reads on its own (pandas, DuckDB).
    for key, value in meta.items():
        trials_df[key] = value
        curves_df[key] = value
    trials_df = trials_df.astype(
        {"iterations": "int64", "stopped_early": "bool", "best_iteration": "Int64"}
    )
    trials_df.attrs["log_knobs"] = LOG_KNOBS  # Parquet metadata, not a column
    result = RunResults(run=run, trials=trials_df, curves=curves_df)
    if write:
        run.write_parquet(TRIALS_FILE, trials_df)
        run.write_parquet(CURVES_FILE, curves_df)
        result.report = write_report(run)
    return result


def _trial_columns(metric: str) -> list[str]:
    ranked = [metric, f"{metric}_last"] if metric not in dict(BASE_METRICS) else []
    return [
        "trial_id", "method", "status", "trainable_params", "total_params", "trainable_fraction",
        "new_params",
        "val_accuracy", "val_accuracy_last", "val_loss", "val_loss_last", *ranked, "best_iteration",
        "iterations", "planned_iterations",
        "stopped_early", "wall_time_s", "ended_at", *COST_COLUMNS, "costs_reused", "feature_cache", "layer_cache_k", "precision_used", "data_splits", "error", "num_failures", "node", "node_id", "gpu_ids", "config_json", "knobs_json", "examples_json",
        *SHARED_COLUMNS, *KNOB_COLUMNS,
    ]  # fmt: skip


def _run_meta(run: RunDir, space, data) -> dict[str, Any]:
    meta: dict[str, Any] = {"run_name": run.name}
    if space is not None:
        meta.update(model=space.model, dataset=space.dataset.describe(), seed=space.seed)
        meta.update(metric=space.metric, metric_mode=space.mode)  # see figure_data.ranking
        # What the search optimised, as named and as the columns of this table, and each mode.
        objectives = space.objectives if len(space.objectives) > 1 else [space.metric, COST]
        columns = [space.metric, *[cost_column(o) for o in objectives[1:]]]
        meta["objectives"] = json.dumps(objectives)
        meta["objective_columns"] = json.dumps(columns)
        meta["objective_modes"] = json.dumps([space.mode] + ["min"] * (len(columns) - 1))
        meta["resources"] = json.dumps(asdict(space.resources))
    if data is not None:
        meta.update({k: v for k, v in data.meta.items() if k.startswith("n_")})
        meta["max_length"] = data.meta.get("max_length")
        meta["label_names"] = json.dumps(data.meta.get("label_names"))
        meta["task"] = data.meta.get("task")
        positive = getattr(getattr(data, "scoring", None), "positive", None)
        # f1's positive label, as used (experiment.positive_label or the default).
        meta["positive_label"] = None if positive is None else str(data.label_names[positive])
    meta["versions"] = json.dumps(versions())
    meta["git_commit"] = git_commit()
    return meta


class NotARunError(FileNotFoundError):
    """A folder that holds no peftsearch run (no trials table)."""


def require_run(run_dir: str | Path | RunDir) -> RunDir:
    """The run at ``run_dir``, if it holds a run's trials table; else :class:`NotARunError`."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir.at(run_dir)
    if not run.is_run():
        what = "is not a peftsearch run" if run.exists() else "does not exist: not a peftsearch run"
        raise NotARunError(f"{run_dir} {what} (no {TRIALS_FILE})")
    return run


def load_results(run_dir: str | Path | RunDir) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, curves) DataFrames of a finished or interrupted run."""
    run = require_run(run_dir)
    return run.read_parquet(TRIALS_FILE), run.read_parquet(CURVES_FILE)


def load_confirmed(run: RunDir) -> pd.DataFrame | None:
    """``peftsearch confirm``'s table of a run, if it has one."""
    return run.read_parquet(CONFIRM_FILE) if run.exists(CONFIRM_FILE) else None


def write_report(run_dir: str | Path | RunDir, out: str | Path | None = None) -> Path | str:
    """Build the report (and its static figure beside it) from the run's tables; return its path.

    ``out``: a local file instead of the run's own report.
    """
    from reports.html import render_report

    run = require_run(run_dir)
    trials, curves = load_results(run)
    title = str(trials["run_name"].iloc[0]) if "run_name" in trials and len(trials) else run.name
    page, svg = render_report(trials, curves, title, load_confirmed(run), FIGURE_FILE)
    if out is None:
        run.write_text(FIGURE_FILE, svg)
        return run.write_text(REPORT_FILE, page)
    target = RunDir.at(Path(out).parent)  # the report's own folder, written the same way
    target.write_text(FIGURE_FILE, svg)
    return target.write_text(Path(out).name, page)
