"""BitFit (Ben Zaken et al. 2022): only the bias terms (and the head) train.

On an encoder-decoder, every bias of both stacks (and of the LM head where it
has one: an ``EncoderDecoderModel``'s, part of its head anyway). A model
without biases (T5, mT5, Flan-T5: none in any projection or norm) is refused
with that reason: training its norms instead would be another method
(``ln_tuning``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from trainables.methods._arch import is_encoder_decoder
from trainables.methods._base import Method, freeze_base


def apply(model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
    """Freeze the encoder except its biases (LayerNorm biases included)."""
    freeze_base(model)
    prefix = "" if is_encoder_decoder(model) else model.base_model_prefix + "."
    biases = [
        p for n, p in model.named_parameters() if n.startswith(prefix) and n.endswith(".bias")
    ]
    if not biases:
        raise ValueError(
            f"bitfit: {model.config.model_type} has no bias terms to train (use ln_tuning or lora)"
        )
    for p in biases:
        p.requires_grad_(True)
    return model


METHOD = Method(
    name="bitfit", apply=apply, help="bias terms + head; all weights frozen", export="transformers"
)
