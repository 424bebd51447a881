"""Partial freezing: the embeddings and the bottom ``freeze_layers`` layers are frozen.

What lies above - upper layers, the pooler or final norm, the head - trains.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from trainables.methods._arch import encoder_layers, layer_index
from trainables.methods._base import Knob, Method


def apply(model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
    """Freeze the embeddings and layers ``0 .. freeze_layers - 1``."""
    k = knobs["freeze_layers"]
    n_layers = len(encoder_layers(model))
    if k > n_layers:
        raise ValueError(f"freeze: freeze_layers={k} but the model has {n_layers} layers")
    prefix = model.base_model_prefix + "."
    for name, p in model.named_parameters():
        idx = layer_index(name)
        frozen = name.startswith(prefix) and ("embeddings" in name or (idx is not None and idx < k))
        p.requires_grad_(not frozen)
    return model


METHOD = Method(
    name="freeze",
    apply=apply,
    help="the bottom k layers and the embeddings frozen; upper layers + head train",
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
)
