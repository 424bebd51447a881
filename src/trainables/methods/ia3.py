"""IA3 (Liu et al. 2022) through peft: learned vectors that rescale activations.

Keys and values are rescaled on their outputs (``out_features`` each), the
feed-forward output projection on its input (``in_features``); only in the
selected layers (``layers``; in none: the head alone trains, exported as
``trainable.safetensors``). On an encoder-decoder: in the selected layers of
each stack, and a decoder layer's cross-attention keys and values too.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from trainables.methods._arch import arch_of
from trainables.methods._base import Knob, Method, freeze_base, inject_peft, layers_knob
from trainables.methods._layers import frozen_below

# Keys and values: the decoder's cross-attention's too, on an encoder-decoder (as peft's IA3
# defaults for T5, k/v/wo, and BART, k_proj/v_proj/fc2, match both attentions).
KV = ("key", "value", "cross_key", "cross_value")


def apply(model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
    """Freeze the encoder and inject IA3 vectors."""
    from peft import IA3Config

    roles = arch_of(model, "ia3")
    layers = roles.select(knobs, "ia3")
    feedforward = ("ffn_out",) if knobs["ia3_targets"] == "kv_ffn" else ()
    try:
        config = IA3Config(
            target_modules=roles.regex(*KV, *feedforward, layers=layers),
            feedforward_modules=roles.regex(*feedforward, layers=layers) if feedforward else [],
        )
    except ValueError as e:
        raise ValueError(f"ia3: {e}") from None
    if not layers:  # placed in no layer: nothing to inject (peft refuses a tuner without targets)
        return freeze_base(model)
    return inject_peft(model, config)


METHOD = Method(
    name="ia3",
    apply=apply,
    help="learned rescaling of keys, values (and feed-forward activations) + head; encoder frozen",
    knobs=(
        Knob(
            "ia3_targets",
            "choice",
            "kv_ffn",
            choices=("kv_ffn", "kv"),
            help="kv_ffn: keys, values and the feed-forward activations (the paper's); kv: attention only",
        ),
        layers_knob(),
    ),
    frozen=frozen_below,
    export="peft",
)
