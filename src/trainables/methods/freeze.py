"""Partial freezing: everything below encoder layer ``freeze_layers`` is frozen.

Layers ``k..`` train, and so does whatever runs after layer ``k`` starts
(after the last layer when every layer is frozen): BERT's pooler, ModernBERT's
final norm, DeBERTa's convolution when ``k = 0`` (it runs after layer 0), the
head. The rest stays frozen: the embeddings and what feeds every layer
(DeBERTa's relative embeddings and their norm). So "the bottom ``k`` layers
frozen" holds, and with ``k`` = all layers nothing below the head's input
trains (the feature cache trains the same parameters).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from trainables.methods._arch import base_blocks, layer_modules, run_order
from trainables.methods._base import LAST_LAYER, Knob, Method, freeze_base


def apply(model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
    """Freeze everything that runs before layer ``freeze_layers`` (see the module docstring)."""
    k = knobs["freeze_layers"]
    layers = layer_modules(model)
    if k > len(layers):
        raise ValueError(f"freeze: freeze_layers={k} but the model has {len(layers)} layers")
    freeze_base(model)  # the head trains
    order = run_order(model)
    ran = [[order[m] for m in roots if m in order] for roots in layers]
    cut = min(s for s, _ in ran[k]) if k < len(layers) else max(e for _, e in ran[-1])
    for block, _ in base_blocks(model):
        # A block that never runs as a module (DeBERTa's relative embeddings) feeds the layers.
        if block in order and order[block][0] >= cut:
            block.requires_grad_(True)
    return model


METHOD = Method(
    name="freeze",
    apply=apply,
    help="the embeddings and the bottom k layers frozen; upper layers (and what follows them) + head train",
    knobs=(
        Knob(
            "freeze_layers",
            "int",
            4,
            low=0,
            high=1000,
            help="k: encoder layers frozen from the bottom",
        ),
    ),
    # Every layer frozen: the head's vector is cached; k of them: the hidden states entering k.
    frozen=lambda knobs, config: (
        LAST_LAYER
        if knobs.get("freeze_layers", 0) >= config.num_hidden_layers
        else knobs.get("freeze_layers") or None
    ),
    export="transformers",
)
