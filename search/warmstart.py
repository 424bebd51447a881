"""Warm starts: earlier runs' configurations and results seed a new search.

``search.warm_start`` lists earlier run folders (local paths or URIs). Each is
matched against the new search on two things:

- **the model**: the same weights - the SHA-256 of every ``*.safetensors`` /
  ``*.bin`` file of a local model folder (whole files: about 1 s per GB) -
  where both runs have a local folder, else the same model id (a Hub id, an
  alias);
- **the data**: the same data fingerprint (:func:`trainables.data.fingerprint`:
  the files' SHA-256 or the Hub name and configuration, the columns, the task,
  ``max_length``, the split seed, fractions and sample caps).

Model and data both the same: the earlier trials are the new search's own
kind of evidence, and go into the searcher's Optuna study as finished trials
(``optuna.trial.create_trial`` + ``study.add_trial``; Ray's
``evaluated_rewards`` refuses a define-by-run space) - completed ones with the
new search's objective values, those a scheduler stopped as PRUNED with their
per-round values (as :class:`search.searcher.PeftOptunaSearch` tells Optuna
about its own), failed and unfinished ones not at all. Only a trial the new
space could have run is added: its method and every knob inside the new
space's distributions, its fixed settings equal. Against a layer mask
(``layers: {mask: true}``) an earlier trial's layers, in any form (a mask,
``all``, ``top_4``, a list), become the mask's per-layer bits; layers that do
not fit the model's layer count keep the trial out (its bits are left to the
sampler when only its configuration is enqueued).

Model or data alone the same: the earlier run's best configuration per method
is enqueued first, without its results (knobs outside the new space are left
to the sampler).

Refused, before Ray starts (a :class:`search.space.SpaceError`, exit 2): a
folder that is not a run; a run on the other task kind (classification vs
regression); a run whose label set differs while its data is the same source
(the same files or Hub set and columns: the data changed since) or the same
data; a run that shares neither model nor data. A run on other data with
other labels (SST-2 for AG News) is taken: its configurations only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from search.results import NotARunError, require_run
from search.rundir import CURVES_FILE, SPACE_FILE, TRIALS_FILE, RunDir
from search.space import Space, SpaceError, mask_params
from trainables.data import PreparedData, file_sha256
from trainables.loop import TrainConfig
from trainables.methods import METHODS
from trainables.methods._layers import select_layers

WEIGHT_SUFFIXES = (".safetensors", ".bin")
# Config keys that do not change what a trial learns: never compared.
NOT_SETTINGS = ("method", "seed", "eval_batch_size")


# -- fingerprints ---------------------------------------------------------------------------


def model_fingerprint(model: str) -> dict[str, Any]:
    """``{"id": the model as named, "weights_sha256": ...}``: the hash of the weights files of a
    local model folder (alias or path; the whole of each file), None for a Hub id."""
    import hashlib

    from trainables.model import resolve_model

    try:
        path = Path(resolve_model(model))
    except FileNotFoundError:  # an alias whose package is not installed
        path = Path(model)
    files = sorted(p for p in path.glob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if not path.is_dir() or not files:
        return {"id": model, "weights_sha256": None}
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}:{file_sha256(f)}\n".encode())
    return {"id": model, "weights_sha256": h.hexdigest()}


def same_model(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """How two model fingerprints match: ``"weights"``, ``"id"``, or None.

    Where both have weights hashes, the hashes decide (a folder whose files
    changed is another model, whatever its name).
    """
    if a.get("weights_sha256") and b.get("weights_sha256"):
        return "weights" if a["weights_sha256"] == b["weights_sha256"] else None
    return "id" if a.get("id") == b.get("id") else None


# -- an earlier run -------------------------------------------------------------------------


@dataclass
class Earlier:
    """An earlier run as a warm start reads it: its record, trials and curves (no pickles)."""

    given: str  # as listed in search.warm_start
    run: RunDir
    record: dict[str, Any]
    trials: pd.DataFrame
    curves: pd.DataFrame | None

    @classmethod
    def read(cls, given: str) -> Earlier:
        """Read a run folder (local or a URI); :class:`NotARunError` if it holds no run."""
        run = require_run(given)
        curves = run.read_parquet(CURVES_FILE) if run.exists(CURVES_FILE) else None
        return cls(given, run, run.read_record(), run.read_parquet(TRIALS_FILE), curves)

    def _column(self, name: str) -> Any:
        values = self.trials[name].dropna() if name in self.trials else []
        return values.iloc[0] if len(values) else None

    @property
    def data_meta(self) -> dict[str, Any]:
        return self.record.get("data") or {}

    @cached_property
    def model(self) -> dict[str, Any]:
        """Its model fingerprint: as recorded, else computed now from its model id."""
        recorded = (self.record.get("fingerprint") or {}).get("model")
        if recorded:
            return recorded
        model = self.data_meta.get("model") or self._column("model")
        if model is None and self.run.exists(SPACE_FILE):
            raw = yaml.safe_load(self.run.read_text(SPACE_FILE)) or {}
            model = (raw.get("experiment") or {}).get("model", "minilm")
        return model_fingerprint(str(model))

    @property
    def data(self) -> dict[str, Any] | None:
        """Its data fingerprint (None for runs from before fingerprints were recorded)."""
        return self.data_meta.get("fingerprint")

    @property
    def task(self) -> str | None:
        return self.data_meta.get("task") or self._column("task")

    @property
    def labels(self) -> list[str] | None:
        names = self.data_meta.get("label_names")
        if names is None and self._column("label_names") is not None:
            names = json.loads(str(self._column("label_names")))
        return [str(n) for n in names] if names is not None else None

    def configs(self) -> list[tuple[pd.Series, dict[str, Any]]]:
        """(trial row, its flat config) for every trial."""
        return [(row, json.loads(row["config_json"])) for _, row in self.trials.iterrows()]

    def intermediate(self, trial_id: str, metric: str) -> dict[int, float]:
        """The trial's value of ``metric`` at each evaluation round (its curve)."""
        c = self.curves
        if c is None or metric not in c:
            return {}
        rows = c[(c["trial_id"] == trial_id) & c[metric].notna()]
        return {int(i): float(v) for i, v in zip(rows["iteration"], rows[metric])}


# -- the new space's view of a configuration ------------------------------------------------


class _Recorder:
    """Stands in for an Optuna trial while :class:`search.searcher.DefineByRun` runs for one
    method: it records the distribution of every name it suggests, so that what the searcher
    samples (:meth:`search.space.Dist.suggest`) has one owner."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.distributions: dict[str, Any] = {}

    def suggest_categorical(self, name: str, choices) -> Any:
        from optuna.distributions import CategoricalDistribution

        self.distributions[name] = CategoricalDistribution(list(choices))
        return self.method if name == "method" else choices[0]

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False):
        from optuna.distributions import IntDistribution

        self.distributions[name] = IntDistribution(low, high, log=log, step=step)
        return low

    def suggest_float(self, name: str, low: float, high: float, step=None, log: bool = False):
        from optuna.distributions import FloatDistribution

        self.distributions[name] = FloatDistribution(low, high, log=log, step=step)
        return low


def _inside(distribution, value: Any) -> bool:
    try:
        return bool(distribution._contains(distribution.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False


def _default(method: str, key: str) -> Any:
    """What a trial uses for a key its config does not set: the knob's or the loop's default."""
    knob = METHODS[method].knob(key)
    if knob is not None:
        return knob.default
    return next((f.default for f in fields(TrainConfig) if f.name == key), None)


def _searched(space: Space, method: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(distribution of every name the searcher samples, constants) for a trial of ``method``:
    what :class:`search.searcher.DefineByRun` gives it."""
    from search.searcher import DefineByRun

    rec = _Recorder(method)
    constants = DefineByRun(space)(rec)
    return rec.distributions, constants


def _as_params(space: Space, config: dict[str, Any], exact: bool) -> tuple[dict, dict, str | None]:
    """(params, their distributions, why not) of a flat trial config in the new space's terms.

    ``exact``: the config must be one the new space can run (a knob outside its
    distribution, a fixed setting that differs: why not); else knobs outside
    are left out (the sampler chooses them).
    """
    method = config.get("method")
    if method not in space.methods:
        return {}, {}, f"method {method} is not in this space"
    dists, constants = _searched(space, method)
    bits, why = _mask_bits(space, method, config)
    if why and exact:
        return {}, {}, why

    def value(key: str) -> Any:
        return config.get(key, _default(method, key))

    params = {"method": method}
    for name, dist in dists.items():
        key = name.partition(".")[2]
        if name == "method" or (why and key.startswith("layers.")):
            continue  # a selection that does not fit the model: the sampler chooses its bits
        given = bits[name] if name in bits else value(key)
        if _inside(dist, given):
            params[name] = given
        elif exact:
            return {}, {}, f"{key}={given!r} is outside this space"
    if exact:
        fixed = {name.partition(".")[2]: v for name, v in constants.items()}
        searched = {name.partition(".")[2] for name in dists} | ({"layers"} if bits else set())
        for key in (set(config) | set(fixed)) - set(NOT_SETTINGS) - searched:
            want = fixed.get(key, _default(method, key))
            if value(key) != want:
                return {}, {}, f"{key}={value(key)!r} where this space runs {want!r}"
    return params, {n: dists[n] for n in params}, None


def _mask_bits(space: Space, method: str, config: dict[str, Any]) -> tuple[dict, str | None]:
    """A layer mask's parameters (``<method>.layers.<i>`` -> bool) for the layers a config
    selects, whatever its form (a mask, ``all``, ``top_4``, a list): ({}, None) where the
    space has no mask; ({}, why) where the selection does not fit the model's layer count."""
    dist = space.method_space(method).get("layers")
    if dist is None or dist.kind != "mask":
        return {}, None
    value = config.get("layers", _default(method, "layers"))
    try:
        chosen = set(select_layers(value, dist.bits))
    except (ValueError, TypeError) as e:
        return {}, f"{e} (this space's layer mask has {dist.bits} bits)"
    names = mask_params(f"{method}.layers", dist.bits)
    return {name: i in chosen for i, name in enumerate(names)}, None


# -- the plan -------------------------------------------------------------------------------


@dataclass
class WarmStart:
    """What a new search reuses: finished trials for the study, configurations to run first,
    and what each earlier run gave (the run's record keeps :meth:`summary`)."""

    fingerprint: dict[str, Any]  # this run's: {"model": ..., "data": ...}
    completed: list[Any] = field(default_factory=list)  # optuna FrozenTrials
    enqueued: list[dict[str, Any]] = field(default_factory=list)  # searcher params, in order
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def methods(self) -> set[str]:
        """Methods the warm start already covers (seeded results or an enqueued configuration)."""
        return {t.params["method"] for t in self.completed} | {p["method"] for p in self.enqueued}

    def points(self, first: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        """The searcher's points to evaluate: the warm configurations first, then ``first``
        (one point per method) for the methods the warm start does not cover."""
        rest = [p for p in first or [] if p["method"] not in self.methods]
        return [*self.enqueued, *rest] or None

    def seed(self, searcher) -> None:
        """Add the finished trials to the searcher's Optuna study (there once it has a space)."""
        for trial in self.completed:
            searcher._ot_study.add_trial(trial)

    def summary(self) -> dict[str, Any]:
        """What was reused, per earlier run and in all."""
        return {
            "runs": self.runs,
            "trials_seeded": sum(r.get("trials_seeded", 0) for r in self.runs),
            "configurations_enqueued": len(self.enqueued),
        }

    def record(self) -> dict[str, Any]:
        """Entries for the run's record: this run's fingerprints (the data's digest: the whole
        data fingerprint is in the record's data), and the warm start if any."""
        data = (self.fingerprint.get("data") or {}).get("digest")
        return {
            "fingerprint": {"model": self.fingerprint["model"], "data": data},
            **({"warm_start": self.summary()} if self.runs else {}),
        }

    def describe(self) -> str:
        """One line per earlier run, for the console."""
        lines = []
        for r in self.runs:
            if r["reused"] == "results":
                what = f"{r['trials_seeded']} trials seeded into the study ({r['skipped']} skipped)"
            else:
                what = f"best configuration per method first ({r['configurations_enqueued']})"
            lines.append(f"warm start from {r['run']} (same {' and '.join(r['same'])}): {what}")
        return "\n".join(lines)


def plan_warm_start(space: Space, data: PreparedData, quiet: bool = False) -> WarmStart:
    """Match every run of ``search.warm_start`` against this search and build what it reuses
    (said on the console unless ``quiet``); this run's fingerprints in any case.

    Raises :class:`search.space.SpaceError` listing every refused run at once: the driver
    calls it before Ray starts and before anything is written. Not on resume: a resumed
    search's study holds what its first session seeded.
    """
    this = {"model": model_fingerprint(space.model), "data": data.meta.get("fingerprint")}
    warm = WarmStart(fingerprint=this)
    problems = []
    for i, given in enumerate(space.search.warm_start or []):
        key = f"search.warm_start[{i}]"
        try:
            earlier = Earlier.read(given)
        except NotARunError as e:
            problems.append((key, f"{e}: give the folder of an earlier `peftsearch run` "
                             "(<storage>/<name>), or remove it from search.warm_start"))  # fmt: skip
            continue
        except (OSError, ValueError, KeyError) as e:
            problems.append((key, f"{given}: cannot read the run ({e}); remove it or fix it"))
            continue
        same, why = _match(this, earlier, data)
        if why:
            problems.append((key, f"{earlier.run.uri}: {why}; remove it from search.warm_start"))
            continue
        warm.runs.append(_reuse(warm, space, earlier, same))
    if problems:
        raise SpaceError(space.source, problems)
    if warm.runs and not quiet:
        print(warm.describe(), flush=True)
    return warm


def _match(this: dict, earlier: Earlier, data: PreparedData) -> tuple[list[str], str | None]:
    """(what is the same: ``model``, ``data``), or why the run cannot warm-start this search."""
    task, labels = earlier.task, earlier.labels
    if task and task != data.task:
        return [], (
            f"a {task} run, and this search is {data.task}: neither its configurations nor its "
            "results carry over"
        )
    model = same_model(this["model"], earlier.model)
    fp = earlier.data
    same_data = bool(fp and this["data"] and fp.get("digest") == this["data"].get("digest"))
    same_source = bool(
        fp
        and this["data"]
        and (fp.get("source"), fp.get("columns"))
        == (this["data"]["source"], this["data"]["columns"])
    )
    now = [str(n) for n in data.label_names]
    other_labels = data.task == "classification" and labels is not None and labels != now
    if other_labels and (same_data or same_source):
        return [], (
            f"its label set {labels} differs from this search's {now} on the same data "
            f"source ({earlier.data_meta.get('dataset')}): the data changed since that run. "
            "A different label set is refused on the same data; on other data (SST-2 for "
            "AG News) a run is taken, for its configurations only"
        )
    if not model and not same_data:
        return [], (
            f"neither the same model ({earlier.model.get('id')} vs {this['model']['id']}: "
            "another id, or other weights) nor the same data (file hashes or Hub name and "
            "configuration, columns, split seed, fractions, caps, max_length): nothing to reuse"
        )
    return [w for w, ok in (("model", model), ("data", same_data)) if ok], None


def _reuse(warm: WarmStart, space: Space, earlier: Earlier, same: list[str]) -> dict[str, Any]:
    """Add what one matched run gives to ``warm``; return its entry in the summary."""
    entry: dict[str, Any] = {"run": earlier.run.uri, "same": same}
    if same == ["model", "data"]:
        seeded, skipped = _seed_trials(warm, space, earlier)
        entry.update(reused="results", trials_seeded=seeded, skipped=skipped)
        if seeded:
            return entry
        # Not one of its trials fits this space's settings: its best configurations still help.
        entry["reused"] = "configurations (no trial fits this space's settings)"
    queued, resampled = _enqueue_best(warm, space, earlier)
    entry.setdefault("reused", "configurations")
    entry.update(configurations_enqueued=queued, knobs_resampled=resampled)
    return entry


def _seed_trials(warm: WarmStart, space: Space, earlier: Earlier) -> tuple[int, dict[str, int]]:
    """Finished trials for the study: (how many, skipped by reason)."""
    import optuna

    columns = [space.metric, *space.search.costs]
    single = len(columns) == 1
    # Where each seeded trial came from, beside Tune's trial_id on the study's own trials.
    origin = {"warm_start_run": earlier.run.uri}
    seeded, skipped = 0, {"errored": 0, "unfinished": 0, "missing_values": 0, "outside_space": 0}
    for row, config in earlier.configs():
        if row["status"] == "ERROR":
            skipped["errored"] += 1
            continue
        if row["status"] != "TERMINATED":
            skipped["unfinished"] += 1
            continue
        params, dists, why = _as_params(space, config, exact=True)
        if why:
            skipped["outside_space"] += 1
            continue
        if bool(row.get("stopped_early")):
            # As PeftOptunaSearch tells Optuna a trial the scheduler stopped: PRUNED, with its
            # per-round values where Optuna takes them (one objective).
            steps = earlier.intermediate(row["trial_id"], space.metric) if single else {}
            trial = optuna.trial.create_trial(
                state=optuna.trial.TrialState.PRUNED, params=params, distributions=dists,
                intermediate_values=steps or None,
                user_attrs={**origin, "warm_start_trial_id": row["trial_id"]},
            )  # fmt: skip
        else:
            values = [row.get(c) for c in columns]
            if any(v is None or pd.isna(v) for v in values):
                skipped["missing_values"] += 1
                continue
            trial = optuna.trial.create_trial(
                values=[float(v) for v in values], params=params, distributions=dists,
                user_attrs={**origin, "warm_start_trial_id": row["trial_id"]},
            )  # fmt: skip
        warm.completed.append(trial)
        seeded += 1
    return seeded, skipped


def _enqueue_best(warm: WarmStart, space: Space, earlier: Earlier) -> tuple[list[dict], int]:
    """The earlier run's best configuration per method (by its own ranking metric), best first,
    queued on ``warm``: (the configurations as sampled knobs, knobs left to the sampler)."""
    from reports.figure_data import healthy, rank

    best = rank(healthy(earlier.trials)).drop_duplicates("method")
    queued, resampled = [], 0
    for _, row in best.iterrows():
        params, _, _ = _as_params(space, json.loads(row["config_json"]), exact=False)
        if not params or params in warm.enqueued:
            continue
        resampled += len(_searched(space, params["method"])[0]) - len(params)
        warm.enqueued.append(params)
        queued.append({k.partition(".")[2] or k: v for k, v in params.items()})
    return queued, resampled
