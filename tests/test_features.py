"""Frozen-feature cache: same function as the full model, trains to the same accuracy, never sees test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ARCHS

from trainables.data import DatasetSpec, prepare
from trainables.features import (
    CACHEABLE_ARCHS,
    FeatureHead,
    add_features,
    uses_cache,
    with_cached_features,
)
from trainables.loop import collate
from trainables.model import load_config, load_tokenizer
from trainables.trial import build_model, run_trial

CACHED = [
    ("linear_probe", {}),
    ("adapter", {"adapter_placement": "top", "adapter_size": 8}),
    ("freeze", {"freeze_layers": 2}),  # every layer of the tiny models
]


@pytest.fixture(scope="module")
def prepared(tiny_models, topics_tsv):
    spec = DatasetSpec(path=str(topics_tsv))
    out = {}
    for arch in CACHEABLE_ARCHS:
        if arch in tiny_models:
            data = prepare(spec, load_tokenizer(str(tiny_models[arch])), 32)
            out[arch] = add_features(data, str(tiny_models[arch]))
    return out


def test_which_configurations_use_the_cache(tiny_models):
    bert = load_config(str(tiny_models["bert"]))
    assert uses_cache("linear_probe", {}, bert)
    assert uses_cache("adapter", {"adapter_placement": "top"}, bert)
    assert not uses_cache("adapter", {"adapter_placement": "layer"}, bert)
    assert uses_cache("freeze", {"freeze_layers": 2}, bert) and not uses_cache(
        "freeze", {"freeze_layers": 1}, bert
    )
    assert not uses_cache("lora", {}, bert) and not uses_cache("full", {}, bert)
    # ModernBERT has a trainable final norm between the layers and the head: no cache.
    assert not uses_cache("linear_probe", {}, load_config(str(tiny_models["modernbert"])))
    assert set(CACHEABLE_ARCHS) & set(ARCHS) == {"bert", "roberta", "distilbert", "deberta-v2"}


@pytest.mark.parametrize("method,knobs", CACHED, ids=[m for m, _ in CACHED])
@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "deberta-v2"])
def test_feature_head_computes_what_the_full_model_computes(
    arch, method, knobs, tiny_models, prepared
):
    data = prepared[arch]
    model = build_model(str(tiny_models[arch]), data, method, knobs, seed=0).eval()
    with torch.no_grad():  # a non-zero top adapter, so the test sees it
        for name, p in model.named_parameters():
            if "top_adapter.up" in name:
                p.normal_(std=0.1)
    head = FeatureHead(model).eval()
    cached = with_cached_features(data).splits["validation"]
    idx = np.arange(16)
    with torch.no_grad():
        full = model(**collate(data.splits["validation"], idx, 0, torch.device("cpu"))).logits
        fast = head(**collate(cached, idx, 0, torch.device("cpu"))).logits
    torch.testing.assert_close(fast, full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method,knobs", CACHED, ids=[m for m, _ in CACHED])
def test_training_on_the_cache_reaches_the_same_accuracy(method, knobs, tiny_bert, prepared):
    data = prepared["bert"]
    config = {"method": method, "learning_rate": 3e-2, "epochs": 3, "evals_per_epoch": 1, **knobs}
    fast = run_trial(config, data, str(tiny_bert), lambda m, s: None)
    slow = run_trial(config, _no_cache(data), str(tiny_bert), lambda m, s: None)
    assert fast["feature_cache"] and not slow["feature_cache"]
    assert fast["trainable_params"] == slow["trainable_params"]
    # Dropout inside the frozen encoder is the only difference: within noise.
    assert abs(fast["best_val_accuracy"] - slow["best_val_accuracy"]) <= 0.1


def _no_cache(data):
    from dataclasses import replace

    return replace(data, features=None)


def test_features_are_computed_for_train_and_validation_only(prepared):
    data = prepared["bert"]
    assert set(data.features) == {"train", "validation"}
    assert data.features["train"].shape == (len(data.splits["train"]), 32)
    assert "test" not in data.without("test").features
