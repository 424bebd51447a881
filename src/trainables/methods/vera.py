"""VeRA (Kopiczko et al. 2024) through peft: one pair of frozen random low-rank matrices
shared by every adapted layer, rescaled per layer by two trained vectors.

Parameters per adapted ``Linear(in, out)``: ``rank + out`` (the vectors ``d``
and ``b``); the shared projections are buffers, drawn from a fixed seed.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from trainables.methods._base import Knob, Method, inject_peft, peft_targets, targets_knob


def apply(model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
    """Freeze the encoder and inject VeRA into the targeted projections."""
    from peft import VeraConfig

    config = VeraConfig(
        r=knobs["vera_rank"],
        d_initial=knobs["vera_d_initial"],
        target_modules=peft_targets(model, "vera", knobs["vera_targets"]),
    )
    return inject_peft(model, config)


METHOD = Method(
    name="vera",
    apply=apply,
    help="per-layer scaling vectors of shared frozen random low-rank matrices (peft VeRA) + head",
    knobs=(
        Knob(
            "vera_rank",
            "int",
            256,
            low=1,
            high=4096,
            log=True,
            help="rank r of the shared random matrices",
        ),
        Knob(
            "vera_d_initial",
            "float",
            0.1,
            low=0.0,
            high=1.0,
            help="initial value of the d vector (the paper: small, 0.1 or less)",
        ),
        targets_knob("vera"),
    ),
    export="peft",
)
