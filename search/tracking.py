"""The tools people already use to look at runs: TensorBoard, MLflow, W&B, and the Optuna study.

``search.loggers`` names Ray Tune's own logger callbacks (:func:`callbacks`):

===============  ========================================================================
``tensorboard``  ``TBXLoggerCallback``: event files in each trial's folder, so
                 ``tensorboard --logdir <run folder>`` shows every trial
``mlflow``       ``MLflowLoggerCallback``: one MLflow run per trial (its config as
                 parameters, every reported result as metrics) in an experiment named
                 after the run; the store is ``MLFLOW_TRACKING_URI`` where it is set, else
                 ``mlflow.db`` (SQLite) in the run folder: MLflow 3 refuses its old file
                 store (``mlruns/``) unless told otherwise
``wandb``        ``WandbLoggerCallback``: one W&B run per trial, grouped by the run
                 (project ``WANDB_PROJECT``, default ``peftsearch``); offline, in each trial's
                 ``wandb/`` folder (``wandb sync``), unless ``WANDB_MODE`` or
                 ``WANDB_API_KEY`` is set
===============  ========================================================================

Without ``tensorboard`` no event files are written: Ray would add its TensorBoard logger to
every run, so the driver turns Ray's automatic loggers off and names the two the results are
read from (CSV and JSON) itself.

The Optuna study of a TPE or random search is kept in ``optuna.journal`` in the run folder
(:class:`RunJournal`), named after the run: ``optuna-dashboard <run>/optuna.journal`` opens
it, and ``optuna.load_study(study_name=None, storage=JournalStorage(JournalFileBackend(path)))``
reads it (a run's journal holds one study). Each trial Tune ran carries its Tune trial id as
the user attribute ``trial_id``, the key of the trials table.

A journal is appended to and locked, and SQLite writes in place: an object store (``s3://``)
does neither. A remote run keeps both files in a local cache folder (:func:`local_dir`) and
uploads them with every searcher checkpoint Tune saves, and when the run ends or is
interrupted; a resumed run downloads the newer copies first.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.storages import JournalStorage
from ray.air.integrations.mlflow import MLflowLoggerCallback

from search.rundir import JOURNAL_FILE, MLFLOW_FILE, RunDir, split_query

try:  # optuna >= 4.0
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
except ImportError:  # optuna 3.6: the same file format under the old names
    from optuna.storages import JournalFileOpenLock
    from optuna.storages import JournalFileStorage as JournalFileBackend

if TYPE_CHECKING:
    from search.space import Space

LOCAL_FILES = (JOURNAL_FILE, MLFLOW_FILE)  # kept in local_dir; uploaded for a remote run
MLFLOW_ARTIFACTS = "mlartifacts"  # the own store's artifact root (nothing is logged there)
WANDB_PROJECT = "peftsearch"
# The run a resume reopens, named by prepare(): Tune unpickles a resumed run's searcher and
# callbacks inside Tuner.restore and fit(), where nothing can hand them the run folder, and a
# folder moved or copied since must reopen its own journal and store, not the first one's.
_reopening: RunDir | None = None


def _here(run: RunDir) -> RunDir:
    """The run a pickled journal or logger belongs to now: the one being resumed, if any."""
    return _reopening if _reopening is not None else run


def local_dir(run: RunDir) -> Path:
    """Where the journal and MLflow's database are written: the run folder itself, or for a
    remote run a cache folder on this machine (``$XDG_CACHE_HOME/peftsearch/runs/...``)."""
    if run.is_local:
        return run.local
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(run.uri.encode()).hexdigest()[:12]
    return cache / "peftsearch" / "runs" / f"{run.name}-{digest}"


def study_name(run: RunDir) -> str:
    """The Optuna study's name: the run's."""
    return run.name


def _backend(run: RunDir) -> JournalFileBackend:
    path = local_dir(run) / JOURNAL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    # An O_EXCL lock file, not Optuna's default symlink: it works wherever a file can be made
    # (NFSv3+, filesystems without symlinks). One process writes; the lock is cheap.
    return JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))


class RunJournal(JournalStorage):
    """The run's Optuna journal (``optuna.journal``).

    Tune pickles the searcher, and with it this storage, for a resume. It is pickled as
    the run, not as a path: unpickled, it reopens the journal where this machine keeps it
    (:func:`local_dir`), so a remote run resumes on another machine too.
    """

    def __init__(self, run: RunDir) -> None:
        self.run = RunDir(run.storage, run.name)  # without its (unpicklable) cached filesystem
        super().__init__(_backend(self.run))

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_backend", None)  # the path on the machine that pickled it
        state["run"] = (self.run.storage, self.run.name)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = {**state, "run": _here(RunDir(*state["run"]))}
        super().__setstate__(state)
        self._backend = _backend(self.run)

    @property
    def path(self) -> Path:
        """The journal file on this machine."""
        return local_dir(self.run) / JOURNAL_FILE

    def sync(self) -> None:
        """Upload the journal (and MLflow's database) of a remote run; nothing for a local one."""
        upload(self.run)


def journal(run: RunDir) -> RunJournal:
    """The Optuna storage of a run's searcher (created empty, or reopened to resume)."""
    return RunJournal(run)


def upload(run: RunDir) -> list[str]:
    """Copy the locally kept files of a remote run into its folder; returns their names."""
    if run.is_local:
        return []
    done = []
    for name in LOCAL_FILES:
        path = local_dir(run) / name
        if path.is_file():
            run.upload(path, run.path(name))
            done.append(name)
    return done


def prepare(space: Space, run: RunDir, resume: bool) -> None:
    """Before Tune starts (or restores): the local copies of a remote run, and W&B's mode.

    A new remote run starts from an empty cache folder (a stale one of a run of the same
    name would otherwise leak into its study); a resumed one downloads each file its folder
    holds a newer copy of (another machine ran it since, or this cache is gone).
    """
    global _reopening
    _reopening = RunDir(run.storage, run.name) if resume else None
    if "wandb" in (space.search.loggers or []) and not _wandb_configured():
        # Ray's W&B logger asks for an API key unless W&B is offline: this process.
        os.environ["WANDB_MODE"] = "offline"
    if run.is_local:
        return
    cache = local_dir(run)
    if not resume:
        shutil.rmtree(cache, ignore_errors=True)
        return
    from pyarrow import fs

    cache.mkdir(parents=True, exist_ok=True)
    for name in LOCAL_FILES:
        info = run.fs.get_file_info(run.path(name))
        if info.type != fs.FileType.File:
            continue
        local = cache / name
        if local.is_file() and (
            info.mtime is None or info.mtime.timestamp() <= local.stat().st_mtime
        ):
            continue  # this machine's copy is as new (uploads copy it), or newer (a kill)
        local.write_bytes(run.read_bytes(name))


def _wandb_configured() -> bool:
    return bool(os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"))


def callbacks(space: Space, run: RunDir) -> list:
    """Ray Tune's logger callbacks for a run: CSV and JSON (the results read them), then those
    ``search.loggers`` names."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    out: list = [CSVLoggerCallback(), JsonLoggerCallback()]
    for name in space.search.loggers or []:
        if name == "tensorboard":
            from ray.tune.logger import TBXLoggerCallback

            out.append(TBXLoggerCallback())
        elif name == "mlflow":
            out.append(
                MLflowLogger(
                    run,
                    tracking_uri=os.environ.get("MLFLOW_TRACKING_URI") or None,
                    experiment_name=run.name,
                    # Without the URI's options: they may hold a bucket's keys.
                    tags={"peftsearch.run": split_query(run.uri)[0]},
                )
            )
        elif name == "wandb":
            from ray.air.integrations.wandb import WandbLoggerCallback

            mode = os.environ.get("WANDB_MODE")  # prepare() set "offline" unless configured
            out.append(
                WandbLoggerCallback(
                    project=os.environ.get("WANDB_PROJECT") or WANDB_PROJECT,
                    group=run.name,
                    # The logging actors are Ray workers, which do not see this process's env.
                    **({"mode": mode} if mode else {}),
                )
            )
    return out


def mlflow_uri(run: RunDir) -> str:
    """The run's own MLflow store: SQLite in the run folder (or its local cache)."""
    return f"sqlite:///{(local_dir(run) / MLFLOW_FILE).resolve()}"


class MLflowLogger(MLflowLoggerCallback):
    """Ray Tune's MLflow logger; without a tracking URI, the run's own store, found when Tune
    sets the callback up (a resumed remote run may be on another machine than the first)."""

    def __init__(self, run: RunDir, tracking_uri: str | None = None, **kwargs: Any) -> None:
        super().__init__(tracking_uri, **kwargs)
        self.run = RunDir(run.storage, run.name)
        self.own_store = tracking_uri is None

    def setup(self, *args: Any, **kwargs: Any) -> None:
        self.run = _here(self.run)
        if self.own_store:
            import logging

            from mlflow.tracking import MlflowClient

            # MLflow announces each migration of a new database on the console.
            logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
            logging.getLogger("alembic").setLevel(logging.WARNING)
            local_dir(self.run).mkdir(parents=True, exist_ok=True)
            self.tracking_uri = mlflow_uri(self.run)
            client = MlflowClient(self.tracking_uri)
            if client.get_experiment_by_name(self.experiment_name) is None:
                # Artifacts (none are logged) next to the store, not in the working folder.
                artifacts = (local_dir(self.run) / MLFLOW_ARTIFACTS).resolve().as_uri()
                client.create_experiment(self.experiment_name, artifact_location=artifacts)
        before = os.environ.get("MLFLOW_TRACKING_URI")
        super().setup(*args, **kwargs)
        if self.own_store:
            # mlflow.set_tracking_uri also exports it: the next run in this process would take
            # this run's store for a user's choice.
            if before is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = before

    def log_trial_start(self, trial: Any) -> None:
        if trial not in self._trial_runs:
            # A trial a resumed run continues goes on in its MLflow run (Ray would start another).
            from mlflow.tracking import MlflowClient

            found = MlflowClient(self.tracking_uri).search_runs(
                [self.mlflow_util.experiment_id], f"tags.trial_name = '{trial}'", max_results=1
            )
            if found:
                self._trial_runs[trial] = found[0].info.run_id
        super().log_trial_start(trial)


def record(space: Space, run: RunDir, searcher: bool) -> dict[str, Any]:
    """Where a run's study and logger outputs are, for the run's record (RUN_FILE)."""
    loggers = list(space.search.loggers or [])
    out: dict[str, Any] = {"loggers": loggers}
    if searcher:
        out.update(optuna_journal=JOURNAL_FILE, optuna_study=study_name(run))
    if "mlflow" in loggers:
        own = not os.environ.get("MLFLOW_TRACKING_URI")
        out["mlflow_tracking_uri"] = MLFLOW_FILE if own else os.environ["MLFLOW_TRACKING_URI"]
        out["mlflow_experiment"] = run.name
    if "tensorboard" in loggers:
        out["tensorboard_logdir"] = "."  # event files in each trial folder
    return out
