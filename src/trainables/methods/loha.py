"""LoHa (Hyeon-Woo et al. 2022, FedPara; LyCORIS) through peft: Hadamard product of two
low-rank updates, ``(B1 A1) * (B2 A2)``: rank up to ``r^2`` for the parameters of rank ``2r``.

Parameters per adapted ``Linear(in, out)``: ``2 * rank * (in + out)``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from trainables.methods._base import Knob, Method, inject_peft, peft_targets, targets_knob


def apply(model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
    """Freeze the encoder and inject LoHa into the targeted projections."""
    from peft import LoHaConfig

    config = LoHaConfig(
        r=knobs["loha_rank"],
        alpha=knobs["loha_alpha"],
        target_modules=peft_targets(model, "loha", knobs["loha_targets"]),
    )
    return inject_peft(model, config)


METHOD = Method(
    name="loha",
    apply=apply,
    help="Hadamard product of two low-rank updates (LyCORIS LoHa, peft) + head; encoder frozen",
    knobs=(
        Knob("loha_rank", "int", 8, low=1, high=512, log=True, help="rank r of each factor"),
        Knob(
            "loha_alpha", "float", 8.0, low=0.0, help="scale: the update is multiplied by alpha / r"
        ),
        targets_knob("loha"),
    ),
    export="peft",
)
