"""``peftsearch confirm``: retrain the chosen configurations over seeds, evaluate once on test.

The search picks configurations on the validation split; a number worth
quoting comes from retraining each chosen configuration with several seeds
(head initialisation, data order) and evaluating each run once on the test
split, which the search never saw. Runs go through Ray in parallel; the
result is the run's confirm table (one row per configuration and seed: the test
value of the ranking metric, accuracy and loss; for classification, precision,
recall and F1 per label and the confusion matrix), and the report shows the
test metric's mean ± std beside the validation numbers, and the per-label
figures of the Pareto-optimal configurations.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from search.rundir import CONFIRM_FILE, SPACE_FILE, TRIALS_FILE
from trainables.metrics import GENERATION_METRICS, SEQ2SEQ

# Seq2seq: every generation metric on test (test_rouge1 ... test_chrf), beside test_metric.
GENERATION_COLUMNS = tuple(f"test_{m}" for m in GENERATION_METRICS)
# What a retraining run adds to its row (None for a failed run; test_accuracy and the
# per-label figures for classification only; the generation figures and example generations
# for seq2seq only).
RESULT_COLUMNS = (
    "test_metric", "test_accuracy", "test_loss", "best_val_accuracy", "best_val_metric",
    "trainable_params", "total_params", "test_step", "test_evaluations", "val_rounds_json",
    "test_per_class_json", "test_confusion_json", *GENERATION_COLUMNS, "test_examples_json",
    "wall_time_s",
)  # fmt: skip


def choose(trials: pd.DataFrame, top: int | None, per_method: bool = False) -> pd.DataFrame:
    """The Pareto-optimal trials (failed ones aside), the ``top`` best by the run's
    ranking metric, or (``per_method``) the best trial of each method."""
    from reports.figure_data import best_per_method, healthy, pareto_front, rank

    ok = rank(healthy(trials))
    if per_method:
        return best_per_method(ok)
    if top:
        return ok.head(top)
    return pareto_front(ok)


def _one(
    flat: dict[str, Any], data, model_name: str, cpus: int, metric: str, mode: str
) -> dict[str, Any]:
    """One retraining run (a Ray task): train, select on validation, evaluate on test once."""
    from trainables.trial import run_trial

    started = time.perf_counter()
    rounds: list[tuple[int, float]] = []  # (step, ranking metric) of every validation round

    def on_eval(metrics: dict, get_state) -> None:
        rounds.append((metrics["step"], metrics[metric]))

    # costs=False: the search measured them; confirm retrains for the test figures only.
    out = run_trial(
        flat, data, model_name, on_eval, cpus=cpus, test=True, metric=metric, mode=mode,
        costs=False,
    )  # fmt: skip
    keep = ("test_accuracy", "test_loss", "best_val_accuracy", "trainable_params",
            "total_params", "test_step", "test_evaluations")  # fmt: skip
    per_class, confusion = out.get("test_per_class"), out.get("test_confusion")
    examples = out.get("test_examples")
    return {
        **{k: out.get(k) for k in keep},
        **{k: out[k] for k in GENERATION_COLUMNS if k in out},
        "test_examples_json": json.dumps(examples) if examples is not None else None,
        "test_metric": out[f"test_{metric.removeprefix('val_')}"],
        "best_val_metric": out["best_score"],
        "val_rounds_json": json.dumps(rounds),
        # Classification: per label (in label order) precision, recall, F1, support; and the
        # confusion matrix (rows: true label, columns: predicted).
        "test_per_class_json": json.dumps(per_class) if per_class else None,
        "test_confusion_json": json.dumps(confusion) if confusion else None,
        "wall_time_s": time.perf_counter() - started,
    }


def confirm(
    run_dir: str | Path,
    seeds: int = 3,
    top: int | None = None,
    address: str | None = None,
    quiet: bool = False,
    per_method: bool = False,
) -> pd.DataFrame:
    """Retrain the chosen trials of ``run_dir`` with ``seeds`` seeds each; write the confirm table.

    Seeds are the experiment's seed, +1, +2, ...: the first reproduces the
    search's own run. The data split is the search's (same seed), so the
    test split is the one held out from the search.
    """
    from search.preflight import check_fit, init_ray, prepare_data
    from search.results import require_run, versions, write_report
    from search.space import validate
    from trainables.features import add_features, uses_cache

    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    run = require_run(run_dir)
    space = validate(yaml.safe_load(run.read_text(SPACE_FILE)), run.uri)
    chosen = choose(run.read_parquet(TRIALS_FILE), top, per_method)
    if chosen.empty:
        raise ValueError(f"{run_dir}: no finished trial to confirm")
    config = check_fit(space)
    data = prepare_data(space, progress=not quiet)
    if "test" not in data.splits:
        raise ValueError(
            "the space has no test split (experiment.split.test is 0 and the data gives none)"
        )
    configs = [json.loads(c) for c in chosen["config_json"]]
    # Seq2seq never trains on cached features (trainables.trial.on_caches).
    cacheable = space.experiment.feature_cache and data.task != SEQ2SEQ
    if cacheable and any(uses_cache(c["method"], c, config) for c in configs):
        # Test features too: only here, never in the search.
        add_features(
            data,
            space.model,
            splits=("train", "validation", "test"),
            progress=not quiet,
            precision=space.feature_precision,
        )
    init_ray(address)
    rows = _retrain(space, data, chosen, configs, seeds, quiet)
    df = pd.DataFrame(rows)
    for col in RESULT_COLUMNS:
        if col not in df:
            df[col] = None
    df["run_name"] = run.name
    df["task"] = data.task
    df["label_names"] = json.dumps(list(data.label_names))
    df["model"] = space.model
    df["dataset"] = space.dataset.describe()
    df["n_test"] = len(data.splits["test"])
    df["versions"] = json.dumps(versions())
    df = df.sort_values(["trial_id", "seed"]).reset_index(drop=True)
    run.write_parquet(CONFIRM_FILE, df)
    write_report(run)
    return df


def _retrain(space, data, chosen: pd.DataFrame, configs: list[dict], seeds: int, quiet: bool):
    """Every chosen configuration x seed as a Ray task; one row per run, failed ones too."""
    import ray

    cpus, gpus = space.resources.cpu, space.resources.gpu
    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=1)(_one)
    data_ref = ray.put(data)
    jobs = {}
    for (_, row), flat in zip(chosen.iterrows(), configs):
        for i in range(seeds):
            run = {**flat, "seed": space.seed + i}
            ref = task.remote(
                run, data_ref, space.model, max(1, int(cpus)), space.metric, space.mode
            )
            jobs[ref] = (row, i)
    if not quiet:
        print(
            f"confirm: {len(chosen)} configurations x {seeds} seeds = {len(jobs)} runs", flush=True
        )
    rows, pending, started = [], list(jobs), time.time()
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        row, i = jobs[done[0]]
        base = {
            "trial_id": row["trial_id"],
            "method": row["method"],
            "seed": space.seed + i,
            "metric": space.metric,
            "val_metric_search": row[space.metric],
            "val_accuracy_search": row.get("val_accuracy"),
            "knobs_json": row["knobs_json"],
            "config_json": row["config_json"],
        }
        try:
            rows.append({**base, "status": "ok", "error": None, **ray.get(done[0])})
        except Exception as e:  # a failed run is recorded, never dropped
            rows.append({**base, "status": "error", "error": f"{type(e).__name__}: {e}"[-500:]})
        if not quiet:
            last = rows[-1]
            value = last.get("test_metric")
            name = space.metric.removeprefix("val_")
            shown = f"test {name} {value:.4f}" if value is not None else f"FAILED: {last['error']}"
            print(
                f"[{time.time() - started:6.0f}s] {row['trial_id']} {row['method']:<13} "
                f"seed {space.seed + i}: {shown}",
                flush=True,
            )
    return rows
