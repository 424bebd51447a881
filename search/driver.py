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

from search.space import Space, load_space, validate
from trainables.data import PreparedData, prepare
from trainables.model import load_tokenizer

RUN_FILE = "run.json"  # the driver's own record of a run (status, wall time)
SPACE_FILE = "space.yaml"  # the space as run (after --set), used on resume


class DefineByRun:
    """Optuna's define-by-run space: the method, then only that method's knobs.

    Sampled values are named ``<method>.<key>`` so that each method has its own
    learning-rate distribution (LoRA wants ~10x full fine-tuning's) and TPE
    models each method separately. Fixed values are returned as constants.
    A class, not a closure, so Tune can pickle the searcher for resume.
    """

    def __init__(self, space: Space) -> None:
        self.methods = {m: space.method_space(m) for m in space.methods}

    def __call__(self, trial) -> dict[str, Any]:
        method = trial.suggest_categorical("method", list(self.methods))
        constants: dict[str, Any] = {}
        for key, dist in self.methods[method].items():
            name = f"{method}.{key}"
            if dist.kind == "fixed":
                constants[name] = dist.value
            else:
                dist.suggest(trial, name)
        return constants


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
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


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

    from search.space import SpaceError
    from trainables.methods import apply_method
    from trainables.model import load_config

    try:
        config = load_config(space.model)
    except (OSError, ValueError) as e:
        raise SpaceError(
            space.source, [("experiment.model", f"cannot load {space.model!r}: {e}")]
        ) from None
    problems: list[tuple[str, str]] = []
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
    data = prepare(
        space.dataset,
        tokenizer,
        space.max_length,
        validation=space.split["validation"],
        test=space.split["test"],
        seed=space.seed,
        max_train=space.max_train_samples,
        max_eval=space.max_eval_samples,
    )
    data.meta.update(model=space.model, tokenize_s=round(time.perf_counter() - started, 2))
    if progress:
        sizes = ", ".join(f"{k} {len(v)}" for k, v in data.splits.items())
        print(
            f"data: {data.meta['dataset']} ({sizes}; {data.num_labels} labels), "
            f"tokenized once in {data.meta['tokenize_s']} s",
            flush=True,
        )
    if features:
        from trainables.features import add_features

        started = time.perf_counter()
        add_features(data, space.model)  # train and validation only: never the test split
        data.meta["features_s"] = round(time.perf_counter() - started, 2)
        if progress:
            print(
                f"frozen-encoder features cached once in {data.meta['features_s']} s "
                "(linear probe, top adapter, all layers frozen train on them)",
                flush=True,
            )
    return data


def _init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)


def build_tuner(
    space: Space, data: PreparedData, paths: RunPaths, resume: bool, max_concurrent: int | None
):
    """The Tune ``Tuner`` for a space (a new one, or one restored from ``paths``)."""
    import optuna
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    from search.progress import ProgressPrinter
    from trainables.trial import tune_trainable

    # Tune warns when small checkpoints are frequent; ours are, by design (one per evaluation).
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    cpus = space.resources["cpu"]
    trainable = tune.with_resources(
        # with_parameters puts the token ids in the object store once; every trial reads them.
        tune.with_parameters(
            tune_trainable,
            data=data.without("test"),
            model_name=space.model,
            cpus=max(1, int(cpus)),
        ),
        {"cpu": cpus, "gpu": space.resources["gpu"]},
    )
    if resume:
        return tune.Tuner.restore(
            str(paths.run_dir), trainable, resume_unfinished=True, resume_errored=True
        )

    metric, mode = space.search["metric"], space.search["mode"]
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
    searcher = OptunaSearch(space=DefineByRun(space), metric=metric, mode=mode, sampler=sampler)
    if space.scheduler["type"] == "asha":
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            max_t=space.max_t,
            grace_period=min(space.scheduler["grace_period"], space.max_t),
            reduction_factor=space.scheduler["reduction_factor"],
        )
    else:
        scheduler = FIFOScheduler()
    if max_concurrent is None:
        # One trial per CPU slot of the (local or remote) cluster.
        total = ray.cluster_resources().get("CPU", os.cpu_count() or 1)
        max_concurrent = max(1, int(total // cpus))
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            metric=metric,
            mode=mode,
            num_samples=n,
            max_concurrent_trials=max_concurrent,
        ),
        run_config=tune.RunConfig(
            name=paths.name,
            storage_path=paths.storage,
            # The best checkpoint per trial (what export takes); Ray also keeps the latest (for resume).
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=metric, checkpoint_score_order=mode
            ),
            failure_config=tune.FailureConfig(max_failures=0),
            callbacks=[ProgressPrinter(metric)],
            verbose=0,  # ProgressPrinter's one line per event instead of Tune's tables
        ),
    )


def run(
    space: Space | str | Path | None = None,
    *,
    name: str | None = None,
    storage: str | None = None,
    num_samples: int | None = None,
    max_concurrent: int | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    resume: bool = False,
    address: str | None = None,
    quiet: bool = False,
):
    """Run a search and write ``trials.parquet``, ``curves.parquet`` and ``report.html``.

    Everything that can be checked is checked before Ray starts; a bad space
    raises :class:`search.space.SpaceError` and writes nothing.
    Returns :class:`search.results.RunResults`.
    """
    from search import results as results_mod

    started = time.time()
    extra = list(overrides)
    if num_samples is not None:
        extra.append(f"search.num_samples={num_samples}")
    if not isinstance(space, Space):
        space = load_space(space, extra)
    elif extra:
        from search.space import apply_overrides

        space = validate(apply_overrides(space.raw, extra), space.source)
    if max_concurrent is None:
        max_concurrent = space.search.get("max_concurrent")
    paths, resuming = choose_run(space, name, storage or space.storage, resume)
    if resuming:
        # The space as it was first run: a resumed search continues the same experiment.
        saved = yaml.safe_load((paths.run_dir / SPACE_FILE).read_text())
        space = validate(saved, str(paths.run_dir / SPACE_FILE))
        print(f"resuming {paths.run_dir}", flush=True)
    config = check_fit(space)
    data = prepare_data(space, progress=not quiet, features=wants_features(space, config))

    _init_ray(address)
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    if not resuming:
        (paths.run_dir / SPACE_FILE).write_text(yaml.safe_dump(space.raw, sort_keys=False))
    record = {
        "status": "running",
        "space": space.source,
        "started": started,
        "data": data.meta,
        "argv": sys.argv,
    }
    write_json_atomic(paths.run_dir / RUN_FILE, {**_read_run_file(paths.run_dir), **record})
    tuner = build_tuner(space, data, paths, resuming, max_concurrent)
    interrupted = False
    try:
        tuner.fit()
    except KeyboardInterrupt:
        interrupted = True
    # Whatever happened, write what finished: results come from Tune's folder.
    res = results_mod.collect(paths.run_dir, space=space, data=data)
    # Tune ends fit() quietly on Ctrl-C; unfinished trials mean the run can resume.
    done = res.trials["status"].isin(["TERMINATED", "ERROR"]).sum()
    complete = not interrupted and done >= space.search["num_samples"]
    status = "finished" if complete else "interrupted"
    res.complete = complete
    write_json_atomic(
        paths.run_dir / RUN_FILE,
        {**record, "status": status, "wall_time_s": round(time.time() - started, 1)},
    )
    if interrupted:
        raise KeyboardInterrupt
    return res
