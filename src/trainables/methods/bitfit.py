"""BitFit (Ben Zaken et al. 2022): only the bias terms (and the head) train."""

from __future__ import annotations

from typing import Any

from torch import nn

from trainables.methods._base import Method, freeze_base


def apply(model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
    """Freeze the encoder except its biases (LayerNorm biases included)."""
    freeze_base(model)
    prefix = model.base_model_prefix + "."
    biases = [
        p for n, p in model.named_parameters() if n.startswith(prefix) and n.endswith(".bias")
    ]
    if not biases:
        raise ValueError(f"bitfit: {model.config.model_type} has no bias terms to train")
    for p in biases:
        p.requires_grad_(True)
    return model


METHOD = Method(
    name="bitfit", apply=apply, help="bias terms + head; all weights frozen", export="transformers"
)
