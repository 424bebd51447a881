"""What a configuration costs to serve and to train (trainables.costs), on tiny real models."""

from __future__ import annotations

import multiprocessing as mp
import threading
from pathlib import Path

import pytest
import torch

from trainables import costs
from trainables.methods import apply_method
from trainables.model import load_classifier

LABELS = ["a", "b", "c"]


def _model(path: Path, method: str, **knobs):
    torch.manual_seed(0)
    return apply_method(load_classifier(str(path), len(LABELS), LABELS), method, knobs).eval()


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_merged_copy_is_the_same_function_without_the_adapter_modules(tiny_bert, method):
    from peft.tuners.tuners_utils import BaseTunerLayer

    model = _model(tiny_bert, method)
    with torch.no_grad():  # trained-looking adapters: merging them must change the base weights
        for name, p in model.named_parameters():
            if "lora_B" in name or "ia3_l" in name:
                p.add_(0.3 * torch.randn_like(p))
    merged = costs.merged_copy(model)
    assert not any(isinstance(m, BaseTunerLayer) for m in merged.modules())
    assert any(isinstance(m, BaseTunerLayer) for m in model.modules())  # the original is kept
    ids = torch.randint(5, 40, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, model(input_ids=ids).logits)


@pytest.mark.parametrize("method", ["full", "bitfit", "adapter", "prompt_tuning"])
def test_nothing_to_merge_gives_no_copy(tiny_bert, method):
    assert costs.merged_copy(_model(tiny_bert, method)) is None


def test_measure_inference_gives_every_figure(tiny_bert):
    model = _model(tiny_bert, "lora")
    trains = {n for n, p in model.named_parameters() if p.requires_grad}
    out = costs.measure_inference(model, "lora", {}, str(tiny_bert), LABELS, 16, "fp32")
    # Measured as served (nothing requires grad), then handed back as it came: ready to train.
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trains
    assert set(out) == set(costs.INFERENCE_COSTS)
    assert all(v is not None and v > 0 for v in out.values()), out
    full = costs.measure_inference(
        _model(tiny_bert, "full"), "full", {}, str(tiny_bert), LABELS, 16, "fp32"
    )
    assert full["infer_ms_b1"] == full["infer_ms_b1_unmerged"]  # measured once: nothing to merge
    # LoRA exports the adapter (and head) only; full fine-tuning the whole model.
    assert out["artifact_mb"] < full["artifact_mb"]


def test_artifact_size_is_what_export_writes(tiny_bert, tmp_path):
    from trainables.export import export

    model = _model(tiny_bert, "lora")
    manifest = {"base_model": str(tiny_bert), "method": "lora", "knobs": {}, "label_names": LABELS}
    out = export(model, tmp_path / "x", manifest, str(tiny_bert))
    on_disk = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / costs.MB
    assert costs.artifact_mb(model, str(tiny_bert), "lora", {}, LABELS) == pytest.approx(on_disk)


def test_a_structure_is_measured_once_per_scope(tiny_bert):
    calls = []

    def measure():
        calls.append(1)
        return {"infer_ms_b1": 1.0}

    model = _model(tiny_bert, "lora", lora_rank=4)
    key = costs.structure_key(model, "lora", "fp32", 16)
    scope = f"test-{id(calls)}"
    assert costs.cached_costs(key, scope, measure) == {"infer_ms_b1": 1.0, "costs_reused": False}
    assert costs.cached_costs(key, scope, measure)["costs_reused"] is True
    assert len(calls) == 1
    costs.cached_costs(key, scope + "-other", measure)  # another search measures for itself
    assert len(calls) == 2
    # Another rank is another structure; the scale alpha is not part of it.
    assert costs.structure_key(_model(tiny_bert, "lora", lora_rank=8), "lora", "fp32", 16) != key
    same = _model(tiny_bert, "lora", lora_rank=4, lora_alpha=64)  # a scale, not a shape
    assert costs.structure_key(same, "lora", "fp32", 16) == key
    assert costs.structure_key(model, "lora", "bf16", 16) != key


def test_peak_memory_is_per_measurement_not_the_process_high_water_mark():
    # Ray reuses a worker process for several trials: a big one first must not make the next
    # one's peak look big (the process-wide ru_maxrss would).
    if costs._proc_status("VmHWM") is None:
        pytest.skip("no /proc/self/status")
    first = costs.PeakMemory(torch.device("cpu")).start()
    big = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    assert first.rise_mb() >= 60
    del big
    second = costs.PeakMemory(torch.device("cpu")).start()
    small = torch.ones(8 * 2**20 // 4)  # 8 MiB
    assert 6 <= second.rise_mb() < 40, second.rise_mb()
    del small


def _hold_training(ready, release):
    costs.DeviceGate(torch.device("cpu"))  # this process's own lock files
    with costs.DeviceGate(torch.device("cpu")).training():
        ready.set()
        release.wait(30)


def _try_training(started, done):
    started.set()
    with costs.DeviceGate(torch.device("cpu")).training():
        done.set()


def test_a_measurement_waits_for_training_steps_and_steps_wait_for_it():
    ctx = mp.get_context("spawn")  # a fresh process: its own lock files, as a Ray worker has
    gate = costs.DeviceGate(torch.device("cpu"))
    ready, release = ctx.Event(), ctx.Event()
    trainer = ctx.Process(target=_hold_training, args=(ready, release))
    trainer.start()
    try:
        assert ready.wait(60)
        measured = threading.Event()

        def measure():
            with gate.measuring():
                measured.set()

        t = threading.Thread(target=measure)
        t.start()
        assert not measured.wait(1.0)  # a step of another trial is in flight
        release.set()
        assert measured.wait(30)
        t.join()
    finally:
        release.set()
        trainer.join(30)
    # Now the other way round: while a measurement holds the device, no step starts.
    started, done = ctx.Event(), ctx.Event()
    with gate.measuring():
        step = ctx.Process(target=_try_training, args=(started, done))
        step.start()
        assert started.wait(60)
        assert not done.wait(1.0)
    assert done.wait(30)
    step.join(30)


def test_a_trial_reports_its_costs_from_the_first_round(tiny_bert, topics_tsv):
    from conftest import tiny_space

    from search.preflight import prepare_data
    from search.space import validate
    from trainables.trial import run_trial

    space = validate(tiny_space(tiny_bert, topics_tsv, Path("/tmp/unused"), methods=["lora"]))
    data = prepare_data(space, progress=False).without("test")
    seen = []
    out = run_trial(
        {"method": "lora", "epochs": 1}, data, str(tiny_bert), lambda m, g: seen.append(m)
    )
    for col in (*costs.INFERENCE_COSTS, *costs.TRAINING_COSTS):
        assert seen[0][col] is not None and seen[0][col] > 0, col  # at the first report
        assert out[col] is not None, col
    assert seen[0]["infer_ms_b1"] == seen[-1]["infer_ms_b1"]  # measured once, before training
