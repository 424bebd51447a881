"""The model's own classification head on the frozen encoder.

What trains is the architecture's native head: BERT's classifier (on its
frozen pooler), RoBERTa's dense + tanh + out_proj, DistilBERT's
pre_classifier + ReLU + classifier, DeBERTa's context pooler + classifier,
ModernBERT's dense + activation + norm + classifier. Refused on an
encoder-decoder, which has no classification head.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from trainables.methods._base import HEAD, Method, classifier_only, freeze_base


def apply(model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
    """Freeze all but the head (refused on an encoder-decoder: no classification head)."""
    classifier_only(model, "head_only")
    return freeze_base(model)


METHOD = Method(
    name="head_only",
    apply=apply,
    help="the model's own classification head (its dense layers included) trains; encoder frozen",
    frozen=lambda knobs, config: HEAD,
    export="transformers",
)
