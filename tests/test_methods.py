"""Every method on every tiny architecture: exact parameter accounting, frozen means frozen."""

from __future__ import annotations

import pytest
import torch
from conftest import HIDDEN as H
from conftest import INTERMEDIATE as I_
from conftest import LAYERS as L

from trainables.data import DatasetSpec, prepare
from trainables.loop import TrainConfig, train
from trainables.methods import METHODS, apply_method
from trainables.model import count_parameters, load_classifier, load_tokenizer
from trainables.trial import build_model

C = 3  # labels in the synthetic data set


def head(arch: str) -> int:
    if arch == "bert":
        return H * C + C
    return (H * H + H) + (
        H * C + C
    )  # roberta: dense + out_proj; distilbert: pre_classifier + classifier


def full(arch: str, vocab: int) -> int:
    pos = 64
    layer = 4 * (H * H + H) + 2 * H + (H * I_ + I_) + (I_ * H + H) + 2 * H
    if arch == "bert":
        return vocab * H + pos * H + 2 * H + 2 * H + L * layer + (H * H + H) + head(arch)
    if arch == "roberta":  # one token type, no pooler
        return vocab * H + pos * H + 1 * H + 2 * H + L * layer + head(arch)
    return vocab * H + pos * H + 2 * H + L * layer + head(arch)  # distilbert: no token types


def adapter(arch: str, m: int, variant: str) -> int:
    per_layer = 2 if variant == "houlsby" else 1
    return L * per_layer * (2 * H * m + m + H) + head(arch)


def lora(arch: str, r: int, targets: str) -> int:
    if targets == "query_value":
        return L * 2 * r * (H + H) + head(arch)
    # q, k, v, attention output (H -> H), then H -> I and I -> H
    return L * (4 * r * (H + H) + r * (H + I_) + r * (I_ + H)) + head(arch)


# (method, knobs, formula(arch, vocab)) - one row per case; every method appears.
CASES = [
    ("full", {}, lambda a, v: full(a, v)),
    ("linear_probe", {}, lambda a, v: head(a)),
    ("adapter", {"adapter_size": 4}, lambda a, v: adapter(a, 4, "pfeiffer")),
    (
        "adapter",
        {"adapter_size": 8, "adapter_variant": "houlsby"},
        lambda a, v: adapter(a, 8, "houlsby"),
    ),
    ("lora", {"lora_rank": 2}, lambda a, v: lora(a, 2, "query_value")),
    ("lora", {"lora_rank": 4, "lora_targets": "all_linear"}, lambda a, v: lora(a, 4, "all_linear")),
]
ARCHS = ["bert", "roberta", "distilbert"]


def test_every_registered_method_has_a_case():
    assert {c[0] for c in CASES} == set(METHODS)


@pytest.fixture(scope="module")
def datasets(tiny_models, topics_tsv):
    spec = DatasetSpec(path=str(topics_tsv))
    return {a: prepare(spec, load_tokenizer(str(p)), 32) for a, p in tiny_models.items()}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(
    "method,knobs,formula", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_trainable_params_match_formula_and_only_they_move(
    arch, method, knobs, formula, tiny_models, datasets
):
    data = datasets[arch]
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
