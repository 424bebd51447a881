"""LN tuning (Zhao et al. 2024, "Tuning LayerNorm in Attention") through peft: trainable
copies of the normalisation layers inside the encoder's layers; everything else frozen.

Parameters: the weights (and biases) of those norms, e.g. ``2 * 2 * H`` per BERT layer; on
an encoder-decoder, the norms of both stacks' layers (a decoder layer has three).
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from trainables.methods._arch import norms_in_layers
from trainables.methods._base import Method, head_names, inject_peft


def apply(model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
    """Freeze the encoder and make trainable copies of the norms in its layers."""
    from peft import LNTuningConfig

    # A norm of the head (an EncoderDecoderModel's new cross-attention norm) trains as it is.
    names = head_names(model)
    head = {id(p) for n, p in model.named_parameters() if n in names}
    norms = {
        id(m)
        for m in norms_in_layers(model)
        if not (head and all(id(p) in head for p in m.parameters()))
    }
    names = sorted(n for n, m in model.named_modules(remove_duplicate=True) if id(m) in norms)
    if not names:
        kind = model.config.model_type
        raise ValueError(f"ln_tuning: {kind} has no normalisation layers inside its layers")
    targets = "^(" + "|".join(re.escape(n) for n in names) + ")$"
    return inject_peft(model, LNTuningConfig(target_modules=targets))


METHOD = Method(
    name="ln_tuning",
    apply=apply,
    help="the normalisation layers inside the encoder layers + head (peft LN tuning)",
    export="peft",
)
