"""FourierFT (Gao et al. 2024) through peft: each adapted weight's update is the inverse 2-D
Fourier transform of ``n`` learned spectral coefficients at fixed random frequencies.

Parameters per adapted ``Linear(in, out)``: ``n`` (at most ``in * out``: where
``n`` is larger, peft refuses).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from trainables.methods._base import Knob, Method, inject_peft, peft_targets, targets_knob


def apply(model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
    """Freeze the encoder and inject FourierFT spectra into the targeted projections."""
    from peft import FourierFTConfig

    config = FourierFTConfig(
        n_frequency=knobs["fourierft_frequencies"],
        scaling=knobs["fourierft_scaling"],
        target_modules=peft_targets(model, "fourierft", knobs["fourierft_targets"]),
    )
    return inject_peft(model, config)


METHOD = Method(
    name="fourierft",
    apply=apply,
    help="learned spectral coefficients of the weight updates (peft FourierFT) + head",
    knobs=(
        Knob(
            "fourierft_frequencies",
            "int",
            1000,
            low=1,
            high=100_000,
            log=True,
            help="n: spectral coefficients per adapted weight (at most in x out)",
        ),
        Knob(
            "fourierft_scaling",
            "float",
            150.0,
            low=0.0,
            log=False,
            help="scale of the update (the paper: 100-300 for encoders)",
        ),
        targets_knob("fourierft"),
    ),
    export="peft",
)
