"""The run folder: every file a run writes, named here once.

A run lives at ``<storage>/<name>/``, which is also Tune's experiment folder
(its trial folders, ``experiment_state-*.json``, ``tuner.pkl``). peftsearch
adds these files beside Tune's:

============================  =====================================================
``space.yaml``                the space as run (after ``--set``); a resume reads it
``run.json``                  the driver's record: status, sessions, data, wall time
``trials.parquet``            one row per trial (:mod:`search.results`)
``curves.parquet``            one row per evaluation round
``confirm.parquet``           ``peftsearch confirm``'s retrainings, tested once
``report.html``, ``pareto.svg``  the report and its static figure
============================  =====================================================

A checkpoint's own files are :mod:`trainables.checkpoint`'s. Files are
reached through a ``pyarrow.fs`` filesystem, so a local folder, a shared
(NFS) path and an ``s3://`` or ``gs://`` URI are one code path; local writes
are atomic (temporary file, fsync, rename).
"""

from __future__ import annotations

import io
import json
import os
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
# A table's run-level facts (DataFrame.attrs: which knobs are log-scaled) in its Parquet metadata.
ATTRS_KEY = b"peftsearch.attrs"


def is_uri(storage: str) -> bool:
    """Whether ``storage`` names a remote filesystem (``s3://``, ``gs://``, ...)."""
    return "://" in storage and not storage.startswith("file://")


def resolve_storage(storage: str) -> str:
    """An absolute local path (Ray wants one), or the URI as given."""
    if is_uri(storage):
        return storage.rstrip("/")
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
        where = resolve_storage(str(path)).rstrip("/")
        storage, _, name = where.rpartition("/")
        return cls(storage or "/", name)

    @classmethod
    def of(cls, storage: str, name: str) -> RunDir:
        return cls(resolve_storage(storage), name)

    @property
    def uri(self) -> str:
        """The folder as Ray and people name it: a local path or a URI."""
        return f"{self.storage}/{self.name}"

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
        return fs.FileSystem.from_uri(self.uri)

    @property
    def fs(self):
        """The ``pyarrow.fs`` filesystem holding the folder."""
        return self._fs[0]

    def path(self, file: str) -> str:
        """A file of the run, as a path in :attr:`fs`."""
        return f"{self._fs[1]}/{file}"

    def sibling(self, name: str) -> RunDir:
        """Another run folder in the same storage."""
        return RunDir(self.storage, name)

    # -- what is there ---------------------------------------------------------------------

    def exists(self, file: str | None = None) -> bool:
        """Whether the folder (or one of its files) exists."""
        from pyarrow import fs

        target = self.path(file) if file else self._fs[1]
        return self.fs.get_file_info(target).type != fs.FileType.NotFound

    def is_run(self) -> bool:
        """Whether the folder holds a run's results (its trials table)."""
        return self.exists(TRIALS_FILE)

    def mkdir(self) -> None:
        self.fs.create_dir(self._fs[1], recursive=True)

    def trial_dirs(self) -> list[Path]:
        """Tune's trial folders (local storage)."""
        return sorted(d for d in self.local.iterdir() if d.is_dir())

    def checkpoint_dirs(self, trial_id: str | None = None) -> list[Path]:
        """The checkpoint folders of every trial, or of one (local storage)."""
        pattern = f"*_{trial_id}_*" if trial_id else "*"
        return sorted(
            c for d in self.local.glob(pattern) if d.is_dir() for c in d.glob("checkpoint_*")
        )

    # -- reading ---------------------------------------------------------------------------

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

    # -- writing (never half a file) -------------------------------------------------------

    def write_bytes(self, file: str, data: bytes) -> Path | str:
        """Write ``data`` to a file of the run: atomically on a local disk (temporary file, fsync,
        rename); an object store replaces an object whole. Returns the file (a local Path or a
        URI)."""
        if self.is_local:
            from trainables.atomic import atomic_write

            return atomic_write(self.local / file, lambda tmp: tmp.write_bytes(data))
        with self.fs.open_output_stream(self.path(file)) as f:
            f.write(data)
        return f"{self.uri}/{file}"

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
        """Why the folder cannot be made here (local storage; None: it can, or remote)."""
        if not self.is_local:
            return None
        target = Path(os.path.abspath(self.local))
        probe = target
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if probe.exists() and not probe.is_dir():
            return f"{probe} is not a folder, so {target} cannot be made"
        if not os.access(probe, os.W_OK | os.X_OK):
            return f"{probe} is not writable, so {target} cannot be made"
        return None
