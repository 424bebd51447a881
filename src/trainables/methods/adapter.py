"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020; He et al. 2022).

A bottleneck ``up(act(down(x)))``, placed in every selected layer
(``layers``) or, with placement ``top``, once on the encoder's final hidden
states (``layers`` is then ignored). ``up`` starts at zero, so the adapted
model begins exactly as the pretrained one.

* ``adapter_insertion``: ``sequential`` rewrites a sublayer's output ``h``
  as ``h + up(act(down(h)))``; ``parallel`` (He et al. 2022) reads the
  sublayer's input ``x`` and adds ``s * up(act(down(x)))`` to its output,
  before the residual and norm. The input is taken, through the shared role
  discovery, where the sublayer's input projection reads it (the query
  projection for attention, the first feed-forward projection for the
  feed-forward block); the scaled bottleneck joins the output projection's
  output (attention output, feed-forward output).
* ``adapter_position``: after (or beside) the ``ffn`` block, the
  ``attention`` block, or ``both``.
* ``adapter_scaling``: ``s`` of a parallel adapter, a number or ``learned``
  (a trained scalar per adapter, starting at 1). Sequential adapters ignore
  it, as other methods ignore knobs of a variant they do not use.
* ``adapter_variant`` is a preset: ``pfeiffer`` (sequential, ffn, norms
  frozen) or ``houlsby`` (sequential, both, the layers' LayerNorms train, as
  in the paper). The knobs above default to ``auto`` (from the preset); a
  value given overrides the preset.

Parameters per adapter: ``2 * hidden * size + size + hidden`` (+1 with a
learned scale). With ``adapter_train_layernorm`` the LayerNorms inside the
selected layers train too; a ``top`` adapter sits in no layer, so it trains none.

On an encoder-decoder, adapters go in the selected layers of both stacks
(``layers`` applies to each stack). In a decoder layer, position
``attention`` is its self-attention (after its output projection, or beside
it reading the self-attention's input): He et al. place adapters after the
attention and feed-forward sublayers, and the cross-attention, new in the
decoder, is left as it is - so every layer, encoder or decoder, holds the same
adapters (one per block: ``ffn`` 1, ``attention`` 1, ``both`` 2). The
LayerNorms that ``adapter_train_layernorm`` trains are all those in the selected
layers (a decoder layer's three). Placement ``top`` is refused there: no
classification head reads the encoder's final states.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trainables.methods._arch import (
    Roles,
    arch_of,
    is_encoder_decoder,
    last_layer,
    layer_groups,
    norms_in_layers,
)
from trainables.methods._base import LAST_LAYER, Knob, Method, freeze_base, layers_knob
from trainables.methods._layers import frozen_below

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}
# adapter_position -> the blocks; block -> (the role that reads its input, the one that writes it)
POSITIONS = {"ffn": ("ffn",), "attention": ("attention",), "both": ("attention", "ffn")}
BLOCKS = {"attention": ("query", "attn_out"), "ffn": ("ffn_in", "ffn_out")}
# adapter_variant -> what it sets (adapter_insertion, adapter_position, adapter_train_layernorm)
PRESETS = {"pfeiffer": ("sequential", "ffn", False), "houlsby": ("sequential", "both", True)}
LEARNED = "learned"


class Bottleneck(nn.Module):
    """down -> activation -> up, added to its input (:meth:`delta`: without the input)."""

    def __init__(self, hidden: int, size: int, activation: str, out: int | None = None) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, size)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(size, out or hidden)
        # down keeps nn.Linear's default init: with a tiny down, up's gradient
        # (the bottleneck activations) is tiny too and the adapter barely learns.
        nn.init.zeros_(self.up.weight)  # identity at the start
        nn.init.zeros_(self.up.bias)

    def delta(self, x):
        return self.up(self.act(self.down(x)))

    def forward(self, x):
        return x + self.delta(x)


class Wrapped(nn.Module):
    """A module that stands where a projection ``base`` was: its ``weight`` is still the
    projection's, for model code that reads it (T5's feed-forward casts to ``wo.weight``'s
    dtype)."""

    base: nn.Linear

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight


class AdaptedLinear(Wrapped):
    """A frozen projection followed by a trainable sequential adapter; with ``gate`` (a module
    mapping the projection's output to a multiplier in (0, 1): UniPELT) the adapter's change
    is scaled by it."""

    def __init__(
        self, base: nn.Linear, size: int, activation: str, gate: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.base = base
        self.adapter = Bottleneck(base.out_features, size, activation)
        if gate is not None:  # absent otherwise: parameter names stay those of plain adapters
            self.gate = gate

    def forward(self, x):
        h = self.base(x)
        gate = self._modules.get("gate")
        return self.adapter(h) if gate is None else h + gate(h) * self.adapter.delta(h)


class InputTap:
    """The input of ``source`` at its first call in each run of ``root`` (its layer), kept until
    :meth:`take` reads it.

    The first call, because a projection may run again on something else in the same layer
    (DeBERTa's shared query projection reads the relative embeddings after the hidden states);
    reset when the layer starts, so nothing stale survives a forward that failed midway, and a
    layer run at several depths (ALBERT) reads each depth's own input.
    """

    def __init__(self, source: nn.Module, root: nn.Module) -> None:
        self.x: torch.Tensor | None = None
        root.register_forward_pre_hook(self._reset)
        source.register_forward_pre_hook(self._keep)

    def _reset(self, module, args) -> None:
        self.x = None

    def _keep(self, module, args) -> None:
        if self.x is None and args:
            self.x = args[0]

    def take(self) -> torch.Tensor:
        x, self.x = self.x, None
        if x is None:
            raise RuntimeError("the sublayer's input projection did not run before its output")
        return x


def tap(model: nn.Module, roles: Roles, layer: int, role: str) -> tuple[InputTap, int]:
    """An :class:`InputTap` on the input of ``role``'s (first) projection in ``layer``, and its
    width."""
    found = roles.layers[layer]
    name = found.found[role][0]
    root = next(r for r in found.roots if name.startswith(r + "."))
    source = model.get_submodule(name)
    return InputTap(source, model.get_submodule(root)), source.in_features


class ParallelAdapted(Wrapped):
    """A frozen output projection plus ``scale * up(act(down(x)))`` of its sublayer's input ``x``."""

    def __init__(
        self, base: nn.Linear, tap: InputTap, width: int, size: int, activation: str, scaling
    ) -> None:
        super().__init__()
        self.base = base
        self.tap = tap
        self.adapter = Bottleneck(width, size, activation, out=base.out_features)
        if scaling == LEARNED:
            self.scale = nn.Parameter(torch.ones(()))
        else:
            self.scale = float(scaling)

    def forward(self, x):
        return self.base(x) + self.scale * self.adapter.delta(self.tap.take())


def _replace(model: nn.Module, name: str, build) -> None:
    """Put ``build(module)`` where the module ``name`` is, on its device and dtype."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    base = getattr(parent, child)
    setattr(parent, child, build(base).to(device=base.weight.device, dtype=base.weight.dtype))


def add_sequential(
    model: nn.Module, roles: Roles, blocks, layers, size: int, act: str, gate=None
) -> None:
    """Sequential adapters after the output projections of ``blocks`` in ``layers``; ``gate``:
    a function of the output width giving a gate module (UniPELT), or None."""
    outputs = [BLOCKS[b][1] for b in blocks]
    for name in roles.names(*outputs, layers=layers):
        _replace(
            model,
            name,
            lambda base: AdaptedLinear(base, size, act, gate(base.out_features) if gate else None),
        )


def add_parallel(
    model: nn.Module, roles: Roles, blocks, layers, size: int, act: str, scaling, method: str
) -> None:
    """Parallel adapters beside ``blocks`` in ``layers`` (see the module docstring)."""
    for block in blocks:
        reads, writes = BLOCKS[block]
        for i in layers:
            outs = roles.layers[i].found[writes]
            if len(outs) != 1:
                raise ValueError(
                    f"{method}: a parallel adapter needs one {writes} projection per layer; "
                    f"layer {i} has {len(outs)}"
                )
            source, width = tap(model, roles, i, reads)
            _replace(
                model,
                outs[0],
                lambda base, s=source, w=width: ParallelAdapted(base, s, w, size, act, scaling),
            )


@dataclass(frozen=True)
class Plan:
    """What a configuration places: the preset resolved, explicit knobs over it."""

    insertion: str
    blocks: tuple[str, ...]
    norms: bool


def plan(knobs: dict[str, Any]) -> Plan:
    """The preset (``adapter_variant``) with the explicit knobs over it."""
    insertion, position, norms = PRESETS[knobs["adapter_variant"]]
    given = knobs.get("adapter_insertion", "auto"), knobs.get("adapter_position", "auto")
    insertion = insertion if given[0] == "auto" else given[0]
    position = position if given[1] == "auto" else given[1]
    norms = (
        norms if knobs["adapter_train_layernorm"] == "auto" else knobs["adapter_train_layernorm"]
    )
    return Plan(insertion, POSITIONS[position], bool(norms))


def _top_hook(module: nn.Module, inputs, output):
    # Layers return a tensor or a tuple whose first item is the hidden states.
    if isinstance(output, tuple):
        return (module.top_adapter(output[0]), *output[1:])
    return module.top_adapter(output)


def _add_top(model: nn.Module, size: int, act: str) -> nn.Module:
    if is_encoder_decoder(model):
        raise ValueError(
            "adapter: placement top adapts the encoder's final states a classification head "
            "reads; an encoder-decoder has none (use placement layer)"
        )
    if len(layer_groups(model)) < model.config.num_hidden_layers:
        # Its last layer runs at every depth: a hook on it would adapt every depth.
        raise ValueError(
            f"adapter: placement top needs a last layer of its own; {model.config.model_type} "
            "reuses one layer at every depth (use placement layer)"
        )
    last = last_layer(model)
    ref = next(model.parameters())
    last.top_adapter = Bottleneck(model.config.hidden_size, size, act).to(ref.device, ref.dtype)
    last.register_forward_hook(_top_hook)
    return model


def apply(model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
    """Freeze the encoder and add adapters (see the module docstring)."""
    freeze_base(model)
    size, act = knobs["adapter_size"], knobs["adapter_activation"]
    if knobs["adapter_placement"] == "top":
        return _add_top(model, size, act)
    roles = arch_of(model, "adapter")
    layers = roles.select(knobs, "adapter")
    chosen = plan(knobs)
    try:
        roles.names(*(BLOCKS[b][1] for b in chosen.blocks))  # every layer has them: or refused
    except ValueError as e:
        raise ValueError(f"adapter: {e}") from None
    if chosen.norms:
        for m in norms_in_layers(model, layers):
            m.requires_grad_(True)
    if chosen.insertion == "parallel":
        scaling = knobs["adapter_scaling"]
        add_parallel(model, roles, chosen.blocks, layers, size, act, scaling, "adapter")
    else:
        add_sequential(model, roles, chosen.blocks, layers, size, act)
    return model


@dataclass(frozen=True)
class ScalingKnob(Knob):
    """A number >= 0 or ``learned``: the scale of a parallel adapter."""

    def check(self, value: Any) -> str | None:
        if value == LEARNED:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            return f"must be a number >= 0 or {LEARNED!r}"
        return None

    def describe(self) -> str:
        return f"a number >= 0 or {LEARNED}"


def size_knob(default: int) -> Knob:
    return Knob("adapter_size", "int", default, low=1, high=4096, log=True, help="bottleneck width")


def activation_knob() -> Knob:
    return Knob(
        "adapter_activation", "choice", "relu", choices=tuple(ACTIVATIONS), help="non-linearity"
    )


def scaling_knob(default: float) -> Knob:
    return ScalingKnob(
        "adapter_scaling",
        "float",
        default,
        low=0.0,
        help="parallel adapters: the bottleneck's output times s, or learned (a trained scalar "
        "per adapter); sequential adapters ignore it",
    )


METHOD = Method(
    name="adapter",
    apply=apply,
    help="bottleneck adapters, sequential or parallel (in the selected layers, or one on top) "
    "+ head; the encoder is frozen",
    knobs=(
        Knob(
            "adapter_placement",
            "choice",
            "layer",
            choices=("layer", "top"),
            help="layer: in the selected layers (layers); top: one adapter on the final hidden states",
        ),
        size_knob(16),
        Knob(
            "adapter_variant",
            "choice",
            "pfeiffer",
            choices=tuple(PRESETS),
            help="preset: pfeiffer (sequential, after the feed-forward block); houlsby (sequential, "
            "after attention and feed-forward, LayerNorms train); the knobs below override it",
        ),
        Knob(
            "adapter_insertion",
            "choice",
            "auto",
            choices=("auto", "sequential", "parallel"),
            help="sequential: on the sublayer's output; parallel: beside it, from its input "
            "(He et al. 2022); auto: the preset's (sequential)",
        ),
        Knob(
            "adapter_position",
            "choice",
            "auto",
            choices=("auto", *POSITIONS),
            help="the blocks adapted: ffn, attention or both; auto: the preset's",
        ),
        scaling_knob(1.0),
        activation_knob(),
        Knob(
            "adapter_train_layernorm",
            "choice",
            "auto",
            choices=("auto", True, False),
            help="placement layer: train the selected layers' LayerNorms too; auto: the preset's "
            "(houlsby, as in the paper; not pfeiffer)",
        ),
        layers_knob(),
    ),
    # A top adapter is position-wise on the last layer's output: it trains on cached features.
    frozen=lambda knobs, config: (
        LAST_LAYER if knobs.get("adapter_placement") == "top" else frozen_below(knobs, config)
    ),
)
