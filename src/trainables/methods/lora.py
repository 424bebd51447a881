"""LoRA (Hu et al. 2021) through peft: low-rank updates of chosen projections.

Only in the selected layers (``layers``); placed in none, nothing is injected,
the head alone trains, and the export is that head (``trainable.safetensors``).

peft's tuner edits the transformers model in place, so the shared loop trains
it like any other model. Parameters per adapted ``Linear(in, out)``:
``rank * (in + out)``, plus ``out`` for DoRA's magnitude vector.

Variants (``lora_variant``): DoRA (Liu et al. 2024: the update's direction and
magnitude trained apart) and rsLoRA (Kalajdzievski 2023: scaled by
``alpha / sqrt(r)``, not ``alpha / r``). Initialisations (``lora_init``): peft's
default (B = 0), Gaussian A, PiSSA (Meng et al. 2024: A and B from the weight's
top singular vectors) and OLoRA (Büyükakyüz 2024: from its QR decomposition).
PiSSA and OLoRA move that part out of the frozen weight (``W_res = W - BA``),
so the base model changes once, at initialisation, and stays frozen after;
export turns the trained update back into a plain LoRA adapter of the original
model (rank ``2r``: ``W_res + BA = W + [B, -B0][A; A0]``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from trainables.methods._arch import arch_of
from trainables.methods._base import (
    Knob,
    Method,
    freeze_base,
    inject_peft,
    layers_knob,
    peft_targets,
    targets_knob,
)
from trainables.methods._layers import frozen_below

# lora_init -> peft's init_lora_weights.
INITS = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}
# Initialisations that rewrite the base weights (peft converts them to plain LoRA on export).
MUTATING = ("pissa", "olora")


def apply(model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
    """Freeze the encoder and inject LoRA into the targeted projections."""
    from peft import LoraConfig

    init = knobs["lora_init"]
    # A weightless model (validate, the support matrix) has nothing to decompose: the
    # initialisation only changes values, never which parameters there are.
    if init in MUTATING and next(model.parameters()).device.type == "meta":
        init = "default"
    roles = arch_of(model, "lora")
    layers = roles.select(knobs, "lora")
    targets = peft_targets(model, "lora", knobs["lora_targets"])  # refused where none are found
    if not layers:  # placed in no layer: nothing to inject (peft refuses a tuner without targets)
        return freeze_base(model)
    config = LoraConfig(
        r=knobs["lora_rank"],
        lora_alpha=knobs["lora_alpha"],
        lora_dropout=knobs["lora_dropout"],
        # Only inside the encoder's layers: not the pooler, not the head (which trains in full).
        # ... and only in the selected layers: the regex names each projection, so a peft
        # adapter directory restricts layers with no more configuration.
        target_modules=roles.within(targets, layers),
        use_dora=knobs["lora_variant"] == "dora",
        use_rslora=knobs["lora_variant"] == "rslora",
        init_lora_weights=INITS[init],
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
            help="scale: the update is multiplied by alpha / r (alpha / sqrt(r) for rslora)",
        ),
        Knob("lora_dropout", "float", 0.0, low=0.0, high=0.9, help="dropout on the LoRA input"),
        targets_knob("lora"),
        Knob(
            "lora_variant",
            "choice",
            "lora",
            choices=("lora", "dora", "rslora"),
            help="lora; dora: magnitude and direction trained apart; rslora: alpha / sqrt(r)",
        ),
        Knob(
            "lora_init",
            "choice",
            "default",
            choices=tuple(INITS),
            help="default (B = 0), gaussian, pissa (top singular vectors), olora (QR); "
            "pissa and olora move that part out of the frozen weights",
        ),
        layers_knob(),
    ),
    frozen=frozen_below,
    export="peft",
)
