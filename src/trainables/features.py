"""Frozen-feature cache: encode once, train the top many times.

Methods that train only above a frozen encoder - ``linear_probe``,
``head_only``, ``adapter`` with placement ``top``, ``freeze`` with every layer
frozen - see the encoder only through the vector its head reads: the last
layer's first token (the head of BERT-, RoBERTa-, DistilBERT- and
DeBERTa-style models reads token 0; a top adapter is position-wise) or, for
ModernBERT, its pooled final-normed states. So the driver computes those
vectors once per search and split, and such a trial trains
:class:`FeatureHead`, which runs the model's own top modules on them. The
parameters are the model's own: counts, checkpoints and exports are the same
as without the cache. Without the cache the frozen encoder runs in eval mode
while training too (:func:`trainables.model.train_mode`), as the cache
computed it: both paths train the same function.
"""

from __future__ import annotations

import inspect
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from trainables.data import Encoded, PreparedData
from trainables.loop import collate
from trainables.methods._arch import encoder_layers
from trainables.methods._base import HEAD, LAST_LAYER

# Architectures whose head reads the last layer's token 0 with nothing trainable in between
# but their own pooler.
TOKEN_ZERO_ARCHS = ("bert", "roberta", "xlm-roberta", "electra", "distilbert", "deberta-v2")
# ModernBERT's head reads the final norm's output, pooled (cls or mean): the cache holds that
# vector, so only methods that freeze the final norm (linear_probe, head_only) use it.
CACHEABLE_ARCHS = (*TOKEN_ZERO_ARCHS, "modernbert")


def uses_cache(method: str, knobs: dict[str, Any], config) -> bool:
    """Whether this configuration trains only above the frozen encoder (the method says how far
    up it is frozen, :attr:`trainables.methods.Method.frozen`; the architecture what its head reads)."""
    from trainables.methods import get_method

    frozen = get_method(method).frozen(knobs, config)
    if frozen == HEAD:
        return config.model_type in CACHEABLE_ARCHS
    if frozen == LAST_LAYER:
        return config.model_type in TOKEN_ZERO_ARCHS
    return False


def head_input(
    model: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """The vector cached per example: from the base model's last hidden states, what the head reads."""
    config = model.config
    if config.model_type == "modernbert" and config.classifier_pooling == "mean":
        if attention_mask is None:  # no padding in the batch
            return hidden.mean(dim=1)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1)
    return hidden[:, 0]


def tail_logits(model: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """The model's own modules from the cached vector to the logits (what its forward runs)."""
    kind = model.config.model_type
    if kind == "bert":
        return model.classifier(model.dropout(model.bert.pooler(h[:, None])))
    if kind == "distilbert":
        if hasattr(model, "pre_classifier"):  # linear_probe removes it (and the ReLU)
            h = nn.functional.relu(model.pre_classifier(h))
        return model.classifier(model.dropout(h))
    if kind == "deberta-v2":
        return model.classifier(model.dropout(model.pooler(h[:, None])))
    if kind == "modernbert":
        return model.classifier(model.drop(model.head(h)))
    return model.classifier(h[:, None])  # RoBERTa-style heads read features[:, 0]


class FeatureHead(nn.Module):
    """Trains the top of ``model`` on cached features; called like a model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.adapter = getattr(encoder_layers(model)[-1], "top_adapter", None)

    def forward(
        self, features: torch.Tensor, labels: torch.Tensor | None = None
    ) -> SequenceClassifierOutput:
        h = self.adapter(features) if self.adapter is not None else features
        logits = tail_logits(self.model, h)
        from trainables.metrics import task_loss  # cross-entropy, or MSE for regression

        loss = task_loss(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


@torch.no_grad()
def encode_features(
    model: nn.Module, split: Encoded, pad_id: int, batch_size: int = 64, bar=None
) -> np.ndarray:
    """The vectors the head reads (see :func:`head_input`) from the frozen, pretrained encoder."""
    base = getattr(model, model.base_model_prefix).eval()
    device = next(base.parameters()).device
    plain = replace(split, features=None)  # collate pads token ids, not features
    out = np.empty((len(split), model.config.hidden_size), dtype=np.float32)
    takes_token_types = "token_type_ids" in inspect.signature(model.forward).parameters and (
        getattr(model.config, "type_vocab_size", 2) >= 2
    )
    order = np.argsort([len(s) for s in split.input_ids], kind="stable")  # little padding
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        inputs = collate(plain, idx, pad_id, device)
        inputs.pop("labels")
        if not takes_token_types:  # as the uncached trial does (trial.fit_data)
            inputs.pop("token_type_ids", None)
        hidden = base(**inputs).last_hidden_state
        out[idx] = head_input(model, hidden, inputs.get("attention_mask")).float().cpu().numpy()
        if bar is not None:
            bar.update(len(idx))
    return out


def add_features(
    data: PreparedData,
    model_name: str,
    splits: tuple[str, ...] = ("train", "validation"),
    progress: bool = False,
    precision: str = "fp32",
) -> PreparedData:
    """Compute the cache for ``splits`` into ``data.features`` (once per search).

    On the GPU when there is one, under ``precision``'s autocast (``auto``
    resolved for that device); the features are stored in fp32.
    """
    from tqdm.auto import tqdm

    from trainables import precision as amp
    from trainables.model import load_classifier

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_classifier(model_name, data.num_labels).to(device)
    used = amp.resolve(precision, device)
    pad_id = data.meta.get("pad_token_id", 0)
    splits = tuple(s for s in splits if s in data.splits)
    total = sum(len(data.splits[s]) for s in splits)
    with (
        torch.inference_mode(),
        amp.autocast(device, used),
        tqdm(
            total=total, desc="encoder features", unit="ex", disable=not progress, leave=False
        ) as bar,
    ):
        data.features = {s: encode_features(model, data.splits[s], pad_id, bar=bar) for s in splits}
    return data


def with_cached_features(data: PreparedData) -> PreparedData:
    """The data with each split's features attached (what :class:`FeatureHead` reads)."""
    splits = {
        k: replace(e, features=data.features[k])
        for k, e in data.splits.items()
        if k in data.features
    }
    return replace(data, splits=splits)
