"""Every method on every tiny architecture: exact parameter accounting, frozen means frozen.

One table (CASES) drives the tests: a method with its knobs and a closed-form
formula of its trainable parameters from the config (hidden size H, layers L,
intermediate size I, vocabulary V, labels C). Adding a method adds a row.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest
import torch
from conftest import (
    ALBERT_EMBEDDING,
    ARCHS,
    DEBERTA_BUCKETS,
    DEBERTA_CONV,
    DEBERTA_EMBEDDING,
    MPNET_BUCKETS,
    NO_PREFIX,
)
from conftest import HEADS as HEADS_
from conftest import HIDDEN as H
from conftest import INTERMEDIATE as I_
from conftest import LAYERS as L

from trainables.data import DatasetSpec, Encoded, prepare
from trainables.loop import TrainConfig, collate, train
from trainables.methods import METHODS, apply_method
from trainables.methods._layers import select_layers
from trainables.methods.adapter import ParallelAdapted
from trainables.model import count_parameters, load_classifier, load_tokenizer
from trainables.trial import build_model

C = 3  # labels in the synthetic data set
POS = 64  # max_position_embeddings
BERT_LIKE_LAYER = 4 * (H * H + H) + 2 * H + (H * I_ + I_) + (I_ * H + H) + 2 * H
# DeBERTa (share_att_key off, c2p and p2c): separate positional key and query projections.
DEBERTA_LAYER = BERT_LIKE_LAYER + 2 * (H * H + H)
# ModernBERT: no biases; fused Wqkv (3H) and Wi (gate + up, 2I); layer 0 has no attention norm.
MODERN_LAYER = 3 * H * H + H * H + H + 2 * I_ * H + I_ * H
E = DEBERTA_EMBEDDING  # DeBERTa's embedding width (projected to H)
DEBERTA_REL = 2 * DEBERTA_BUCKETS * H + 2 * H  # relative embeddings + their LayerNorm
DEBERTA_CONV_PARAMS = DEBERTA_CONV * H * H + H + 2 * H  # Conv1d + its LayerNorm (after layer 0)
EA = ALBERT_EMBEDDING  # ALBERT's embedding width, projected to H in its encoder


def nl(arch: str) -> int:
    """Distinct layers: ALBERT's one layer runs at every depth."""
    return 1 if arch == "albert" else L


def head(arch: str) -> int:
    if arch in ("bert", "albert"):  # classifier on the base model's pooler
        return H * C + C
    if arch == "modernbert":  # head.dense (no bias) + head.norm (no bias) + classifier
        return H * H + H + H * C + C
    # roberta, mpnet: dense + out_proj; distilbert: pre_classifier + classifier; deberta: context pooler + classifier
    return (H * H + H) + (H * C + C)


def above_layers(arch: str) -> int:
    """Base-model parameters above the layers: BERT's pooler, ModernBERT's final norm."""
    return {"bert": H * H + H, "albert": H * H + H, "modernbert": H}.get(arch, 0)


def layers(arch: str, n: int, first: int = 0) -> int:
    if arch == "modernbert":
        return n * MODERN_LAYER + sum(H for i in range(first, first + n) if i > 0)
    return n * (DEBERTA_LAYER if arch == "deberta-v2" else BERT_LIKE_LAYER)


def between_layers(arch: str) -> int:
    """Base-model parameters outside the layers that the layers use: DeBERTa's relative
    embeddings (+ norm) and its convolution, MPNet's relative-position bias, ALBERT's
    projection E -> H."""
    return {
        "deberta-v2": DEBERTA_REL + DEBERTA_CONV_PARAMS,
        "mpnet": MPNET_BUCKETS * HEADS_,
        "albert": EA * H + H,
    }.get(arch, 0)


def before_layers(arch: str) -> int:
    """Of those, what runs before layer 0 (frozen by every freeze): all but DeBERTa's conv."""
    return between_layers(arch) - (DEBERTA_CONV_PARAMS if arch == "deberta-v2" else 0)


def token_dim(arch: str) -> int:
    """Width of the input embeddings (what a soft prompt is made of)."""
    return {"deberta-v2": E, "albert": EA}.get(arch, H)


def embeddings(arch: str, vocab: int) -> int:
    return {
        "bert": vocab * H + POS * H + 2 * H + 2 * H,  # word, position, 2 token types, LayerNorm
        "roberta": vocab * H + POS * H + 1 * H + 2 * H,  # one token type
        "distilbert": vocab * H + POS * H + 2 * H,
        "deberta-v2": vocab * E + POS * E + E * H + 2 * H,  # + projection E -> H (no bias)
        "modernbert": vocab * H + H,  # rotary positions; norm without bias
        "mpnet": vocab * H + POS * H + 2 * H,  # no token types
        "albert": vocab * EA + POS * EA + 2 * EA + 2 * EA,
    }[arch]


def full(arch: str, vocab: int) -> int:
    return (
        embeddings(arch, vocab)
        + layers(arch, nl(arch))
        + between_layers(arch)
        + above_layers(arch)
        + head(arch)
    )


def freeze(arch: str, k: int) -> int:
    # Only layers k.. and what runs after them train: DeBERTa's relative embeddings feed every
    # layer (frozen), its convolution runs after layer 0 (trains only when k = 0).
    conv = DEBERTA_CONV_PARAMS if arch == "deberta-v2" and k == 0 else 0
    return layers(arch, nl(arch) - k, first=k) + conv + above_layers(arch) + head(arch)


def bitfit(arch: str) -> int:
    # embedding LayerNorm + per layer q, k, v, out, 2 LayerNorms, FFN out (7H) and FFN in (I)
    pooler = H if arch in ("bert", "albert") else 0
    if arch == "albert":  # embedding LayerNorm of width E, the projection's bias, one layer
        return EA + H + (7 * H + I_) + pooler + head(arch)
    # DeBERTa: positional key and query projections per layer; relative-embedding norm, conv, conv norm
    extra = L * 2 * H + 3 * H if arch == "deberta-v2" else 0
    return H + L * (7 * H + I_) + pooler + extra + head(arch)


def chosen(arch: str, spec="all") -> list[int]:
    """The layers a ``layers`` value selects (ALBERT: of its one distinct layer)."""
    return select_layers(spec, nl(arch))


def layer_norms(arch: str, spec="all") -> int:
    """The LayerNorms inside the (selected) encoder layers (ModernBERT: no bias, none before
    layer 0's attention)."""
    if arch == "modernbert":
        return sum(H + (H if i > 0 else 0) for i in chosen(arch, spec))
    return len(chosen(arch, spec)) * 2 * 2 * H


def adapter(arch: str, m: int, variant: str, norms: bool = False) -> int:
    per_layer = {"houlsby": 2, "pfeiffer": 1}
    n = 1 if variant == "top" else nl(arch) * per_layer[variant]
    return n * (2 * H * m + m + H) + (layer_norms(arch) if norms else 0) + head(arch)


def bottleneck(m: int) -> int:
    """One adapter: down (H -> m) and up (m -> H), with biases."""
    return 2 * H * m + m + H


def adapters(
    arch: str, m: int, per_layer: int = 1, spec="all", learned: bool = False, norms: bool = False
) -> int:
    """``per_layer`` adapters in each selected layer (+1 scale each when learned)."""
    n = len(chosen(arch, spec)) * per_layer
    return n * (bottleneck(m) + learned) + (layer_norms(arch, spec) if norms else 0) + head(arch)


def lora(arch: str, r: int, targets: str, spec="all") -> int:
    k = len(chosen(arch, spec))
    if arch == "modernbert":  # fused Wqkv: H -> 3H
        if targets == "query_value":
            return k * r * (H + 3 * H) + head(arch)
        return k * (r * (H + 3 * H) + r * (H + H) + r * (H + 2 * I_) + r * (I_ + H)) + head(arch)
    if targets == "query_value":
        return k * 2 * r * (H + H) + head(arch)
    # q, k, v, attention output (H -> H), then H -> I and I -> H
    return k * (4 * r * (H + H) + r * (H + I_) + r * (I_ + H)) + head(arch)


def ia3(arch: str, targets: str, spec="all") -> int:
    kv = 3 * H if arch == "modernbert" else 2 * H  # key and value outputs (ModernBERT: fused Wqkv)
    ffn = I_ if targets == "kv_ffn" else 0  # the FFN output projection's input
    return len(chosen(arch, spec)) * (kv + ffn) + head(arch)


def linears(arch: str, targets: str) -> list[tuple[int, int]]:
    """(in, out) of each adapted Linear in one layer: query and value, or every projection
    (ModernBERT: fused Wqkv H -> 3H, attention output, fused Wi H -> 2I, Wo I -> H)."""
    if arch == "modernbert":
        qv = [(H, 3 * H)]
        return qv if targets == "query_value" else qv + [(H, H), (H, 2 * I_), (I_, H)]
    qv = [(H, H), (H, H)]
    return qv if targets == "query_value" else qv + [(H, H), (H, H), (H, I_), (I_, H)]


def per_linear(arch: str, targets: str, f) -> int:
    """``f(in, out)`` summed over the adapted Linears of every distinct layer, plus the head."""
    return nl(arch) * sum(f(i, o) for i, o in linears(arch, targets)) + head(arch)


def factor(n: int) -> tuple[int, int]:
    """LoKr's split of a width: the divisor pair closest to its square root, smaller first."""
    a = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return a, n // a


def lokr(arch: str, r: int, targets: str) -> int:
    def one(i: int, o: int) -> int:
        (o1, o2), (i1, i2) = factor(o), factor(i)
        w2 = r * (o2 + i2) if r < max(o2, i2) / 2 else o2 * i2  # low-rank only where smaller
        return o1 * i1 + w2

    return per_linear(arch, targets, one)


def prompt_tuning(arch: str, n: int) -> int:
    return n * token_dim(arch) + head(arch)


def p_tuning(arch: str, n: int, e: int, encoder: str) -> int:
    D = token_dim(arch)
    if encoder == "mlp":  # D -> e -> e -> D
        enc = (D * e + e) + (e * e + e) + (e * D + D)
    else:  # 2-layer bidirectional LSTM (gates 4e, two bias vectors), then 2e -> 2e -> D
        lstm = 2 * (4 * e * D + 4 * e * e + 8 * e) + 2 * (4 * e * 2 * e + 4 * e * e + 8 * e)
        enc = lstm + (2 * e * 2 * e + 2 * e) + (2 * e * D + D)
    return n * D + enc + head(arch)


def prefix(arch: str, n: int, p: int | None, spec="all") -> int:
    n_ = len(chosen(arch, spec))
    if not n_:  # in no layer: no prefix encoder at all
        return head(arch)
    if p is None:
        return n * n_ * 2 * H + head(arch)
    return n * H + (H * p + p) + (p * n_ * 2 * H + n_ * 2 * H) + head(arch)


def mam(arch: str, n: int, m: int, learned: bool = False, spec="all") -> int:
    """Prefixes + a parallel feed-forward adapter in each selected layer."""
    return prefix(arch, n, None, spec) + len(chosen(arch, spec)) * (bottleneck(m) + learned)


def unipelt(arch: str, r: int, n: int, m: int, p: int | None = None, spec="all") -> int:
    """Per selected layer: gated LoRA on query and value (ModernBERT: Wqkv once; each gate
    H + 1), the prefix gate (H + 1), a gated adapter after the feed-forward block."""
    gate = H + 1
    lora_ = r * (H + 3 * H) + gate if arch == "modernbert" else 2 * (r * (H + H) + gate)
    per_layer = lora_ + gate + bottleneck(m) + gate
    return prefix(arch, n, p, spec) + len(chosen(arch, spec)) * per_layer


# (method, knobs, formula(arch, vocab), architectures it cannot apply to)
CASES = [
    ("full", {}, lambda a, v: full(a, v), ()),
    ("linear_probe", {}, lambda a, v: H * C + C, ()),  # one linear layer, on every architecture
    ("head_only", {}, lambda a, v: head(a), ()),
    ("freeze", {"freeze_layers": 1}, lambda a, v: freeze(a, 1), ()),
    # ALBERT has one (shared) layer: freezing two is refused.
    ("freeze", {"freeze_layers": L}, lambda a, v: freeze(a, L), ("albert",)),
    ("bitfit", {}, lambda a, v: bitfit(a), ("modernbert",)),  # ModernBERT has no biases
    ("adapter", {"adapter_size": 4}, lambda a, v: adapter(a, 4, "pfeiffer"), ()),
    (  # adapter_train_layernorm auto: on for houlsby
        "adapter",
        {"adapter_size": 8, "adapter_variant": "houlsby"},
        lambda a, v: adapter(a, 8, "houlsby", norms=True),
        (),
    ),
    (
        "adapter",
        {"adapter_size": 4, "adapter_train_layernorm": True},
        lambda a, v: adapter(a, 4, "pfeiffer", norms=True),
        (),
    ),
    (  # ALBERT's last layer runs at every depth: a top adapter is refused there.
        "adapter",
        {"adapter_size": 8, "adapter_placement": "top"},
        lambda a, v: adapter(a, 8, "top"),
        ("albert",),
    ),
    ("lora", {"lora_rank": 2}, lambda a, v: lora(a, 2, "query_value"), ()),
    (
        "lora",
        {"lora_rank": 4, "lora_targets": "all_linear"},
        lambda a, v: lora(a, 4, "all_linear"),
        (),
    ),
    ("ia3", {}, lambda a, v: ia3(a, "kv_ffn"), ()),
    ("ia3", {"ia3_targets": "kv"}, lambda a, v: ia3(a, "kv"), ()),
    ("prompt_tuning", {"prompt_length": 4}, lambda a, v: prompt_tuning(a, 4), ()),
    (
        "prompt_tuning",
        {"prompt_length": 6, "prompt_init": "text"},
        lambda a, v: prompt_tuning(a, 6),
        (),
    ),
    (
        "p_tuning",
        {"prompt_length": 4, "prompt_encoder_size": 16},
        lambda a, v: p_tuning(a, 4, 16, "mlp"),
        (),
    ),
    (
        "p_tuning",
        {"prompt_length": 4, "prompt_encoder": "lstm", "prompt_encoder_size": 8},
        lambda a, v: p_tuning(a, 4, 8, "lstm"),
        (),
    ),
    # DeBERTa-v2 and MPNet compute attention in-house: no attention interface to route prefixes through.
    ("prefix", {"prefix_length": 4}, lambda a, v: prefix(a, 4, None), NO_PREFIX),
    (
        "prefix",
        {"prefix_length": 4, "prefix_projection": True, "prefix_hidden": 16},
        lambda a, v: prefix(a, 4, 16),
        NO_PREFIX,
    ),
    (  # parallel beside the feed-forward block (the pfeiffer preset's position)
        "adapter",
        {"adapter_size": 4, "adapter_insertion": "parallel"},
        lambda a, v: adapters(a, 4),
        (),
    ),
    ("mam", {"prefix_length": 4, "adapter_size": 8}, lambda a, v: mam(a, 4, 8), NO_PREFIX),
    (
        "unipelt",
        {"lora_rank": 2, "prefix_length": 4, "adapter_size": 4},
        lambda a, v: unipelt(a, 2, 4, 4),
        NO_PREFIX,
    ),
]
# peft's other tuners, and LoRA's variants: counted on every architecture, trained on BERT only
# (a few steps: the shared peft machinery is what the rows above train everywhere).
# A dict of refusals: architecture -> what the message must say.
EVERYWHERE = {a: "" for a in ARCHS}
PEFT_TUNERS = [
    ("lora", {"lora_rank": 2, "lora_variant": "dora"},  # + DoRA's magnitude: one per output
     lambda a, v: per_linear(a, "query_value", lambda i, o: 2 * (i + o) + o), ()),
    ("lora", {"lora_rank": 2, "lora_variant": "rslora", "lora_init": "gaussian"},
     lambda a, v: lora(a, 2, "query_value"), ()),
    # PiSSA and OLoRA rewrite the targeted weights once; frozen from there on (checked here).
    ("lora", {"lora_rank": 2, "lora_init": "pissa"}, lambda a, v: lora(a, 2, "query_value"), ()),
    ("lora", {"lora_rank": 2, "lora_init": "olora", "lora_targets": "all_linear"},
     lambda a, v: lora(a, 2, "all_linear"), ()),
    ("adalora", {"adalora_rank": 4},  # P (r x in), Q (out x r), E (r)
     lambda a, v: per_linear(a, "all_linear", lambda i, o: 4 * (i + o + 1)), ()),
    ("vera", {"vera_rank": 16}, lambda a, v: per_linear(a, "query_value", lambda i, o: 16 + o), ()),
    ("vera", {"vera_rank": 16, "vera_targets": "all_linear"},
     lambda a, v: per_linear(a, "all_linear", lambda i, o: 16 + o), ()),
    ("loha", {"loha_rank": 2}, lambda a, v: per_linear(a, "query_value", lambda i, o: 4 * (i + o)), ()),
    ("lokr", {"lokr_rank": 2}, lambda a, v: lokr(a, 2, "query_value"), ()),
    ("lokr", {"lokr_rank": 4, "lokr_targets": "all_linear"}, lambda a, v: lokr(a, 4, "all_linear"), ()),
    ("oft", {"oft_block_size": 8},  # in / b blocks of b (b - 1) / 2
     lambda a, v: per_linear(a, "query_value", lambda i, o: i // 8 * 28), ()),
    ("oft", {"oft_block_size": 12}, None, {a: "does not divide the input width 32" for a in ARCHS}),
    ("boft", {}, lambda a, v: per_linear(a, "query_value", lambda i, o: i * 4 + o), ()),
    ("boft", {"boft_block_size": 12}, None, {a: "must be divisible by boft_block_size" for a in ARCHS}),
    ("hra", {"hra_rank": 4}, lambda a, v: per_linear(a, "query_value", lambda i, o: 4 * i), ()),
    ("fourierft", {"fourierft_frequencies": 64, "fourierft_targets": "all_linear"},
     lambda a, v: per_linear(a, "all_linear", lambda i, o: 64), ()),
    # More coefficients than a query projection has entries (H x H), fewer than ModernBERT's Wqkv.
    ("fourierft", {"fourierft_frequencies": 2 * H * H},
     lambda a, v: per_linear(a, "query_value", lambda i, o: 2 * H * H),
     {a: "n_frequency` should be less than or equal" for a in ARCHS if a != "modernbert"}),
    ("ln_tuning", {}, lambda a, v: layer_norms(a) + head(a), ()),
]  # fmt: skip
# ALBERT has one distinct layer: a selection past it (or a mask of two bits) is refused.
PAST_ALBERT = {"albert": "but the model has"}
NO_PREFIX_OR = {**{a: "attention itself" for a in NO_PREFIX}, **PAST_ALBERT}
PA = {"adapter_insertion": "parallel"}
# Adapter insertion, position, scaling and presets; per-layer placement (layers) of every method
# that lives in layers: counted on every architecture, trained on BERT (as PEFT_TUNERS).
VARIANTS = [
    ("adapter", {"adapter_size": 4, **PA, "adapter_position": "both", "adapter_scaling": "learned"},
     lambda a, v: adapters(a, 4, 2, learned=True), ()),
    ("adapter", {"adapter_size": 4, **PA, "adapter_position": "attention", "adapter_scaling": 4.0},
     lambda a, v: adapters(a, 4), ()),
    ("adapter", {"adapter_size": 4, "adapter_position": "attention"}, lambda a, v: adapters(a, 4), ()),
    # sequential adapters ignore adapter_scaling
    ("adapter", {"adapter_size": 4, "adapter_scaling": "learned"}, lambda a, v: adapters(a, 4), ()),
    # presets set defaults, explicit knobs override them
    ("adapter", {"adapter_size": 4, "adapter_variant": "houlsby", **PA},
     lambda a, v: adapters(a, 4, 2, norms=True), ()),
    ("adapter", {"adapter_size": 4, "adapter_variant": "houlsby", "adapter_position": "ffn",
                 "adapter_train_layernorm": False}, lambda a, v: adapters(a, 4), ()),
    ("adapter", {"adapter_size": 4, "layers": "top_2"}, lambda a, v: adapters(a, 4), PAST_ALBERT),
    ("adapter", {"adapter_size": 4, "adapter_variant": "houlsby", "layers": "top_1"},
     lambda a, v: adapters(a, 4, 2, "top_1", norms=True), ()),
    ("adapter", {"adapter_size": 4, "layers": "bottom_1"}, lambda a, v: adapters(a, 4, 1, "bottom_1"), ()),
    ("adapter", {"adapter_size": 4, "layers": "every_other"},
     lambda a, v: adapters(a, 4, 1, "every_other"), ()),
    ("adapter", {"adapter_size": 4, "layers": [1]}, lambda a, v: adapters(a, 4, 1, [1]), PAST_ALBERT),
    ("adapter", {"adapter_size": 4, **PA, "layers": "0b01"},
     lambda a, v: adapters(a, 4, 1, "0b01"), PAST_ALBERT),
    ("adapter", {"adapter_size": 4, "layers": "0b00"}, lambda a, v: head(a), PAST_ALBERT),
    ("lora", {"lora_rank": 2, "layers": "top_1"}, lambda a, v: lora(a, 2, "query_value", "top_1"), ()),
    ("lora", {"lora_rank": 2, "lora_targets": "all_linear", "layers": "every_other"},
     lambda a, v: lora(a, 2, "all_linear", "every_other"), ()),
    ("lora", {"lora_rank": 2, "layers": [0]}, lambda a, v: lora(a, 2, "query_value", [0]), ()),
    ("lora", {"lora_rank": 2, "layers": "0b10"}, lambda a, v: lora(a, 2, "query_value", "0b10"),
     PAST_ALBERT),
    ("lora", {"lora_rank": 2, "layers": "0b00"}, lambda a, v: head(a), PAST_ALBERT),
    ("ia3", {"layers": "bottom_1"}, lambda a, v: ia3(a, "kv_ffn", "bottom_1"), ()),
    ("ia3", {"ia3_targets": "kv", "layers": "0b01"}, lambda a, v: ia3(a, "kv", "0b01"), PAST_ALBERT),
    ("ia3", {"layers": "0b00"}, lambda a, v: head(a), PAST_ALBERT),
    ("prefix", {"prefix_length": 4, "layers": "top_1"}, lambda a, v: prefix(a, 4, None, "top_1"),
     NO_PREFIX),
    ("prefix", {"prefix_length": 4, "prefix_projection": True, "prefix_hidden": 16, "layers": [0]},
     lambda a, v: prefix(a, 4, 16, [0]), NO_PREFIX),
    ("prefix", {"prefix_length": 4, "layers": "0b00"}, lambda a, v: head(a), NO_PREFIX_OR),
    ("mam", {"prefix_length": 4, "adapter_size": 8, "adapter_scaling": "learned", "layers": "top_1"},
     lambda a, v: mam(a, 4, 8, learned=True, spec="top_1"), NO_PREFIX),
    ("unipelt", {"lora_rank": 2, "prefix_length": 4, "adapter_size": 4, "prefix_projection": True,
                 "prefix_hidden": 8, "layers": "0b10"},
     lambda a, v: unipelt(a, 2, 4, 4, 8, "0b10"), NO_PREFIX_OR),
]  # fmt: skip
PEFT_TUNERS += VARIANTS
TRAINED_EVERYWHERE = len(CASES)
CASES += PEFT_TUNERS
IDS = [f"{c[0]}-{i}" for i, c in enumerate(CASES)]
ROWS = [(*c, i < TRAINED_EVERYWHERE) for i, c in enumerate(CASES)]


def test_every_registered_method_has_a_case():
    assert {c[0] for c in CASES} == set(METHODS)


@pytest.fixture(scope="module")
def datasets(tiny_models, topics_tsv):
    spec = DatasetSpec(path=str(topics_tsv))
    return {a: prepare(spec, load_tokenizer(str(p)), 32) for a, p in tiny_models.items()}


def first(split: Encoded, n: int) -> Encoded:
    """The first ``n`` examples of a split (a few training steps)."""
    tti = split.token_type_ids
    return dataclasses.replace(
        split,
        input_ids=split.input_ids[:n],
        labels=split.labels[:n],
        token_type_ids=None if tti is None else tti[:n],
    )


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method,knobs,formula,unsupported,everywhere", ROWS, ids=IDS)
def test_trainable_params_match_formula_and_only_they_move(
    arch, method, knobs, formula, unsupported, everywhere, tiny_models, datasets
):
    data = datasets[arch]
    if arch in unsupported:
        why = unsupported[arch] if isinstance(unsupported, dict) else ""
        with pytest.raises(ValueError, match=f"^{method}: .*{re.escape(why)}"):
            build_model(str(tiny_models[arch]), data, method, knobs, seed=0)
        return
    vocab = len(load_tokenizer(str(tiny_models[arch])))
    model = build_model(str(tiny_models[arch]), data, method, knobs, seed=0)
    trainable, total = count_parameters(model)
    assert trainable == formula(arch, vocab)
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    if not everywhere and arch != "bert":
        return

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(
        learning_rate=1e-2, epochs=1, batch_size=16, evals_per_epoch=1, warmup_ratio=0.0
    )
    train_split, val = data.splits["train"], data.splits["validation"]
    if not everywhere:  # two steps: every trainable parameter has had a gradient by then
        train_split, val = first(train_split, 32), first(val, 16)
    out = train(model, train_split, val, cfg, 0, lambda m, s: None)
    assert np.isfinite(out["train_loss"]) and np.isfinite(out["val_loss"])
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p, before[name]), f"{method}: trainable {name} did not move"
        else:
            assert torch.equal(p, before[name]), f"{method}: frozen {name} changed"


def test_pretrained_weights_untouched_by_peft_methods(tiny_bert, datasets):
    """Frozen weights equal the checkpoint's (not just their own start) after training."""
    pretrained = dict(load_classifier(str(tiny_bert), C).named_parameters())
    model = build_model(str(tiny_bert), datasets["bert"], "lora", {"lora_rank": 2}, seed=0)
    cfg = TrainConfig(learning_rate=1e-2, epochs=1, evals_per_epoch=1)
    train(
        model,
        datasets["bert"].splits["train"],
        datasets["bert"].splits["validation"],
        cfg,
        0,
        lambda m, s: None,
    )
    for name, p in model.named_parameters():
        base = name.replace(".base_layer", "")
        if not p.requires_grad and base in pretrained and not base.startswith("classifier"):
            assert torch.equal(p, pretrained[base]), name


def test_unknown_method_and_knob_are_rejected(tiny_bert):
    model = load_classifier(str(tiny_bert), C)
    with pytest.raises(ValueError, match="known methods"):
        apply_method(model, "lorax")
    with pytest.raises(ValueError, match="no knob"):
        apply_method(model, "lora", {"rank": 4})
    with pytest.raises(ValueError, match="lora_rank"):
        apply_method(model, "lora", {"lora_rank": 0})
    with pytest.raises(ValueError, match="freeze_layers=3 but the model has 2 layers"):
        apply_method(load_classifier(str(tiny_bert), C), "freeze", {"freeze_layers": 3})


@pytest.mark.parametrize("arch", ARCHS)
def test_counts_of_knob_variants(arch, tiny_models, datasets):
    """Variants the training table leaves out (counted only): freeze 0, houlsby without norms."""
    path, data = str(tiny_models[arch]), datasets[arch]
    vocab = len(load_tokenizer(path))
    # freeze 0: everything but the embeddings and what feeds every layer (DeBERTa's conv trains).
    expected = full(arch, vocab) - embeddings(arch, vocab) - before_layers(arch)
    assert (
        count_parameters(build_model(path, data, "freeze", {"freeze_layers": 0}, 0))[0] == expected
    )
    knobs = {"adapter_size": 8, "adapter_variant": "houlsby", "adapter_train_layernorm": False}
    model = build_model(path, data, "adapter", knobs, 0)
    assert count_parameters(model)[0] == adapter(arch, 8, "houlsby")


@pytest.mark.parametrize("arch", ARCHS)
def test_freeze_applies_on_the_meta_device(arch, tiny_models):
    """``validate`` applies methods to a weightless model: freeze picks the same parameters there."""
    from transformers import AutoModelForSequenceClassification

    from trainables.model import load_config

    config = load_config(str(tiny_models[arch]))
    config.num_labels = C
    for k in range(nl(arch) + 1):
        with torch.device("meta"):
            meta = AutoModelForSequenceClassification.from_config(config)
        meta = apply_method(meta, "freeze", {"freeze_layers": k})
        real = apply_method(
            load_classifier(str(tiny_models[arch]), C), "freeze", {"freeze_layers": k}
        )
        assert [n for n, p in meta.named_parameters() if p.requires_grad] == [
            n for n, p in real.named_parameters() if p.requires_grad
        ]


@pytest.mark.parametrize("arch", ARCHS)
def test_prompt_methods_count_the_head_once(arch, tiny_models, datasets):
    """total_params: the full model + the prompt's parameters (peft's frozen head copy left out)."""
    path, data = str(tiny_models[arch]), datasets[arch]
    full_total = count_parameters(build_model(path, data, "full", {}, 0))[1]
    for method, knobs in [
        ("prompt_tuning", {"prompt_length": 4}),
        ("p_tuning", {"prompt_length": 4}),
    ]:
        trainable, total = count_parameters(build_model(path, data, method, knobs, 0))
        assert total == full_total + trainable - head(arch), method


PAIRS = [
    f"goal team {i}\t{'chip data' if i % 2 else 'goal win'}\t{'same' if i % 2 == 0 else 'diff'}"
    for i in range(60)
]


@pytest.mark.parametrize("arch", ARCHS)
def test_pair_tasks_train_on_every_architecture(arch, tiny_models, tmp_path):
    """Sentence pairs (segment ids where the model has them) through full, prefix and prompt methods.

    Every example has the same first text (its number is one unknown token): after
    training, two examples of different labels differ in their second text only, and
    their logits must differ - the second text reaches the model.
    """
    from trainables.trial import fit_data

    path = tmp_path / "pairs.tsv"
    path.write_text("premise\thypothesis\tlabel\n" + "\n".join(PAIRS) + "\n")
    spec = DatasetSpec(path=str(path), text="premise", text_pair="hypothesis")
    data = prepare(spec, load_tokenizer(str(tiny_models[arch])), 16, validation=0.2, test=0.2)
    val = data.splits["validation"]
    pair = np.array([int(np.argmax(val.labels == k)) for k in (0, 1)])
    assert val.labels[pair[0]] != val.labels[pair[1]]
    assert list(val.input_ids[pair[0]][:5]) == list(val.input_ids[pair[1]][:5])  # same first text
    methods = ["full", "prompt_tuning"] + ([] if arch in NO_PREFIX else ["prefix"])
    for method in methods:
        model = build_model(str(tiny_models[arch]), data, method, {}, seed=0)
        fitted = fit_data(model, data)
        cfg = TrainConfig(epochs=1, evals_per_epoch=1)
        train(model, fitted.splits["train"], fitted.splits["validation"], cfg, 0, lambda m, s: None)
        batch = collate(fitted.splits["validation"], pair, 0, torch.device("cpu"))
        with torch.no_grad():
            logits = model.eval()(**batch).logits
        assert not torch.allclose(logits[0], logits[1], atol=1e-6), method


@pytest.mark.parametrize("method", ["prefix", "unipelt"])  # unipelt: a gate on the prefix
@pytest.mark.parametrize("pairs", [False, True], ids=["single", "pair"])
@pytest.mark.parametrize("arch", [a for a in ARCHS if a not in NO_PREFIX])  # prefix applies
def test_prefix_logits_do_not_depend_on_the_padding_around_them(
    arch, pairs, method, tiny_models, datasets
):
    """An example alone and in a batch padded to a much longer example: the same logits."""
    from trainables.trial import accepts_token_types

    path = str(tiny_models[arch])
    model = build_model(path, datasets[arch], method, {"prefix_length": 4}, seed=0).eval()
    with torch.no_grad():
        model.prefix_encoder.embedding.normal_(std=1.0)  # a prefix that matters
    tok = load_tokenizer(path)
    short = ("goal team", "chip data") if pairs else ("goal team",)
    long_ = ("cheese " * 20, "bread " * 20) if pairs else ("cheese bread " * 20,)

    def logits(examples):
        enc = tok(*zip(*examples), padding=True, return_tensors="pt")
        if not accepts_token_types(model):
            enc.pop("token_type_ids", None)
        with torch.no_grad():
            return model(**enc).logits

    alone = logits([short])
    padded = logits([short, long_])
    torch.testing.assert_close(padded[0], alone[0], atol=1e-5, rtol=1e-5)
    # ... and the prefix is in play: another prefix, other logits.
    with torch.no_grad():
        model.prefix_encoder.embedding.normal_(std=1.0)
    assert not torch.allclose(logits([short])[0], alone[0], atol=1e-4)


def test_every_method_trains_a_regression_head(tiny_bert, tmp_path):
    """A float target (one output, MSE): every method trains on it."""
    from conftest import make_texts

    from trainables.trial import fit_data

    lines = ["text\tscore"] + [
        f"{t}\t{sum(w in ('goal', 'team', 'win') for w in t.split()) / 4 + i % 7 / 100:.3f}"
        for i, (t, _) in enumerate(make_texts(120))
    ]
    path = tmp_path / "scores.tsv"
    path.write_text("\n".join(lines) + "\n")
    spec = DatasetSpec(path=str(path), label="score")
    data = prepare(spec, load_tokenizer(str(tiny_bert)), 32, metric="pearson", validation=0.25)
    assert data.task == "regression"
    firsts = {}
    # peft's other tuners share LoRA's head and loss; AdaLoRA adds its penalty to the loss.
    for method, knobs, _, unsupported, everywhere in ROWS:
        if "bert" not in unsupported and (everywhere or method == "adalora"):
            firsts.setdefault(method, knobs)
    for method, knobs in firsts.items():
        model = build_model(str(tiny_bert), data, method, knobs, seed=0)
        cfg = TrainConfig(learning_rate=1e-3, epochs=1, batch_size=16, evals_per_epoch=1)
        splits = fit_data(model, data).splits  # a prompt method's model takes no segment ids
        out = train(
            model,
            splits["train"],
            splits["validation"],
            cfg,
            0,
            lambda m, s: None,
            metric="pearson",
        )
        assert np.isfinite(out["val_loss"]) and "val_pearson" in out, (method, out)


def test_the_loop_starts_step_hooks_once_and_calls_them_after_each_step(tiny_bert, datasets):
    """A module's STEP_HOOK learns the run's total steps, then sees every global step in order."""
    from trainables.loop import STEP_HOOK

    model = build_model(str(tiny_bert), datasets["bert"], "head_only", {}, seed=0)
    calls: dict[str, list[int]] = {"start": [], "step": []}

    def start(total: int):
        calls["start"].append(total)
        return calls["step"].append

    setattr(model.classifier, STEP_HOOK, start)  # any module of the model
    cfg = TrainConfig(epochs=2, batch_size=16, evals_per_epoch=1)
    train(model, first(datasets["bert"].splits["train"], 40), first(datasets["bert"].splits["validation"], 8), cfg, 0, lambda m, s: None)  # fmt: skip
    assert calls == {"start": [6], "step": [1, 2, 3, 4, 5, 6]}  # 3 batches per epoch


def test_adalora_allocates_its_rank_budget_by_the_end(tiny_bert, datasets):
    """The schedule learns the total steps from the loop; the last allocation leaves the average
    rank at ``rank * keep``: at most that many singular values nonzero."""
    knobs = {"adalora_rank": 4, "adalora_keep": 0.5}
    model = build_model(str(tiny_bert), datasets["bert"], "adalora", knobs, seed=0)
    cfg = TrainConfig(learning_rate=1e-2, epochs=1, batch_size=16, evals_per_epoch=1)
    data = datasets["bert"].splits
    train(model, first(data["train"], 64), first(data["validation"], 8), cfg, 0, lambda m, s: None)
    assert model.peft_config["default"].total_step == 4
    values = [p for n, p in model.named_parameters() if "lora_E" in n]
    assert len(values) == 6 * L and all(p.numel() == 4 for p in values)  # every projection
    kept = sum(int((p != 0).sum()) for p in values)
    assert 0 < kept <= 2 * len(values)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_pissa_and_olora_rewrite_the_targeted_weights_at_initialisation(init, tiny_bert, datasets):
    """... and nothing else (training keeps them frozen: the table's rows check that)."""
    pretrained = dict(load_classifier(str(tiny_bert), C).named_parameters())
    knobs = {"lora_rank": 2, "lora_init": init}
    model = build_model(str(tiny_bert), datasets["bert"], "lora", knobs, seed=0)
    changed = {
        name.replace(".base_layer", "")
        for name, p in model.named_parameters()
        if not p.requires_grad
        and name.replace(".base_layer", "") in pretrained
        and not torch.equal(p, pretrained[name.replace(".base_layer", "")])
    }
    assert changed == {
        f"bert.encoder.layer.{i}.attention.self.{w}.weight"
        for i in range(L)
        for w in ("query", "value")
    }


@pytest.mark.parametrize("arch", ARCHS)
def test_a_parallel_adapter_starts_as_the_identity(arch, tiny_models):
    """Its up projection starts at zero: the adapted model's logits are the pretrained one's."""
    import copy

    base = load_classifier(str(tiny_models[arch]), C).eval()
    knobs = {"adapter_size": 4, "adapter_insertion": "parallel", "adapter_position": "both"}
    for scaling in (4.0, "learned"):
        model = apply_method(copy.deepcopy(base), "adapter", {**knobs, "adapter_scaling": scaling})
        ids = torch.randint(5, 30, (2, 9))
        with torch.no_grad():
            assert torch.equal(model.eval()(input_ids=ids).logits, base(input_ids=ids).logits)
        assert sum(isinstance(m, ParallelAdapted) for m in model.modules()) == 2 * nl(arch)


# Every method that lives in layers, placed in the top layer only.
TOP = [
    ("adapter", {"adapter_size": 4, "adapter_variant": "houlsby"}),  # its LayerNorms train too
    ("adapter", {"adapter_size": 4, "adapter_insertion": "parallel", "adapter_position": "both"}),
    ("lora", {"lora_rank": 2, "lora_targets": "all_linear"}),
    ("ia3", {}),
    ("prefix", {"prefix_length": 4}),
    ("mam", {"prefix_length": 4, "adapter_size": 4}),
    ("unipelt", {"lora_rank": 2, "prefix_length": 4, "adapter_size": 4}),
]


@pytest.mark.parametrize("arch", [a for a in ARCHS if nl(a) > 1])
@pytest.mark.parametrize("method,knobs", TOP, ids=[f"{m}-{i}" for i, (m, _) in enumerate(TOP)])
def test_layers_top_k_leaves_the_layers_below_as_they_were(arch, method, knobs, tiny_models):
    """With ``layers: top_1``, layer 0 holds no new module and, whatever the trained parameters
    become, outputs the pretrained model's hidden states; layer 1 does change. The method's
    ``frozen`` names layer 1 (what the layer cache skips below)."""
    import copy

    from trainables.methods._arch import layer_groups

    if method in ("prefix", "mam", "unipelt") and arch in NO_PREFIX:
        pytest.skip("prefixes do not apply")
    torch.manual_seed(0)
    base = load_classifier(str(tiny_models[arch]), C).eval()
    model = apply_method(copy.deepcopy(base), method, {**knobs, "layers": "top_1"}).eval()
    assert METHODS[method].frozen({**knobs, "layers": "top_1"}, model.config) == 1
    with torch.no_grad():  # trained parameters that matter (adapters start as the identity)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))

    def in_layer_0(m) -> set[str]:
        roots = layer_groups(m)[0]
        return {n for n, _ in m.named_modules() if any(n.startswith(r + ".") for r in roots)}

    assert in_layer_0(model) == in_layer_0(base), in_layer_0(model) - in_layer_0(base)
    outputs = [layer_outputs(m) for m in (base, model)]
    torch.testing.assert_close(outputs[1][0], outputs[0][0], rtol=0, atol=0)
    assert not torch.allclose(outputs[1][1], outputs[0][1])


def layer_outputs(model) -> list[torch.Tensor]:
    """Each layer's output hidden states for a fixed input (a forward hook on its root modules)."""
    from trainables.methods._arch import layer_modules

    seen: list[torch.Tensor] = []

    def keep(module, args, output):
        seen.append(output[0] if isinstance(output, tuple) else output)

    handles = [g[-1].register_forward_hook(keep) for g in layer_modules(model)]
    ids = torch.arange(5, 14).view(1, 9)
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        for h in handles:
            h.remove()
    return seen


def test_layer_placed_methods_state_the_lowest_layer_they_change(tiny_bert):
    """``frozen``: None when layer 0 is selected, the lowest selected layer above it, all the
    layers when none is (only the head trains); a top adapter is LAST_LAYER whatever layers say."""
    from trainables.methods._base import LAST_LAYER

    config = load_classifier(str(tiny_bert), C).config
    for name in ("adapter", "lora", "ia3", "prefix", "mam", "unipelt"):
        method = METHODS[name]
        assert method.knob("layers") is not None, name
        for spec, frozen in (("all", None), ("bottom_1", None), ("top_1", 1), ("0b00", L)):
            assert method.frozen({**method.defaults(), "layers": spec}, config) == frozen, name
    top = {**METHODS["adapter"].defaults(), "adapter_placement": "top", "layers": "bottom_1"}
    assert METHODS["adapter"].frozen(top, config) == LAST_LAYER


def test_adapter_scaling_takes_a_number_or_learned(tiny_bert):
    model = load_classifier(str(tiny_bert), C)
    with pytest.raises(
        ValueError, match="adapter_scaling='fixed' must be a number >= 0 or 'learned'"
    ):
        apply_method(model, "adapter", {"adapter_scaling": "fixed"})
    with pytest.raises(ValueError, match=r"^lora: layers='top_3' but the model has 2 layers"):
        apply_method(model, "lora", {"layers": "top_3"})
