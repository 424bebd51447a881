"""Prefix tuning (Li & Liang 2021) / P-tuning v2 (Liu et al. 2022) on encoders.

Trained key/value vectors are prepended to the keys and values of every
attention layer. peft 0.21 refuses prefix tuning on BERT with transformers
5.x (no ``past_key_values``), so it is done here through transformers'
attention-function interface: a registered attention function that
concatenates the prefix, then calls SDPA. Nothing of transformers is patched.

Trainable without projection: ``prefix_length * layers * 2 * hidden``; with
projection (a reparameterising MLP, dropped after training in the papers):
``prefix_length * hidden + hidden * p + p + p * layers * 2 * hidden + layers * 2 * hidden``
with ``p = prefix_hidden`` - plus the head.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn

from trainables.methods._arch import attention_callers
from trainables.methods._base import Knob, Method, freeze_base

IMPLEMENTATION = "peftsearch_prefix"
# attention module -> (its model's prefix encoder, layer index); weak, so models can be freed
_PREFIX_OF: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class PrefixEncoder(nn.Module):
    """Key/value prefixes for all layers: (length, layers, 2, width) on call.

    ``width`` is the keys' width (heads x head size, usually ``hidden``).
    """

    def __init__(
        self, length: int, layers: int, hidden: int, projection: bool, proj_hidden: int, width: int
    ) -> None:
        super().__init__()
        self.length, self.layers, self.width = length, layers, width
        out = layers * 2 * width
        if projection:
            self.embedding = nn.Parameter(torch.randn(length, hidden) * 0.02)
            self.mlp = nn.Sequential(
                nn.Linear(hidden, proj_hidden), nn.Tanh(), nn.Linear(proj_hidden, out)
            )
        else:
            self.embedding = nn.Parameter(torch.randn(length, out) * 0.02)
            self.mlp = None

    def forward(self) -> torch.Tensor:
        kv = self.mlp(self.embedding) if self.mlp is not None else self.embedding
        return kv.view(self.length, self.layers, 2, self.width)


def prefix_attention(module: nn.Module, query, key, value, attention_mask, **kwargs):
    """SDPA attention with the module's key/value prefix prepended."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    entry = _PREFIX_OF.get(module)
    if entry is not None:
        encoder, layer = entry
        batch, heads, _, head_dim = key.shape
        kv = encoder()[:, layer]  # (length, 2, width)
        # (length, width) -> (batch, heads, length, head_dim)
        pk, pv = (
            kv[:, i].view(-1, heads, head_dim).transpose(0, 1).expand(batch, -1, -1, -1)
            for i in (0, 1)
        )
        key = torch.cat([pk.to(key.dtype), key], dim=2)
        value = torch.cat([pv.to(value.dtype), value], dim=2)
        if attention_mask is not None:
            # Every query may attend to every prefix position.
            shape = (*attention_mask.shape[:-1], encoder.length)
            pad = (
                attention_mask.new_ones(shape)
                if attention_mask.dtype == torch.bool
                else attention_mask.new_zeros(shape)
            )
            attention_mask = torch.cat([pad, attention_mask], dim=-1)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(IMPLEMENTATION, prefix_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)


def apply(model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
    """Freeze the encoder, add the prefix encoder, route attention through it."""
    callers, why = attention_callers(model)
    if why:
        raise ValueError(f"prefix: {why}; use lora, adapter or p_tuning there")
    widths = {w for _, w in callers}
    if len(widths) != 1:
        raise ValueError(f"prefix: the layers' keys differ in width ({sorted(widths)})")
    freeze_base(model)
    ref = next(model.parameters())
    encoder = PrefixEncoder(
        knobs["prefix_length"],
        len(callers),
        model.config.hidden_size,
        knobs["prefix_projection"],
        knobs["prefix_hidden"],
        width=widths.pop(),
    ).to(ref.device, ref.dtype)
    model.prefix_encoder = encoder
    for i, (module, _) in enumerate(callers):
        _PREFIX_OF[module] = (encoder, i)
    _register()
    model.set_attn_implementation(IMPLEMENTATION)
    return model


METHOD = Method(
    name="prefix",
    apply=apply,
    help="trained key/value prefixes in every layer (P-tuning v2) + head; the encoder is frozen",
    knobs=(
        Knob(
            "prefix_length", "int", 16, low=1, high=512, log=True, help="prefix positions per layer"
        ),
        Knob(
            "prefix_projection",
            "choice",
            False,
            choices=(False, True),
            help="reparameterise the prefixes through an MLP (prefix tuning) or not (P-tuning v2)",
        ),
        Knob(
            "prefix_hidden", "int", 256, low=1, high=8192, log=True, help="hidden size of that MLP"
        ),
    ),
)
