"""Linear probe: one linear layer on the frozen encoder's output, the vector the model's head reads.

That vector (:func:`trainables.methods._arch.head_vector`) is the base
model's pooler output where it has a pooler (BERT, ALBERT, ...; the pooler
stays frozen), the pooled final states where the config says how to pool
(ModernBERT's ``classifier_pooling``, XLM's ``summary_type``), and the first
token's final hidden state elsewhere. The layer is the model's own last head
layer, ``Linear(hidden, labels)``, with the head's dropout; the head's other
layers (RoBERTa's dense + tanh, DistilBERT's pre_classifier + ReLU, DeBERTa's
context pooler, ModernBERT's dense + activation + norm, ...) are removed.
Trainable: ``hidden * labels + labels`` on every architecture. Where the head
already is that layer on the pooler output (BERT), the model is left as it
is. (``head_only`` trains the native head.) Refused on an encoder-decoder.
"""

from __future__ import annotations

import inspect
import types
from typing import Any

from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from trainables.methods._arch import head_vector, pick_vector
from trainables.methods._base import HEAD, Method, classifier_only, freeze_base


def _probe_forward(
    self,
    input_ids=None,
    attention_mask=None,
    token_type_ids=None,
    labels=None,
    **kwargs,
) -> SequenceClassifierOutput:
    """The base model, the vector its head reads, then ``probe(probe_dropout(vector))``."""
    from trainables.metrics import task_loss  # cross-entropy, or MSE for regression

    base = getattr(self, self.base_model_prefix)
    if token_type_ids is not None and self.probe_token_types:
        kwargs["token_type_ids"] = token_type_ids
    out = base(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)
    vector = pick_vector(self.probe_reads, out, attention_mask)
    logits = self.probe(self.probe_dropout(vector))
    loss = task_loss(logits, labels) if labels is not None else None
    return SequenceClassifierOutput(loss=loss, logits=logits)


def _last_layer(model: nn.Module, heads: list[str]) -> nn.Linear:
    """The head's ``Linear(hidden, labels)``."""
    labels, hidden = model.config.num_labels, model.config.hidden_size
    found = [
        m
        for h in heads
        for m in getattr(model, h).modules()
        if isinstance(m, nn.Linear) and m.out_features == labels
    ]
    if len(found) != 1 or found[0].in_features != hidden:
        raise ValueError(
            f"linear_probe: the head of {model.config.model_type} has no single "
            f"Linear({hidden}, {labels}) to keep; use head_only there"
        )
    return found[0]


def apply(model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
    """Reduce the head to its last layer on the vector it reads; freeze the rest."""
    classifier_only(model, "linear_probe")
    reads = head_vector(model)
    heads = [n for n, _ in model.named_children() if n != model.base_model_prefix]
    last = _last_layer(model, heads)
    modules = [getattr(model, h) for h in heads]
    if reads == "pooler" and all(m is last or isinstance(m, nn.Dropout) for m in modules):
        return freeze_base(model)  # already one linear layer on the (frozen) pooler output
    dropout = next(
        (m for h in modules for m in h.modules() if isinstance(m, nn.Dropout)), nn.Identity()
    )
    for h in heads:
        delattr(model, h)
    model.probe_dropout, model.probe, model.probe_reads = dropout, last, reads
    # Read once here, not at every step: whether the base model takes segment ids.
    base = getattr(model, model.base_model_prefix)
    model.probe_token_types = "token_type_ids" in inspect.signature(base.forward).parameters
    model.forward = types.MethodType(_probe_forward, model)
    return freeze_base(model)


METHOD = Method(
    name="linear_probe",
    apply=apply,
    help="one linear layer on the frozen encoder's output (what the model's head reads)",
    frozen=lambda knobs, config: HEAD,
    # BERT's head already is one linear layer (on its frozen pooler): a transformers model.
    export=lambda model_type: "transformers" if model_type == "bert" else "peftsearch",
)
