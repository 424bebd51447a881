"""LoRA (Hu et al. 2021) through peft: low-rank updates of chosen projections.

peft's ``inject_adapter_in_model`` edits the transformers model in place, so
the shared loop trains it like any other model. Parameters per adapted
``Linear(in, out)``: ``rank * (in + out)``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from trainables.methods._arch import ROLES, arch_of
from trainables.methods._base import Knob, Method, inject_peft


def apply(model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
    """Freeze the encoder and inject LoRA into the targeted projections."""
    from peft import LoraConfig

    roles = arch_of(model, "lora")
    wanted = ("query", "value") if knobs["lora_targets"] == "query_value" else ROLES
    try:
        targets = roles.regex(*wanted)
    except ValueError as e:
        raise ValueError(f"lora: {e}") from None
    config = LoraConfig(
        r=knobs["lora_rank"],
        lora_alpha=knobs["lora_alpha"],
        lora_dropout=knobs["lora_dropout"],
        # Only inside the encoder's layers: not the pooler, not the head (which trains in full).
        target_modules=targets,
    )
    return inject_peft(model, config, "lora_")


METHOD = Method(
    name="lora",
    apply=apply,
    help="low-rank updates of attention (or all linear) projections + head; encoder frozen",
    knobs=(
        Knob("lora_rank", "int", 8, low=1, high=1024, log=True, help="rank r of the update"),
        Knob(
            "lora_alpha",
            "float",
            16.0,
            low=0.0,
            help="scale: the update is multiplied by alpha / r",
        ),
        Knob("lora_dropout", "float", 0.0, low=0.0, high=0.9, help="dropout on the LoRA input"),
        Knob(
            "lora_targets",
            "choice",
            "query_value",
            choices=("query_value", "all_linear"),
            help="attention query/value projections, or every linear layer of the encoder",
        ),
    ),
    export="peft",
)
