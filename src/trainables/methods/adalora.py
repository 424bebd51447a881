"""AdaLoRA (Zhang et al. 2023) through peft: SVD-shaped low-rank updates ``P diag(E) Q`` whose
rank budget is reallocated while training, from the layers that matter least to those that
matter most.

Every adapted ``Linear(in, out)`` starts at rank ``r`` (``r * (in + out + 1)``
parameters); from 10% of the steps on, every ``DELTA_T`` steps, the least
important singular values are masked until the average rank is ``r * keep``,
reached at 80% of the steps and then held. The schedule needs the run's total
steps: the loop hands them over before training (:data:`trainables.loop.STEP_HOOK`)
and calls peft's ``update_and_allocate`` after each optimizer step. peft's
orthogonality penalty on ``P`` and ``Q`` joins the training loss.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
from torch import nn

from trainables.loop import STEP_HOOK
from trainables.methods._base import Knob, Method, inject_tuner, peft_targets, targets_knob

TINIT, TFINAL = 0.1, 0.2  # fractions of the steps: warm-up before, fixed ranks after allocation
DELTA_T = 10  # steps between allocations (each reads one threshold from the device)
ORTH_REG = 0.5  # weight of the orthogonality penalty (peft's default)


def apply(model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
    """Freeze the encoder, inject AdaLoRA and attach its per-step rank allocation."""
    from peft import AdaLoraConfig

    r = knobs["adalora_rank"]
    config = AdaLoraConfig(
        init_r=r,
        target_r=max(1, round(r * knobs["adalora_keep"])),
        lora_alpha=knobs["adalora_alpha"],
        target_modules=peft_targets(model, "adalora", knobs["adalora_targets"]),
        total_step=1,  # set from the run's steps when training starts (start_schedule)
        deltaT=DELTA_T,
        orth_reg_weight=ORTH_REG,
    )
    model, tuner = inject_tuner(model, config, "lora_")
    setattr(model, STEP_HOOK, partial(start_schedule, tuner))
    pairs = [(n, p) for n, p in model.named_parameters() if "lora_A" in n or "lora_B" in n]
    model.register_forward_hook(partial(orthogonality_penalty, pairs))
    return model


def start_schedule(tuner, total: int):
    """Fit the budget schedule to ``total`` steps; the function the loop calls after each step."""
    config = tuner.peft_config["default"]
    config.total_step = total
    config.tinit = math.floor(TINIT * total)
    config.tfinal = math.floor(TFINAL * total)
    return tuner.update_and_allocate


def orthogonality_penalty(params: list[tuple[str, nn.Parameter]], module, args, output):
    """Add peft's penalty ``mean ||P P^T - I||_F`` (``Q^T Q`` for ``Q``) to a training loss.

    peft adds it in its own model wrapper's forward; the method injects in place, so a hook on
    the model adds it. Only in training: evaluation losses stay comparable across methods.
    """
    if not module.training or getattr(output, "loss", None) is None or not params:
        return output
    terms = []
    for name, p in params:
        cov = p @ p.T if "lora_A" in name else p.T @ p  # A: r x in, B: out x r; both r x r
        eye = torch.eye(cov.shape[0], device=cov.device, dtype=cov.dtype)
        terms.append(torch.linalg.matrix_norm(cov - eye))
    output["loss"] = output.loss + ORTH_REG * torch.stack(terms).mean()
    return output


METHOD = Method(
    name="adalora",
    apply=apply,
    help="low-rank updates whose rank budget moves to the layers that matter (peft AdaLoRA) + head",
    knobs=(
        Knob("adalora_rank", "int", 12, low=1, high=512, log=True, help="initial rank r per layer"),
        Knob(
            "adalora_keep",
            "float",
            0.67,
            low=0.05,
            high=1.0,
            help="average rank kept at the end, as a fraction of r (peft's target_r / init_r)",
        ),
        Knob("adalora_alpha", "float", 32.0, low=0.0, help="scale of the update"),
        targets_knob("adalora", "all_linear"),
    ),
    export="peft",
)
