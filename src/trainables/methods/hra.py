"""HRA (Yuan et al. 2024) through peft: a chain of ``r`` Householder reflections applied to
each adapted weight's input (an orthogonal update of rank ``r``).

Parameters per adapted ``Linear(in, out)``: ``in * r`` (one vector per reflection).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from trainables.methods._base import Knob, Method, inject_peft, peft_targets, targets_knob


def apply(model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
    """Freeze the encoder and inject Householder reflections into the targeted projections."""
    from peft import HRAConfig

    config = HRAConfig(
        r=knobs["hra_rank"], target_modules=peft_targets(model, "hra", knobs["hra_targets"])
    )
    return inject_peft(model, config)


METHOD = Method(
    name="hra",
    apply=apply,
    help="chain of Householder reflections of the adapted weights (peft HRA) + head",
    knobs=(
        Knob(
            "hra_rank",
            "int",
            8,
            low=2,
            high=256,
            log=True,
            help="reflections r (even: peft starts them in identical pairs, the identity)",
        ),
        targets_knob("hra"),
    ),
    export="peft",
)
