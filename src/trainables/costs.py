"""What a configuration costs to serve and to train, measured on the trial's own device.

Trainable parameters are one cost, and not the one a deployment pays:
unmerged LoRA adds matrix products to every layer, prefix tuning lengthens
every sequence, adapters add layers, and a linear probe on cached features
still runs the whole encoder when it serves. So each trial measures, once and
before its first report (Pareto-ASHA compares costs from the first rung):

``infer_ms_b1``, ``infer_ms_b32``
    median milliseconds per example of a forward pass at the experiment's
    ``max_length`` (full-length sequences), batch 1 and 32, in the trial's
    precision, with the method's weights merged into the base where it
    allows it (peft's tuners: LoRA, IA3, ...); warm-up passes not timed.
``infer_ms_b1_unmerged``, ``infer_ms_b32_unmerged``
    the same, as trained (adapter modules kept apart); equal to the merged
    figures for a method that has nothing to merge (full, bitfit, freeze).
``infer_peak_mb``
    the model's weights plus the peak rise of memory during a batch-32
    forward pass of the merged model.
``artifact_mb``
    the size on disk of what ``peftsearch export`` writes for the trial.

A sequence-to-sequence model serves by generating, so for it a timed pass (and
the memory pass) is ``generate`` from full-length sources (``max_source_length``)
producing exactly ``eval.max_new_tokens`` tokens (the end-of-sequence token
suppressed until then, so every configuration decodes the same number of steps)
with ``eval.num_beams`` beams: the encoder once, then one decoder step per token
through its cache - where unmerged LoRA, prefixes and adapters pay per token.
A teacher-forced forward pass would time one parallel decoder pass instead,
which is not what serving runs.

Figures depend only on the model's structure, so they are measured once per
structure on a node, under a lock (two measurements never time each other),
and reused by every trial of that structure in the same search; while one
is measured, the other trials on the device pause (:class:`DeviceGate`). What
training costs comes from the training itself (:class:`TrainMemory`, and
``train_step_ms`` from the loop).

Memory: on a GPU, CUDA's allocator statistics. On CPU, the process's peak
resident memory (``VmHWM``), reset per measurement through
``/proc/self/clear_refs`` after freed heap memory is handed back to the
system (``malloc_trim``), so it stays right when Ray reuses one worker
process for several trials; None where Linux's ``/proc`` is not there.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import hashlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainables import precision as amp

# Every cost column of the trials table and what it measures: the one list that validation
# (search.objectives), the results table and the README read.
COSTS: dict[str, str] = {
    "trainable_params": "parameters that train (counted)",
    # seq2seq: a pass generates eval.max_new_tokens tokens (see the module's docstring)
    "infer_ms_b1": "ms per example, batch 1, weights merged where the method allows",
    "infer_ms_b32": "ms per example, batch 32, weights merged where the method allows",
    "infer_ms_b1_unmerged": "ms per example, batch 1, adapter modules kept apart",
    "infer_ms_b32_unmerged": "ms per example, batch 32, adapter modules kept apart",
    "infer_peak_mb": "MiB: weights + peak activations of a batch-32 forward pass (merged)",
    "artifact_mb": "MiB on disk of what peftsearch export writes",
    "train_step_ms": "ms per training step (mean, first step not timed)",
    "train_peak_mb": "MiB: peak memory of training (weights, gradients, optimizer, activations)",
}
# Names an objective may use for a column.
ALIASES = {"infer_latency_ms": "infer_ms_b1"}
# What a trial measures at its start (the rest come from training or counting).
INFERENCE_COSTS = (
    "infer_ms_b1",
    "infer_ms_b32",
    "infer_ms_b1_unmerged",
    "infer_ms_b32_unmerged",
    "infer_peak_mb",
    "artifact_mb",
)
TRAINING_COSTS = ("train_step_ms", "train_peak_mb")
BATCHES = (1, 32)
# Timed passes per batch size: at least MIN_REPS, more while under REPS_BUDGET_S (batch 1 is
# milliseconds; batch 32 of a base-size encoder on one CPU core is seconds).
WARMUP, MIN_REPS, MAX_REPS, REPS_BUDGET_S = 2, 3, 20, 0.5
MB = 2**20


def column(objective: str) -> str:
    """The trials-table column behind an objective name (``infer_latency_ms`` -> ``infer_ms_b1``)."""
    return ALIASES.get(objective, objective)


def objective_names() -> list[str]:
    """Every cost an objective may name (columns and aliases)."""
    return [*COSTS, *ALIASES]


# ---------------------------------------------------------------- memory


def _proc_status(key: str) -> float | None:
    """A ``/proc/self/status`` figure in MiB (``VmRSS``, ``VmHWM``); None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_cpu_peak() -> bool:
    """Hand freed heap back to the system, then reset the process's peak resident memory."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # 5: reset the peak resident set size (Linux >= 4.0)
        return True
    except OSError:
        return False


def weights_mb(model: nn.Module) -> float:
    """MiB of the model's parameters and buffers (shared tensors counted once)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total / MB


class PeakMemory:
    """The peak rise of memory between :meth:`start` and :meth:`rise_mb`, on ``device``."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.base: float | None = None

    def start(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device) / MB
        else:
            self.base = _proc_status("VmRSS") if _reset_cpu_peak() else None
        return self

    def peak_mb(self) -> float | None:
        """The peak since :meth:`start`, everything this process holds on the device."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / MB  # a host read, no sync
        peak = _proc_status("VmHWM")
        return None if self.base is None or peak is None else peak

    def rise_mb(self) -> float | None:
        """How far the peak rose over the memory held at :meth:`start`."""
        peak = self.peak_mb()
        return None if peak is None or self.base is None else max(0.0, peak - self.base)


class TrainMemory:
    """``train_peak_mb``: the weights plus the peak rise of memory since training started.

    On a GPU that is CUDA's max allocated since the trial reset it, which
    already counts the weights; on CPU, the rise of the peak resident memory
    over what the process held at the start, plus the weights.
    """

    def __init__(self, model: nn.Module) -> None:
        self.device = next(model.parameters()).device
        self.weights = weights_mb(model)
        self.gate = DeviceGate(self.device)  # the trial's steps hold it shared
        self.peak = PeakMemory(self.device).start()

    def mb(self) -> float | None:
        if self.device.type == "cuda":
            return self.peak.peak_mb()
        rise = self.peak.rise_mb()
        return None if rise is None else self.weights + rise

    def figures(self) -> dict[str, float | None]:
        """What a report carries: ``train_peak_mb`` so far."""
        return {"train_peak_mb": self.mb()}


# ---------------------------------------------------------------- structure and the cache


def structure_key(
    model: nn.Module, method: str, precision: str, max_length: int, serve: str = ""
) -> str:
    """A hash of what the costs depend on: the module tree, every tensor's shape and whether it
    trains, the method, precision, sequence length, how it serves (``serve``: seq2seq's
    generation settings), device, threads and versions."""
    h = hashlib.sha256()
    device = next(model.parameters()).device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    h.update(f"{method}|{precision}|{max_length}|{serve}|{name}|{torch.get_num_threads()}".encode())
    h.update(f"{torch.__version__}|{repr(model)}".encode())
    for n, p in model.named_parameters():
        h.update(f"{n}:{tuple(p.shape)}:{p.dtype}:{p.requires_grad};".encode())
    return h.hexdigest()[:24]


def _cache_dir() -> Path:
    d = (
        Path(tempfile.gettempdir())
        / f"peftsearch-costs-{os.getuid() if hasattr(os, 'getuid') else 0}"
    )
    d.mkdir(mode=0o700, exist_ok=True)
    return d


def _device_key(device: torch.device) -> str:
    """The physical device, as every process on the node names it (a GPU by its UUID: Ray
    renumbers each worker's visible GPUs from 0)."""
    if device.type == "cuda":
        with contextlib.suppress(Exception):
            return "cuda-" + str(torch.cuda.get_device_properties(device).uuid)
        return f"cuda-{device.index or 0}"
    return "cpu"


class DeviceGate:
    """Cost measurements do not share the device with training trials.

    Every training step and evaluation of a trial holds the device's gate
    shared (:meth:`training`); a measurement holds it exclusively
    (:meth:`measuring`), so the other trials on the node pause at their next
    step until it is done, and two measurements never overlap. Writers go
    first: a measurement waiting on the gate keeps new steps from starting.
    File locks (``flock``): across every process on the node, a few system
    calls per step and no device synchronisation. Without ``fcntl``
    (Windows) the gate is open.
    """

    _open: dict[tuple[int, str], tuple] = {}  # one pair of lock files per device per process

    def __init__(self, device: torch.device) -> None:
        # Per process: a forked child shares its parent's open files, and with them the locks.
        key = _device_key(torch.device(device))
        if (os.getpid(), key) not in DeviceGate._open:
            d = _cache_dir()
            # Open for the life of the process: a lock is held through its file.
            gate = open(d / f"gate-{key}", "a+")  # noqa: SIM115
            intent = open(d / f"intent-{key}", "a+")  # noqa: SIM115
            DeviceGate._open[(os.getpid(), key)] = (gate, intent)
        self.gate, self.intent = DeviceGate._open[(os.getpid(), key)]
        try:
            import fcntl

            self._flock = fcntl.flock
            self._sh, self._ex, self._un = fcntl.LOCK_SH, fcntl.LOCK_EX, fcntl.LOCK_UN
        except ImportError:
            self._flock = None

    @contextlib.contextmanager
    def training(self):
        """Shared: a step or an evaluation (waits while a measurement waits or runs)."""
        if self._flock is None:
            yield
            return
        self._flock(self.intent, self._sh)  # blocks while a measurement has announced itself
        self._flock(self.intent, self._un)
        self._flock(self.gate, self._sh)
        try:
            yield
        finally:
            self._flock(self.gate, self._un)

    @contextlib.contextmanager
    def measuring(self):
        """Exclusive: no step of another trial runs on the device meanwhile."""
        if self._flock is None:
            yield
            return
        self._flock(self.intent, self._ex)
        try:
            self._flock(self.gate, self._ex)
            try:
                yield
            finally:
                self._flock(self.gate, self._un)
        finally:
            self._flock(self.intent, self._un)


def cached_costs(key: str, scope: str, measure) -> dict[str, Any]:
    """``measure()``'s figures for structure ``key``, measured once per ``scope`` (a search) on
    this node: under the lock, a figure another trial measured is read back (JSON, no pickle)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    safe = hashlib.sha256(scope.encode()).hexdigest()[:16]
    path = _cache_dir() / f"{safe}-{key}.json"
    with DeviceGate(device).measuring():
        if path.exists():
            with contextlib.suppress(OSError, ValueError):
                return {**json.loads(path.read_text()), "costs_reused": True}
        figures = measure()
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(figures))
        tmp.replace(path)
    return {**figures, "costs_reused": False}


# ---------------------------------------------------------------- inference


def merged_copy(model: nn.Module) -> nn.Module | None:
    """A copy of ``model`` with every peft tuner layer merged into its base layer and removed
    (what serving a merged LoRA / IA3 runs); None when there is nothing to merge."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    if not any(isinstance(m, BaseTunerLayer) for m in model.modules()):
        return None
    out = copy.deepcopy(model)
    for name, module in list(out.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(out.get_submodule(parent) if parent else out, child, module.get_base_layer())
    return out


def _serve(model: nn.Module, inputs: dict, new_tokens: int, num_beams: int):
    """One served request: a forward pass, or (``new_tokens`` > 0: seq2seq) generating exactly
    ``new_tokens`` tokens with ``num_beams`` beams."""
    if not new_tokens:
        return model(**inputs)
    return model.generate(
        **inputs,
        min_new_tokens=new_tokens,
        max_new_tokens=new_tokens,
        num_beams=num_beams,
        do_sample=False,
    )


def _inputs(model: nn.Module, batch: int, length: int, device: torch.device) -> dict:
    """Full-length random token ids (no padding, so no mask), the same every time."""
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None) or 1000
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(min(5, vocab - 1), vocab, (batch, length), generator=g)
    return {"input_ids": ids.to(device)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # timings only; once per timed pass, never in training


@contextlib.contextmanager
def serving(model: nn.Module):
    """The model as a server holds it: no parameter requires grad (autocast would otherwise
    cache low-precision copies of the weights that do - full fine-tuning's, not a frozen
    base's - and count them in its memory). The flags are put back afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with torch.no_grad():
            yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@torch.no_grad()
def time_forward(
    model: nn.Module, batch: int, length: int, precision: str, new_tokens: int = 0,
    num_beams: int = 1,
) -> float:  # fmt: skip
    """Median milliseconds per example of a forward pass, or of generating ``new_tokens``
    tokens (:func:`_serve`); warm-up passes not timed."""
    device = next(model.parameters()).device
    inputs = _inputs(model, batch, length, device)
    times: list[float] = []
    # Autocast per pass, as a server calls the model: within one autocast region torch caches
    # the low-precision copies of weights that require grad, which would flatter full
    # fine-tuning against every method whose base weights are frozen.
    # A generation is itself many passes of the decoder: one warm-up generation is enough.
    for _ in range(1 if new_tokens else WARMUP):
        with amp.autocast(device, precision):
            _serve(model, inputs, new_tokens, num_beams)
    _sync(device)
    spent = 0.0
    while len(times) < MIN_REPS or (len(times) < MAX_REPS and spent < REPS_BUDGET_S):
        t0 = time.perf_counter()
        with amp.autocast(device, precision):
            _serve(model, inputs, new_tokens, num_beams)
        _sync(device)
        times.append(time.perf_counter() - t0)
        spent += times[-1]
    return 1000 * statistics.median(times) / batch


@torch.no_grad()
def inference_peak_mb(
    model: nn.Module, length: int, precision: str, new_tokens: int = 0, num_beams: int = 1
) -> float | None:
    """The weights plus the peak rise of memory in one batch-32 forward pass (or generation)."""
    device = next(model.parameters()).device
    inputs = _inputs(model, BATCHES[-1], length, device)
    peak = PeakMemory(device).start()
    with amp.autocast(device, precision):
        _serve(model, inputs, new_tokens, num_beams)
    _sync(device)
    rise = peak.rise_mb()
    return None if rise is None else weights_mb(model) + rise


def artifact_mb(
    model: nn.Module, model_name: str, method: str, knobs: dict, labels, task: str | None = None
) -> float:
    """MiB on disk of what ``peftsearch export`` writes for this model (written to a temporary
    folder and measured)."""
    from transformers.utils import logging as hf_logging

    from trainables.export import export

    hf_logging.disable_progress_bar()  # save_pretrained's per-shard bar: noise in a trial's log
    manifest = {"base_model": model_name, "method": method, "knobs": knobs,
                "label_names": list(labels)}  # fmt: skip
    if task is not None:
        manifest["task"] = task
    with tempfile.TemporaryDirectory(prefix="peftsearch-artifact-") as d:
        export(model, Path(d) / "export", manifest, model_name)
        size = sum(f.stat().st_size for f in Path(d).rglob("*") if f.is_file())
    return size / MB


def measure_inference(
    model: nn.Module,
    method: str,
    knobs: dict,
    model_name: str,
    labels,
    max_length: int,
    precision: str,
    task: str | None = None,
    new_tokens: int = 0,
    num_beams: int = 1,
) -> dict[str, float | None]:
    """The inference costs of ``model`` (:data:`INFERENCE_COSTS`), merged and unmerged.

    ``new_tokens`` > 0 (seq2seq, ``task``): each pass generates that many tokens with
    ``num_beams`` beams from ``max_length``-token sources (see the module's docstring).
    """
    was_training = model.training
    model.eval()
    out: dict[str, float | None] = {}
    gen = {"new_tokens": new_tokens, "num_beams": num_beams}
    with serving(model):
        for b in BATCHES:
            out[f"infer_ms_b{b}_unmerged"] = time_forward(model, b, max_length, precision, **gen)
        merged = merged_copy(model)
        if merged is None:  # nothing to merge: as trained is as served
            out.update({f"infer_ms_b{b}": out[f"infer_ms_b{b}_unmerged"] for b in BATCHES})
            out["infer_peak_mb"] = inference_peak_mb(model, max_length, precision, **gen)
        else:
            merged.eval()
            out.update(
                {f"infer_ms_b{b}": time_forward(merged, b, max_length, precision, **gen)
                 for b in BATCHES}
            )  # fmt: skip
            out["infer_peak_mb"] = inference_peak_mb(merged, max_length, precision, **gen)
            del merged
    out["artifact_mb"] = artifact_mb(model, model_name, method, knobs, labels, task)
    model.train(was_training)
    return out
