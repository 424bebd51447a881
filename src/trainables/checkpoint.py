"""The checkpoint format, written and read here only.

A checkpoint is a folder holding two files:

* ``state.pt``: the trainable parameters, and - while a trial runs - the
  optimizer and schedule state it resumes from. Read with
  ``torch.load(weights_only=True)``: tensors and plain values, never a pickle
  (run folders can sit on shared NFS or a bucket).
* ``meta.json``: the round's step, epoch, validation metrics and whether the
  trial trained on cached features - readable without loading the weights.

Ray names the folders (``checkpoint_000003``) and keeps them under each
trial's folder; which one is a trial's best is :func:`best_of`, everywhere.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from trainables.atomic import atomic_write

STATE_FILE = "state.pt"
META_FILE = "meta.json"
# What a checkpoint's meta.json records of the round it was taken at: these, and every
# validation metric (``val_*``), so that best_of can rank by whichever one the run ranks by.
META_KEYS = ("step", "epoch", "feature_cache")
# What a finished run keeps of a checkpoint: the trained parameters and where they came from.
SLIM_KEYS = ("trainable", "step", "best", "config")


@dataclass
class TrainState:
    """What ``state.pt`` holds: the trained parameters, and what a resumed trial continues from."""

    trainable: dict[str, torch.Tensor]  # the parameters that train, by name
    optimizer: dict | None = None  # dropped once the run is over (slim)
    scheduler: dict | None = None
    step: int = 0
    elapsed: float = 0.0  # training seconds so far
    best: float | None = None  # best round so far of the ranking metric
    rng: torch.Tensor | None = None  # torch's RNG state (dropout) at the round
    cuda_rng: torch.Tensor | None = None  # the GPU's, on a GPU
    config: dict | None = None  # the loop's settings (TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain tensors and values (what ``weights_only`` loads); unset fields left out."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> TrainState:
        return cls(**{f.name: state[f.name] for f in fields(cls) if f.name in state})


def save(directory: str | Path, state: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Write a checkpoint into ``directory``: ``state`` and the round's ``metrics`` (META_KEYS)."""
    directory = Path(directory)
    torch.save(state, directory / STATE_FILE)
    meta = {k: v for k, v in metrics.items() if k in META_KEYS or k.startswith("val_")}
    (directory / META_FILE).write_text(json.dumps(meta))


def load(directory: str | Path) -> dict[str, Any]:
    """A checkpoint's state: tensors and plain values only (a planted pickle raises, never runs)."""
    data = (Path(directory) / STATE_FILE).read_bytes()
    return torch.load(io.BytesIO(data), weights_only=True)


def meta(directory: str | Path) -> dict[str, Any]:
    """A checkpoint's step, metrics and feature-cache flag ({} if it has none)."""
    path = Path(directory) / META_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def is_checkpoint(directory: str | Path) -> bool:
    """Whether ``directory`` holds a checkpoint's state."""
    return (Path(directory) / STATE_FILE).exists()


def best_of(
    checkpoints: Iterable[str | Path],
    metric: str,
    mode: str,
    meta_of: Callable[[Any], dict[str, Any]] | None = None,
):
    """The checkpoint at the best round of ``metric`` in ``mode`` (the earliest, on a tie).

    The one rule for "a trial's best checkpoint": what export takes and what
    the end-of-run pruning keeps, following the run's ranking metric.
    ``meta_of`` reads a checkpoint's meta where it is not a local folder.
    """
    sign = 1.0 if mode == "max" else -1.0
    read = meta_of or meta

    def score(c) -> tuple[float, int]:
        m = read(c)
        value = m.get(metric)
        return (-float("inf") if value is None else sign * value, -m.get("step", 0))

    return max(checkpoints, key=score)


def slim(directory: str | Path) -> bool:
    """Drop the optimizer state (twice the parameters, for AdamW) of a finished trial's checkpoint.

    Returns whether the file changed. The rewrite is atomic: a crash leaves
    the old file or the new one, never half of one.
    """
    path = Path(directory) / STATE_FILE
    state = load(directory)
    if "optimizer" not in state:
        return False
    kept = {k: state[k] for k in SLIM_KEYS if k in state}
    atomic_write(path, lambda tmp: torch.save(kept, tmp))
    return True
