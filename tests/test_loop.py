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
    assert [m["best_val_metric"] for m in seen] == sorted(m["best_val_metric"] for m in seen)
    assert seen[-1]["best_val_metric"] == max(m["val_accuracy"] for m in seen)


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


def _grads_and_saved_bytes(model, batch) -> tuple[dict, int]:
    """One training forward + backward: the gradients and the bytes autograd kept for backward."""
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    model.train()
    torch.manual_seed(0)  # the same dropout masks in both runs
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**batch).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return grads, saved[0]


@pytest.mark.parametrize(
    "method,knobs",
    [
        ("full", {}),
        ("lora", {"lora_rank": 2}),
        ("adapter", {"adapter_size": 4}),
        ("adapter", {"adapter_size": 4, "adapter_placement": "top"}),
        ("prefix", {"prefix_length": 4}),
        ("prompt_tuning", {}),
        ("ia3", {}),
        ("bitfit", {}),
        ("freeze", {"freeze_layers": 1}),
    ],
)
def test_gradient_checkpointing_same_gradients_less_saved(tiny_bert, data, method, knobs):
    """Checkpointing changes what backward keeps, never the gradients."""
    from trainables.loop import collate, enable_gradient_checkpointing

    batch = collate(data.splits["train"], list(range(16)), 0, torch.device("cpu"))
    plain = build_model(str(tiny_bert), data, method, knobs, seed=0)
    grads, kept = _grads_and_saved_bytes(plain, batch)
    ckpt = build_model(str(tiny_bert), data, method, knobs, seed=0)
    assert enable_gradient_checkpointing(ckpt)
    grads_ckpt, kept_ckpt = _grads_and_saved_bytes(ckpt, batch)
    assert grads.keys() == grads_ckpt.keys()
    # Only trainable parameters get gradients: checkpointing must not send any further down.
    assert set(grads) == {n for n, p in plain.named_parameters() if p.requires_grad}
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=1e-5, atol=1e-6)
    # Top-only adapters keep next to nothing anyway (checkpointing adds its layer inputs).
    if knobs.get("adapter_placement") != "top":
        assert kept_ckpt < 0.6 * kept, (kept_ckpt, kept)


def test_gradient_checkpointing_is_a_training_setting(tiny_bert, data):
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        TrainConfig(gradient_checkpointing="yes")
    model = build_model(str(tiny_bert), data, "lora", {"lora_rank": 2}, seed=0)
    cfg = TrainConfig(learning_rate=1e-3, evals_per_epoch=1, gradient_checkpointing=True)
    seen = []
    train(
        model, data.splits["train"], data.splits["validation"], cfg, 0, lambda m, s: seen.append(m)
    )
    assert len(seen) == 1
    assert any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())
