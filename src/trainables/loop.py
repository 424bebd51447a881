"""The one train/eval loop every method shares.

AdamW (no decay on biases and norms; the fused kernel where torch has one),
linear warm-up then linear decay, gradient clipping, dynamic padding (each
batch padded to its longest sequence), optional gradient checkpointing, and
an evaluation every ``1 / evals_per_epoch`` epoch that is
handed to ``on_eval`` - Ray Tune's report in a search, a print in
``peftsearch trial``. Methods differ only in which parameters train.

Sequence-to-sequence data (``Encoded.targets``) goes through the same loop: the
labels are the target ids, padded with :data:`IGNORE_INDEX` (the loss skips
them), and the model builds its decoder inputs by shifting them right
(``EncoderDecoderModel``, T5, BART, Marian and mBART all do); an evaluation adds
generation (:class:`Generation`) and its ROUGE/BLEU/chrF scores.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from trainables import precision as amp
from trainables.checkpoint import TrainState
from trainables.data import Encoded
from trainables.metrics import Tally, generation_scores, key, mode_of
from trainables.precision import PRECISIONS


@dataclass
class TrainConfig:
    """Shared knobs of the loop (the same for every method)."""

    # "log": searched and plotted on a log scale (reports read it from the run's metadata).
    learning_rate: float = field(default=5e-5, metadata={"log": True})
    epochs: int = 1
    batch_size: int = 16
    eval_batch_size: int = 64
    weight_decay: float = field(default=0.01, metadata={"log": True})
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    evals_per_epoch: int = 4
    # Recompute each encoder layer's activations in backward instead of keeping them:
    # about 0.7x the peak memory of a MiniLM trial for about 1.5x the time on CPU.
    gradient_checkpointing: bool = False
    # auto: bf16 where the hardware runs it natively, else fp32 (trainables.precision).
    precision: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "learning_rate": self.learning_rate > 0,
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "eval_batch_size": self.eval_batch_size >= 1,
            "weight_decay": self.weight_decay >= 0,
            "warmup_ratio": 0 <= self.warmup_ratio < 1,
            "max_grad_norm": self.max_grad_norm > 0,
            "evals_per_epoch": self.evals_per_epoch >= 1,
            "gradient_checkpointing": isinstance(self.gradient_checkpointing, bool),
            "precision": self.precision in PRECISIONS,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid training setting(s): { {k: getattr(self, k) for k in bad} }")

    @property
    def planned_evals(self) -> int:
        """Evaluation rounds asked for: ASHA's ``max_t`` is measured in these.

        A trial with fewer training steps than this runs fewer rounds: see
        :func:`eval_steps`, whose length is what a trial plans to report.
        """
        return self.epochs * self.evals_per_epoch


# The loop's settings as names, derived here once:
SHARED_KEYS = tuple(f.name for f in fields(TrainConfig))  # what a trial config may set
SHARED_KNOBS = tuple(k for k in SHARED_KEYS if k != "seed")  # a space may search (seed: experiment)
SHARED_COLUMNS = tuple(k for k in SHARED_KEYS if k != "eval_batch_size")  # trials table columns
LOG_SHARED_KNOBS = tuple(f.name for f in fields(TrainConfig) if f.metadata.get("log"))


def improves(value: float, best: float | None, mode: str) -> bool:
    """Whether ``value`` beats ``best`` (None: nothing yet) in ``mode`` (``max`` / ``min``).

    Strictly: on a tie the earlier round stays the best one.
    """
    return best is None or (value > best if mode == "max" else value < best)


def eval_steps(n_train: int, cfg: TrainConfig) -> list[int]:
    """The global steps after which a trial evaluates (the last one ends training).

    ``planned_evals`` rounds spread evenly over the run; with fewer steps than
    rounds, several would fall on one step and are merged, so the length of
    this list - not ``planned_evals`` - is the number of rounds a trial reports.
    """
    total = math.ceil(n_train / cfg.batch_size) * cfg.epochs
    rounds = range(1, cfg.planned_evals + 1)
    return sorted({max(1, round(k * total / cfg.planned_evals)) for k in rounds})


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then linear decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on ``device``: to a GPU through pinned memory, without waiting for the copy."""
    t = torch.from_numpy(array)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


# Label ids the loss ignores (PyTorch's cross-entropy default, which transformers' models use):
# the padding of seq2seq targets.
IGNORE_INDEX = -100
# Example generations an evaluation returns (``val_examples``), and how much of each source.
EXAMPLES, EXAMPLE_SOURCE_CHARS = 3, 300


def pad_rows(rows: list[np.ndarray], value: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, mask)``: the rows padded with ``value`` to the longest, and where they are real."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), value, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for row, r in enumerate(rows):
        ids[row, : len(r)] = r
        mask[row, : len(r)] = 1
    return ids, mask


def collate(batch: Encoded, idx: np.ndarray, pad_id: int, device: torch.device) -> dict:
    """Pad the examples at ``idx`` to their longest sequence (or take their cached features).

    Seq2seq (``batch.targets``): the labels are the target ids padded with
    :data:`IGNORE_INDEX`, so padding adds nothing to the loss.
    """
    device = torch.device(device)
    if batch.features is not None:
        return {
            "features": to_device(batch.features[idx], device),
            "labels": to_device(batch.labels[idx], device),
        }
    ids, mask = pad_rows([batch.input_ids[i] for i in idx], pad_id)
    if batch.targets is not None:
        labels = pad_rows([batch.targets[i] for i in idx], IGNORE_INDEX)[0]
    else:
        labels = batch.labels[idx]
    out = {"input_ids": to_device(ids, device), "labels": to_device(labels, device)}
    if batch.layer_states is not None:  # the states entering layer k (trainables.layercache)
        out["layer_states"] = batch.layer_states.batch(idx, ids.shape[1], device)
    # A batch without padding goes without a mask: with one, transformers' SDPA path asks the
    # device whether the mask is all ones (padding_mask.all()), which waits for the GPU every step.
    if not mask.all():
        out["attention_mask"] = to_device(mask, device)
    if batch.token_type_ids is not None:
        tti = pad_rows([batch.token_type_ids[i] for i in idx], 0)[0]
        out["token_type_ids"] = to_device(tti, device)
    return out


@dataclass(frozen=True)
class Generation:
    """How a seq2seq evaluation generates: the tokenizer that decodes, beams (1: greedy), new
    tokens at most, and on how many validation examples (the first ``max_samples`` in split
    order; None: all)."""

    tokenizer: Any
    num_beams: int = 1
    max_new_tokens: int = 64
    max_samples: int | None = None

    @classmethod
    def of(cls, tokenizer, scoring) -> Generation:
        """The settings of a :class:`trainables.data.Scoring`, with ``tokenizer``."""
        return cls(tokenizer, scoring.num_beams, scoring.max_new_tokens, scoring.max_samples)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Encoded,
    batch_size: int,
    pad_id: int,
    precision: str = "fp32",
    metric: str = "accuracy",
    positive: int | None = None,
    details: bool = False,
    generation: Generation | None = None,
) -> dict[str, Any]:
    """Mean loss, accuracy (classification) and ``val_<metric>`` on a split (under the trial's
    autocast); with ``details``, the confusion matrix and per-label figures too. Seq2seq data
    (``data.targets``): :func:`evaluate_seq2seq`, with ``generation``.

    Everything accumulates on the device (:class:`trainables.metrics.Tally`): the
    host reads it once per evaluation, never per batch.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    if data.targets is not None:
        if generation is None:
            raise ValueError("a seq2seq evaluation needs its Generation settings (tokenizer)")
        scores = evaluate_seq2seq(model, data, batch_size, pad_id, precision, generation)
    else:
        # Length-sorted batches waste little on padding; order does not matter here.
        order = np.argsort([len(s) for s in data.input_ids], kind="stable")
        tally = Tally(device)
        for start in range(0, len(order), batch_size):
            inputs = collate(data, order[start : start + batch_size], pad_id, device)
            with amp.autocast(device, precision):
                out = model(**inputs)
            tally.add(out.loss, out.logits, inputs["labels"])
        scores = tally.scores(metric, positive, details)
    from trainables.model import train_mode  # the frozen bottom stays in eval mode

    train_mode(model, was_training)
    return scores


def evaluate_seq2seq(
    model: nn.Module, data: Encoded, batch_size: int, pad_id: int, precision: str,
    generation: Generation,
) -> dict[str, Any]:  # fmt: skip
    """``val_loss``: the teacher-forced loss per target token over the whole split (each
    batch's mean weighted by its target tokens, summed on the device, read once); then
    generation on the first ``max_samples`` examples, scored against their references
    (``val_rouge1`` ... ``val_chrf``), and ``val_examples``: the first few as
    ``{source, reference, output}``, the source cut to about 300 characters."""
    device = next(model.parameters()).device
    order = np.argsort([len(s) for s in data.input_ids], kind="stable")
    loss_sum, tokens = torch.zeros((), dtype=torch.float32, device=device), 0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        n = sum(len(data.targets[i]) for i in idx)  # known on the host: no sync
        with amp.autocast(device, precision):
            loss = model(**collate(data, idx, pad_id, device)).loss
        loss_sum += loss.float() * n
        tokens += n
    outputs = generate_texts(model, data, batch_size, pad_id, precision, generation)
    references = list(data.references[: len(outputs)])
    sources = data.sources or [""] * len(outputs)
    examples = [
        {"source": _cut(sources[i]), "reference": references[i], "output": outputs[i]}
        for i in range(min(EXAMPLES, len(outputs)))
    ]
    return {
        "val_loss": loss_sum.item() / max(1, tokens),
        **generation_scores(outputs, references),
        "val_examples": examples,
    }


def generate_texts(
    model: nn.Module, data: Encoded, batch_size: int, pad_id: int, precision: str,
    generation: Generation,
) -> list[str]:  # fmt: skip
    """The decoded generations of the first ``generation.max_samples`` examples (all: None),
    in split order; batches of similar source length (then put back in order)."""
    device = next(model.parameters()).device
    n = len(data) if generation.max_samples is None else min(generation.max_samples, len(data))
    order = np.argsort([len(data.input_ids[i]) for i in range(n)], kind="stable")
    outputs: list[str] = [""] * n
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        inputs = collate(data, idx, pad_id, device)
        inputs.pop("labels")
        with amp.autocast(device, precision):
            seqs = model.generate(
                **inputs,
                num_beams=generation.num_beams,
                max_new_tokens=generation.max_new_tokens,
                do_sample=False,
            )
        texts = generation.tokenizer.batch_decode(seqs, skip_special_tokens=True)
        for i, text in zip(idx, texts):
            outputs[i] = text.strip()
    return outputs


def _cut(text: str, limit: int = EXAMPLE_SOURCE_CHARS) -> str:
    """``text`` cut to about ``limit`` characters, at a word where it can, marked with '...'."""
    if len(text) <= limit:
        return text
    head = text[:limit].rsplit(" ", 1)[0] if " " in text[:limit] else text[:limit]
    return head.rstrip() + " ..."


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters, with no weight decay on biases and normalisation weights."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters: one fused kernel per step where torch has it.

    The fused kernel (CPU and CUDA) is several times faster than the default
    per-tensor ``foreach`` path: about 50 ms less per step for full fine-tuning
    of MiniLM on CPU. Hugging Face Trainer defaults to it too.
    """
    groups = param_groups(model, cfg.weight_decay)
    device = next(model.parameters()).device
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, fused=fused or None)


def enable_gradient_checkpointing(model: nn.Module) -> bool:
    """Turn on activation checkpointing in the Hugging Face model inside ``model``.

    Non-reentrant checkpointing: it needs no input that requires grad, so it
    works with frozen embeddings (every PEFT method) and with the prefix and
    adapter modules inside a layer. False when no submodule supports it.
    """
    from transformers import PreTrainedModel

    for module in model.modules():
        if isinstance(module, PreTrainedModel) and module.supports_gradient_checkpointing:
            kwargs = {"use_reentrant": False}
            if hasattr(module, "activation_checkpointing_enable"):  # transformers >= 5.x
                module.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                module.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            # It also makes the embeddings' output require grad, which reentrant checkpointing
            # needs and ours does not: left on, backward would run down through frozen layers
            # that no trainable parameter sits under (top-only adapters, partial freezing).
            module.disable_input_require_grads()
            return True
    return False


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train: all a checkpoint needs (the rest is pretrained)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


EvalCallback = Callable[[dict[str, Any], Callable[[], dict]], None]

# A method that drives its modules while training (AdaLoRA's rank allocation) sets this attribute
# on a module of the model: a function of the run's total optimizer steps, called once before
# training, that returns the function to call with the global step (1, 2, ...) after each
# optimizer step, while the gradients are still there. Any method, any module; the loop adds a
# Python call per step and nothing that waits for the device.
STEP_HOOK = "peftsearch_step_hook"


def step_hooks(model: nn.Module, total: int) -> Callable[[int], None]:
    """The per-step function of every :data:`STEP_HOOK` in ``model``, started with ``total``."""
    hooks = [m.__dict__[STEP_HOOK](total) for m in model.modules() if STEP_HOOK in m.__dict__]

    def on_step(step: int) -> None:
        for hook in hooks:
            hook(step)

    return on_step


# Steps between checks that the training loss is finite: each check waits for the device,
# so not every step; an evaluation round checks too.
FINITE_EVERY = 32


def train(
    model: nn.Module,
    train_data: Encoded,
    val_data: Encoded,
    cfg: TrainConfig,
    pad_id: int,
    on_eval: EvalCallback,
    resume: dict | None = None,
    metric: str = "accuracy",
    positive: int | None = None,
    gate: Callable[[], Any] = contextlib.nullcontext,
    generation: Generation | None = None,
) -> dict[str, Any]:
    """Train ``model`` (only its trainable parameters) and evaluate periodically.

    ``on_eval(metrics, get_state)`` runs after each evaluation; ``get_state()`` builds a
    checkpoint that ``resume`` accepts. Returns the last metrics. Each evaluation scores
    ``metric`` (``positive``: f1's positive label; ``generation``: how seq2seq generates), its
    best round so far ``best_val_metric``. Nothing waits for the device per step: the loss is
    summed on the device and checked for NaN/inf every ``FINITE_EVERY`` steps and at each
    evaluation. ``gate``: held around each step and evaluation (:class:`costs.DeviceGate`)."""
    device = next(model.parameters()).device
    precision = amp.resolve(cfg.precision, device)
    steps_per_epoch = math.ceil(len(train_data) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = round(cfg.warmup_ratio * total)
    evals = set(eval_steps(len(train_data), cfg))
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    optimizer, on_step = make_optimizer(model, cfg), step_hooks(model, total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, total))
    scaler = amp.grad_scaler(precision)
    step, elapsed, best = 0, 0.0, None
    if resume:
        step, elapsed, best = restore(TrainState.from_dict(resume), model, optimizer, scheduler)
    from trainables.model import train_mode  # the frozen bottom stays in eval mode

    train_mode(model)
    started = time.perf_counter() - elapsed
    params = [p for g in optimizer.param_groups for p in g["params"]]
    loss_sum, loss_n, metrics = torch.zeros((), device=device), 0, {}
    clock = StepClock(device, step)
    orders: dict[int, np.ndarray] = {}
    while step < total:
        epoch, offset = divmod(step, steps_per_epoch)
        if epoch not in orders:
            orders = {epoch: epoch_order(cfg.seed, epoch, len(train_data))}
        idx = orders[epoch][offset * cfg.batch_size : (offset + 1) * cfg.batch_size]
        with gate(), amp.autocast(device, precision):
            loss = model(**collate(train_data, idx, pad_id, device)).loss
            optimizer_step(loss, params, optimizer, scaler, cfg.max_grad_norm)
            on_step(step + 1)  # after the update, before the gradients are cleared
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        loss_sum += loss.detach().float()
        loss_n += 1
        clock.stepped(step, total)
        if step % FINITE_EVERY == 0 or step in evals:
            check_finite(loss_sum, step - loss_n + 1, step)  # waits for the device
        if step in evals:
            step_ms = clock.step_ms(step)
            with gate():
                metrics = evaluate(model, val_data, cfg.eval_batch_size, pad_id, precision,
                                   metric, positive, generation=generation)  # fmt: skip
            if improves(metrics[key(metric)], best, mode_of(key(metric))):
                best = metrics[key(metric)]
            metrics.update(
                train_loss=loss_sum.item() / loss_n,
                epoch=step / steps_per_epoch,
                step=step,
                time_s=time.perf_counter() - started,
                best_val_metric=best,
                precision_used=precision,
                train_step_ms=step_ms,
            )
            loss_sum, loss_n = torch.zeros((), device=device), 0
            on_eval(metrics, state_getter(model, optimizer, scheduler, cfg, metrics, best))
            clock.evaluated()
    return metrics


class StepClock:
    """``train_step_ms``: training time per step, evaluations (and what follows them: reports,
    checkpoints) not counted, from the end of the first step on - its allocations and first
    kernel calls are warm-up. The device is waited for once, after that first step; the loop's
    own checks at each evaluation wait for it anyway, so the clock reads true there."""

    def __init__(self, device: torch.device, step: int) -> None:
        self.device, self.started, self.first = device, time.perf_counter(), step
        self.timed_from: float | None = None
        self.timed_step, self.eval_s, self.eval_started = step, 0.0, 0.0

    def stepped(self, step: int, total: int) -> None:
        if self.timed_from is None and step < total:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # once per trial
            self.timed_from, self.timed_step = time.perf_counter(), step

    def step_ms(self, step: int) -> float:
        """At an evaluation (after the loop waited for the device): ms per step so far."""
        self.eval_started = now = time.perf_counter()
        if self.timed_from is not None and step > self.timed_step:
            return 1000 * (now - self.timed_from - self.eval_s) / (step - self.timed_step)
        return 1000 * (now - self.started) / max(1, step - self.first)  # the first step alone

    def evaluated(self) -> None:
        self.eval_s += time.perf_counter() - self.eval_started


def optimizer_step(loss: torch.Tensor, params, optimizer, scaler, max_grad_norm: float) -> None:
    """Backward, clip the gradients, step."""
    if scaler is None:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        return
    # fp16: scaled gradients; a step with inf/NaN gradients is skipped by the scaler.
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    scaler.step(optimizer)
    scaler.update()


def check_finite(loss_sum: torch.Tensor, first: int, last: int) -> None:
    """Stop a trial whose training loss went NaN or infinite, with its reason (one host sync)."""
    if not torch.isfinite(loss_sum):
        value = loss_sum.item()
        where = f"at step {last}" if first >= last else f"between steps {first} and {last}"
        raise FloatingPointError(f"training loss is {value} {where}")


def restore(state: TrainState, model, optimizer, scheduler) -> tuple[int, float, float | None]:
    """Continue from a checkpoint: parameters, optimizer, schedule and RNG; (step, elapsed, best)."""
    model.load_state_dict(state.trainable, strict=False)
    optimizer.load_state_dict(state.optimizer)
    scheduler.load_state_dict(state.scheduler)
    torch.set_rng_state(state.rng)
    if state.cuda_rng is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state.cuda_rng)
    return state.step, state.elapsed, state.best


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of an epoch's examples: it depends only on (seed, epoch), so a resumed run
    sees the same batches."""
    return np.random.default_rng(seed * 1000 + epoch).permutation(n)


def state_getter(model, optimizer, scheduler, cfg: TrainConfig, metrics: dict, best: float | None):
    """A function building the checkpoint state of this round, when asked (not every round is
    saved). What it snapshots now - step, time, RNG - is what a resumed run must match."""
    # Dropout draws from torch's RNG (the GPU's, on a GPU): a resumed run needs its state to match.
    step, elapsed, rng = metrics["step"], metrics["time_s"], torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state() if torch.cuda.is_available() else None

    def get_state() -> dict:
        return TrainState(
            trainable=trainable_state(model),
            # state_dict() holds live tensors that the next step updates in place.
            optimizer=copy.deepcopy(optimizer.state_dict()),
            scheduler=scheduler.state_dict(),
            step=step,
            elapsed=elapsed,
            best=best,
            rng=rng,
            cuda_rng=cuda_rng,
            config=asdict(cfg),
        ).to_dict()

    return get_state
