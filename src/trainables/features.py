"""Frozen-feature cache: encode once, train the top many times.

Methods that train only above a frozen encoder - ``linear_probe``, ``adapter``
with placement ``top``, ``freeze`` with every layer frozen - see the encoder
only through its last layer's [CLS] vector (the head of these architectures
reads token 0, and a top adapter is position-wise). So the driver computes
those vectors once per search and split (eval mode: no dropout), and such a
trial trains :class:`FeatureHead`, which runs the model's own top modules on
them. The parameters are the model's own: counts, checkpoints and exports
are the same as without the cache.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from trainables.data import Encoded, PreparedData
from trainables.loop import collate
from trainables.methods._arch import encoder_layers

# Architectures whose head reads the last layer's token 0 with nothing trainable in between
# but their own pooler. (ModernBERT has a final norm and may mean-pool: not cached.)
CACHEABLE_ARCHS = ("bert", "roberta", "xlm-roberta", "electra", "distilbert", "deberta-v2")


def uses_cache(method: str, knobs: dict[str, Any], config) -> bool:
    """Whether this configuration trains only above the frozen encoder."""
    if config.model_type not in CACHEABLE_ARCHS:
        return False
    if method == "linear_probe":
        return True
    if method == "adapter":
        return knobs.get("adapter_placement") == "top"
    if method == "freeze":
        return knobs.get("freeze_layers", 0) >= config.num_hidden_layers
    return False


def tail_logits(model: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """The model's own modules from the last layer's [CLS] vector to the logits."""
    kind = model.config.model_type
    if kind == "bert":
        return model.classifier(model.dropout(model.bert.pooler(h[:, None])))
    if kind == "distilbert":
        return model.classifier(model.dropout(nn.functional.relu(model.pre_classifier(h))))
    if kind == "deberta-v2":
        return model.classifier(model.dropout(model.pooler(h[:, None])))
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
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


@torch.no_grad()
def encode_features(
    model: nn.Module, split: Encoded, pad_id: int, batch_size: int = 64, bar=None
) -> np.ndarray:
    """Last-layer [CLS] vectors of the (frozen, pretrained) encoder for one split."""
    base = getattr(model, model.base_model_prefix).eval()
    device = next(base.parameters()).device
    plain = replace(split, features=None)  # collate pads token ids, not features
    out = np.empty((len(split), model.config.hidden_size), dtype=np.float32)
    order = np.argsort([len(s) for s in split.input_ids], kind="stable")  # little padding
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        inputs = collate(plain, idx, pad_id, device)
        inputs.pop("labels")
        out[idx] = base(**inputs).last_hidden_state[:, 0].float().cpu().numpy()
        if bar is not None:
            bar.update(len(idx))
    return out


def add_features(
    data: PreparedData,
    model_name: str,
    splits: tuple[str, ...] = ("train", "validation"),
    progress: bool = False,
) -> PreparedData:
    """Compute the cache for ``splits`` into ``data.features`` (once per search)."""
    from tqdm.auto import tqdm

    from trainables.model import load_classifier

    model = load_classifier(model_name, data.num_labels)
    pad_id = data.meta.get("pad_token_id", 0)
    splits = tuple(s for s in splits if s in data.splits)
    total = sum(len(data.splits[s]) for s in splits)
    with (
        torch.inference_mode(),
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
