"""The run folder: every file a run writes, named here once.

A run lives at ``<storage>/<name>/``, which is also Tune's experiment folder
(its trial folders with their checkpoints, ``experiment_state-*.json``,
``tuner.pkl``). peftsearch adds these files beside Tune's:

==============================  =====================================================
``space.yaml``                  the space as run (after ``--set``); a resume reads it
``run.json``                    the driver's record: status, sessions, data, wall time
``trials.parquet``              one row per trial (:mod:`search.results`)
``curves.parquet``              one row per evaluation round
``confirm.parquet``             ``peftsearch confirm``'s retrainings, tested once
``report.html``, ``pareto.svg``  the report and its static figure
``optuna.journal``              the Optuna study (TPE, random), :mod:`search.tracking`
``mlflow.db``                   ``search.loggers: [mlflow]``'s store (no tracking URI given)
==============================  =====================================================

``search.loggers: [tensorboard]`` adds TensorBoard event files to each trial folder.

A checkpoint's own files are :mod:`trainables.checkpoint`'s. Every file is
reached through a ``pyarrow.fs`` filesystem, so a local folder, a shared (NFS)
path and an ``s3://`` or ``gs://`` URI are one code path: the storage is a
different filesystem, not different code. An S3-compatible server elsewhere
is named in the URI's query (``s3://bucket/runs?endpoint_override=host:9000&scheme=http``)
or by ``AWS_ENDPOINT_URL``. Local writes are atomic (temporary file, fsync,
rename); an object store replaces an object whole.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

SPACE_FILE = "space.yaml"
RUN_FILE = "run.json"
TRIALS_FILE = "trials.parquet"
CURVES_FILE = "curves.parquet"
CONFIRM_FILE = "confirm.parquet"
REPORT_FILE = "report.html"
FIGURE_FILE = "pareto.svg"  # beside the report (the page links it by this name)
# Written where a file can be appended to and locked: in a remote run folder they are kept in a
# local cache and uploaded (search.tracking).
JOURNAL_FILE = "optuna.journal"  # the Optuna study: optuna-dashboard and optuna.load_study read it
MLFLOW_FILE = "mlflow.db"  # MLflow's SQLite store, when MLFLOW_TRACKING_URI is not set
# A table's run-level facts (DataFrame.attrs: which knobs are log-scaled) in its Parquet metadata.
ATTRS_KEY = b"peftsearch.attrs"
CHECKPOINT_PREFIX = "checkpoint_"  # Tune's name for a trial's checkpoint folders


def is_uri(storage: str) -> bool:
    """Whether ``storage`` names a remote filesystem (``s3://``, ``gs://``, ...)."""
    return "://" in storage and not storage.startswith("file://")


def split_query(uri: str) -> tuple[str, str]:
    """(``s3://bucket/prefix``, ``?endpoint_override=...``): the location and the options."""
    base, sep, query = uri.partition("?")
    return base.rstrip("/"), sep + query


def resolve_storage(storage: str) -> str:
    """An absolute local path (Ray wants one), or the URI (its options kept)."""
    if is_uri(storage):
        base, query = split_query(storage)
        return base + query
    if storage.startswith("file://"):
        storage = storage[len("file://") :]
    return str(Path(storage).expanduser().resolve())


@dataclass(frozen=True)
class RunDir:
    """``<storage>/<name>/``: where one run's files are, and how to read and write them."""

    storage: str  # resolved (resolve_storage)
    name: str

    @classmethod
    def at(cls, path: str | Path) -> RunDir:
        """The run folder at ``path`` (a local folder or a URI)."""
        base, query = split_query(resolve_storage(str(path)))
        storage, _, name = base.rpartition("/")
        return cls((storage or "/") + query, name)

    @classmethod
    def of(cls, storage: str, name: str) -> RunDir:
        return cls(resolve_storage(storage), name)

    @property
    def uri(self) -> str:
        """The folder as people name it: a local path, or a URI with its options."""
        base, query = split_query(self.storage)
        return f"{base}/{self.name}{query}" if self.name else base + query

    @property
    def is_local(self) -> bool:
        return not is_uri(self.storage)

    @property
    def local(self) -> Path:
        """The folder on this machine (local storage only)."""
        if not self.is_local:
            raise ValueError(f"{self.uri} is not on this machine's filesystem")
        return Path(self.uri)

    @cached_property
    def _fs(self) -> tuple[Any, str]:
        from pyarrow import fs

        if self.is_local:
            return fs.LocalFileSystem(), self.uri
        filesystem, path = fs.FileSystem.from_uri(self.uri)
        return filesystem, path.rstrip("/")

    @property
    def fs(self):
        """The ``pyarrow.fs`` filesystem holding the folder."""
        return self._fs[0]

    @property
    def root(self) -> str:
        """The folder as a path in :attr:`fs`."""
        return self._fs[1]

    def path(self, file: str) -> str:
        """A file of the run, as a path in :attr:`fs`."""
        return f"{self.root}/{file}"

    def name_of(self, file: str) -> str:
        """A file of the run as people name it: a local path, or a URI with its options."""
        if self.is_local:
            return str(self.local / file)
        base, query = split_query(self.uri)
        return f"{base}/{file}{query}"

    def inside(self, folder: str, file: str) -> str:
        """``file`` in a folder of the run (a path in :attr:`fs`), relative to the run, as the
        readers below take it: ``run.read_json(run.inside(checkpoint_dir, "meta.json"))``."""
        path = f"{folder}/{file}"
        if not path.startswith(self.root + "/"):
            raise ValueError(f"{path} is not inside the run folder {self.root}")
        return path[len(self.root) + 1 :]

    def sibling(self, name: str) -> RunDir:
        """Another run folder in the same storage."""
        return RunDir(self.storage, name)

    # -- Tune's view of the folder ------------------------------------------------------------

    @property
    def tune_storage(self) -> tuple[str, Any]:
        """(storage_path, storage_filesystem) for Tune's RunConfig: a local path and None, or the
        bucket path and its filesystem (so the URI's options reach Tune and its workers)."""
        if self.is_local:
            return self.storage, None
        return self.root.rpartition("/")[0], self.fs

    @property
    def tune_path(self) -> tuple[str, Any]:
        """(path, storage_filesystem) of the experiment, for ``Tuner.restore`` and analysis."""
        return (self.uri, None) if self.is_local else (self.root, self.fs)

    # -- what is there ------------------------------------------------------------------------

    def _type(self, path: str):
        return self.fs.get_file_info(path).type

    def exists(self, file: str | None = None) -> bool:
        """Whether the folder (or one of its files) exists."""
        from pyarrow import fs

        return self._type(self.path(file) if file else self.root) != fs.FileType.NotFound

    def is_run(self) -> bool:
        """Whether the folder holds a run's results (its trials table)."""
        return self.exists(TRIALS_FILE)

    def mkdir(self) -> None:
        self.fs.create_dir(self.root, recursive=True)

    def _dirs(self, path: str) -> list[str]:
        from pyarrow import fs

        infos = self.fs.get_file_info(fs.FileSelector(path, allow_not_found=True))
        return sorted(i.path for i in infos if i.type == fs.FileType.Directory)

    def trial_dirs(self) -> list[str]:
        """Tune's trial folders (paths in :attr:`fs`)."""
        return self._dirs(self.root)

    def checkpoint_dirs(self, trial_id: str | None = None) -> list[str]:
        """The checkpoint folders of every trial, or of one (paths in :attr:`fs`)."""
        trials = [t for t in self.trial_dirs() if not trial_id or f"_{trial_id}_" in t]
        return [
            c
            for t in trials
            for c in self._dirs(t)
            if c.rpartition("/")[2].startswith(CHECKPOINT_PREFIX)
        ]

    @contextlib.contextmanager
    def local_copy(self, path: str) -> Iterator[Path]:
        """A folder of the run on this machine: itself when local, else a temporary download."""
        if self.is_local:
            yield Path(path)
            return
        from pyarrow import fs

        with tempfile.TemporaryDirectory() as tmp:
            fs.copy_files(path, tmp, source_filesystem=self.fs)
            yield Path(tmp)

    def upload(self, local: Path, path: str) -> None:
        """Replace the file at ``path`` (in :attr:`fs`) with a local file."""
        if self.is_local:
            from trainables.atomic import atomic_write

            atomic_write(path, lambda tmp: tmp.write_bytes(local.read_bytes()))
            return
        with self.fs.open_output_stream(path) as f:
            f.write(local.read_bytes())

    def delete_dir(self, path: str) -> None:
        """Remove a folder Tune wrote under the run (a checkpoint it no longer needs)."""
        if not path.startswith(self.root + "/"):
            raise ValueError(f"{path} is not inside the run folder {self.root}")
        self.fs.delete_dir(path)

    def size_bytes(self, paths: list[str]) -> int:
        """The bytes held under ``paths`` (folders)."""
        from pyarrow import fs

        return sum(
            i.size or 0
            for p in paths
            for i in self.fs.get_file_info(fs.FileSelector(p, recursive=True))
            if i.type == fs.FileType.File
        )

    # -- reading ------------------------------------------------------------------------------

    def read_bytes(self, file: str) -> bytes:
        with self.fs.open_input_stream(self.path(file)) as f:
            return f.read()

    def read_text(self, file: str) -> str:
        return self.read_bytes(file).decode("utf-8")

    def read_json(self, file: str, default: Any = None) -> Any:
        """A JSON file's value; ``default`` when it is missing or unreadable."""
        try:
            return json.loads(self.read_text(file))
        except (OSError, ValueError):
            return default

    def read_parquet(self, file: str) -> pd.DataFrame:
        """A Parquet table, with the metadata it was written with in ``DataFrame.attrs``."""
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(self.read_bytes(file)))
        df = table.to_pandas()
        attrs = (table.schema.metadata or {}).get(ATTRS_KEY)
        df.attrs.update(json.loads(attrs) if attrs else {})
        return df

    def read_record(self) -> dict:
        """The driver's record of the run (``{}`` if none)."""
        return self.read_json(RUN_FILE, {}) or {}

    # -- writing (never half a file) ----------------------------------------------------------

    def write_bytes(self, file: str, data: bytes) -> Path | str:
        """Write ``data`` to a file of the run: atomically on a local disk (temporary file, fsync,
        rename); an object store replaces an object whole. Returns the file (a local Path or a
        URI)."""
        if self.is_local:
            from trainables.atomic import atomic_write

            return atomic_write(self.local / file, lambda tmp: tmp.write_bytes(data))
        with self.fs.open_output_stream(self.path(file)) as f:
            f.write(data)
        return self.name_of(file)

    def write_text(self, file: str, text: str) -> Path | str:
        return self.write_bytes(file, text.encode("utf-8"))

    def write_json(self, file: str, obj: Any) -> Path | str:
        return self.write_text(file, json.dumps(obj, indent=2, default=str))

    def write_parquet(self, file: str, df: pd.DataFrame) -> Path | str:
        """A table, with ``df.attrs`` (run-level facts, not columns) in the file's metadata."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(df, preserve_index=False)
        if df.attrs:
            extra = {ATTRS_KEY: json.dumps(df.attrs, default=str).encode()}
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})
        buf = io.BytesIO()
        pq.write_table(table, buf)
        return self.write_bytes(file, buf.getvalue())

    def writable_problem(self) -> str | None:
        """Why the run cannot be written there, or None: a local folder that cannot be made,
        a bucket that does not exist, an endpoint that does not answer."""
        return self._local_problem() if self.is_local else self._remote_problem()

    def _local_problem(self) -> str | None:
        target = Path(os.path.abspath(self.local))
        probe = target
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if probe.exists() and not probe.is_dir():
            return f"{probe} is not a folder, so {target} cannot be made"
        if not os.access(probe, os.W_OK | os.X_OK):
            return f"{probe} is not writable, so {target} cannot be made"
        return None

    def _remote_problem(self) -> str | None:
        from pyarrow import fs

        bucket = self.root.split("/")[0]
        try:
            kind = self.fs.get_file_info(bucket).type
        except (OSError, ValueError) as e:
            return (
                f"cannot reach the storage ({str(e).splitlines()[0][:200]}): check the endpoint "
                "(the URI's endpoint_override / AWS_ENDPOINT_URL), the network and the credentials"
            )
        if kind == fs.FileType.NotFound:
            return f"the bucket {bucket!r} does not exist: create it, or choose another"
        return None
