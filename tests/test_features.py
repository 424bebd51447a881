"""Frozen-feature cache: same function as the full model (eval and training mode), trains the same, never sees test."""

from __future__ import annotations

from dataclasses import replace

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
    return replace(data, features=None)


def test_features_are_computed_for_train_and_validation_only(prepared):
    data = prepared["bert", "single"]
    assert set(data.features) == {"train", "validation"}
    assert data.features["train"].shape == (len(data.splits["train"]), 32)
    assert "test" not in data.without("test").features


# ---------------------------------------------------------------- the layer cache (issue 17)

# Configurations that train nothing below layer 1 of the tiny (two-layer) models.
FROM_LAYER_1 = [("freeze", {"freeze_layers": 1}), ("lora", {"layers": "top_1", "lora_rank": 4})]
LAYER_CASES = [(arch, m, k) for arch in ARCHS for m, k in FROM_LAYER_1]


@pytest.fixture(scope="module")
def layered(tiny_models, topics_tsv):
    """Each architecture's topics with the states entering layer 1, as fp32 and as bf16."""
    from trainables.layercache import add_layer_states, layer_problem

    out = {}
    for arch in ARCHS:
        path = str(tiny_models[arch])
        if layer_problem(load_config(path)):
            continue
        data = prepare(DatasetSpec(path=str(topics_tsv)), load_tokenizer(path), 32, validation=0.15)
        for storage in ("fp32", "bf16"):
            out[arch, storage] = add_layer_states(replace(data), path, [1], storage)
    return out


def _cached_and_not(arch, method, knobs, data, tiny_models):
    """(model, the uncached batch, the cached batch) of 16 validation examples."""
    from trainables.layercache import with_layer_states
    from trainables.trial import on_caches

    model = build_model(str(tiny_models[arch]), data, method, knobs, seed=0)
    with torch.no_grad():  # LoRA's B starts at zero: non-zero, so the test sees what it adds
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.3)
    slow = collate(fit_data(model, data).splits["validation"], np.arange(16), 0, "cpu")
    model, fast_data, feature, k = on_caches(model, method, knobs, data)
    assert (feature, k) == (False, 1)
    fast = collate(with_layer_states(fast_data, 1).splits["validation"], np.arange(16), 0, "cpu")
    return model, slow, fast


def _logits(model, batch, mode: bool) -> torch.Tensor:
    with torch.no_grad():
        torch.manual_seed(1)
        return train_mode(model, mode)(**batch).logits


@pytest.mark.parametrize(
    "arch,method,knobs", LAYER_CASES, ids=[f"{a}-{m}" for a, m, _ in LAYER_CASES]
)
def test_layer_cache_computes_what_the_full_model_computes(
    arch, method, knobs, tiny_models, layered
):
    """fp32 states: the same logits from layer 1 up as through the whole model, in eval and in
    training mode (the frozen layer 0 runs in eval mode either way, so the same seed draws the
    same dropout masks above it). ALBERT (one layer at every depth) trains uncached."""
    from trainables.layercache import layer_depth, layer_problem

    config = load_config(str(tiny_models[arch]))
    assert layer_depth(method, knobs, config) == 1
    if arch == "albert":
        assert "share 1 layer module" in layer_problem(config)
        assert (arch, "fp32") not in layered
        return
    model, slow, fast = _cached_and_not(arch, method, knobs, layered[arch, "fp32"], tiny_models)
    assert "layer_states" in fast and "layer_states" not in slow
    for mode in (False, True):
        torch.testing.assert_close(_logits(model, fast, mode), _logits(model, slow, mode),
                                   atol=1e-5, rtol=1e-5)  # fmt: skip
    assert not torch.allclose(_logits(model, slow, True), _logits(model, slow, False))  # dropout
    # The cached states are what layer 1 reads: other states, other logits.
    noise = torch.randn(fast["layer_states"].shape, generator=torch.Generator().manual_seed(0))
    other = {**fast, "layer_states": fast["layer_states"] + noise}  # (a shift, a norm removes)
    assert not torch.allclose(_logits(model, other, False), _logits(model, slow, False))


@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "albert"])
def test_layer_cache_in_bf16_is_close(arch, tiny_models, layered):
    """bf16 states (half the memory): the logits move by bf16's rounding of the states."""
    model, slow, fast = _cached_and_not(arch, "freeze", {"freeze_layers": 1},
                                        layered[arch, "bf16"], tiny_models)  # fmt: skip
    assert fast["layer_states"].dtype == torch.bfloat16
    diff = (_logits(model, fast, False) - _logits(model, slow, False)).abs().max().item()
    print(f"{arch}: bf16 layer cache, max |logit difference| {diff:.2e}")
    assert 0 < diff < 0.05


def test_training_on_the_layer_cache_gives_the_same_trial(tiny_bert, layered):
    data = layered["bert", "fp32"]
    config = {"method": "freeze", "freeze_layers": 1, "learning_rate": 1e-2, "epochs": 2,
              "evals_per_epoch": 1, "precision": "fp32"}  # fmt: skip
    fast, slow = [], []
    out = run_trial(config, data, str(tiny_bert), lambda m, s: fast.append(m))
    run_trial(config, replace(data, layer_states=None), str(tiny_bert), lambda m, s: slow.append(m))
    assert out["layer_cache_k"] == 1 and fast[0]["layer_cache_k"] == 1
    assert slow[0]["layer_cache_k"] is None and not fast[0]["feature_cache"]
    assert (fast[0]["trainable_params"], fast[0]["total_params"]) == (
        slow[0]["trainable_params"], slow[0]["total_params"])  # fmt: skip
    for f, s in zip(fast, slow, strict=True):
        assert f["val_accuracy"] == s["val_accuracy"]
        assert f["val_loss"] == pytest.approx(s["val_loss"], abs=1e-5)
        assert f["train_loss"] == pytest.approx(s["train_loss"], abs=1e-5)


def test_layer_cache_size_is_estimated_and_refused_beyond_the_budget(layered):
    from trainables.layercache import cache_bytes, refusal

    data = layered["bert", "fp32"]
    held = data.layer_states[1]
    assert set(held) == {"train", "validation"}  # never test
    sizes = cache_bytes(data, [1], "fp32", 32)
    assert sizes == {1: sum(s.states.nbytes for s in held.values())}  # ragged: no padding
    assert cache_bytes(data, [1, 2], "bf16", 32) == {1: sizes[1] // 2, 2: sizes[1] // 2}
    assert refusal(sizes, "fp32", sizes[1], "test") is None
    why = refusal(sizes, "fp32", sizes[1] - 1, "test")
    assert "experiment.layer_cache: bf16" in why and "or off" in why and "k=1" in why


def test_the_driver_refuses_a_layer_cache_that_does_not_fit(tiny_bert, topics_tsv, tmp_path,
                                                            monkeypatch, capsys):  # fmt: skip
    from conftest import tiny_space

    from search.preflight import layer_depths, prepare_data
    from search.space import SpaceError, validate
    from trainables.layercache import BUDGET_ENV

    raw = tiny_space(tiny_bert, topics_tsv, tmp_path)
    raw["methods"] = {"freeze": {"freeze_layers": {"choice": [1, 2]}}, "lora": {}}
    space = validate(raw, "s")
    config = load_config(str(tiny_bert))
    assert layer_depths(space, config) == (1,)  # 2 = every layer: the feature cache's
    raw["methods"]["lora"] = {"layers": {"mask": True}}
    assert layer_depths(validate(raw, "s"), config) == (1,)
    raw["experiment"]["layer_cache"] = False  # YAML's bare off
    assert layer_depths(validate(raw, "s"), config) == ()
    monkeypatch.setenv(BUDGET_ENV, "0.01")
    with pytest.raises(SpaceError, match="experiment.layer_cache.*more than the 0 MiB"):
        prepare_data(space, progress=True, layers=(1,))
    assert "layer cache: k=1: 1 x" in capsys.readouterr().out  # the estimate comes first


def test_a_search_trains_frozen_layers_on_the_layer_cache(ray_local, tiny_bert, topics_tsv,
                                                          tmp_path):  # fmt: skip
    """A real search: the driver computes the states entering layer 1 once, both trials run
    from there, and report doing so."""
    import json

    from conftest import tiny_space

    import search

    raw = tiny_space(tiny_bert, topics_tsv, tmp_path / "runs", search={"num_samples": 2})
    raw["methods"] = {"freeze": {"freeze_layers": 1, "learning_rate": {"log": [1e-3, 1e-2]}}}
    raw["scheduler"] = {"type": "none"}
    res = search.run(_space_file(raw, tmp_path), quiet=True)
    assert (res.trials["status"] == "TERMINATED").all(), res.trials[["status", "error"]]
    assert res.run.read_record()["data"]["layer_cache_mb"] > 0
    results = [json.loads(ln) for p in (tmp_path / "runs").rglob("result.json")
               for ln in p.read_text().splitlines() if ln.strip()]  # fmt: skip
    assert len({r["trial_id"] for r in results}) == 2
    assert all(r["layer_cache_k"] == 1 for r in results)
    assert (res.trials["layer_cache_k"] == 1).all()  # and the trials table says so


def _space_file(raw: dict, tmp_path):
    import yaml

    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path
