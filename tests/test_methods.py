"""Every method on every tiny architecture: exact parameter accounting, frozen means frozen.

One table (CASES) drives the tests: a method with its knobs and a closed-form
formula of its trainable parameters from the config (hidden size H, layers L,
intermediate size I, vocabulary V, labels C). Adding a method adds a row.
"""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHS
from conftest import HIDDEN as H
from conftest import INTERMEDIATE as I_
from conftest import LAYERS as L

from trainables.data import DatasetSpec, prepare
from trainables.loop import TrainConfig, train
from trainables.methods import METHODS, apply_method
from trainables.model import count_parameters, load_classifier, load_tokenizer
from trainables.trial import build_model

C = 3  # labels in the synthetic data set
POS = 64  # max_position_embeddings
BERT_LIKE_LAYER = 4 * (H * H + H) + 2 * H + (H * I_ + I_) + (I_ * H + H) + 2 * H
# ModernBERT: no biases; fused Wqkv (3H) and Wi (gate + up, 2I); layer 0 has no attention norm.
MODERN_LAYER = 3 * H * H + H * H + H + 2 * I_ * H + I_ * H


def head(arch: str) -> int:
    if arch == "bert":
        return H * C + C
    if arch == "modernbert":  # head.dense (no bias) + head.norm (no bias) + classifier
        return H * H + H + H * C + C
    # roberta: dense + out_proj; distilbert: pre_classifier + classifier; deberta: context pooler + classifier
    return (H * H + H) + (H * C + C)


def above_layers(arch: str) -> int:
    """Base-model parameters above the layers: BERT's pooler, ModernBERT's final norm."""
    return {"bert": H * H + H, "modernbert": H}.get(arch, 0)


def layers(arch: str, n: int, first: int = 0) -> int:
    if arch == "modernbert":
        return n * MODERN_LAYER + sum(H for i in range(first, first + n) if i > 0)
    return n * BERT_LIKE_LAYER


def embeddings(arch: str, vocab: int) -> int:
    return {
        "bert": vocab * H + POS * H + 2 * H + 2 * H,  # word, position, 2 token types, LayerNorm
        "roberta": vocab * H + POS * H + 1 * H + 2 * H,  # one token type
        "distilbert": vocab * H + POS * H + 2 * H,
        "deberta-v2": vocab * H + POS * H + 2 * H,
        "modernbert": vocab * H + H,  # rotary positions; norm without bias
    }[arch]


def full(arch: str, vocab: int) -> int:
    return embeddings(arch, vocab) + layers(arch, L) + above_layers(arch) + head(arch)


def freeze(arch: str, k: int) -> int:
    return layers(arch, L - k, first=k) + above_layers(arch) + head(arch)


def bitfit(arch: str) -> int:
    # embedding LayerNorm + per layer q, k, v, out, 2 LayerNorms, FFN out (7H) and FFN in (I)
    pooler = H if arch == "bert" else 0
    return H + L * (7 * H + I_) + pooler + head(arch)


def adapter(arch: str, m: int, variant: str) -> int:
    per_layer = {"houlsby": 2, "pfeiffer": 1}
    n = 1 if variant == "top" else L * per_layer[variant]
    return n * (2 * H * m + m + H) + head(arch)


def lora(arch: str, r: int, targets: str) -> int:
    if arch == "modernbert":  # fused Wqkv: H -> 3H
        if targets == "query_value":
            return L * r * (H + 3 * H) + head(arch)
        return L * (r * (H + 3 * H) + r * (H + H) + r * (H + 2 * I_) + r * (I_ + H)) + head(arch)
    if targets == "query_value":
        return L * 2 * r * (H + H) + head(arch)
    # q, k, v, attention output (H -> H), then H -> I and I -> H
    return L * (4 * r * (H + H) + r * (H + I_) + r * (I_ + H)) + head(arch)


def ia3(arch: str, targets: str) -> int:
    kv = 3 * H if arch == "modernbert" else 2 * H  # key and value outputs (ModernBERT: fused Wqkv)
    ffn = I_ if targets == "kv_ffn" else 0  # the FFN output projection's input
    return L * (kv + ffn) + head(arch)


def p_tuning(arch: str, n: int, e: int, encoder: str) -> int:
    if encoder == "mlp":  # H -> e -> e -> H
        enc = (H * e + e) + (e * e + e) + (e * H + H)
    else:  # 2-layer bidirectional LSTM (gates 4e, two bias vectors), then 2e -> 2e -> H
        lstm = 2 * (4 * e * H + 4 * e * e + 8 * e) + 2 * (4 * e * 2 * e + 4 * e * e + 8 * e)
        enc = lstm + (2 * e * 2 * e + 2 * e) + (2 * e * H + H)
    return n * H + enc + head(arch)


def prefix(arch: str, n: int, p: int | None) -> int:
    if p is None:
        return n * L * 2 * H + head(arch)
    return n * H + (H * p + p) + (p * L * 2 * H + L * 2 * H) + head(arch)


# (method, knobs, formula(arch, vocab), architectures it cannot apply to)
CASES = [
    ("full", {}, lambda a, v: full(a, v), ()),
    ("linear_probe", {}, lambda a, v: head(a), ()),
    ("freeze", {"freeze_layers": 1}, lambda a, v: freeze(a, 1), ()),
    ("freeze", {"freeze_layers": L}, lambda a, v: freeze(a, L), ()),
    ("bitfit", {}, lambda a, v: bitfit(a), ("modernbert",)),  # ModernBERT has no biases
    ("adapter", {"adapter_size": 4}, lambda a, v: adapter(a, 4, "pfeiffer"), ()),
    (
        "adapter",
        {"adapter_size": 8, "adapter_variant": "houlsby"},
        lambda a, v: adapter(a, 8, "houlsby"),
        (),
    ),
    (
        "adapter",
        {"adapter_size": 8, "adapter_placement": "top"},
        lambda a, v: adapter(a, 8, "top"),
        (),
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
    ("prompt_tuning", {"prompt_length": 4}, lambda a, v: 4 * H + head(a), ()),
    (
        "prompt_tuning",
        {"prompt_length": 6, "prompt_init": "text"},
        lambda a, v: 6 * H + head(a),
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
    # DeBERTa-v2 computes attention in-house: no attention interface to route prefixes through.
    ("prefix", {"prefix_length": 4}, lambda a, v: prefix(a, 4, None), ("deberta-v2",)),
    (
        "prefix",
        {"prefix_length": 4, "prefix_projection": True, "prefix_hidden": 16},
        lambda a, v: prefix(a, 4, 16),
        ("deberta-v2",),
    ),
]
IDS = [f"{c[0]}-{i}" for i, c in enumerate(CASES)]


def test_every_registered_method_has_a_case():
    assert {c[0] for c in CASES} == set(METHODS)


@pytest.fixture(scope="module")
def datasets(tiny_models, topics_tsv):
    spec = DatasetSpec(path=str(topics_tsv))
    return {a: prepare(spec, load_tokenizer(str(p)), 32) for a, p in tiny_models.items()}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method,knobs,formula,unsupported", CASES, ids=IDS)
def test_trainable_params_match_formula_and_only_they_move(
    arch, method, knobs, formula, unsupported, tiny_models, datasets
):
    data = datasets[arch]
    if arch in unsupported:
        with pytest.raises(ValueError, match=method):
            build_model(str(tiny_models[arch]), data, method, knobs, seed=0)
        return
    vocab = len(load_tokenizer(str(tiny_models[arch])))
    model = build_model(str(tiny_models[arch]), data, method, knobs, seed=0)
    trainable, total = count_parameters(model)
    assert trainable == formula(arch, vocab)
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(
        learning_rate=1e-2, epochs=1, batch_size=16, evals_per_epoch=1, warmup_ratio=0.0
    )
    train(model, data.splits["train"], data.splits["validation"], cfg, 0, lambda m, s: None)
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
def test_pair_tasks_train_on_every_architecture(arch, tiny_models, tmp_path):
    """Sentence pairs (segment ids where the model has them) through full, prefix and prompt methods."""
    from trainables.trial import run_trial

    path = tmp_path / "pairs.tsv"
    rows = [
        f"goal team {i}\t{'chip data' if i % 2 else 'goal win'}\t{'same' if i % 2 == 0 else 'diff'}"
        for i in range(60)
    ]
    path.write_text("premise\thypothesis\tlabel\n" + "\n".join(rows) + "\n")
    spec = DatasetSpec(path=str(path), text="premise", text_pair="hypothesis")
    data = prepare(spec, load_tokenizer(str(tiny_models[arch])), 16, validation=0.2, test=0.2)
    methods = ["full", "prompt_tuning"] + ([] if arch == "deberta-v2" else ["prefix"])
    for method in methods:
        out = run_trial(
            {"method": method, "epochs": 1, "evals_per_epoch": 1},
            data,
            str(tiny_models[arch]),
            lambda m, s: None,
        )
        assert 0.0 <= out["val_accuracy"] <= 1.0
