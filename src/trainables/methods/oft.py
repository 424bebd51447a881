"""OFT (Qiu et al. 2023) through peft: a learned block-diagonal orthogonal rotation of each
adapted weight's input, ``W R`` (Cayley parametrisation).

Each block of size ``b`` holds the ``b (b - 1) / 2`` entries of a skew-symmetric
matrix: ``in / b * b (b - 1) / 2`` parameters per adapted ``Linear(in, out)``.
The block size must divide ``in``: where it does not, the method refuses (peft would
quietly use another block size).
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from trainables.methods._base import Knob, Method, inject_peft, peft_targets, targets_knob


def apply(model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
    """Freeze the encoder and inject OFT rotations into the targeted projections."""
    from peft import OFTConfig

    size, targets = knobs["oft_block_size"], peft_targets(model, "oft", knobs["oft_targets"])
    widths = {
        m.in_features
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and re.fullmatch(targets, n)
    }
    # peft would pick another block size with a warning: the knob would not be what ran.
    bad = sorted(w for w in widths if w % size)
    if bad:
        raise ValueError(
            f"oft: oft_block_size={size} does not divide the input width {bad[0]} of "
            f"{model.config.model_type}'s targeted layers"
        )
    config = OFTConfig(
        r=0,  # the number of blocks follows from the block size
        oft_block_size=size,
        target_modules=targets,
    )
    return inject_peft(model, config)


METHOD = Method(
    name="oft",
    apply=apply,
    help="orthogonal block-diagonal rotation of the adapted weights (peft OFT) + head",
    knobs=(
        Knob(
            "oft_block_size",
            "int",
            32,
            low=2,
            high=1024,
            log=True,
            help="size b of each orthogonal block (must divide the layers' input width)",
        ),
        targets_knob("oft"),
    ),
    export="peft",
)
