"""The shared loop: schedule, evaluation cadence, NaN guard, exact resume."""

from __future__ import annotations

import pytest
import torch

from trainables.data import DatasetSpec, prepare
from trainables.loop import TrainConfig, lr_factor, train
from trainables.model import load_tokenizer
from trainables.trial import build_model


@pytest.fixture(scope="module")
def data(tiny_bert, topics_tsv):
    return prepare(DatasetSpec(path=str(topics_tsv)), load_tokenizer(str(tiny_bert)), 32)


def test_lr_factor_warms_up_then_decays_to_zero():
    f = [lr_factor(s, 4, 20) for s in range(20)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(f[3:], f[4:]))
    assert lr_factor(20, 4, 20) == 0.0


def test_evaluates_evals_per_epoch_times(tiny_bert, data):
    seen = []
    model = build_model(str(tiny_bert), data, "lora", {}, seed=0)
    cfg = TrainConfig(learning_rate=1e-3, epochs=2, evals_per_epoch=3, batch_size=16)
    train(
        model, data.splits["train"], data.splits["validation"], cfg, 0, lambda m, s: seen.append(m)
    )
    assert len(seen) == cfg.planned_evals == 6
    assert seen[-1]["epoch"] == pytest.approx(2.0)
    assert all(0 <= m["val_accuracy"] <= 1 for m in seen)
    assert [m["best_val_accuracy"] for m in seen] == sorted(m["best_val_accuracy"] for m in seen)


def test_nan_loss_raises(tiny_bert, data):
    model = build_model(str(tiny_bert), data, "full", {}, seed=0)
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="loss is nan"):
        train(
            model,
            data.splits["train"],
            data.splits["validation"],
            TrainConfig(),
            0,
            lambda m, s: None,
        )


@pytest.mark.parametrize("method", ["full", "adapter"])
def test_resume_from_checkpoint_equals_uninterrupted_run(tiny_bert, data, method):
    """A trial resumed from its first evaluation ends bit-identical to one never stopped."""
    cfg = TrainConfig(learning_rate=3e-3, epochs=2, evals_per_epoch=2, batch_size=16)
    tr, va = data.splits["train"], data.splits["validation"]

    states, metrics_a = [], []
    model_a = build_model(str(tiny_bert), data, method, {}, seed=0)
    train(model_a, tr, va, cfg, 0, lambda m, s: (states.append(s()), metrics_a.append(m)))

    model_b = build_model(str(tiny_bert), data, method, {}, seed=0)
    metrics_b = []
    train(model_b, tr, va, cfg, 0, lambda m, s: metrics_b.append(m), resume=states[0])
    assert [m["step"] for m in metrics_b] == [m["step"] for m in metrics_a[1:]]
    assert metrics_b[-1]["val_accuracy"] == metrics_a[-1]["val_accuracy"]
    for (n, a), (_, b) in zip(model_a.named_parameters(), model_b.named_parameters()):
        assert torch.equal(a, b), n
