"""Prefix tuning (Li & Liang 2021) / P-tuning v2 (Liu et al. 2022) on encoders and
encoder-decoders.

Trained key/value vectors are prepended to the keys and values of every
attention layer. peft 0.21 refuses prefix tuning on BERT with transformers
5.x (no ``past_key_values``), so it is done here through transformers'
attention-function interface: a registered attention function that
concatenates the prefix, then calls SDPA. Nothing of transformers is patched.

On an encoder-decoder, as in Li & Liang, every attention gets its own prefix:
the encoder's self-attention, the decoder's self-attention and its
cross-attention, whose prefix is prepended to the keys and values computed
from the encoder's output. The prefix joins the keys after transformers'
key/value cache has stored the layer's own keys, so generating with a cache
sees each prefix once per step, never accumulated in the cache. A decoder
self-attention's causal mask is made explicit, aligned to the last queries
(SDPA's own ``is_causal`` would align it to the prefix), and T5's relative
position bias gets zeros at the prefix positions.

Only the selected layers (``layers``; in each stack) get a prefix; the others
attend as before. Each kind of attention has a prefix encoder of its own: an
encoder's one kind (``model.prefix_encoder``); an encoder-decoder's three, as
Li & Liang's separate parameterisations (``model.prefix_encoder["encoder"]``,
``["decoder"]``, ``["cross"]``). With ``s`` the selected attentions of a kind,
a kind's trainable parameters without projection:
``prefix_length * s * 2 * width``; with projection (a reparameterising MLP per
kind, dropped after training in the papers):
``prefix_length * hidden + hidden * p + p + p * s * 2 * width + s * 2 * width``
with ``p = prefix_hidden``; ``width`` is the keys' width (heads x head size:
``hidden``, T5's ``num_heads * d_kv``) - plus the head.

A layer's prefix may have a gate (UniPELT): a function giving, per query, the
logit ``z`` of a gate ``g = sigmoid(z)``; the prefix positions' attention
scores get ``log g`` added, so each query's unnormalised attention to the
prefix is scaled by ``g`` (the softmax then renormalises): an approximation of
UniPELT's gate on the prefix keys and values that one SDPA call computes.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn

from trainables.methods._arch import (
    DECODER,
    arch_of,
    attention_sites,
    is_encoder_decoder,
    register_attention,
    roles,
    selected,
    set_attention,
)
from trainables.methods._base import Knob, Method, freeze_base, layers_knob
from trainables.methods._layers import frozen_below

IMPLEMENTATION = "peftsearch_prefix"
SELF = "self"  # an encoder's one kind of attention (an encoder-decoder has three)
# attention module -> (the prefix encoder of its kind, its entry there, its gate); weak, so
# models can be freed
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
        encoder, layer, gate = entry
        batch, heads, _, head_dim = key.shape
        kv = encoder()[:, layer]  # (length, 2, width)
        # (length, width) -> (batch, heads, length, head_dim)
        pk, pv = (
            kv[:, i].view(-1, heads, head_dim).transpose(0, 1).expand(batch, -1, -1, -1)
            for i in (0, 1)
        )
        tokens = key.shape[2]
        if attention_mask is None and gate is None and _causal(module, query, kwargs):
            attention_mask = _causal_mask(query.shape[2], tokens, query.device)
        key = torch.cat([pk.to(key.dtype), key], dim=2)
        value = torch.cat([pv.to(value.dtype), value], dim=2)
        if kwargs.get("position_bias") is not None:  # T5: no position bias at the prefix
            bias = kwargs["position_bias"]
            zeros = bias.new_zeros((*bias.shape[:-1], encoder.length))
            kwargs["position_bias"] = torch.cat([zeros, bias], dim=-1)
        if gate is not None:
            mask = _gated_mask(attention_mask, gate(), query, encoder.length, tokens)
            attention_mask = mask
        elif attention_mask is not None:
            # Every query may attend to every prefix position.
            shape = (*attention_mask.shape[:-1], encoder.length)
            pad = (
                attention_mask.new_ones(shape)
                if attention_mask.dtype == torch.bool
                else attention_mask.new_zeros(shape)
            )
            attention_mask = torch.cat([pad, attention_mask], dim=-1)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _causal(module: nn.Module, query, kwargs) -> bool:
    """Whether SDPA would apply its own causal mask here (as ``sdpa_attention_forward`` decides
    for a call without a mask): a causal attention with more than one query."""
    causal = kwargs.get("is_causal")
    causal = causal if causal is not None else getattr(module, "is_causal", True)
    return bool(causal) and query.shape[2] > 1


def _causal_mask(queries: int, tokens: int, device) -> torch.Tensor:
    """A boolean causal mask (1, 1, queries, tokens): the queries are the last ``queries`` of the
    ``tokens`` positions (after a cache's earlier ones), each sees itself and what precedes."""
    rows = torch.arange(queries, device=device)[:, None] + (tokens - queries)
    return (torch.arange(tokens, device=device)[None, :] <= rows).view(1, 1, queries, tokens)


def _gated_mask(attention_mask, logit, query, length: int, tokens: int):
    """An additive mask: ``log sigmoid(logit)`` per query on the ``length`` prefix positions,
    the model's own mask (bool or additive; None: every position) on the ``tokens`` after."""
    batch, _, q, _ = query.shape
    if attention_mask is None:
        own = query.new_zeros(batch, 1, q, tokens)
    elif attention_mask.dtype == torch.bool:
        own = torch.zeros_like(attention_mask, dtype=query.dtype)
        own = own.masked_fill(~attention_mask, torch.finfo(query.dtype).min)
    else:
        own = attention_mask.to(query.dtype)
    own = own.expand(batch, own.shape[1], q, tokens)
    gates = nn.functional.logsigmoid(logit.float()).to(query.dtype)
    gates = gates.view(batch, 1, q, 1).expand(batch, own.shape[1], q, length)
    return torch.cat([gates, own], dim=-1)


def attention_layers(model: nn.Module, method: str) -> list[tuple[nn.Module, int, int]]:
    """The modules that call the attention interface with their keys' width and their layer
    (:func:`~trainables.methods._arch.attention_sites`: one per encoder layer, two per decoder
    layer); a ValueError ``"<method>: ..."`` where prefixes cannot go."""
    sites, why = attention_sites(model)
    if why:
        raise ValueError(f"{method}: {why}; prefixes need it (use lora, adapter or p_tuning there)")
    widths = {w for _, w, _ in sites}
    if len(widths) != 1:
        raise ValueError(f"{method}: the layers' keys differ in width ({sorted(widths)})")
    return sites


def sites_in(sites: list[tuple[nn.Module, int, int]], layers: list[int]) -> list[int]:
    """The indices into ``sites`` of the attentions in ``layers``."""
    chosen = set(layers)
    return [j for j, (_, _, layer) in enumerate(sites) if layer in chosen]


def add_prefix(
    model: nn.Module,
    knobs: dict[str, Any],
    callers: list[tuple[nn.Module, int, int]],
    layers: list[int],
    gates: dict[int, Any] | None = None,
) -> None:
    """Prefixes at the attentions ``layers`` (indices into ``callers``, the sites of
    :func:`attention_layers`), one entry each in the prefix encoder of its kind
    (:func:`site_kinds`), and the attention routed through them; ``gates``: index -> a function
    giving the per-query gate logits (UniPELT). Nothing is added for none."""
    if not layers:
        return
    kinds = site_kinds(model, callers)
    groups: dict[str, list[int]] = {}
    for i in layers:
        groups.setdefault(kinds[i], []).append(i)
    ref = next(model.parameters())
    encoders = {
        kind: PrefixEncoder(
            knobs["prefix_length"],
            len(members),
            model_width(model),
            knobs["prefix_projection"],
            knobs["prefix_hidden"],
            width=callers[0][1],
        ).to(ref.device, ref.dtype)
        for kind, members in groups.items()
    }
    # An encoder's one kind: its prefix encoder itself (as before kinds); else one per kind.
    model.prefix_encoder = encoders[SELF] if SELF in encoders else nn.ModuleDict(encoders)
    for kind, members in groups.items():
        for entry, i in enumerate(members):
            _PREFIX_OF[callers[i][0]] = (encoders[kind], entry, (gates or {}).get(i))
    register_attention(IMPLEMENTATION, prefix_attention)
    set_attention(model, IMPLEMENTATION)


def site_kinds(model: nn.Module, sites: list[tuple[nn.Module, int, int]]) -> list[str]:
    """Each attention site's kind: :data:`SELF` on an encoder; ``encoder``, ``decoder`` (a
    decoder layer's first site, its self-attention) or ``cross`` on an encoder-decoder (the
    order :func:`~trainables.methods._arch.attention_sites` gives)."""
    if not is_encoder_decoder(model):
        return [SELF] * len(sites)
    stacks = {layer.index: layer.stack for layer in roles(model).layers}
    kinds, seen = [], set()
    for _, _, layer in sites:
        if stacks[layer] != DECODER:
            kinds.append("encoder")
        else:
            kinds.append("cross" if layer in seen else "decoder")
            seen.add(layer)
    return kinds


def model_width(model: nn.Module) -> int:
    """The hidden size (T5's ``d_model``; an ``EncoderDecoderModel``'s encoder's)."""
    config = model.config
    config = getattr(config, "encoder", config) if not hasattr(config, "hidden_size") else config
    return config.hidden_size


def placed(model: nn.Module, knobs: dict[str, Any], sites, method: str) -> list[int]:
    """The layers a prefix method's ``layers`` knob selects: of the attention sites' layers on
    an encoder (as found), in each stack of an encoder-decoder."""
    if is_encoder_decoder(model):
        return arch_of(model, method).select(knobs, method)
    return selected(knobs, len(sites), method)


def apply(model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
    """Freeze the encoder, add the prefix encoder, route attention through it."""
    sites = attention_layers(model, "prefix")
    layers = placed(model, knobs, sites, "prefix")
    freeze_base(model)
    add_prefix(model, knobs, sites, sites_in(sites, layers))
    return model


def length_knob(default: int) -> Knob:
    return Knob(
        "prefix_length",
        "int",
        default,
        low=1,
        high=512,
        log=True,
        help="prefix positions per layer",
    )


def projection_knobs() -> tuple[Knob, Knob]:
    """``prefix_projection`` and ``prefix_hidden`` (the reparameterising MLP)."""
    return (
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
    )


METHOD = Method(
    name="prefix",
    apply=apply,
    help="trained key/value prefixes in the selected layers (P-tuning v2; on an encoder-decoder "
    "at the encoder's and the decoder's self-attention and the cross-attention) + head; the "
    "encoder is frozen",
    knobs=(length_knob(16), *projection_knobs(), layers_knob()),
    frozen=frozen_below,
)
