"""LoKr (Yeh et al. 2024; LyCORIS) through peft: a Kronecker product ``W1 ⊗ (B A)``.

Each side of ``Linear(in, out)`` is split into two factors as close to its
square root as divide it (``out = o1 * o2``, ``in = i1 * i2``, ``o1 <= o2``):
``W1`` is ``o1 x i1`` in full; ``W2`` (``o2 x i2``) is low-rank,
``rank * (o2 + i2)``, where ``rank < max(o2, i2) / 2``, else in full.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from trainables.methods._base import Knob, Method, inject_peft, peft_targets, targets_knob


def apply(model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
    """Freeze the encoder and inject LoKr into the targeted projections."""
    from peft import LoKrConfig

    config = LoKrConfig(
        r=knobs["lokr_rank"],
        alpha=knobs["lokr_alpha"],
        target_modules=peft_targets(model, "lokr", knobs["lokr_targets"]),
    )
    return inject_peft(model, config)


METHOD = Method(
    name="lokr",
    apply=apply,
    help="Kronecker product of a small matrix and a low-rank one (LyCORIS LoKr, peft) + head",
    knobs=(
        Knob(
            "lokr_rank", "int", 8, low=1, high=512, log=True, help="rank r of the low-rank factor"
        ),
        Knob(
            "lokr_alpha", "float", 8.0, low=0.0, help="scale: the update is multiplied by alpha / r"
        ),
        targets_knob("lokr"),
    ),
    export="peft",
)
