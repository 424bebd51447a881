"""BOFT (Liu et al. 2024) through peft: a learned orthogonal rotation of each adapted weight's
input, block-diagonal with blocks of size ``b``, and a learned scale of its outputs.

Parameters per adapted ``Linear(in, out)``: ``(in / b) * b * b + out``. peft
needs ``b`` to divide ``in``; where it does not, it refuses. The butterfly
factors of the paper (several permuted block-diagonal rotations) run only in
peft's CUDA extension, which peft compiles at first use; without it peft uses a
single factor whatever is asked. Here the extension is never built - a
compilation inside a trial, and a parameter count that would depend on the
machine - so BOFT runs with one butterfly factor everywhere, and has no knob for more.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trainables.methods._base import Knob, Method, inject_peft, peft_targets, targets_knob


def apply(model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
    """Freeze the encoder and inject BOFT rotations into the targeted projections."""
    from peft import BOFTConfig
    from peft.tuners.boft import layer

    # False is peft's own "not available" (None would make it try to build again per layer).
    if layer._FBD_CUDA is None:
        layer._FBD_CUDA = False
    config = BOFTConfig(
        boft_block_size=knobs["boft_block_size"],
        boft_n_butterfly_factor=1,
        target_modules=peft_targets(model, "boft", knobs["boft_targets"]),
    )
    # peft builds BOFT's fixed permutation by reading tensor values: under a meta-device context
    # (``validate`` builds its weightless model so) that fails; peft then moves what it built to
    # the device of the layer it adapts.
    with torch.device("cpu"):
        return inject_peft(model, config)


METHOD = Method(
    name="boft",
    apply=apply,
    help="orthogonal block rotation and scale of the adapted weights (peft BOFT, one factor) + head",
    knobs=(
        Knob(
            "boft_block_size",
            "int",
            4,
            low=2,
            high=256,
            log=True,
            help="size b of each orthogonal block (must divide the layers' input width)",
        ),
        targets_knob("boft"),
    ),
    export="peft",
)
