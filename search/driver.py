"""The search driver: space -> data (tokenized once) -> Ray Tune -> Parquet -> report.

Ray Tune runs the trials with Optuna (TPE) sampling a define-by-run
conditional space - a method first, then only that method's knobs - and
ASHA stopping weak trials at evaluation rounds. Results are rebuilt from
Tune's experiment folder, so a resumed or interrupted run reports every
trial it has.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from search.preflight import (
    autoscaling,
    check_fit,
    check_live_cluster,
    check_resources,
    check_storage,
    init_ray,
    layer_depths,
    prepare_data,
    wants_features,
)
from search.rundir import RUN_FILE, SPACE_FILE, RunDir
from search.space import (
    COST,
    Space,
    SpaceError,
    apply_overrides,
    check_name,
    load_space,
    validate,
)
from search.warmstart import WarmStart, plan_warm_start
from trainables import checkpoint
from trainables.data import PreparedData


def choose_run(space: Space, name: str | None, storage: str, resume: bool) -> tuple[RunDir, bool]:
    """Pick the run folder and whether to resume.

    An unfinished run of the same name resumes (with or without ``--resume``);
    a finished one is kept and the new run gets the next free name
    (``quick-2``, ...). ``--resume`` with nothing to resume is an error.
    """
    from ray import tune

    run = RunDir.of(storage, name or space.name)
    path, fs = run.tune_path
    restorable = run.exists() and tune.Tuner.can_restore(path, storage_filesystem=fs)
    finished = run.read_record().get("status") == "finished"
    if resume:
        if not restorable:
            raise FileNotFoundError(f"--resume: no run to resume at {run.uri}")
        return run, True
    if restorable and not finished:
        return run, True
    if run.exists():
        i = 2
        while run.sibling(f"{run.name}-{i}").exists():
            i += 1
        run = run.sibling(f"{run.name}-{i}")
    return run, False


def make_searcher(space: Space, warm: WarmStart | None = None, run: RunDir | None = None):
    """Optuna (TPE or random) over the conditional space, or None for a grid.

    ``warm``: earlier runs' finished trials go into the study, their configurations first.
    ``run``: the study is kept in the run's journal (search.tracking); without it, in memory.
    """
    import optuna

    from search import tracking
    from search.searcher import DefineByRun, PeftOptunaSearch
    from search.space import objective_mode

    if space.search.searcher == "grid":
        return None
    n = space.search.num_samples
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if space.search.searcher == "random":
            sampler = optuna.samplers.RandomSampler(seed=space.seed)
        else:
            # group=True: TPE models each method's conditional knobs apart.
            sampler = optuna.samplers.TPESampler(
                seed=space.seed,
                multivariate=True,
                group=True,
                n_startup_trials=max(2, min(10, n // 3)),
            )
    objectives = [space.metric, *space.search.costs]  # result keys (aliases resolved)
    if len(objectives) == 1:
        metric, mode = objectives[0], objective_mode(objectives[0])
    else:  # Optuna's multi-objective mode: lists go on the searcher only
        metric, mode = objectives, [objective_mode(o) for o in objectives]
    # Each method's first trial comes first (its knobs sampled): a conditional space searched
    # at random from the start can leave a method untried in a short search.
    first = [{"method": m} for m in space.methods] if n >= len(space.methods) else None
    searcher = PeftOptunaSearch(
        space=DefineByRun(space),
        metric=metric,
        mode=mode,
        sampler=sampler,
        points_to_evaluate=warm.points(first) if warm else first,
        storage=tracking.journal(run) if run else None,
        study_name=tracking.study_name(run) if run else None,
    )
    if warm:
        warm.seed(searcher)
    return searcher


def make_scheduler(space: Space):
    """ASHA, Pareto-aware ASHA, or none (FIFO), measured in evaluation rounds.

    Pareto-ASHA keeps the front on the search's cost objectives (trainable
    parameters when it names none). ``per_method``: rungs per method (``search.schedulers.ParetoASHA`` with
    ``group_by="method"``, accuracy-only for ``asha``).
    """
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from search.schedulers import ParetoASHA

    kind = space.scheduler.type
    args = {
        "time_attr": "training_iteration",
        "max_t": space.max_t,
        "grace_period": min(space.scheduler.grace_period, space.max_t),
        "reduction_factor": space.scheduler.reduction_factor,
    }
    per_method = space.scheduler.per_method
    if kind == "asha" and not per_method:
        return ASHAScheduler(metric=space.metric, mode=space.mode, **args)
    if kind in ("asha", "pareto_asha"):
        return ParetoASHA(
            metric=space.metric,
            mode=space.mode,
            cost=(space.search.costs or [COST]) if kind == "pareto_asha" else None,
            group_by="method" if per_method else None,
            **args,
        )
    return FIFOScheduler()


def default_concurrency(space: Space) -> int:
    """One trial per CPU (and GPU) slot of the (local or remote) cluster.

    An autoscaling cluster grows only when trials wait: up to 8 may wait
    (``search.max_concurrent`` sets it).
    """
    import ray

    total = ray.cluster_resources()
    slots = total.get("CPU", os.cpu_count() or 1) // space.resources.cpu
    if space.resources.gpu:
        slots = min(slots, total.get("GPU", 0) // space.resources.gpu)
    if autoscaling():
        slots = max(slots, min(8, space.num_trials))
    return max(1, int(slots))


def _tune_environment() -> None:
    """Tune's settings that peftsearch owns (a user's own environment wins)."""
    # Tune warns when small checkpoints are frequent; ours are, by design (one per evaluation).
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # ProgressPrinter is the live view: no result boxes, and a failed trial is one line there
    # (its whole traceback is in the trials table and the report), not a traceback on the console.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    # Ray would add its TensorBoard logger to every run: the loggers are tracking.callbacks'
    # (CSV and JSON, which the results read, and search.loggers), given to a new run and
    # restored with it from tuner.pkl.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


def build_tuner(
    space: Space,
    data: PreparedData,
    run: RunDir,
    resume: bool,
    max_concurrent: int | None,
    warm: WarmStart | None = None,
):
    """The Tune ``Tuner`` for a space (a new one, or one restored from ``run``, whose searcher
    holds its study: ``warm`` seeds a new one only)."""
    from ray import tune

    from search import tracking
    from search.progress import ProgressPrinter
    from trainables.trial import tune_trainable

    _tune_environment()
    tracking.prepare(space, run, resume)  # a remote run's journal and MLflow store, W&B's mode
    cpus = space.resources.cpu
    trainable = tune.with_resources(
        # with_parameters puts the token ids in the object store once; every trial reads them.
        tune.with_parameters(
            tune_trainable,
            data=data.without("test"),
            model_name=space.model,
            cpus=max(1, int(cpus)),
            metric=space.metric,
            mode=space.mode,
            # Costs are measured once per structure and node in this session of this search:
            # a fresh id, so a rerun of the same name never reuses another run's figures.
            cost_scope=f"{run.name}-{uuid.uuid4().hex}",
        ),
        {"cpu": cpus, "gpu": space.resources.gpu},
    )
    if resume:
        # Errored trials stay recorded as errors; unfinished ones continue from their checkpoints.
        path, fs = run.tune_path
        return tune.Tuner.restore(
            path, trainable, resume_unfinished=True, resume_errored=False, storage_filesystem=fs
        )

    grid = space.search.searcher == "grid"
    return tune.Tuner(
        trainable,
        # A grid is Tune's own grid_search over whole trial configs (conditional knobs included).
        param_space={"grid": tune.grid_search(space.grid())} if grid else None,
        tune_config=tune.TuneConfig(
            search_alg=make_searcher(space, warm, run),
            scheduler=make_scheduler(space),
            num_samples=1 if grid else space.search.num_samples,
            max_concurrent_trials=max_concurrent or default_concurrency(space),
            time_budget_s=space.search.time_budget_s,
            # A new trial runs in the worker process the last one finished in: no process start,
            # no imports (seconds per trial). run_trial leaves nothing behind but caches.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=run.name,
            storage_path=run.tune_storage[0],
            storage_filesystem=run.tune_storage[1],
            # The best checkpoint per trial (what export takes); Ray also keeps the latest (for
            # resume) until the run ends, when prune_checkpoints drops it.
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=1,
                checkpoint_score_attribute=space.metric,
                checkpoint_score_order=space.mode,
            ),
            failure_config=tune.FailureConfig(max_failures=space.search.max_failures),
            callbacks=[ProgressPrinter(space.metric, space.mode), *tracking.callbacks(space, run)],
            verbose=0,  # ProgressPrinter's one line per event instead of Tune's tables
        ),
    )


def prune_checkpoints(run: RunDir | str | Path, metric: str, mode: str) -> dict[str, float]:
    """Keep only each trial's best checkpoint once a run is over; return the disk use.

    Ray keeps the best checkpoint and the latest (to resume from); a finished
    run needs only the best (what ``peftsearch export`` takes,
    :func:`trainables.checkpoint.best_of`), and only its trained parameters
    (:func:`trainables.checkpoint.slim`). Works on the run's filesystem (a
    bucket too).
    """
    run = run if isinstance(run, RunDir) else RunDir.at(run)
    from search.export import checkpoint_meta

    by_trial: dict[str, list[str]] = {}
    for c in run.checkpoint_dirs():  # one listing of the run, grouped by trial folder
        by_trial.setdefault(c.rpartition("/")[0], []).append(c)
    removed, kept = 0, []
    for ckpts in by_trial.values():
        best = checkpoint.best_of(ckpts, metric, mode, lambda c: checkpoint_meta(run, c))
        for c in ckpts:
            if c != best:
                run.delete_dir(c)  # Ray's own checkpoint folder, under the run
                removed += 1
        kept.append(best)
    for c in kept:
        with run.local_copy(c) as local:
            if checkpoint.is_checkpoint(local) and checkpoint.slim(local) and not run.is_local:
                run.upload(local / checkpoint.STATE_FILE, f"{c}/{checkpoint.STATE_FILE}")
    mb = round(run.size_bytes(kept) / 2**20, 2)
    return {"checkpoint_mb": mb, "checkpoints_removed": removed}


def load(
    space: Space | str | Path | None,
    overrides: list[str] | tuple[str, ...] | dict[str, Any] = (),
    **keys: Any,
) -> Space:
    """A validated space from a :class:`Space`, a file or a shipped name, with overrides.

    ``overrides``: ``KEY=VALUE`` strings or a ``{KEY: value}`` mapping; keyword
    arguments use ``__`` for the dots (``train__epochs=1``).
    """
    if isinstance(overrides, dict):
        overrides = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    extra = list(overrides) + [f"{k.replace('__', '.')}={json.dumps(v)}" for k, v in keys.items()]
    if not isinstance(space, Space):
        return load_space(space, extra)
    return validate(apply_overrides(space.raw, extra), space.source) if extra else space


def run(
    space: Space | str | Path | None = None,
    *,
    name: str | None = None,
    storage: str | None = None,
    num_samples: int | None = None,
    max_concurrent: int | None = None,
    overrides: list[str] | tuple[str, ...] | dict[str, Any] = (),
    resume: bool = False,
    address: str | None = None,
    quiet: bool = False,
    **keys: Any,
):
    """Run a search and write the trials and curves tables and the report.

    ``space`` is a :class:`Space`, a space file, or a shipped space's name.
    Any key of the space can be overridden: ``overrides`` as ``KEY=VALUE``
    strings or a ``{KEY: value}`` mapping, or as keyword arguments with
    ``__`` for the dots (``train__epochs=1``, ``search__num_samples=4``).
    Everything that can be checked is checked before Ray starts; a bad space
    raises :class:`search.space.SpaceError` and writes nothing.
    Returns :class:`search.results.RunResults`.
    """
    started = time.time()
    if num_samples is not None:
        keys["search__num_samples"] = num_samples
    space = load(space, overrides, **keys)
    if check_name(name, "--name"):
        raise SpaceError(space.source, check_name(name, "--name"))
    check_storage(
        space, storage or space.storage, name or space.name, "--storage" if storage else "storage"
    )
    run_dir, resuming = choose_run(space, name, storage or space.storage, resume)
    if resuming:
        # The space as it was first run: a resumed search continues the same experiment.
        space = validate(yaml.safe_load(run_dir.read_text(SPACE_FILE)), run_dir.name_of(SPACE_FILE))
        print(f"resuming {run_dir.uri}", flush=True)
    check_resources(space, address)
    config = check_fit(space)
    data = prepare_data(space, progress=not quiet, features=wants_features(space, config),
                        layers=layer_depths(space, config))  # fmt: skip
    warm = None if resuming else plan_warm_start(space, data, quiet)  # refusals: before Ray
    init_ray(address)
    if address:
        check_live_cluster(space)
    run_dir.mkdir()
    if not resuming:
        run_dir.write_text(SPACE_FILE, yaml.safe_dump(space.raw, sort_keys=False))
    previous = run_dir.read_record()
    record = {
        **previous,
        "status": "running",
        "space": space.source,
        "started": previous.get("started", started),
        "data": data.meta,
        "argv": sys.argv,
        "resources": asdict(space.resources),
        "sessions": previous.get("sessions", 0) + 1,
        **(warm.record() if warm else {}),  # this run's fingerprints; what it reused
    }
    run_dir.write_json(RUN_FILE, record)
    tuner = build_tuner(
        space, data, run_dir, resuming, max_concurrent or space.search.max_concurrent, warm
    )
    fit_started = time.time()
    try:
        # Tune's in-memory trials: their status is right where the saved state can be stale.
        grid = tuner.fit()
        live, interrupted = (
            getattr(getattr(grid, "_experiment_analysis", None), "trials", None),
            False,
        )
    except KeyboardInterrupt:
        live, interrupted = None, True
    # Whatever happened, write what finished: results come from Tune's folder.
    wall = time.time() - started + (previous.get("wall_time_s") or 0.0) * resuming
    res = finish(space, data, run_dir, record, live, wall, interrupted, fit_started)
    if interrupted:
        raise KeyboardInterrupt
    return res


def finish(space, data, run_dir: RunDir, record: dict, live, wall: float, interrupted: bool,
           fit_started: float):  # fmt: skip
    """After ``fit()``: the tables and report from Tune's folder, pruning, the run's record."""
    from reports.hypervolume import hypervolume_curve
    from search import results as results_mod

    res = results_mod.collect(run_dir, space=space, data=data, live_trials=live, wall_time_s=wall)
    # Tune ends fit() quietly on Ctrl-C; unfinished trials mean the run can resume.
    done = int(res.trials["status"].isin(["TERMINATED", "ERROR"]).sum())
    budget = space.search.time_budget_s
    out_of_time = budget is not None and time.time() - fit_started >= budget
    res.complete = not interrupted and (done >= space.num_trials or out_of_time)
    res.disk = prune_checkpoints(run_dir, space.metric, space.mode) if res.complete else {}
    from search import tracking

    tracking.upload(run_dir)  # a remote run's journal and MLflow store, kept locally
    run_dir.write_json(
        RUN_FILE,
        {
            **record,
            **tracking.record(space, run_dir, searcher=space.search.searcher != "grid"),
            "status": "finished" if res.complete else "interrupted",
            "stopped_by_time_budget": bool(out_of_time and done < space.num_trials),
            "wall_time_s": round(wall, 1),
            # How the front grew, per completed trial and trial-second (reference point stated).
            "hypervolume": hypervolume_curve(res.trials),
            **res.disk,
        },
    )
    return res
