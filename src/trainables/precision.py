"""Mixed precision: which one a trial runs in, and the autocast around its forward passes.

``auto`` picks bf16 where the hardware runs it natively - a CUDA GPU of
compute capability 8.0 or newer (A100, A10G, L4, H100), a CPU with
AVX512-BF16 or AMX - else fp32. Master weights and optimizer state stay fp32
whatever the choice: autocast only runs the matrix products in the lower
precision. fp16 needs a gradient scaler and exists on CUDA only.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 natively (AVX512-BF16 or AMX), from Linux's cpuinfo flags."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: do not guess
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def resolve(precision: str, device: torch.device | str) -> str:
    """The precision a trial on ``device`` runs in: ``auto`` made concrete; fp16 off CUDA refused."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA GPU (it trains with a gradient scaler)")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"


def autocast(device: torch.device | str, precision: str):
    """The autocast context of a resolved ``precision`` (a no-op for fp32)."""
    device = torch.device(device)
    if precision not in DTYPES:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def grad_scaler(precision: str):
    """A gradient scaler for fp16 (small gradients underflow without it), else None."""
    return torch.amp.GradScaler("cuda") if precision == "fp16" else None
