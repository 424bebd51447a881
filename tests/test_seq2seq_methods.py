"""Every method on tiny random encoder-decoders: exact parameter accounting, frozen means frozen.

T5, BART and Marian from ``from_config`` (no new parameters: no head), and an
``EncoderDecoderModel`` of two tiny BERTs, warm-started as Rothe et al. do,
whose cross-attention and LM-head transform and bias are new (its head: they
train under every method). One table (CASES) drives the tests, as in
tests/test_methods.py: a method, its knobs, a closed-form formula of its
trainable parameters from the config's dimensions, and the architectures that
refuse it (with what the refusal must say).

The stacks differ on purpose: T5 has 3 encoder and 2 decoder layers and keys
narrower than its hidden size (4 heads of 4); BART and Marian feed-forward
blocks of another width in the decoder than in the encoder.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import warnings
from collections import Counter

import pytest
import torch
from torch import nn

from trainables.methods import METHODS, apply_method
from trainables.methods._arch import attention_sites, roles
from trainables.methods.adapter import AdaptedLinear, ParallelAdapted
from trainables.model import NEW_PARAMETERS, count_parameters

V, H, N, P = 50, 32, 4, 40  # vocabulary, hidden size, attention heads, positions
T5_KV, T5_FF, T5_BUCKETS = 4, 64, 8  # T5's head size (keys 4 x 4 = 16 wide), d_ff, buckets
FE, FD = 64, 48  # BART and Marian: the encoder's and the decoder's feed-forward width
BERT_I = 64  # the BERTs' intermediate size
ARCHS = ("t5", "bart", "marian", "bert2bert")


@dataclasses.dataclass(frozen=True)
class Dims:
    """What the formulas read: keys' width W, feed-forward widths, layers per stack."""

    W: int
    fe: int
    fd: int
    le: int
    ld: int


DIMS = {
    "t5": Dims(W=N * T5_KV, fe=T5_FF, fd=T5_FF, le=3, ld=2),
    "bart": Dims(W=H, fe=FE, fd=FD, le=2, ld=2),
    "marian": Dims(W=H, fe=FE, fd=FD, le=2, ld=2),
    "bert2bert": Dims(W=H, fe=BERT_I, fd=BERT_I, le=2, ld=2),
}


def build(arch: str) -> nn.Module:
    """A tiny randomly initialised model of ``arch`` (seeded), with its new parameters recorded
    as ``trainables.model.load_seq2seq`` records them."""
    from transformers import (
        BartConfig,
        BartForConditionalGeneration,
        MarianConfig,
        MarianMTModel,
        T5Config,
        T5ForConditionalGeneration,
    )

    torch.manual_seed(0)
    common = {"vocab_size": V, "d_model": H, "max_position_embeddings": P}
    bart_like = {**common, "encoder_layers": 2, "decoder_layers": 2, "encoder_ffn_dim": FE,
                 "decoder_ffn_dim": FD, "encoder_attention_heads": N, "decoder_attention_heads": N}  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if arch == "t5":
            config = T5Config(vocab_size=V, d_model=H, d_kv=T5_KV, d_ff=T5_FF, num_layers=3,
                              num_decoder_layers=2, num_heads=N, decoder_start_token_id=0,
                              relative_attention_num_buckets=T5_BUCKETS, pad_token_id=0,
                              eos_token_id=1)  # fmt: skip
            model = T5ForConditionalGeneration(config)
        elif arch == "bart":
            model = BartForConditionalGeneration(BartConfig(**bart_like))
        elif arch == "marian":
            config = MarianConfig(**bart_like, pad_token_id=V - 1, decoder_start_token_id=V - 1,
                                  eos_token_id=0)  # fmt: skip
            model = MarianMTModel(config)
        else:
            return bert2bert()
    model.__dict__[NEW_PARAMETERS] = frozenset()  # from a config: nothing is missing
    return model


def bert2bert() -> nn.Module:
    """Two tiny BERTs as an EncoderDecoderModel (the encoder without its pooler, which no
    generation reads); the cross-attention and the LM head's transform and bias are new."""
    from transformers import BertConfig, BertLMHeadModel, BertModel, EncoderDecoderModel

    sizes = {"vocab_size": V, "hidden_size": H, "num_hidden_layers": 2, "num_attention_heads": N,
             "intermediate_size": BERT_I, "max_position_embeddings": P}  # fmt: skip
    encoder = BertModel(BertConfig(**sizes), add_pooling_layer=False)
    decoder = BertLMHeadModel(BertConfig(**sizes, is_decoder=True, add_cross_attention=True))
    model = EncoderDecoderModel(encoder=encoder, decoder=decoder)
    for target in (model.config, model.generation_config):
        target.decoder_start_token_id, target.pad_token_id, target.eos_token_id = 2, 0, 3
    model.__dict__[NEW_PARAMETERS] = frozenset(
        n
        for n, _ in model.named_parameters()
        if ".crossattention." in n
        or n.startswith("decoder.cls.predictions.transform.")
        or n == "decoder.cls.predictions.bias"
    )
    return model


# ---- the formulas: parameters from the dimensions ----


def attention(a: str) -> int:
    """One attention: query, key, value (H -> W) and output (W -> H); biases but in T5."""
    W = DIMS[a].W
    return 4 * H * W if a == "t5" else 3 * (H * W + W) + (W * H + H)


def norm(a: str) -> int:
    return H if a == "t5" else 2 * H  # T5's norms have no bias


def ffn(a: str, f: int) -> int:
    return 2 * H * f if a == "t5" else (H * f + f) + (f * H + H)


def enc_layer(a: str) -> int:
    return attention(a) + norm(a) + ffn(a, DIMS[a].fe) + norm(a)


def cross(a: str) -> int:
    """A decoder layer's cross-attention and its norm."""
    return attention(a) + norm(a)


def dec_layer(a: str) -> int:
    return attention(a) + norm(a) + cross(a) + ffn(a, DIMS[a].fd) + norm(a)


def embeddings(a: str) -> int:
    """Trainable embeddings (each tied tensor once; Marian's sinusoidal positions do not train)."""
    return {
        "t5": V * H,  # shared by both stacks and the LM head
        "bart": V * H + 2 * (P + 2) * H + 2 * 2 * H,  # + learned positions (offset 2), norms
        "marian": V * H,
        "bert2bert": 2 * (V * H + P * H + 2 * H + 2 * H),  # each BERT's word/position/type/norm
    }[a]


def tail(a: str, stack: str) -> int:
    """What runs after a stack's layers in it: T5's final norms, BERT2BERT's LM-head transform
    and bias (its output projection is the decoder's word embeddings)."""
    if a == "t5":
        return H
    if a == "bert2bert" and stack == "decoder":
        return (H * H + H) + 2 * H + V
    return 0


def relative(a: str) -> int:
    """T5's relative position bias, in the first layer of each stack."""
    return T5_BUCKETS * N if a == "t5" else 0


def head(a: str) -> int:
    """BERT2BERT's new parameters: cross-attention in every decoder layer, the LM-head tail."""
    return DIMS[a].ld * cross(a) + tail(a, "decoder") if a == "bert2bert" else 0


def full(a: str) -> int:
    d = DIMS[a]
    return (embeddings(a) + d.le * enc_layer(a) + d.ld * dec_layer(a) + 2 * relative(a)
            + tail(a, "encoder") + tail(a, "decoder"))  # fmt: skip


def in_head(a: str, decoder_layers: int) -> int:
    """Of ``decoder_layers`` decoder layers, what the head already counts (their cross-attention)."""
    return decoder_layers * cross(a) if a == "bert2bert" else 0


def freeze(a: str, k: int, whole_encoder: bool = False) -> int:
    """Layers k.. of each stack (the decoder's only, with the whole encoder frozen) and what
    follows them in their stack, T5's relative bias where layer 0 trains; + the head."""
    d = DIMS[a]
    encoder = 0 if whole_encoder else (d.le - k) * enc_layer(a) + tail(a, "encoder")
    encoder += relative(a) if k == 0 and not whole_encoder else 0
    decoder = (d.ld - k) * dec_layer(a) + tail(a, "decoder") + (relative(a) if k == 0 else 0)
    overlap = in_head(a, d.ld - k) + (tail(a, "decoder") if a == "bert2bert" else 0)
    return encoder + decoder + head(a) - overlap


def bitfit(a: str) -> int:
    """Every bias of both stacks (norms' too) + the head (BERT2BERT: its biases are in it)."""
    d, W = DIMS[a], DIMS[a].W
    enc = 3 * W + H + H + d.fe + H + H  # q, k, v, out, norm, ffn in, ffn out, norm
    dec = enc - d.fe + d.fd + (3 * W + 2 * H if a != "bert2bert" else 0)  # + cross (not head)
    extra = {"bart": 2 * H, "bert2bert": 2 * H}.get(a, 0)  # embedding norms' biases
    return d.le * enc + d.ld * dec + extra + head(a)


def stack_sel(a: str, spec="all") -> tuple[int, int]:
    """How many encoder and decoder layers ``layers=spec`` selects (each stack on its own)."""
    from trainables.methods._layers import select_layers

    d = DIMS[a]
    return len(select_layers(spec, d.le)), len(select_layers(spec, d.ld))


def bottleneck(m: int) -> int:
    return 2 * H * m + m + H


def norms(a: str, spec="all") -> int:
    """The norms in the selected layers (2 per encoder layer, 3 per decoder layer), less those
    the head counts (BERT2BERT's cross-attention norm)."""
    e, dd = stack_sel(a, spec)
    return e * 2 * norm(a) + dd * 3 * norm(a) - (dd * norm(a) if a == "bert2bert" else 0)


def adapters(a: str, m: int, per_layer=1, spec="all", learned=False, with_norms=False) -> int:
    e, dd = stack_sel(a, spec)
    n = (e + dd) * per_layer
    return n * (bottleneck(m) + learned) + (norms(a, spec) if with_norms else 0) + head(a)


def linears(a: str, targets: str, stack: str) -> list[tuple[int, int]]:
    """(in, out) of each adapted Linear in one layer of ``stack``: query and value (the decoder's
    cross-attention's too, except where it is the head: BERT2BERT's trains in full), or every
    projection."""
    d, W = DIMS[a], DIMS[a].W
    qv = [(H, W), (H, W)]
    attn = qv if targets == "query_value" else qv + [(H, W), (W, H)]
    f = d.fe if stack == "encoder" else d.fd
    ff = [] if targets == "query_value" else [(H, f), (f, H)]
    cross = attn if stack == "decoder" and a != "bert2bert" else []
    return attn + cross + ff


def per_linear(a: str, targets: str, f, spec="all") -> int:
    """``f(in, out)`` summed over the adapted Linears of the selected layers, + the head."""
    e, dd = stack_sel(a, spec)
    total = e * sum(f(i, o) for i, o in linears(a, targets, "encoder"))
    return total + dd * sum(f(i, o) for i, o in linears(a, targets, "decoder")) + head(a)


def lora(a: str, r: int, targets="query_value", spec="all") -> int:
    return per_linear(a, targets, lambda i, o: r * (i + o), spec)


def ia3(a: str, targets="kv_ffn", spec="all") -> int:
    """Keys and values (self and cross, BERT2BERT's cross-attention aside: the head) on their
    outputs; the feed-forward output on its input."""
    d, W = DIMS[a], DIMS[a].W
    e, dd = stack_sel(a, spec)
    ffn_e, ffn_d = (d.fe, d.fd) if targets == "kv_ffn" else (0, 0)
    kv_d = 2 * W if a == "bert2bert" else 4 * W
    return e * (2 * W + ffn_e) + dd * (kv_d + ffn_d) + head(a)


def prefix(a: str, n: int, p: int | None = None, spec="all") -> int:
    """One prefix per attention of the selected layers: encoder self, decoder self and cross;
    with projection, one MLP per kind of attention (Li & Liang), each feeding its ``s`` sites."""
    e, dd = stack_sel(a, spec)
    W = DIMS[a].W
    if p is None:
        return n * (e + 2 * dd) * 2 * W + head(a)
    kinds = [s for s in (e, dd, dd) if s]  # encoder self, decoder self, cross
    return sum(n * H + (H * p + p) + (p * s * 2 * W + s * 2 * W) for s in kinds) + head(a)


def mam(a: str, n: int, m: int, spec="all") -> int:
    e, dd = stack_sel(a, spec)
    return prefix(a, n, None, spec) + (e + dd) * bottleneck(m)


def p_tuning(n: int, e: int) -> int:
    return n * H + (H * e + e) + (e * e + e) + (e * H + H)


PA = {"adapter_insertion": "parallel"}
# GELU: a tiny model's ReLU bottleneck of 4 can be dead for every token (no gradient at all).
AD = {"adapter_activation": "gelu"}
NO_BIAS = {"t5": "t5 has no bias terms to train"}
UNEQUAL = {"t5": "has 2 bits but the encoder has 3 layers"}  # a mask fits stacks of one depth
# (method, knobs, formula(arch), refusals: arch -> what the message says)
CASES = [
    ("full", {}, full, {}),
    ("freeze", {"freeze_layers": 1}, lambda a: freeze(a, 1), {}),
    ("freeze", {"freeze_layers": 0}, lambda a: freeze(a, 0), {}),
    ("freeze", {"freeze_layers": 2}, lambda a: freeze(a, 2),  # every layer: T5's final norms
     {a: "leaves nothing to train" for a in ("bart", "marian")}),
    ("freeze", {"freeze_layers": 0, "freeze_encoder": True}, lambda a: freeze(a, 0, True), {}),
    ("freeze", {"freeze_layers": 1, "freeze_encoder": True}, lambda a: freeze(a, 1, True), {}),
    ("freeze", {"freeze_layers": 3}, None,
     {a: f"freeze_layers=3 but the {'decoder' if a == 't5' else 'encoder'} has 2 layers" for a in ARCHS}),
    ("bitfit", {}, bitfit, NO_BIAS),
    ("adapter", {**AD, "adapter_size": 4}, lambda a: adapters(a, 4), {}),
    ("adapter", {**AD, "adapter_size": 4, "adapter_variant": "houlsby"},
     lambda a: adapters(a, 4, 2, with_norms=True), {}),
    ("adapter", {**AD, "adapter_size": 4, "adapter_position": "attention"}, lambda a: adapters(a, 4), {}),
    ("adapter", {**AD, "adapter_size": 4, **PA}, lambda a: adapters(a, 4), {}),
    ("adapter", {**AD, "adapter_size": 4, **PA, "adapter_position": "both", "adapter_scaling": "learned"},
     lambda a: adapters(a, 4, 2, learned=True), {}),
    ("adapter", {**AD, "adapter_size": 4, **PA, "adapter_position": "attention", "layers": "top_1"},
     lambda a: adapters(a, 4, spec="top_1"), {}),
    ("adapter", {**AD, "adapter_size": 4, "layers": "0b01"}, lambda a: adapters(a, 4, spec="0b01"), UNEQUAL),
    ("adapter", {**AD, "adapter_size": 4, "adapter_placement": "top"}, None,
     {a: "placement top adapts the encoder's final states" for a in ARCHS}),
    ("lora", {"lora_rank": 2}, lambda a: lora(a, 2), {}),
    ("lora", {"lora_rank": 2, "lora_targets": "all_linear"}, lambda a: lora(a, 2, "all_linear"), {}),
    ("lora", {"lora_rank": 2, "layers": [0]}, lambda a: lora(a, 2, spec=[0]), {}),
    ("lora", {"lora_rank": 2, "layers": "top_3"}, None,
     {a: f"top_3' but the {'decoder' if a == 't5' else 'encoder'} has 2 layers" for a in ARCHS}),
    ("ia3", {}, ia3, {}),
    ("ia3", {"ia3_targets": "kv", "layers": "bottom_1"}, lambda a: ia3(a, "kv", "bottom_1"), {}),
    ("prompt_tuning", {"prompt_length": 4}, lambda a: 4 * H + head(a), {}),
    ("p_tuning", {"prompt_length": 4, "prompt_encoder_size": 8}, lambda a: p_tuning(4, 8) + head(a), {}),
    ("prefix", {"prefix_length": 4}, lambda a: prefix(a, 4), {}),
    ("prefix", {"prefix_length": 4, "prefix_projection": True, "prefix_hidden": 8},
     lambda a: prefix(a, 4, 8), {}),
    ("prefix", {"prefix_length": 4, "layers": "top_1"}, lambda a: prefix(a, 4, spec="top_1"), {}),
    ("mam", {"prefix_length": 4, **AD, "adapter_size": 8}, lambda a: mam(a, 4, 8), {}),
    ("mam", {"prefix_length": 4, **AD, "adapter_size": 8, "layers": "every_other"},
     lambda a: mam(a, 4, 8, "every_other"), {}),
]  # fmt: skip
TRAINED = len(CASES)  # the rows above train (frozen-is-frozen); the peft tuners below are counted
CLASSIFIER = {a: "an encoder-decoder generates text and has none" for a in ARCHS}
CASES += [
    ("vera", {"vera_rank": 4}, lambda a: per_linear(a, "query_value", lambda i, o: 4 + o), {}),
    ("loha", {"loha_rank": 2}, lambda a: per_linear(a, "query_value", lambda i, o: 4 * (i + o)), {}),
    ("hra", {"hra_rank": 2}, lambda a: per_linear(a, "query_value", lambda i, o: 2 * i), {}),
    ("oft", {"oft_block_size": 8}, lambda a: per_linear(a, "query_value", lambda i, o: i // 8 * 28), {}),
    ("fourierft", {"fourierft_frequencies": 16, "fourierft_targets": "all_linear"},
     lambda a: per_linear(a, "all_linear", lambda i, o: 16), {}),
    ("adalora", {"adalora_rank": 2}, lambda a: per_linear(a, "all_linear", lambda i, o: 2 * (i + o + 1)), {}),
    ("ln_tuning", {}, lambda a: norms(a) + head(a), {}),
    ("unipelt", {}, None, {a: "encoder-decoders are not supported" for a in ARCHS}),
    ("head_only", {}, None, CLASSIFIER),
    ("linear_probe", {}, None, CLASSIFIER),
]  # fmt: skip
IDS = [f"{c[0]}-{i}" for i, c in enumerate(CASES)]


def test_every_registered_method_has_a_case():
    assert {c[0] for c in CASES} == set(METHODS) - {"lokr", "boft"}  # counted in support only


def batches(n: int = 3, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Random teacher-forced batches: 4 sources of 9 tokens (one padded), targets of 5 with
    padding ignored by the loss (-100)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, V - 2, (4, 9), generator=g)
        mask = torch.ones_like(ids)
        mask[1, 6:] = 0
        labels = torch.randint(5, V - 2, (4, 5), generator=g)
        labels[2, 3:] = -100
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method,knobs,formula,refused", CASES, ids=IDS)
def test_trainable_params_match_formula_and_only_they_move(arch, method, knobs, formula, refused):
    """The count is the formula's; after a few steps on a seq2seq loss the trainable parameters
    moved and nothing else did; the loss is finite and generate() runs."""
    if arch in refused:
        with pytest.raises(ValueError, match=f"^{method}: .*{re.escape(refused[arch])}"):
            apply_method(build(arch), method, knobs)
        return
    model = apply_method(build(arch), method, knobs)
    trainable, _ = count_parameters(model)
    assert trainable == formula(arch)
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    if CASES.index((method, knobs, formula, refused)) >= TRAINED:
        return
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    model.train()
    for batch in batches():
        loss = model(**batch).loss
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p, before[name]), f"{method}: trainable {name} did not move"
        else:
            assert torch.equal(p, before[name]), f"{method}: frozen {name} changed"
    batch = batches(1, seed=1)[0]
    with torch.no_grad():
        out = model.eval().generate(input_ids=batch["input_ids"],
                                    attention_mask=batch["attention_mask"], max_new_tokens=4)  # fmt: skip
    assert out.shape[0] == 4 and 2 <= out.shape[1] <= 5


def test_the_formulas_hold_the_model_sizes():
    """``full`` is every parameter that trains in the model as built (the formulas' base)."""
    for arch in ARCHS:
        model = build(arch)
        assert full(arch) == sum(p.numel() for p in model.parameters() if p.requires_grad), arch
        assert head(arch) == sum(
            p.numel() for n, p in model.named_parameters() if n in model.peftsearch_new_parameters
        )


# ---- discovery: both stacks, the cross-attention ----

CROSS_PATHS = {  # arch -> (self query, cross query, cross attention output), relative to a layer
    "t5": ("layer.0.SelfAttention.q", "layer.1.EncDecAttention.q", "layer.1.EncDecAttention.o"),
    "bart": ("self_attn.q_proj", "encoder_attn.q_proj", "encoder_attn.out_proj"),
    "marian": ("self_attn.q_proj", "encoder_attn.q_proj", "encoder_attn.out_proj"),
    "bert2bert": (
        "attention.self.query",
        "crossattention.self.query",
        "crossattention.output.dense",
    ),
}


@pytest.mark.parametrize("arch", ARCHS)
def test_both_stacks_and_the_cross_attention_are_found(arch):
    model = build(arch)
    found = roles(model)
    d = DIMS[arch]
    assert [(x.stack, x.position) for x in found.layers] == [
        *(("encoder", i) for i in range(d.le)),
        *(("decoder", i) for i in range(d.ld)),
    ]
    q, cq, co = CROSS_PATHS[arch]
    for layer in found.layers:
        (root,) = layer.roots
        rel = {r: [n.removeprefix(root + ".") for n in v] for r, v in layer.found.items()}
        assert rel["query"] == [q], (layer.index, rel)
        if layer.stack == "decoder":
            assert rel["cross_query"] == [cq] and rel["cross_attn_out"] == [co]
        else:
            assert "cross_query" not in layer.found
    sites, why = attention_sites(model)
    assert why is None
    layer_of = [i for _, _, i in sites]
    assert layer_of == [*range(d.le), *(i for i in range(d.le, d.le + d.ld) for _ in (0, 1))]
    for j in range(d.le, len(sites), 2):  # a decoder layer's self-attention, then its cross
        layer = found.layers[layer_of[j]]
        cross_q = model.get_submodule(layer.found["cross_query"][0])
        assert not any(m is cross_q for m in sites[j][0].modules())
        assert any(m is cross_q for m in sites[j + 1][0].modules())
    assert {w for _, w, _ in sites} == {d.W}


@pytest.mark.parametrize("arch", ARCHS)
def test_layer_placement_applies_to_each_stack(arch):
    """``top_1``: the top layer of the encoder and of the decoder, nothing below; ``[0]``: both
    bottom layers."""
    d = DIMS[arch]
    for spec, expect in (("top_1", {d.le - 1, d.le + d.ld - 1}), ([0], {0, d.le})):
        model = apply_method(build(arch), "adapter", {**AD, "adapter_size": 4, "layers": spec})
        found = roles(model)
        adapted = {
            layer.index
            for layer in found.layers
            for root in layer.roots
            if any(isinstance(m, AdaptedLinear) for m in model.get_submodule(root).modules())
        }
        assert adapted == expect, spec


def test_a_mask_has_one_bit_per_layer_of_a_stack():
    """Stacks of one depth: that many bits (BART's 0b01: layer 1 of each stack); T5's stacks
    differ (3 and 2): no mask fits, and the named placements still apply."""
    from trainables.methods._arch import mask_bits

    assert mask_bits(build("bart")) == 2 and mask_bits(build("bert2bert")) == 2
    assert mask_bits(build("t5")) is None
    found = roles(build("bart"))
    assert found.select({"layers": "0b01"}, "lora") == [1, 3]
    assert found.select({"layers": "0b00"}, "lora") == []
    assert roles(build("t5")).select({"layers": "top_2"}, "lora") == [1, 2, 3, 4]


@pytest.mark.parametrize("arch", ARCHS)
def test_an_attention_adapter_in_a_decoder_layer_is_on_its_self_attention(arch):
    """Position ``attention``: after the self-attention's output projection (sequential) or
    beside it (parallel); the cross-attention is left as it is."""
    for knobs, kind in (({}, AdaptedLinear), (PA, ParallelAdapted)):
        model = build(arch)
        found = roles(model)
        knobs = {**AD, "adapter_size": 4, "adapter_position": "attention", **knobs}
        model = apply_method(model, "adapter", knobs)
        for layer in found.layers:
            assert isinstance(model.get_submodule(layer.found["attn_out"][0]), kind)
            if layer.stack == "decoder":
                assert isinstance(model.get_submodule(layer.found["cross_attn_out"][0]), nn.Linear)


@pytest.mark.parametrize("arch", ARCHS)
def test_freeze_freezes_the_bottom_of_each_stack_and_the_embeddings(arch):
    """``freeze_layers: 1``: every parameter of each stack's layer 0 is frozen but the head's;
    the input embeddings too; the next layers train. ``freeze_encoder``: the whole encoder."""
    model = apply_method(build(arch), "freeze", {"freeze_layers": 1})
    found = roles(model)
    new = model.peftsearch_new_parameters
    for layer in found.layers:
        (root,) = layer.roots
        params = [(n, p) for n, p in model.named_parameters() if n.startswith(root + ".")]
        if layer.position == 0:
            assert not any(p.requires_grad for n, p in params if n not in new), layer.index
        else:
            assert all(p.requires_grad for _, p in params), layer.index
    assert not model.get_input_embeddings().weight.requires_grad
    model = apply_method(build(arch), "freeze", {"freeze_layers": 0, "freeze_encoder": True})
    assert not any(p.requires_grad for p in model.get_encoder().parameters())
    decoder_layers = [r for x in found.layers if x.stack == "decoder" for r in x.roots]
    assert all(p.requires_grad for r in decoder_layers for p in model.get_submodule(r).parameters())


def test_freeze_encoder_is_refused_on_an_encoder():
    from transformers import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(BertConfig(**{"hidden_size": 32, "num_hidden_layers": 2,
                                          "num_attention_heads": 2, "intermediate_size": 64}))  # fmt: skip
    with pytest.raises(ValueError, match="^freeze: freeze_encoder freezes an encoder-decoder"):
        apply_method(model, "freeze", {"freeze_layers": 1, "freeze_encoder": True})


# ---- prefixes: every attention, causal masks, the key/value cache ----


def wide(model: nn.Module) -> nn.Module:
    """The model's matrices drawn wide (seeded): a tiny model's outputs then depend on its input
    (at the default initialisation, greedy generation repeats one token)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def with_random_prefix(arch: str, knobs: dict | None = None, method: str = "prefix"):
    """The model (:func:`wide`) with prefixes that matter (drawn wide, seeded), in eval mode."""
    model = apply_method(wide(build(arch)), method, {"prefix_length": 3, **(knobs or {})})
    with torch.no_grad():
        draw = torch.Generator().manual_seed(1)
        for kind in model.prefix_encoder.values():
            kind.embedding.normal_(std=1.0, generator=draw)
    return model.eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_prefix_generation_with_the_cache_is_generation_without_it(arch):
    """Greedy generation with transformers' key/value cache equals generation recomputing every
    step (use_cache=False): the prefix is prepended once per step, not stored in the cache."""
    model = with_random_prefix(arch)
    batch = batches(1, seed=2)[0]
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        cached = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        fresh = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                               use_cache=False)  # fmt: skip
    assert torch.equal(cached, fresh)
    assert len({tuple(row) for row in cached[:, 1:].tolist()}) > 1  # the outputs depend on input


@pytest.mark.parametrize("arch", ARCHS)
def test_prefix_decoding_step_by_step_gives_the_teacher_forced_logits(arch):
    """Each decoder position's logits, from one teacher-forced forward, equal those of decoding
    token by token with the cache; a later target token does not change earlier logits."""
    model = with_random_prefix(arch)
    batch = batches(1, seed=3)[0]
    ids, mask = batch["input_ids"], batch["attention_mask"]
    start = model.generation_config.decoder_start_token_id
    targets = torch.cat([torch.full((4, 1), start), batch["labels"].clamp(min=5)], dim=1)
    with torch.no_grad():
        full_logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=targets).logits
        encoded = model.get_encoder()(input_ids=ids, attention_mask=mask)
        cache, steps = None, []
        for t in range(targets.shape[1]):
            out = model(encoder_outputs=encoded, attention_mask=mask, past_key_values=cache,
                        decoder_input_ids=targets[:, t : t + 1], use_cache=True)  # fmt: skip
            cache = out.past_key_values
            steps.append(out.logits[:, 0])
        changed = targets.clone()
        changed[:, -1] = 7
        later = model(input_ids=ids, attention_mask=mask, decoder_input_ids=changed).logits
    torch.testing.assert_close(torch.stack(steps, dim=1), full_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(later[:, :-1], full_logits[:, :-1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_attention_has_its_prefix_and_it_matters(arch):
    """Each site (encoder self, decoder self, cross) holds a prefix entry of its own: changing one
    site's prefix changes the logits; an encoder's padding does not."""
    from trainables.methods.prefix import _PREFIX_OF

    model = with_random_prefix(arch)
    sites, _ = attention_sites(model)
    kinds = model.prefix_encoder  # one prefix encoder per kind of attention (Li & Liang)
    per_layer = Counter(layer for _, _, layer in sites)  # encoder layers 1 site, decoder's 2
    enc, dec = (sum(1 for n in per_layer.values() if n == k) for k in (1, 2))
    assert {k: v.layers for k, v in kinds.items()} == {"encoder": enc, "decoder": dec, "cross": dec}
    owners = [(_PREFIX_OF[m][0], _PREFIX_OF[m][1]) for m, _, _ in sites]
    expected = [(kinds["encoder"], i) for i in range(enc)]
    expected += [(kinds[k], i) for i in range(dec) for k in ("decoder", "cross")]
    assert all(a is b and i == j for (a, i), (b, j) in zip(owners, expected, strict=True))
    batch = batches(1, seed=4)[0]
    labels = batch["labels"].clamp(min=5)

    def logits(ids, mask, labels=labels):
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask, labels=labels).logits

    ids, mask = batch["input_ids"], batch["attention_mask"]
    base = logits(ids, mask)
    # Example 1 is padded after 6 tokens: alone and unpadded, the same logits.
    alone = logits(ids[1:2, :6], mask[1:2, :6], labels[1:2])
    torch.testing.assert_close(alone[0], base[1], atol=1e-5, rtol=1e-5)
    for (encoder, j), site in zip(owners, range(len(sites))):
        embedding = encoder.embedding  # (length, its sites * 2 * width)
        width = embedding.shape[1] // encoder.layers
        with torch.no_grad():
            saved = embedding[:, j * width : (j + 1) * width].clone()
            embedding[:, j * width : (j + 1) * width] += 1.0
        assert not torch.allclose(logits(ids, mask), base, atol=1e-4), f"site {site}"
        with torch.no_grad():
            embedding[:, j * width : (j + 1) * width] = saved


@pytest.mark.parametrize("bias", [False, True], ids=["plain", "position_bias"])
def test_a_prefix_on_a_causal_attention_without_a_mask(bias):
    """Called without a mask (a model that leaves causality to SDPA), a causal attention's
    queries see the whole prefix and, of the other keys, their own position and those before it,
    aligned to the last keys (queries after a cache of earlier ones); T5's position bias is
    zero at the prefix. Checked against the attention written out."""
    from trainables.methods import prefix as pm

    g = torch.Generator().manual_seed(0)
    heads, dim, length, queries, tokens = 2, 4, 3, 3, 5
    encoder = pm.PrefixEncoder(length, 1, 8, False, 8, width=heads * dim)
    module = nn.Module()
    module.is_causal = True
    pm._PREFIX_OF[module] = (encoder, 0, None)
    q, k, v = (torch.randn(1, heads, n, dim, generator=g) for n in (queries, tokens, tokens))
    position = torch.randn(1, heads, queries, tokens, generator=g) if bias else None
    kwargs = {"position_bias": position} if bias else {}
    out, _ = pm.prefix_attention(module, q, k, v, None, scaling=1.0, **kwargs)
    kv = encoder()[:, 0]  # (length, 2, width)
    pk, pv = (kv[:, i].view(length, heads, dim).transpose(0, 1)[None] for i in (0, 1))
    scores = q @ torch.cat([pk, k], dim=2).transpose(-1, -2)
    if bias:
        scores = scores + torch.cat([torch.zeros(1, heads, queries, length), position], dim=-1)
    seen = torch.arange(tokens)[None, :] <= torch.arange(queries)[:, None] + tokens - queries
    allowed = torch.cat([torch.ones(queries, length, dtype=torch.bool), seen], dim=1)
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    expected = (weights @ torch.cat([pv, v], dim=2)).transpose(1, 2)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_mam_generation_with_the_cache_is_generation_without_it():
    model = with_random_prefix("bart", {**AD, "adapter_size": 4}, method="mam")
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and p.dim() == 2:
                p.normal_(std=0.5)
    batch = batches(1, seed=5)[0]
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        a = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6)
        b = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, use_cache=False)
    assert torch.equal(a, b)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_soft_prompt_reaches_the_encoder(arch):
    """prompt_tuning: another prompt, other logits (and another generation input)."""
    model = apply_method(build(arch), "prompt_tuning", {"prompt_length": 4}).eval()
    batch = batches(1, seed=6)[0]
    prompt = next(p for n, p in model.named_parameters() if p.requires_grad and "prompt" in n)

    def logits():
        with torch.no_grad():
            return model(**batch).logits

    first = logits()
    with torch.no_grad():
        prompt.normal_(std=1.0)
    assert not torch.allclose(logits(), first, atol=1e-4)


# ---- weightless models (validate) and the support matrix ----


@pytest.mark.parametrize("arch", ["t5", "bart", "bert2bert"])
def test_methods_apply_on_the_meta_device_as_on_real_weights(arch):
    """``validate`` applies methods to a weightless model: the same parameters train there."""
    from trainables.methods.support import meta_seq2seq

    real = build(arch)
    config = copy.deepcopy(real.config)
    for method, knobs, formula, refused in CASES[:TRAINED]:
        if arch in refused:
            continue
        if arch == "bert2bert":  # built as validate builds an encoder-only checkpoint's
            with torch.device("meta"):
                meta = bert2bert()
        else:
            meta = meta_seq2seq(config)
        meta = apply_method(meta, method, knobs)
        on_real = apply_method(build(arch), method, knobs)
        assert count_parameters(meta)[0] == count_parameters(on_real)[0] == formula(arch), (
            method,
            knobs,
        )


def test_an_encoder_only_config_is_warm_started_with_its_new_parameters():
    """meta_seq2seq of a BERT config: an EncoderDecoderModel whose new parameters are the
    cross-attention and the LM head's transform and bias."""
    from transformers import BertConfig

    from trainables.methods.support import meta_seq2seq

    config = BertConfig(vocab_size=V, hidden_size=H, num_hidden_layers=2, num_attention_heads=N,
                        intermediate_size=BERT_I, max_position_embeddings=P)  # fmt: skip
    model = meta_seq2seq(config)
    new = model.peftsearch_new_parameters
    assert new and all(
        ".crossattention." in n
        or n.startswith("decoder.cls.predictions.transform.")
        or n == "decoder.cls.predictions.bias"
        for n in new
    ), sorted(new)
    assert sum(p.numel() for n, p in model.named_parameters() if n in new) == head("bert2bert")


def test_the_support_matrix_of_encoder_decoders():
    """What the issue asks applies to T5, BART, Marian and a warm-started BERT2BERT; what cannot
    is refused with its reason."""
    from trainables.methods.support import seq2seq_matrix

    table = seq2seq_matrix(["t5", "bart", "marian", "encoder-decoder"])
    wanted = (
        "full",
        "freeze",
        "bitfit",
        "lora",
        "ia3",
        "prompt_tuning",
        "prefix",
        "adapter",
        "mam",
    )
    for kind, row in table.items():
        for method in wanted:
            if kind == "t5" and method == "bitfit":
                assert "no bias terms" in row[method]
            else:
                assert row[method] is None, (kind, method, row[method])
        assert "not supported" in row["unipelt"]
