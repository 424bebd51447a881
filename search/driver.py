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
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from search.space import Space, SpaceError, load_space, validate
from trainables.data import DataError, PreparedData, prepare
from trainables.model import load_tokenizer

RUN_FILE = "run.json"  # the driver's own record of a run (status, wall time)
SPACE_FILE = "space.yaml"  # the space as run (after --set), used on resume


@dataclass
class RunPaths:
    """Where a run writes (``<storage>/<name>/``)."""

    storage: str
    name: str

    @property
    def run_dir(self) -> Path:
        return Path(self.storage) / self.name


def resolve_storage(storage: str) -> str:
    """Ray wants an absolute local path (or a URI such as s3://)."""
    if "://" in storage:
        return storage
    return str(Path(storage).expanduser().resolve())


def choose_run(space: Space, name: str | None, storage: str, resume: bool) -> tuple[RunPaths, bool]:
    """Pick the run folder and whether to resume.

    An unfinished run of the same name resumes (with or without ``--resume``);
    a finished one is kept and the new run gets the next free name
    (``quick-2``, ...). ``--resume`` with nothing to resume is an error.
    """
    from ray import tune

    paths = RunPaths(resolve_storage(storage), name or space.name)
    restorable = paths.run_dir.exists() and tune.Tuner.can_restore(str(paths.run_dir))
    finished = _read_run_file(paths.run_dir).get("status") == "finished"
    if resume:
        if not restorable:
            raise FileNotFoundError(f"--resume: no run to resume at {paths.run_dir}")
        return paths, True
    if restorable and not finished:
        return paths, True
    if paths.run_dir.exists():
        base, i = paths.name, 2
        while (Path(paths.storage) / f"{base}-{i}").exists():
            i += 1
        paths = RunPaths(paths.storage, f"{base}-{i}")
    return paths, False


def _read_run_file(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON through a temporary file and a rename: never half a file."""
    write_text_atomic(path, json.dumps(obj, indent=2, default=str))


def write_text_atomic(path: Path, text: str) -> None:
    """Write text through a temporary file, fsync and a rename: never half a file."""
    from reports.atomic import atomic_write

    atomic_write(path, lambda tmp: tmp.write_text(text))


def check_fit(space: Space):
    """Apply every method, at every extreme of its knobs, to the model's architecture.

    The model is built from its config on the meta device (no weights, no
    memory), so a method that cannot apply - prefix on DeBERTa-v2, bitfit on
    a model without biases, more frozen layers than the model has - is a
    :class:`SpaceError` before any trial starts, not a crash mid-search.
    Returns the model's config.
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    from trainables.methods import apply_method
    from trainables.model import load_config

    try:
        config = load_config(space.model)
    except (OSError, ValueError) as e:
        raise SpaceError(
            space.source, [("experiment.model", f"cannot load {space.model!r}: {e}")]
        ) from None
    problems = max_length_problems(space, config)
    for method in space.methods:
        for knobs in space.knob_variants(method):
            try:
                with torch.device("meta"):
                    apply_method(
                        AutoModelForSequenceClassification.from_config(config), method, knobs
                    )
            except (ValueError, TypeError, NotImplementedError) as e:
                problems.append((f"methods.{method}", f"{e} (model {space.model}, knobs {knobs})"))
                break
    if problems:
        raise SpaceError(space.source, problems)
    return config


# Models whose position ids start after the padding index (RoBERTa's scheme):
# max_position_embeddings - pad_token_id - 1 positions are usable.
PADDING_OFFSET_MODELS = (
    "roberta",
    "xlm-roberta",
    "xlm-roberta-xl",
    "camembert",
    "data2vec-text",
    "roberta-prelayernorm",
    "longformer",
    "ibert",
    "mpnet",
)


def max_positions(config) -> int | None:
    """The longest input, in tokens, the model's positions allow; None: no absolute limit.

    RoBERTa-style models lose ``pad_token_id + 1`` positions to the padding
    offset (514 -> 512); rotary models (ModernBERT) take
    ``max_position_embeddings`` as is; DeBERTa with ``position_biased_input``
    false has only relative positions (no absolute embedding table to overrun).
    """
    n = getattr(config, "max_position_embeddings", None)
    kind = getattr(config, "model_type", "")
    if not isinstance(n, int) or n <= 0:
        return None
    if kind in ("deberta", "deberta-v2") and not getattr(config, "position_biased_input", True):
        return None
    if kind in PADDING_OFFSET_MODELS:
        return n - (getattr(config, "pad_token_id", None) or 0) - 1
    return n


def max_length_problems(space: Space, config) -> list[tuple[str, str]]:
    """experiment.max_length beyond the model's positions: a crash after tokenizing, found here."""
    limit = max_positions(config)
    if limit is None or space.max_length <= limit:
        return []
    return [
        (
            "experiment.max_length",
            f"{space.max_length} tokens, but the model has {limit} positions "
            f"({getattr(config, 'model_type', '?')}, max_position_embeddings "
            f"{config.max_position_embeddings}): set max_length to {limit} or less",
        )
    ]


def check_storage(space: Space, storage: str, name: str | None = None, key: str = "storage"):
    """The run folder can be made and written: its nearest existing folder is writable.

    Local paths only (a URI such as s3:// is left to Ray); creates nothing.
    """
    if "://" in storage:
        return
    target = Path(os.path.abspath(Path(storage).expanduser() / (name or "")))
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        msg = f"{storage}: {probe} is not a folder, so {target} cannot be made: choose another"
    elif not os.access(probe, os.W_OK | os.X_OK):
        msg = f"{storage}: {probe} is not writable, so {target} cannot be made: choose another"
    else:
        return
    raise SpaceError(space.source, [(key, f"{msg} storage (or --storage)")])


def wants_features(space: Space, config) -> bool:
    """Whether any configuration of the space trains only above the frozen encoder."""
    from trainables.features import uses_cache

    return space.feature_cache and any(
        uses_cache(method, knobs, config)
        for method in space.methods
        for knobs in space.knob_variants(method)
    )


def prepare_data(space: Space, progress: bool = True, features: bool = False) -> PreparedData:
    """Load, split and tokenize the data: once per search, here in the driver."""
    started = time.perf_counter()
    tokenizer = load_tokenizer(space.model)
    try:
        data = prepare(
            space.dataset,
            tokenizer,
            space.max_length,
            validation=space.split["validation"],
            test=space.split["test"],
            seed=space.seed,
            max_train=space.max_train_samples,
            max_eval=space.max_eval_samples,
            max_test=space.max_test_samples,
            progress=progress,
        )
    except DataError as e:
        raise SpaceError(space.source, [(e.key, str(e))]) from None
    data.meta.update(model=space.model, tokenize_s=round(time.perf_counter() - started, 2))
    if progress:
        sizes = ", ".join(f"{k} {len(v)}" for k, v in data.splits.items())
        print(
            f"data: {data.meta['dataset']} ({sizes}; {data.num_labels} labels), "
            f"tokenized once in {data.meta['tokenize_s']} s",
            flush=True,
        )
        if data.meta.get("dropped_rows"):
            print(f"data: {dropped_text(data.meta)}", flush=True)
    if features:
        from trainables.features import add_features

        started = time.perf_counter()
        add_features(data, space.model, progress=progress)  # never the test split
        data.meta["features_s"] = round(time.perf_counter() - started, 2)
        if progress:
            print(
                f"frozen-encoder features cached once in {data.meta['features_s']} s "
                "(linear probe, top adapter, all layers frozen train on them)",
                flush=True,
            )
    return data


def dropped_text(meta: dict) -> str:
    """What ``drop_invalid`` left out, in words."""
    cols = ", ".join(f"{c!r} {n}" for c, n in meta.get("dropped_empty", {}).items())
    return (
        f"dropped {meta['dropped_rows']} rows with an empty text or label "
        f"(experiment.dataset.drop_invalid; empty cells: {cols})"
    )


def check_resources(space: Space, address: str | None) -> None:
    """Trials that can never be placed hang in PENDING: say so before Ray starts.

    For a local run the machine is the cluster: a GPU request needs a GPU
    here, and a trial's CPUs must fit in this machine's. A remote cluster is
    checked once connected (:func:`check_cluster`).
    """
    if address:
        return
    import torch

    gpu, cpu = space.resources["gpu"], space.resources["cpu"]
    problems = []
    if gpu > 0 and torch.cuda.device_count() == 0:
        problems.append(
            (
                "resources.gpu",
                f"{gpu} GPU per trial, but this machine has no GPU (trials would wait in PENDING "
                "for ever): set resources.gpu: 0, or run on a cluster with GPU nodes (--address)",
            )
        )
    elif gpu > torch.cuda.device_count():
        problems.append(
            (
                "resources.gpu",
                f"{gpu} GPUs per trial, but this machine has {torch.cuda.device_count()}",
            )
        )
    if cpu > (os.cpu_count() or 1):
        problems.append(
            (
                "resources.cpu",
                f"{cpu} CPUs per trial, but this machine has {os.cpu_count()}: lower it",
            )
        )
    if problems:
        raise SpaceError(space.source, problems)


def check_cluster(space: Space) -> None:
    """On a running cluster: a trial must fit on some node, now or once the autoscaler adds one."""
    import ray

    need = {"CPU": space.resources["cpu"], "GPU": space.resources["gpu"]}
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(all(res.get(k, 0) >= v for k, v in need.items()) for res in nodes):
        return
    if _autoscaling():
        print(
            f"no node fits a trial ({need}) yet; waiting for the autoscaler to add one", flush=True
        )
        return
    have = [{k: res.get(k, 0) for k in need} for res in nodes]
    raise SpaceError(
        space.source,
        [
            (
                "resources",
                f"no node of the cluster fits a trial's {need} (nodes have {have}) and no "
                "autoscaler can add one: lower resources.cpu / resources.gpu or add GPU nodes",
            )
        ],
    )


def _autoscaling() -> bool:
    """Whether the connected cluster runs an autoscaler that may add nodes."""
    # The (v1) autoscaler publishes its status under this key of the GCS key-value store.
    try:
        from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
        from ray.experimental.internal_kv import _internal_kv_get

        return bool(_internal_kv_get(DEBUG_AUTOSCALING_STATUS))
    except Exception:  # a private API: when it moves, assume no autoscaler
        return False


def code_dirs() -> list[str]:
    """What trials import of peftsearch (``trainables``), as Ray ``py_modules`` for a cluster."""
    import trainables

    return [str(Path(trainables.__file__).parent)]


def init_ray(address: str | None) -> None:
    """Join the Ray cluster at ``address``, or start a local Ray that only this machine reaches.

    With no address (nor ``RAY_ADDRESS``) every process of the local Ray -
    GCS, raylet, object manager, dashboard and runtime-env agents, metrics
    endpoint, workers - listens on 127.0.0.1 only, never on the machine's
    network interfaces, and a cluster started by ``ray start`` is not joined.
    A Ray already initialized in this process is used as it is.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and address != "local":
        # Ship the code with the job: a worker node needs torch & co., not peftsearch itself.
        ray.init(address=address, log_to_driver=False, runtime_env={"py_modules": code_dirs()})
        return
    _start_loopback_ray()


# Ray 2.60 takes a node's address from the route to the internet (and ray.init's
# _node_ip_address turns 127.0.0.1 back into it); its gRPC and HTTP servers then listen on
# all interfaces. Its single-machine mode (the default on macOS and Windows), switched on by
# this variable, makes the node's address 127.0.0.1 and every server listen on it alone.
_RAY_MULTI_NODE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _start_loopback_ray() -> None:
    """A new local Ray in Ray's single-machine mode: here, and in the processes it starts."""
    import ray
    from ray._private import ray_constants

    env, const = os.environ.get(_RAY_MULTI_NODE), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_RAY_MULTI_NODE] = "0"  # the processes ray.init starts (they read it at import)
    ray_constants.ENABLE_RAY_CLUSTER = False  # this process, which imported ray already
    try:
        # "local": a new Ray, never one that `ray start` left running on this machine.
        ray.init(
            address="local", include_dashboard=False, log_to_driver=False, configure_logging=False
        )
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = const
        if env is None:
            os.environ.pop(_RAY_MULTI_NODE, None)
        else:
            os.environ[_RAY_MULTI_NODE] = env


def make_searcher(space: Space):
    """Optuna (TPE or random) over the conditional space, or None for a grid."""
    import optuna

    from search.searcher import DefineByRun, PeftOptunaSearch
    from search.space import OBJECTIVES

    if space.search["searcher"] == "grid":
        return None
    n = space.search["num_samples"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if space.search["searcher"] == "random":
            sampler = optuna.samplers.RandomSampler(seed=space.seed)
        else:
            # group=True: TPE models each method's conditional knobs apart.
            sampler = optuna.samplers.TPESampler(
                seed=space.seed,
                multivariate=True,
                group=True,
                n_startup_trials=max(2, min(10, n // 3)),
            )
    objectives = space.objectives
    if len(objectives) == 1:
        metric, mode = objectives[0], OBJECTIVES[objectives[0]]
    else:  # Optuna's multi-objective mode: lists go on the searcher only
        metric, mode = objectives, [OBJECTIVES[o] for o in objectives]
    # Each method's first trial comes first (its knobs sampled): a conditional space searched
    # at random from the start can leave a method untried in a short search.
    first = [{"method": m} for m in space.methods] if n >= len(space.methods) else None
    return PeftOptunaSearch(
        space=DefineByRun(space),
        metric=metric,
        mode=mode,
        sampler=sampler,
        points_to_evaluate=first,
    )


def make_scheduler(space: Space):
    """ASHA, Pareto-aware ASHA, or none (FIFO), measured in evaluation rounds.

    ``per_method``: rungs per method (``search.schedulers.ParetoASHA`` with
    ``group_by="method"``, accuracy-only for ``asha``).
    """
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from search.schedulers import ParetoASHA

    kind = space.scheduler["type"]
    args = {
        "time_attr": "training_iteration",
        "max_t": space.max_t,
        "grace_period": min(space.scheduler["grace_period"], space.max_t),
        "reduction_factor": space.scheduler["reduction_factor"],
    }
    per_method = space.scheduler.get("per_method", False)
    if kind == "asha" and not per_method:
        return ASHAScheduler(metric=space.metric, mode=space.mode, **args)
    if kind in ("asha", "pareto_asha"):
        return ParetoASHA(
            metric=space.metric,
            mode=space.mode,
            cost="trainable_params" if kind == "pareto_asha" else None,
            group_by="method" if per_method else None,
            **args,
        )
    return FIFOScheduler()


def build_tuner(
    space: Space, data: PreparedData, paths: RunPaths, resume: bool, max_concurrent: int | None
):
    """The Tune ``Tuner`` for a space (a new one, or one restored from ``paths``)."""
    import ray
    from ray import tune

    from search.progress import ProgressPrinter
    from trainables.trial import tune_trainable

    # Tune warns when small checkpoints are frequent; ours are, by design (one per evaluation).
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # ProgressPrinter is the live view: no result boxes, and a failed trial is one line there
    # (its whole traceback is in trials.parquet and the report), not a traceback on the console.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    cpus = space.resources["cpu"]
    trainable = tune.with_resources(
        # with_parameters puts the token ids in the object store once; every trial reads them.
        tune.with_parameters(
            tune_trainable,
            data=data.without("test"),
            model_name=space.model,
            cpus=max(1, int(cpus)),
            metric=space.metric,
            mode=space.mode,
        ),
        {"cpu": cpus, "gpu": space.resources["gpu"]},
    )
    if resume:
        # Errored trials stay recorded as errors; unfinished ones continue from their checkpoints.
        return tune.Tuner.restore(
            str(paths.run_dir), trainable, resume_unfinished=True, resume_errored=False
        )

    grid = space.search["searcher"] == "grid"
    if max_concurrent is None:
        # One trial per CPU (and GPU) slot of the (local or remote) cluster. An autoscaling
        # cluster grows only when trials wait: let up to 8 wait (search.max_concurrent sets it).
        total = ray.cluster_resources()
        slots = total.get("CPU", os.cpu_count() or 1) // cpus
        if space.resources["gpu"]:
            slots = min(slots, total.get("GPU", 0) // space.resources["gpu"])
        if _autoscaling():
            slots = max(slots, min(8, space.num_trials))
        max_concurrent = max(1, int(slots))
    return tune.Tuner(
        trainable,
        # A grid is Tune's own grid_search over whole trial configs (conditional knobs included).
        param_space={"grid": tune.grid_search(space.grid())} if grid else None,
        tune_config=tune.TuneConfig(
            search_alg=make_searcher(space),
            scheduler=make_scheduler(space),
            num_samples=1 if grid else space.search["num_samples"],
            max_concurrent_trials=max_concurrent,
            time_budget_s=space.search["time_budget_s"],
        ),
        run_config=tune.RunConfig(
            name=paths.name,
            storage_path=paths.storage,
            # The best checkpoint per trial (what export takes); Ray also keeps the latest (for
            # resume) until the run ends, when prune_checkpoints drops it.
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=1,
                checkpoint_score_attribute=space.metric,
                checkpoint_score_order=space.mode,
            ),
            failure_config=tune.FailureConfig(max_failures=space.search["max_failures"]),
            callbacks=[ProgressPrinter(space.metric)],
            verbose=0,  # ProgressPrinter's one line per event instead of Tune's tables
        ),
    )


def prune_checkpoints(run_dir: Path, metric: str, mode: str) -> dict[str, float]:
    """Keep only each trial's best checkpoint once a run is over; return the disk use.

    Ray keeps the best checkpoint and the latest (to resume from); a finished
    run needs only the best (what ``peftsearch export`` takes), and only its
    trained parameters: the optimizer state (twice the parameters, for AdamW)
    is dropped.
    """
    import shutil

    import torch

    from reports.atomic import atomic_write
    from search.export import best_of
    from trainables.trial import CHECKPOINT_FILE

    removed = 0
    for trial_dir in (d for d in run_dir.iterdir() if d.is_dir()):
        ckpts = sorted(trial_dir.glob("checkpoint_*"))
        if len(ckpts) < 2:
            continue  # (the state files are slimmed below)
        best = best_of(ckpts, metric, mode)  # the one export takes
        for c in ckpts:
            if c != best:
                shutil.rmtree(c, ignore_errors=True)
                removed += 1
    for state_file in run_dir.glob(f"*/checkpoint_*/{CHECKPOINT_FILE}"):
        state = torch.load(state_file, weights_only=True)  # never a pickle from the folder
        if "optimizer" in state:
            slim = {k: state[k] for k in ("trainable", "step", "best", "config") if k in state}
            atomic_write(state_file, lambda tmp, slim=slim: torch.save(slim, tmp))
    size = sum(f.stat().st_size for f in run_dir.glob("*/checkpoint_*/**/*") if f.is_file())
    return {"checkpoint_mb": round(size / 2**20, 2), "checkpoints_removed": removed}


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
    """Run a search and write ``trials.parquet``, ``curves.parquet`` and ``report.html``.

    ``space`` is a :class:`Space`, a space file, or a shipped space's name.
    Any key of the space can be overridden: ``overrides`` as ``KEY=VALUE``
    strings or a ``{KEY: value}`` mapping, or as keyword arguments with
    ``__`` for the dots (``train__epochs=1``, ``search__num_samples=4``).
    Everything that can be checked is checked before Ray starts; a bad space
    raises :class:`search.space.SpaceError` and writes nothing.
    Returns :class:`search.results.RunResults`.
    """
    from search import results as results_mod

    started = time.time()
    if isinstance(overrides, dict):
        overrides = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    extra = list(overrides) + [f"{k.replace('__', '.')}={json.dumps(v)}" for k, v in keys.items()]
    if num_samples is not None:
        extra.append(f"search.num_samples={num_samples}")
    if not isinstance(space, Space):
        space = load_space(space, extra)
    elif extra:
        from search.space import apply_overrides

        space = validate(apply_overrides(space.raw, extra), space.source)
    if max_concurrent is None:
        max_concurrent = space.search.get("max_concurrent")
    from search.space import check_name

    if check_name(name, "--name"):
        raise SpaceError(space.source, check_name(name, "--name"))
    check_storage(
        space, storage or space.storage, name or space.name, "--storage" if storage else "storage"
    )
    paths, resuming = choose_run(space, name, storage or space.storage, resume)
    if resuming:
        # The space as it was first run: a resumed search continues the same experiment.
        saved = yaml.safe_load((paths.run_dir / SPACE_FILE).read_text())
        space = validate(saved, str(paths.run_dir / SPACE_FILE))
        print(f"resuming {paths.run_dir}", flush=True)
    check_resources(space, address)
    config = check_fit(space)
    data = prepare_data(space, progress=not quiet, features=wants_features(space, config))

    init_ray(address)
    if address:
        check_cluster(space)
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    if not resuming:
        write_text_atomic(paths.run_dir / SPACE_FILE, yaml.safe_dump(space.raw, sort_keys=False))
    previous = _read_run_file(paths.run_dir)
    record = {
        "status": "running",
        "space": space.source,
        "started": previous.get("started", started),
        "data": data.meta,
        "argv": sys.argv,
        "resources": space.resources,
        "sessions": previous.get("sessions", 0) + 1,
    }
    write_json_atomic(paths.run_dir / RUN_FILE, {**previous, **record})
    tuner = build_tuner(space, data, paths, resuming, max_concurrent)
    interrupted, live = False, None
    fit_started = time.time()
    try:
        grid = tuner.fit()
        # Tune's in-memory trials: their status is right where the saved state can be stale.
        live = getattr(getattr(grid, "_experiment_analysis", None), "trials", None)
    except KeyboardInterrupt:
        interrupted = True
    # Whatever happened, write what finished: results come from Tune's folder.
    wall = time.time() - started + (previous.get("wall_time_s") or 0.0) * resuming
    res = results_mod.collect(
        paths.run_dir, space=space, data=data, live_trials=live, wall_time_s=wall
    )
    # Tune ends fit() quietly on Ctrl-C; unfinished trials mean the run can resume.
    done = int(res.trials["status"].isin(["TERMINATED", "ERROR"]).sum())
    budget = space.search["time_budget_s"]
    out_of_time = budget is not None and time.time() - fit_started >= budget
    complete = not interrupted and (done >= space.num_trials or out_of_time)
    res.complete = complete
    disk = prune_checkpoints(paths.run_dir, space.metric, space.mode) if complete else {}
    res.disk = disk
    write_json_atomic(
        paths.run_dir / RUN_FILE,
        {
            **previous,
            **record,
            "status": "finished" if complete else "interrupted",
            "stopped_by_time_budget": bool(out_of_time and done < space.num_trials),
            "wall_time_s": round(wall, 1),
            **disk,
        },
    )
    if interrupted:
        raise KeyboardInterrupt
    return res
