"""Frozen-feature cache: encode once, train the top many times.

Methods that train only above a frozen encoder - ``linear_probe``,
``head_only``, ``adapter`` with placement ``top``, ``freeze`` with every layer
frozen - see the encoder only through the vector its head reads
(:func:`trainables.methods._arch.head_vector`). So the driver computes those
vectors once per search and split (:func:`cache_plan` says which), and such a
trial trains :class:`FeatureHead`: the model's own forward, with the base
encoder replaced by the cached vector (:func:`tail_logits`). The parameters
are the model's own: counts, checkpoints and exports are the same as without
the cache. Without the cache the frozen encoder runs in eval mode while
training too (:func:`trainables.model.train_mode`), as the cache computed it:
both paths train the same function.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling, SequenceClassifierOutput

from trainables.data import Encoded, PreparedData
from trainables.loop import collate
from trainables.methods._arch import head_vector, last_layer, pick_vector
from trainables.methods._base import HEAD, LAST_LAYER


@dataclass(frozen=True)
class CachePlan:
    """What the cache holds for an architecture, and which frozen depths it serves.

    ``vector``: ``first``, ``mean`` or ``last`` (the final hidden states reduced
    so) or ``pooler`` (the base model's pooler output). ``pooler_on_top``: the
    cache holds token 0 and the (sequence) pooler runs on it, so a trainable
    pooler is served too (BERT). ``last_layer``: why configurations frozen up
    to the last layer's output (a top adapter, every layer frozen) cannot use
    it, or None when they can.
    """

    vector: str
    pooler_on_top: bool
    last_layer: str | None


def _plan_of(model: nn.Module) -> CachePlan:
    from trainables.methods._arch import base_blocks, layer_modules, run_order

    reads = head_vector(model)
    base = getattr(model, model.base_model_prefix)
    pooler = getattr(base, "pooler", None) if reads == "pooler" else None
    on_top = pooler is not None and _pools_last_hidden_state(model, base, pooler)
    vector = "first" if on_top else reads
    why = None
    layers = layer_modules(model)
    if vector != "first":
        why = f"its head reads the {reads} vector, which a top module would change"
    elif not layers:
        why = "no encoder layers were found in it"
    else:
        order = run_order(model)
        end = max(order[m][1] for m in layers[-1] if m in order)
        after = [
            b
            for b, i in base_blocks(model)
            if i is None and b is not pooler and b in order and order[b][0] > end
            and any(True for _ in b.parameters())
        ]  # fmt: skip
        if after:
            why = f"{type(after[0]).__name__} runs between the last layer and the head"
    return CachePlan(vector, on_top, why)


def _pools_last_hidden_state(model: nn.Module, base: nn.Module, pooler: nn.Module) -> bool:
    """Whether the pooler reads the base model's final hidden states (BERT's does; CANINE's
    reads its downsampled sequence): then it can run on the cached token 0."""
    from trainables.methods._arch import probe_forward

    seen: dict[str, Any] = {}

    def pooled(module, args) -> None:
        seen.setdefault("input", args[0] if args else None)

    def returned(module, args, output) -> None:
        seen.setdefault("output", output[0])

    hooks = [pooler.register_forward_pre_hook(pooled), base.register_forward_hook(returned)]
    try:
        probe_forward(model)
    except RuntimeError:
        return False
    finally:
        for h in hooks:
            h.remove()
    return seen.get("input") is not None and seen.get("input") is seen.get("output")


_PLANS: dict[str, CachePlan] = {}


def cache_plan(config) -> CachePlan:
    """The :class:`CachePlan` of ``config``'s architecture (found once, on a weightless model)."""
    from transformers import AutoModelForSequenceClassification

    key = config.to_json_string(use_diff=False)
    if key not in _PLANS:
        with torch.device("meta"):
            _PLANS[key] = _plan_of(AutoModelForSequenceClassification.from_config(config))
    return _PLANS[key]


def cache_problem(method: str, knobs: dict[str, Any], config) -> str | None:
    """Why this configuration cannot use the cache, or None when it can (or needs none)."""
    from trainables.methods import get_method

    frozen = get_method(method).frozen(knobs, config)
    if isinstance(frozen, int) and frozen >= config.num_hidden_layers:
        frozen = LAST_LAYER  # no layer trains (an empty selection of layers): frozen to the top
    if frozen == LAST_LAYER:
        return cache_plan(config).last_layer
    return None if frozen == HEAD else "it trains inside the encoder"


def uses_cache(method: str, knobs: dict[str, Any], config) -> bool:
    """Whether this configuration trains only above the frozen encoder (the method says how far
    up it is frozen, :attr:`trainables.methods.Method.frozen`; the architecture what its head reads)."""
    return cache_problem(method, knobs, config) is None


class _CachedOutput(BaseModelOutputWithPooling):
    """The base model's output, with None for what the cache does not hold (Longformer's
    head reads ``global_attentions``)."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return None


class _Cached(nn.Module):
    """Stands in for the base model: returns the cached vector as its output."""

    def __init__(self, hidden: torch.Tensor, pooled: torch.Tensor | None) -> None:
        super().__init__()
        self.hidden, self.pooled = hidden, pooled

    def forward(self, *args, **kwargs) -> BaseModelOutputWithPooling:
        return _CachedOutput(last_hidden_state=self.hidden, pooler_output=self.pooled)


def tail_logits(model: nn.Module, h: torch.Tensor, plan: CachePlan | None = None) -> torch.Tensor:
    """The model's own forward from the cached vector to the logits.

    The base model is swapped for one that returns ``h`` as a one-token
    sequence (a first, mean or last token of one token is that token) and as
    the pooler output; the model's head code runs as it does on full inputs.
    """
    plan = plan or cache_plan(model.config)
    prefix = model.base_model_prefix
    base = model._modules[prefix]
    pooled = base.pooler(h[:, None]) if plan.pooler_on_top else h
    model._modules[prefix] = _Cached(h[:, None], pooled)
    try:
        ones = torch.ones(h.shape[0], 1, dtype=torch.long, device=h.device)
        return model(input_ids=ones, attention_mask=ones).logits
    finally:
        model._modules[prefix] = base


class FeatureHead(nn.Module):
    """Trains the top of ``model`` on cached features; called like a model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.adapter = getattr(last_layer(model), "top_adapter", None)
        self.plan = cache_plan(model.config)  # once: it is read at every step

    def forward(
        self, features: torch.Tensor, labels: torch.Tensor | None = None
    ) -> SequenceClassifierOutput:
        h = self.adapter(features) if self.adapter is not None else features
        logits = tail_logits(self.model, h, self.plan)
        from trainables.metrics import task_loss  # cross-entropy, or MSE for regression

        loss = task_loss(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def base_output(model: nn.Module, inputs: dict[str, torch.Tensor]):
    """The base model's output within the model's own forward (which may add inputs to it:
    Longformer's global attention on the first token)."""
    seen = []
    base = getattr(model, model.base_model_prefix)
    hook = base.register_forward_hook(lambda module, args, output: seen.append(output) and None)
    try:
        model(**inputs)
    finally:
        hook.remove()
    return seen[0]


@torch.no_grad()
def encode_features(
    model: nn.Module, split: Encoded, pad_id: int, batch_size: int = 64, bar=None
) -> np.ndarray:
    """The vectors the cache holds (:class:`CachePlan`) from the frozen, pretrained encoder."""
    device = next(model.eval().parameters()).device
    plan = cache_plan(model.config)
    plain = replace(split, features=None)  # collate pads token ids, not features
    out = np.empty((len(split), model.config.hidden_size), dtype=np.float32)
    takes_token_types = "token_type_ids" in inspect.signature(model.forward).parameters and (
        getattr(model.config, "type_vocab_size", 2) >= 2
    )
    order = np.argsort([len(s) for s in split.input_ids], kind="stable")  # little padding
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        inputs = collate(plain, idx, pad_id, device)
        inputs.pop("labels")
        if not takes_token_types:  # as the uncached trial does (trial.fit_data)
            inputs.pop("token_type_ids", None)
        output = base_output(model, inputs)
        vector = pick_vector(plan.vector, output, inputs.get("attention_mask"))
        out[idx] = vector.float().cpu().numpy()
        if bar is not None:
            bar.update(len(idx))
    return out


def add_features(
    data: PreparedData,
    model_name: str,
    splits: tuple[str, ...] = ("train", "validation"),
    progress: bool = False,
    precision: str = "fp32",
) -> PreparedData:
    """Compute the cache for ``splits`` into ``data.features`` (once per search).

    On the GPU when there is one, under ``precision``'s autocast (``auto``
    resolved for that device); the features are stored in fp32.
    """
    with torch.inference_mode(), frozen_pass(model_name, data, splits, precision, progress,
                                             "encoder features") as run:  # fmt: skip
        data.features = {
            s: encode_features(run.model, data.splits[s], run.pad_id, bar=run.bar)
            for s in run.splits
        }
    return data


@dataclass
class FrozenPass:
    """One pass of the pretrained model over some splits, done once per search (the feature
    and layer caches): the model on its device, the splits there are, the pad id, a progress
    bar over their examples."""

    model: nn.Module
    splits: tuple[str, ...]
    pad_id: int
    bar: Any


@contextlib.contextmanager
def frozen_pass(model_name: str, data: PreparedData, splits: tuple[str, ...], precision: str,
                progress: bool, desc: str):  # fmt: skip
    """The pretrained model (with an untrained head: nothing here reads it) on the GPU when
    there is one, under ``precision``'s autocast (``auto`` resolved for that device)."""
    from tqdm.auto import tqdm

    from trainables import precision as amp
    from trainables.model import load_classifier

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_classifier(model_name, data.num_labels).to(device)
    splits = tuple(s for s in splits if s in data.splits)
    total = sum(len(data.splits[s]) for s in splits)
    with (
        amp.autocast(device, amp.resolve(precision, device)),
        tqdm(total=total, desc=desc, unit="ex", disable=not progress, leave=False) as bar,
    ):
        yield FrozenPass(model, splits, data.meta.get("pad_token_id", 0), bar)


def with_cached_features(data: PreparedData) -> PreparedData:
    """The data with each split's features attached (what :class:`FeatureHead` reads)."""
    splits = {
        k: replace(e, features=data.features[k])
        for k, e in data.splits.items()
        if k in data.features
    }
    return replace(data, splits=splits)
