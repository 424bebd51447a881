"""Linear probe: one linear layer on the frozen encoder's output, the vector the model's head reads.

That vector is BERT's pooler output (the pooler stays frozen), ModernBERT's
pooled (``classifier_pooling``: cls or mean), final-normed states, and the
first token's final hidden state elsewhere. The native head's extra layers
(RoBERTa's dense + tanh, DistilBERT's pre_classifier + ReLU, DeBERTa's context
pooler, ModernBERT's dense + activation + norm) are removed; the model's own
classifier ``Linear(hidden, labels)`` and its dropout remain. Trainable:
``hidden * labels + labels`` on every architecture. (``head_only`` trains the
native head.)
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from trainables.methods._base import HEAD, Method, freeze_base

ROBERTA_LIKE = ("roberta", "xlm-roberta", "electra")


class FirstTokenLinear(nn.Module):
    """RoBERTa-style head reduced to dropout + the output projection, on token 0."""

    def __init__(self, dropout: nn.Module, out_proj: nn.Linear) -> None:
        super().__init__()
        self.dropout, self.out_proj = dropout, out_proj

    def forward(self, features: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.out_proj(self.dropout(features[:, 0]))


class FirstToken(nn.Module):
    """DeBERTa's context pooler without its dense layer and activation: token 0 as it is."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states[:, 0]


def _distilbert_forward(
    self,
    input_ids=None,
    attention_mask=None,
    inputs_embeds=None,
    labels=None,
    position_ids=None,
    **kwargs,
) -> SequenceClassifierOutput:
    """DistilBERT's forward without pre_classifier and ReLU: classifier(dropout(token 0))."""
    hidden = self.distilbert(
        input_ids=input_ids,
        attention_mask=attention_mask,
        inputs_embeds=inputs_embeds,
        position_ids=position_ids,
        return_dict=True,
        **kwargs,
    )[0]
    logits = self.classifier(self.dropout(hidden[:, 0]))
    from trainables.metrics import task_loss  # cross-entropy, or MSE for regression

    loss = task_loss(logits, labels) if labels is not None else None
    return SequenceClassifierOutput(loss=loss, logits=logits)


def apply(model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
    """Reduce the head to the model's classifier on the vector it reads; freeze the rest."""
    kind = model.config.model_type
    if kind == "bert":
        pass  # classifier(dropout(pooler output)): already one linear layer
    elif kind in ROBERTA_LIKE:
        model.classifier = FirstTokenLinear(model.classifier.dropout, model.classifier.out_proj)
    elif kind == "deberta-v2":
        model.pooler = FirstToken()
    elif kind == "modernbert":
        model.head = nn.Identity()
    elif kind == "distilbert":
        del model.pre_classifier
        model.forward = types.MethodType(_distilbert_forward, model)
    else:
        raise ValueError(
            f"linear_probe: architecture {kind!r} is not supported; use head_only there"
        )
    return freeze_base(model)


METHOD = Method(
    name="linear_probe",
    apply=apply,
    help="one linear layer on the frozen encoder's output (what the model's head reads)",
    frozen=lambda knobs, config: HEAD,
    # BERT's head already is one linear layer (on its frozen pooler): a transformers model.
    export=lambda model_type: "transformers" if model_type == "bert" else "peftsearch",
)
