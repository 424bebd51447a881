"""Per-layer placement: which encoder layers a method lives in (its ``layers`` knob).

One owner for the value's grammar, shared by every method that lives in layers
(adapter, lora, ia3, prefix, mam, unipelt), the space validation and the layer
cache:

* ``all``, ``every_other`` (layers 0, 2, 4, ...), ``top_K``, ``bottom_K`` (K >= 1);
* a list of layer indices, bottom layer 0: ``[0, 3, 5]``;
* a layer mask, as AutoPEFT searches it: ``0b`` then one bit per layer, read
  left to right from the bottom layer (``0b110011``: layers 0, 1, 4, 5). A
  space asks for one with ``layers: {mask: true}``; the searcher samples one
  bit per layer and the results record the string.

An empty selection (an all-zero mask) is allowed: the method adds nothing and
only the head trains.

An encoder-decoder has two stacks of layers, the encoder's and the decoder's:
a value applies to each stack on its own (:func:`select_in_stacks`). Layer
``i`` is layer ``i`` of each stack: ``top_2`` is the encoder's top two and the
decoder's top two, ``[0]`` both bottom layers, and a mask has one bit per
layer of a stack, the same bits for both (``0b01``: each stack's layer 1).
Where the stacks differ in depth (T5 with ``num_decoder_layers``, distilled
BART) the named values still apply to each by its own depth, but a mask or an
index list must fit both stacks: a mask of either depth does not, and is
refused with the depths. Such a model's layer count for a searched mask is
None (:func:`stack_depth`).
"""

from __future__ import annotations

import re
from typing import Any

NAMED = ("all", "every_other")
_COUNTED = re.compile(r"^(top|bottom)_([1-9][0-9]*)$")
_MASK = re.compile(r"^0b[01]+$")
HELP = (
    "layers the method lives in: all, every_other, top_K, bottom_K, a list of layer indices "
    "(0 = bottom), or a mask 0b... (one bit per layer, bottom first); {mask: true} in a space "
    "searches one bit per layer"
)
DESCRIBE = "all, every_other, top_K, bottom_K, [i, ...] or 0b<bit per layer>"


def spec_problem(value: Any) -> str | None:
    """What is wrong with a ``layers`` value, by its grammar alone (None: nothing)."""
    if isinstance(value, str):
        if value in NAMED or _COUNTED.match(value) or _MASK.match(value):
            return None
        return f"must be {DESCRIBE}"
    if isinstance(value, (list, tuple)):
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value):
            return "a list of layer indices holds integers >= 0"
        if len(set(value)) != len(value):
            return "a list of layer indices names each layer once"
        return None
    return f"must be {DESCRIBE}"


def select_layers(value: Any, n: int, what: str = "the model") -> list[int]:
    """The layer indices (sorted, bottom 0) ``value`` selects in a model of ``n`` layers.

    A ValueError says what does not fit the model: ``top_8`` of 6 layers, a
    mask of the wrong length, an index past the top. ``what`` names the
    layers' owner in it (``the decoder`` for one stack of an encoder-decoder).
    """
    problem = spec_problem(value)
    if problem:
        raise ValueError(f"layers={value!r} {problem}")
    if value == "all":
        return list(range(n))
    if value == "every_other":
        return list(range(0, n, 2))
    if isinstance(value, str) and (m := _COUNTED.match(value)):
        k = int(m.group(2))
        if k > n:
            raise ValueError(f"layers={value!r} but {what} has {n} layers")
        return list(range(n - k, n)) if m.group(1) == "top" else list(range(k))
    if isinstance(value, str):  # a mask
        bits = value[2:]
        if len(bits) != n:
            raise ValueError(f"layers={value!r} has {len(bits)} bits but {what} has {n} layers")
        return [i for i, b in enumerate(bits) if b == "1"]
    if any(i >= n for i in value):
        raise ValueError(f"layers={list(value)!r} but {what} has layers 0..{n - 1}")
    return sorted(value)


def select_in_stacks(value: Any, depths: dict[str, int]) -> dict[str, list[int]]:
    """Per stack (``{"encoder": 6, "decoder": 6}``: its depth), the layers ``value`` selects in
    it: the value applied to each stack on its own (see the module docstring)."""
    return {stack: select_layers(value, n, f"the {stack}") for stack, n in depths.items()}


def stack_depth(depths: list[int]) -> int | None:
    """The layer count a mask has bits for, given each stack's depth: the depth all stacks
    share, None when they differ (no mask fits them all)."""
    return depths[0] if depths and len(set(depths)) == 1 else None


def mask_string(bits: list[Any]) -> str:
    """The mask string of per-layer booleans (bottom layer first): ``[1, 1, 0]`` -> ``0b110``."""
    return "0b" + "".join("1" if b else "0" for b in bits)


def lowest_layer(value: Any, n: int) -> int | None:
    """The lowest layer ``value`` selects, or None when it selects none."""
    chosen = select_layers(value, n)
    return chosen[0] if chosen else None


def frozen_below(knobs: dict[str, Any], config) -> int | None:
    """A layer-placed method's :attr:`~trainables.methods._base.Method.frozen`: the lowest
    layer it lives in, when that is above layer 0 (the layers below it are frozen and
    unchanged); None when it starts at layer 0. None for an encoder-decoder: the caches that
    read this serve classifiers' encoders only."""
    if getattr(config, "is_encoder_decoder", False):
        return None
    n = config.num_hidden_layers
    try:
        low = lowest_layer(knobs.get("layers", "all"), n)
    except ValueError:
        return None  # apply() refuses it, with the reason
    return n if low is None else (low or None)
