"""Layer cache: the hidden states entering encoder layer k, computed once per search.

A configuration that trains nothing below layer k (:attr:`Method.frozen` is an int k: ``freeze``
with k < L, a method placed in layers k and up) sees the bottom k layers only through the hidden
states they hand to layer k: the pretrained model's, without dropout (frozen layers run in eval
mode while training, :func:`trainables.model.train_mode`). So the driver computes them once per
search for every depth the space can produce (:func:`add_layer_states`: one forward pass over
train and validation serves every depth), stores them ragged (each example's tokens, no padding)
as fp32 or bf16, and they travel to the trials with the token ids, through Ray's object store.

Such a trial runs the model's own forward with layers 0..k-1 stubbed (:func:`install`): each
returns the batch's cached states in the output format of the real layer, and a hook hands them
to layer k (overriding whatever frozen module runs in between: DeBERTa's convolution after layer
0). The embeddings, the masks and everything from layer k up run as without the cache, so the
parameters, their counts, checkpoints and exports are the model's own. A call without cached
states (the cost probe, ``train_mode``'s probe, the test split in ``confirm``) runs the whole
model. Architectures it cannot serve (:func:`layer_problem`: a layer shared by every depth,
layers that change the sequence's length) train uncached.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from trainables.data import Encoded, PreparedData
from trainables.loop import collate, to_device

STORAGE = ("fp32", "bf16", "off")  # experiment.layer_cache
BYTES = {"fp32": 4, "bf16": 2}
BUDGET_ENV = "PEFTSEARCH_LAYER_CACHE_MB"  # the memory the cache may take, instead of the default
OFF_HINT = "set experiment.layer_cache: bf16 (half the memory) or off"


@dataclass(frozen=True)
class LayerStates:
    """One split's hidden states entering layer ``k``: every example's tokens, end to end.

    ``states``: (tokens, hidden), float32 or (bf16) int16 holding bf16's bits, as numpy has no
    bf16; example i is ``states[offsets[i]:offsets[i + 1]]``. Numpy arrays: a trial reads them
    from Ray's object store without a copy.
    """

    k: int
    states: np.ndarray
    offsets: np.ndarray
    storage: str

    def batch(self, idx: np.ndarray, width: int, device: torch.device) -> torch.Tensor:
        """The states of the examples at ``idx``, zero-padded to ``width`` tokens (as
        :func:`trainables.loop.collate` pads their ids: padding is masked out of attention)."""
        out = np.zeros((len(idx), width, self.states.shape[1]), dtype=self.states.dtype)
        for row, i in enumerate(idx):
            start, end = self.offsets[i], self.offsets[i + 1]
            out[row, : end - start] = self.states[start:end]
        tensor = to_device(out, device)
        return tensor.view(torch.bfloat16) if self.storage == "bf16" else tensor


# ------------------------------------------------------------------ which depths, which models


_PROBLEMS: dict[str, str | None] = {}


def layer_problem(config) -> str | None:
    """Why the cache cannot serve this architecture, or None (found once, on a weightless model)."""
    from transformers import AutoModelForSequenceClassification

    key = config.to_json_string(use_diff=False)
    if key not in _PROBLEMS:
        with torch.device("meta"):
            model = AutoModelForSequenceClassification.from_config(config)
        _PROBLEMS[key] = _structure_problem(model) or _probe(model)[1]
    return _PROBLEMS[key]


def _structure_problem(model: nn.Module) -> str | None:
    from trainables.methods._arch import layer_modules

    groups, n = layer_modules(model), model.config.num_hidden_layers
    if len(groups) < n:
        return f"its {n} depths share {len(groups)} layer module(s): no depth's states are its own"
    if len(groups) != n:
        return f"{len(groups)} layer modules were found for its {n} layers"
    if any(len(g) != 1 for g in groups):
        return "each of its layers is several modules side by side"
    return None


def layer_depth(method: str, knobs: dict[str, Any], config) -> int | None:
    """The depth k this configuration can train from (nothing below layer k trains or
    changes, 0 < k < L), or None. Whether the architecture allows it: :func:`layer_problem`."""
    from trainables.methods import get_method

    k = get_method(method).frozen(knobs, config)
    if isinstance(k, bool) or not isinstance(k, int):
        return None
    return k if 0 < k < config.num_hidden_layers else None


def cache_bytes(data: PreparedData, depths, storage: str, hidden: int,
                splits: tuple[str, ...] = ("train", "validation")) -> dict[int, int]:  # fmt: skip
    """Bytes the cache takes per depth: every token of ``splits``, ``hidden`` values each."""
    tokens = sum(len(s) for name in splits if name in data.splits
                 for s in data.splits[name].input_ids)  # fmt: skip
    return {k: tokens * hidden * BYTES[storage] for k in depths}


def memory_budget() -> tuple[int, str]:
    """Bytes the cache may take here, and what the figure is.

    The driver keeps the arrays and Ray's object store a copy of them; Ray gives its store 30%
    of the memory by default. With Ray running, its store's capacity (and at most half of what
    is available: the driver's copy). ``PEFTSEARCH_LAYER_CACHE_MB`` sets it instead.
    """
    import os

    import psutil

    if os.environ.get(BUDGET_ENV):
        return int(float(os.environ[BUDGET_ENV]) * 2**20), BUDGET_ENV
    available = psutil.virtual_memory().available
    try:
        import ray

        store = ray.cluster_resources().get("object_store_memory") if ray.is_initialized() else None
    except ImportError:  # pragma: no cover - ray is a dependency
        store = None
    if store:
        return int(min(store, available / 2)), "Ray's object store (at most half the free memory)"
    return int(0.3 * available), "30% of the free memory (Ray's object store's default share)"


def size_text(sizes: dict[int, int], storage: str) -> str:
    """``k=3, 4, 5: 3 x 41.2 MiB (fp32) = 123.6 MiB``."""
    mib = [b / 2**20 for b in sizes.values()]
    per = f"{mib[0]:.1f} MiB" if len(set(mib)) == 1 else "/".join(f"{m:.1f}" for m in mib) + " MiB"
    ks = ", ".join(map(str, sizes))
    return f"k={ks}: {len(sizes)} x {per} ({storage}) = {sum(mib):.1f} MiB"


def refusal(sizes: dict[int, int], storage: str, budget: int, where: str) -> str | None:
    """Why the cache does not fit (what to set instead), or None when it does."""
    if sum(sizes.values()) <= budget:
        return None
    return (
        f"the hidden states would take {size_text(sizes, storage)}, more than the "
        f"{budget / 2**20:.0f} MiB it may use ({where}): {OFF_HINT}, or cap "
        "experiment.max_train_samples / max_length"
    )


# ------------------------------------------------------------------ computing the states


class _Enough(Exception):
    """Raised entering the highest cached layer: nothing above it is needed."""


def _hidden_of(args: tuple, kwargs: dict) -> tuple[int | str, torch.Tensor | None]:
    """Where a layer's call holds its hidden states (position 0, or a keyword) and them."""
    if args:
        return 0, args[0]
    key = next((k for k in ("hidden_states", "hidden_state", "x") if k in kwargs), None)
    return (key, kwargs[key]) if key else (0, None)


def _layers(model: nn.Module) -> list[nn.Module]:
    from trainables.methods._arch import layer_modules

    return [group[0] for group in layer_modules(model)]


@torch.no_grad()
def encode_states(model: nn.Module, split: Encoded, pad_id: int, depths, storage: str,
                  batch_size: int = 64, bar=None) -> dict[int, LayerStates]:  # fmt: skip
    """The hidden states entering each layer of ``depths`` (the pretrained model, eval mode),
    from one forward per batch that stops at the highest of them."""
    from trainables.trial import accepts_token_types

    device = next(model.eval().parameters()).device
    layers, depths, seen = _layers(model), sorted(depths), {}

    def grab(k: int):
        def hook(module, args, kwargs):
            seen[k] = _hidden_of(args, kwargs)[1]
            if k == depths[-1]:
                raise _Enough

        return hook

    lengths = np.array([len(s) for s in split.input_ids], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    out: dict[int, np.ndarray] = {}
    plain = replace(split, features=None, layer_states=None)
    hooks = [layers[k].register_forward_pre_hook(grab(k), with_kwargs=True) for k in depths]
    try:
        for start in range(0, len(lengths), batch_size):
            idx = np.argsort(lengths, kind="stable")[start : start + batch_size]  # little padding
            inputs = collate(plain, idx, pad_id, device)
            inputs.pop("labels")
            if not accepts_token_types(model):  # as the trial does (trial.fit_data)
                inputs.pop("token_type_ids", None)
            with contextlib.suppress(_Enough):  # raised entering the highest depth cached
                model(**inputs)
            for k in depths:
                _store(out, k, seen[k], idx, lengths, offsets, storage)
            if bar is not None:
                bar.update(len(idx))
    finally:
        for h in hooks:
            h.remove()
    return {k: LayerStates(k, out[k], offsets, storage) for k in depths}


def _store(out: dict, k: int, hidden: torch.Tensor, idx, lengths, offsets, storage: str) -> None:
    """Copy each example's tokens of a padded batch into the ragged array of depth ``k``."""
    if storage == "bf16":
        host = hidden.to(torch.bfloat16).view(torch.int16).cpu().numpy()
    else:
        host = hidden.float().cpu().numpy()
    if k not in out:
        out[k] = np.empty((offsets[-1], host.shape[-1]), dtype=host.dtype)
    for row, i in enumerate(idx):
        out[k][offsets[i] : offsets[i + 1]] = host[row, : lengths[i]]


def add_layer_states(data: PreparedData, model_name: str, depths, storage: str = "fp32",
                     splits: tuple[str, ...] = ("train", "validation"), progress: bool = False,
                     precision: str = "fp32") -> PreparedData:  # fmt: skip
    """Compute the states entering each layer of ``depths`` for ``splits`` into
    ``data.layer_states`` (once per search), on the GPU when there is one, under ``precision``'s
    autocast; stored as ``storage`` (fp32 or bf16)."""
    from trainables.features import frozen_pass

    per_split = {}
    with frozen_pass(model_name, data, splits, precision, progress, "layer states") as run:
        for s in run.splits:
            per_split[s] = encode_states(run.model, data.splits[s], run.pad_id, depths, storage,
                                         bar=run.bar)  # fmt: skip
    data.layer_states = {k: {s: held[k] for s, held in per_split.items()} for k in sorted(depths)}
    return data


def with_layer_states(data: PreparedData, k: int) -> PreparedData:
    """The data with each split's states entering layer ``k`` attached (what collate reads)."""
    held = (data.layer_states or {}).get(k, {})
    splits = {name: replace(e, layer_states=held.get(name)) for name, e in data.splits.items()}
    return replace(data, splits=splits)


# ------------------------------------------------------------------ running from layer k


class _Stash:
    """The states of the batch in flight: set by each call of the model, None without them."""

    states: torch.Tensor | None = None


def _probe(model: nn.Module) -> tuple[list[int | None], str | None]:
    """Each layer's output format (None: a tensor; n: a tuple of n, the states first), from one
    probe forward; or the reason the cache cannot stand in for the layers."""
    from trainables.methods._arch import probe_forward

    layers, formats, shapes = _layers(model), {}, {}

    def seen(i: int):
        def hook(module, args, kwargs, output):
            formats.setdefault(i, len(output) if isinstance(output, tuple) else None)
            first = output[0] if isinstance(output, tuple) else output
            shapes.setdefault(i, (_hidden_of(args, kwargs)[1], first))

        return hook

    hooks = [m.register_forward_hook(seen(i), with_kwargs=True) for i, m in enumerate(layers)]
    try:
        probe_forward(model)
    except (RuntimeError, ValueError) as e:
        return [], f"its forward could not be probed ({e})"
    finally:
        for h in hooks:
            h.remove()
    for i in range(len(layers)):
        given, made = shapes.get(i, (None, None))
        if not (isinstance(given, torch.Tensor) and isinstance(made, torch.Tensor)):
            return [], f"layer {i} does not take and return its hidden states as a tensor"
        if given.shape[:2] != (1, 8) or made.shape != given.shape:
            return [], f"layer {i} changes the sequence's shape ({tuple(given.shape)} in)"
    return [formats[i] for i in range(len(layers))], None


def _as_input(stash: _Stash, like: torch.Tensor) -> torch.Tensor:
    states = stash.states
    if states.shape[:2] != like.shape[:2]:
        raise RuntimeError(
            f"layer cache: states of shape {tuple(states.shape)} for a batch of {tuple(like.shape)}"
        )
    return states.to(like.dtype)


def _stub(real, fmt: int | None, stash: _Stash):
    """A layer below k: the batch's cached states in the real layer's output format."""

    def forward(*args, **kwargs):
        if stash.states is None:
            return real(*args, **kwargs)
        states = _as_input(stash, _hidden_of(args, kwargs)[1])
        return states if fmt is None else (states, *([None] * (fmt - 1)))

    return forward


def _feed(stash: _Stash):
    """Layer k's pre-hook: its hidden states are the cached ones, whatever ran in between."""

    def hook(module, args, kwargs):
        if stash.states is None:
            return None
        where, given = _hidden_of(args, kwargs)
        states = _as_input(stash, given)
        if isinstance(where, str):
            return args, {**kwargs, where: states}
        return (states, *args[1:]), kwargs

    return hook


def install(model: nn.Module, k: int) -> str | None:
    """Run ``model`` from layer ``k`` on the cached states a call passes as ``layer_states``
    (see the module docstring); None once installed, else why it cannot be (nothing changed)."""
    problem = _structure_problem(model)
    formats, problem = ([], problem) if problem else _probe(model)
    if problem:
        return problem
    stash, layers = _Stash(), _layers(model)

    def take(module, args, kwargs):
        stash.states = kwargs.pop("layer_states", None)
        return args, kwargs

    model.register_forward_pre_hook(take, with_kwargs=True)
    for i in range(k):
        # The instance's forward: the module, its parameters and their names stay as they are.
        layers[i].forward = _stub(layers[i].forward, formats[i], stash)
    layers[k].register_forward_pre_hook(_feed(stash), with_kwargs=True)
    return None
