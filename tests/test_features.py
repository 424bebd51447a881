"""Frozen-feature cache: same function as the full model (eval and training mode), trains the same, never sees test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ARCHS

from trainables.data import DatasetSpec, prepare
from trainables.features import (
    FeatureHead,
    add_features,
    uses_cache,
    with_cached_features,
)
from trainables.loop import collate
from trainables.model import load_config, load_tokenizer, train_mode
from trainables.trial import build_model, fit_data, run_trial

CACHED = [
    ("linear_probe", {}),
    ("head_only", {}),
    ("adapter", {"adapter_placement": "top", "adapter_size": 8}),
    ("freeze", {"freeze_layers": 2}),  # every layer of the tiny models
]
PAIRS = [f"goal team {i}\t{'chip data' if i % 3 else 'goal win'}\t{i % 2}" for i in range(60)]


@pytest.fixture(scope="module")
def prepared(tiny_models, topics_tsv, tmp_path_factory):
    """Each cacheable architecture's topics (single texts) and pairs, with their features."""
    pairs = tmp_path_factory.mktemp("pairs") / "pairs.tsv"
    pairs.write_text("premise\thypothesis\tlabel\n" + "\n".join(PAIRS) + "\n")
    specs = {
        "single": DatasetSpec(path=str(topics_tsv)),
        "pair": DatasetSpec(path=str(pairs), text="premise", text_pair="hypothesis"),
    }
    out = {}
    for arch in ARCHS:
        tok = load_tokenizer(str(tiny_models[arch]))
        for kind, spec in specs.items():
            data = prepare(spec, tok, 32, validation=0.3 if kind == "pair" else 0.15)
            out[arch, kind] = add_features(data, str(tiny_models[arch]))
    return out


def test_which_configurations_use_the_cache(tiny_models):
    bert = load_config(str(tiny_models["bert"]))
    assert uses_cache("linear_probe", {}, bert) and uses_cache("head_only", {}, bert)
    assert uses_cache("adapter", {"adapter_placement": "top"}, bert)
    assert not uses_cache("adapter", {"adapter_placement": "layer"}, bert)
    assert uses_cache("freeze", {"freeze_layers": 2}, bert) and not uses_cache(
        "freeze", {"freeze_layers": 1}, bert
    )
    assert not uses_cache("lora", {}, bert) and not uses_cache("full", {}, bert)
    # ModernBERT: the cache holds the pooled final-normed states its head reads, so only
    # methods that keep the final norm frozen use it.
    modern = load_config(str(tiny_models["modernbert"]))
    assert uses_cache("linear_probe", {}, modern) and uses_cache("head_only", {}, modern)
    assert not uses_cache("adapter", {"adapter_placement": "top"}, modern)
    assert not uses_cache("freeze", {"freeze_layers": 2}, modern)


# ModernBERT's cache holds its pooled final-normed states, ALBERT's its pooler output: only
# linear_probe and head_only use it (ALBERT refuses a top adapter and freezing two layers anyway).
HEAD_ONLY_CACHE = ("modernbert", "albert")
EQUIVALENCE = [
    (arch, method, knobs, "single")
    for arch in ARCHS
    for method, knobs in CACHED
    if arch not in HEAD_ONLY_CACHE or method in ("linear_probe", "head_only")
] + [(arch, "linear_probe", {}, "pair") for arch in ARCHS]


@pytest.mark.parametrize(
    "arch,method,knobs,kind", EQUIVALENCE, ids=[f"{a}-{m}-{k}" for a, m, _, k in EQUIVALENCE]
)
def test_feature_head_computes_what_the_full_model_computes(
    arch, method, knobs, kind, tiny_models, prepared
):
    """The same logits with and without the cache, in eval mode and in training mode.

    In training, the frozen encoder runs in eval mode either way (``train_mode``): the
    same seed then draws the same dropout masks in the modules above it.
    """
    data = prepared[arch, kind]
    assert uses_cache(method, knobs, load_config(str(tiny_models[arch])))
    model = build_model(str(tiny_models[arch]), data, method, knobs, seed=0)
    with torch.no_grad():  # a non-zero top adapter, so the test sees it
        for name, p in model.named_parameters():
            if "top_adapter.up" in name:
                p.normal_(std=0.1)
    head = FeatureHead(model)
    idx = np.arange(16)
    slow_batch = collate(fit_data(model, data).splits["validation"], idx, 0, torch.device("cpu"))
    fast_batch = collate(
        with_cached_features(data).splits["validation"], idx, 0, torch.device("cpu")
    )

    def both(mode: bool) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            torch.manual_seed(1)
            slow = train_mode(model, mode)(**slow_batch).logits
            torch.manual_seed(1)
            fast = train_mode(head, mode)(**fast_batch).logits
        return slow, fast

    slow, fast = both(False)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    slow_train, fast_train = both(True)
    torch.testing.assert_close(fast_train, slow_train, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(slow_train, slow)  # dropout above the encoder is on


@pytest.mark.parametrize("method,knobs", CACHED, ids=[m for m, _ in CACHED])
def test_training_on_the_cache_gives_the_same_trial(method, knobs, tiny_bert, prepared):
    data = prepared["bert", "single"]
    config = {"method": method, "learning_rate": 3e-2, "epochs": 3, "evals_per_epoch": 1,
              "precision": "fp32", **knobs}  # fmt: skip
    fast, slow = [], []
    run_trial(config, data, str(tiny_bert), lambda m, s: fast.append(m))
    run_trial(config, _no_cache(data), str(tiny_bert), lambda m, s: slow.append(m))
    assert fast[0]["feature_cache"] and not slow[0]["feature_cache"]
    assert fast[0]["trainable_params"] == slow[0]["trainable_params"]
    # The same function, the same dropout masks: the same trial, up to float rounding.
    for f, s in zip(fast, slow, strict=True):
        assert f["val_accuracy"] == s["val_accuracy"]
        assert f["val_loss"] == pytest.approx(s["val_loss"], abs=1e-5)
        assert f["train_loss"] == pytest.approx(s["train_loss"], abs=1e-5)


def _no_cache(data):
    from dataclasses import replace

    return replace(data, features=None)


def test_features_are_computed_for_train_and_validation_only(prepared):
    data = prepared["bert", "single"]
    assert set(data.features) == {"train", "validation"}
    assert data.features["train"].shape == (len(data.splits["train"]), 32)
    assert "test" not in data.without("test").features
