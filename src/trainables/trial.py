"""One trial: build the model, apply the method, run the shared loop.

``run_trial`` is the single code path behind both a Ray Tune trial
(:func:`tune_trainable`) and ``peftsearch trial`` (no Ray).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import os
import tempfile
import time
from typing import Any

import torch

from trainables import checkpoint as checkpoint_format
from trainables import costs as cost_measures
from trainables import precision as amp
from trainables.data import PreparedData
from trainables.features import FeatureHead, uses_cache, with_cached_features
from trainables.layercache import install, layer_depth, with_layer_states
from trainables.loop import (
    SHARED_KEYS,
    EvalCallback,
    Generation,
    TrainConfig,
    eval_steps,
    evaluate,
    improves,
    train,
    trainable_state,
)
from trainables.methods import apply_method, get_method
from trainables.metrics import SEQ2SEQ, mode_of
from trainables.model import (
    count_new_parameters,
    count_parameters,
    load_model,
    load_tokenizer,
    set_threads,
)


def split_config(flat: dict[str, Any]) -> tuple[str, dict[str, Any], TrainConfig]:
    """Split a flat trial config into (method, method knobs, shared loop settings)."""
    if "method" not in flat:
        raise ValueError("trial config has no 'method'")
    method = get_method(flat["method"])
    shared = {k: v for k, v in flat.items() if k in SHARED_KEYS}
    knobs = {k: v for k, v in flat.items() if k not in SHARED_KEYS and k != "method"}
    return method.name, knobs, TrainConfig(**shared)


def build_model(model_name: str, data: PreparedData, method: str, knobs: dict, seed: int):
    """The pretrained model for the data's task (a new head or new cross-attention), with the
    method applied."""
    torch.manual_seed(seed)  # the head's (and adapters') initialisation
    model = load_model(model_name, data.task, data.label_names)
    model = apply_method(model, method, knobs)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device)


def accepts_token_types(model) -> bool:
    """Whether the model uses segment ids.

    DistilBERT and ModernBERT take none; RoBERTa (one type) and DeBERTa-v2
    (none by default) have no embedding for segment 1.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    takes = "token_type_ids" in inspect.signature(base.forward).parameters
    return takes and getattr(base.config, "type_vocab_size", 2) >= 2


def fit_data(model, data: PreparedData) -> PreparedData:
    """The data as this model takes it: segment ids dropped where it has none."""
    if accepts_token_types(model) or all(e.token_type_ids is None for e in data.splits.values()):
        return data
    splits = {k: dataclasses.replace(e, token_type_ids=None) for k, e in data.splits.items()}
    return dataclasses.replace(data, splits=splits)


def run_trial(
    flat_config: dict[str, Any],
    data: PreparedData,
    model_name: str,
    on_eval: EvalCallback,
    cpus: int = 1,
    resume: dict | None = None,
    test: bool = False,
    metric: str | None = None,
    mode: str | None = None,
    costs: bool = True,
    cost_scope: str | None = None,
) -> dict[str, Any]:
    """Train one configuration; every evaluation goes to ``on_eval``.

    The metrics handed to ``on_eval`` carry the method, the parameter counts
    and ``planned_iterations`` (the evaluation rounds this trial schedules),
    so a reader can tell a trial cut short by early stopping from a finished
    one, and ``data_splits``: the splits this trial was given (a search never
    gives the test split). ``metric`` / ``mode`` name the search's ranking
    metric (default: the data's, ``val_<experiment.metric>``): the result's
    ``best_score`` and ``best_step`` are its best round (the earliest, on a
    tie). With ``test`` (``peftsearch confirm`` only), that round's
    parameters are evaluated once on the test split: ``test_loss``,
    ``test_accuracy`` and ``test_<metric>``, per-label figures
    (``test_per_class``, ``test_confusion``: classification), ``test_step``
    (the round's step) and ``test_evaluations`` (1) in the result.
    With ``costs``, every result carries what the configuration costs
    (:mod:`trainables.costs`; measured once per structure and ``cost_scope``).
    Seq2seq: each evaluation generates too (``data.scoring``; the tokenizer loaded once here):
    ``val_rouge1`` ... ``val_chrf``, ``val_examples`` (JSON text); ``test`` generates on test.
    """
    if test and "test" not in data.splits:
        raise ValueError("test=True needs data with a test split")
    metric = metric or f"val_{data.scoring.metric}"
    mode = mode or mode_of(metric)
    set_threads(cpus)
    given = ",".join(sorted(data.splits))
    method, knobs, cfg = split_config(flat_config)
    started = time.perf_counter()
    model = build_model(model_name, data, method, knobs, cfg.seed)
    # Before the first report (Pareto-ASHA compares costs from the first rung), on the whole
    # model: a probe on cached features still runs the encoder when it serves.
    measured = costs and _measure_costs(model, method, knobs, model_name, data, cfg, cost_scope)
    model, data, cached, layer_k = on_caches(model, method, knobs, data)
    pad_id = data.meta.get("pad_token_id", 0)
    fixed = _fixed(model, method, data, cfg, cached, given, started, layer_k) | (measured or {})
    best: dict[str, Any] = {"score": None, "step": None, "state": None, "accuracy": None}
    memory = cost_measures.TrainMemory(model) if costs else None
    generation = generation_settings(model_name, data)

    def report(metrics: dict, get_state) -> None:
        metrics = as_reported(metrics, memory)
        if improves(metrics[metric], best["score"], mode):
            best.update(score=metrics[metric], step=metrics["step"])
            if test:
                best["state"] = trainable_state(model)
        accuracy = metrics.get("val_accuracy")  # none for regression
        if accuracy is not None and improves(accuracy, best["accuracy"], "max"):
            best["accuracy"] = accuracy
        on_eval({**metrics, **fixed}, get_state)

    name, splits = metric.removeprefix("val_"), data.splits
    last = train(
        model, splits["train"], splits["validation"], cfg, pad_id, report, resume, name,
        data.scoring.positive, memory.gate.training if memory else contextlib.nullcontext,
        generation,
    )  # fmt: skip
    out = {**last, **fixed, "best_score": best["score"], "best_step": best["step"]}
    out.update(memory.figures() if memory else {})
    out["best_val_accuracy"] = best["accuracy"]  # classification; None for regression
    if test:
        # Model selection on validation, then one look at test: the numbers a paper reports.
        model.load_state_dict(best["state"], strict=False)
        scores = _test(model, data, cfg, name, generation)
        out.update(scores, test_step=best["step"], test_evaluations=1)
    model = None  # free it before the caller's next trial (a GPU keeps memory otherwise)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # GPU memory otherwise stays held between trials
    return out


def as_reported(metrics: dict[str, Any], memory) -> dict[str, Any]:
    """A round's metrics as reported: with the training memory so far (``memory``, or None),
    the example generations as JSON text (a table cell, a Tune result, a checkpoint's meta)."""
    metrics = {**metrics, **(memory.figures() if memory else {})}
    if "val_examples" in metrics:
        metrics["val_examples"] = json.dumps(metrics["val_examples"])
    return metrics


def generation_settings(model_name: str, data: PreparedData) -> Generation | None:
    """How a seq2seq trial's evaluations generate (its tokenizer decodes); None otherwise."""
    if data.task != SEQ2SEQ:
        return None
    return Generation.of(load_tokenizer(model_name), data.scoring)


def on_caches(model, method: str, knobs: dict, data: PreparedData):
    """``(model, data, feature_cache, layer_cache_k)``: the model and data as this trial trains
    them, on the feature cache, the layer cache (from layer k) or neither. Seq2seq trains on
    neither: both cache encoder states for a classification head."""
    if data.task == SEQ2SEQ:
        return model, fit_data(model, data), False, None
    if data.features is not None and uses_cache(method, knobs, model.config):
        # Only the top trains: run it on the frozen encoder's cached outputs.
        return FeatureHead(model), with_cached_features(data), True, None
    data = fit_data(model, data)
    # Nothing below layer k trains: run from layer k on the cached states entering it.
    k = layer_cache_depth(model, method, knobs, data)
    return model, (with_layer_states(data, k) if k is not None else data), False, k


def layer_cache_depth(model, method: str, knobs: dict, data: PreparedData) -> int | None:
    """The depth k this trial runs from on the layer cache (installed in ``model``: see
    :mod:`trainables.layercache`), or None: no states for its depth, or an architecture the
    cache cannot serve (it then trains uncached, as it would without the cache)."""
    k = layer_depth(method, knobs, model.config)
    if k is None or k not in (data.layer_states or {}):
        return None
    return k if install(model, k) is None else None


def _fixed(model, method: str, data: PreparedData, cfg: TrainConfig, cached: bool, given: str,
           started: float, layer_k: int | None = None) -> dict[str, Any]:  # fmt: skip
    """What every result of a trial carries: its method, parameter counts, planned rounds,
    the caches it trained on (``feature_cache``; ``layer_cache_k``: the depth it ran from)."""
    trainable, total = count_parameters(model)
    return {
        "method": method,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_fraction": trainable / total,
        # Trained under every method (a warm-started decoder's cross-attention): no method of
        # the search can train fewer; the report shows the share without them.
        "new_params": count_new_parameters(model),
        "planned_iterations": len(eval_steps(len(data.splits["train"]), cfg)),
        "feature_cache": cached,
        "layer_cache_k": layer_k,
        "data_splits": given,
        "setup_s": time.perf_counter() - started,
    }


def _measure_costs(model, method: str, knobs: dict, model_name: str, data: PreparedData,
                   cfg: TrainConfig, scope: str | None) -> dict[str, Any]:  # fmt: skip
    """The inference costs of the freshly built model, once per structure and ``scope``.
    Seq2seq serves by generating: ``eval.max_new_tokens`` tokens with ``eval.num_beams``."""
    device = next(model.parameters()).device
    precision = amp.resolve(cfg.precision, device)
    max_length = int(data.meta.get("max_length") or 128)
    seq2seq = data.task == SEQ2SEQ
    gen = {
        "new_tokens": data.scoring.max_new_tokens if seq2seq else 0,
        "num_beams": data.scoring.num_beams if seq2seq else 1,
    }
    started = time.perf_counter()

    def measure() -> dict[str, Any]:
        return cost_measures.measure_inference(
            model, method, knobs, model_name, data.label_names, max_length, precision,
            data.task, **gen,
        )  # fmt: skip

    if scope is None:
        out = {**measure(), "costs_reused": False}
    else:
        serve = f"generate {gen['new_tokens']} x {gen['num_beams']}" if seq2seq else ""
        key = cost_measures.structure_key(model, method, precision, max_length, serve)
        out = cost_measures.cached_costs(key, scope, measure)
    return {**out, "costs_s": time.perf_counter() - started}


def _test(model, data: PreparedData, cfg: TrainConfig, metric: str,
          generation: Generation | None = None) -> dict[str, Any]:  # fmt: skip
    """The one evaluation of the test split, its keys named as such: ``val_mcc`` ->
    ``test_mcc``; the per-label figures as ``test_per_class`` and ``test_confusion``; seq2seq:
    generated on every test example (``test_rougeL``, ..., ``test_examples``)."""
    used = amp.resolve(cfg.precision, next(model.parameters()).device)
    pad_id, positive = data.meta.get("pad_token_id", 0), data.scoring.positive
    if generation is not None:  # the cap bounds each validation round's time; test: every example
        generation = dataclasses.replace(generation, max_samples=None)
    scores = evaluate(
        model, data.splits["test"], cfg.eval_batch_size, pad_id, used, metric, positive, True,
        generation,
    )  # fmt: skip
    out = {f"test_{k.removeprefix('val_')}": v for k, v in scores.items() if k.startswith("val_")}
    if "per_class" in scores:
        out.update(test_per_class=scores["per_class"], test_confusion=scores["confusion"])
    return out


def flat_config(tune_config: dict[str, Any]) -> dict[str, Any]:
    """A Tune trial's config as ``run_trial`` takes it.

    Tune's config names every sampled value ``<method>.<key>`` (a knob is
    sampled only for its method); a grid search nests the point under
    ``grid``. Both are undone here. A layer mask comes one bit per layer,
    ``<method>.layers.0`` (bottom) ... ``.layers.{n-1}`` (``search.space.mask_params``):
    folded into the one ``layers`` value the method takes, its mask string ``0b...``.
    """
    from trainables.methods._layers import mask_string

    config = {
        **tune_config.get("grid", {}),
        **{k: v for k, v in tune_config.items() if k != "grid"},
    }
    method = config.get("method")
    flat = {"method": method}
    prefix = f"{method}."
    flat.update({k[len(prefix) :]: v for k, v in config.items() if k.startswith(prefix)})
    bit = "layers."
    bits = {int(k[len(bit) :]): flat.pop(k) for k in list(flat) if k.startswith(bit)}
    if bits:
        if sorted(bits) != list(range(len(bits))):
            raise ValueError(f"layer mask bits {sorted(bits)}: expected 0..{len(bits) - 1}")
        flat["layers"] = mask_string([bits[i] for i in range(len(bits))])
    return flat


FAULT_ENV = "PEFTSEARCH_FAULT"


def _injected_fault(method: str, iteration: int, restored: bool) -> None:
    """Fault injection for the fault-tolerance tests; inert unless ``PEFTSEARCH_FAULT`` is set.

    ``PEFTSEARCH_FAULT=KIND@ROUND:METHOD[,...]`` (KIND ``raise`` or ``kill``)
    makes every trial of METHOD fail right after reporting evaluation round
    ROUND - on its first attempt only, so a retry from the checkpoint can finish.
    """
    if restored:
        return
    for spec in filter(None, os.environ.get(FAULT_ENV, "").split(",")):
        kind, _, rest = spec.partition("@")
        at, _, target = rest.partition(":")
        if target != method or int(at) != iteration:
            continue
        if kind == "kill":
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"injected fault ({FAULT_ENV}={spec})")


def tune_trainable(
    config: dict[str, Any],
    data: PreparedData,
    model_name: str,
    cpus: int,
    metric: str | None = None,
    mode: str | None = None,
    cost_scope: str | None = None,
) -> None:
    """The Ray Tune function trainable.

    ``cost_scope``: the search session whose trials share cost measurements (the driver gives
    each a fresh one); without it, this driver's Ray job and the experiment's name.

    Each evaluation is reported with a checkpoint of the trainable parameters
    and optimizer state, so a retried or restored trial continues from it.
    """
    from ray import tune

    flat = flat_config(config)

    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            resume = checkpoint_format.load(d)  # tensors only: a planted pickle never runs

    import ray

    # Where the trial ran: the node (several can share a host and IP) and its GPU share.
    ctx = ray.get_runtime_context()
    placed = {
        "node_id": ctx.get_node_id(),
        "gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids()),
    }
    rounds = 0

    def on_eval(metrics: dict, get_state) -> None:
        nonlocal rounds
        rounds += 1
        metrics = {**metrics, **placed}
        with tempfile.TemporaryDirectory() as d:
            checkpoint_format.save(d, get_state(), metrics)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        _injected_fault(flat["method"], rounds, restored=resume is not None)

    scope = cost_scope or f"{ctx.get_job_id()}:{tune.get_context().get_experiment_name()}"
    run_trial(
        flat, data, model_name, on_eval, cpus=cpus, resume=resume, metric=metric, mode=mode,
        cost_scope=scope,
    )  # fmt: skip
