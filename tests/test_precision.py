"""Mixed precision: bf16 trains every method, close to fp32, with frozen weights untouched;
NaN is still an error; the loop never waits for the device once per step."""

from __future__ import annotations

import pytest
import torch

from trainables import precision as amp
from trainables.data import DatasetSpec, prepare
from trainables.loop import FINITE_EVERY, TrainConfig, collate, train
from trainables.methods import METHODS
from trainables.model import load_tokenizer
from trainables.trial import build_model


@pytest.fixture(scope="module")
def data(tiny_bert, topics_tsv):
    return prepare(DatasetSpec(path=str(topics_tsv)), load_tokenizer(str(tiny_bert)), 32)


def _train(model, data, **cfg):
    seen = []
    cfg = TrainConfig(**{"learning_rate": 1e-3, "batch_size": 16, "evals_per_epoch": 1, **cfg})
    train(
        model, data.splits["train"], data.splits["validation"], cfg, 0, lambda m, s: seen.append(m)
    )
    return seen


def test_auto_picks_bf16_only_where_the_hardware_runs_it_and_fp16_needs_cuda():
    assert amp.resolve("auto", "cpu") == ("bf16" if amp.cpu_has_bf16() else "fp32")
    assert amp.resolve("fp32", "cpu") == "fp32" and amp.resolve("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="CUDA"):
        amp.resolve("fp16", "cpu")
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_bf16_trains_every_method_and_leaves_frozen_weights_bit_identical(tiny_bert, data, method):
    knobs = {"freeze_layers": 1} if method == "freeze" else {}  # the tiny model has 2 layers
    model = build_model(str(tiny_bert), data, method, knobs, seed=0)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    seen = _train(model, data, precision="bf16")
    assert seen[-1]["precision_used"] == "bf16"
    assert torch.isfinite(torch.tensor(seen[-1]["train_loss"]))
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], p) for n, p in frozen.items())
    # Master weights stay fp32, and they moved.
    assert all(params[n].dtype == torch.float32 for n in trained)
    assert any(not torch.equal(params[n], p) for n, p in trained.items())


def test_bf16_gradients_are_close_to_fp32(tiny_bert, data):
    batch = collate(data.splits["train"], list(range(16)), 0, torch.device("cpu"))
    grads = {}
    for precision in ("fp32", "bf16"):
        model = build_model(str(tiny_bert), data, "full", {}, seed=0)
        with amp.autocast("cpu", precision):
            loss = model(**batch).loss
        loss.backward()
        grads[precision] = torch.cat([p.grad.flatten() for p in model.parameters()])
    cos = torch.nn.functional.cosine_similarity(grads["fp32"], grads["bf16"], dim=0)
    assert cos > 0.99


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_nan_loss_is_still_an_error_with_its_reason(tiny_bert, data, precision):
    model = build_model(str(tiny_bert), data, "full", {}, seed=0)
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="training loss is nan"):
        _train(model, data, precision=precision)


def test_the_loop_does_not_wait_for_the_device_once_per_step(tiny_bert, data, monkeypatch):
    """Every host sync on a tensor (``item``, ``bool``, ``float``, ``tolist``) is counted: with one
    evaluation round over many steps, their number does not grow with the steps. (A batch with
    padding would add transformers' own mask check, ``padding_mask.all()``; collate leaves the
    mask out of batches without padding, as here.)"""
    syncs = {"n": 0}
    for name in ("item", "__bool__", "__float__", "__int__", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            syncs["n"] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def count(epochs: int) -> tuple[int, int]:
        model = build_model(str(tiny_bert), data, "lora", {}, seed=0)
        syncs["n"] = 0
        seen = _train(model, data, precision="fp32", epochs=epochs, batch_size=4,
                      evals_per_epoch=1)  # fmt: skip
        return syncs["n"], seen[-1]["step"]

    few, steps_few = count(1)
    many, steps_many = count(3)
    assert steps_many >= 3 * steps_few > 3 * FINITE_EVERY  # (the finite check runs too)
    # Per evaluation round and per FINITE_EVERY steps, a few syncs; never one per step.
    per_step = (many - few) / (steps_many - steps_few)
    assert per_step < 0.25, (few, many, steps_few, steps_many)
