"""P-tuning (Liu et al. 2021) through peft: virtual tokens produced by a prompt encoder.

Trainable: the virtual-token embeddings (``prompt_length * hidden``), the
encoder (an MLP, or a 2-layer bidirectional LSTM + MLP) and the head.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from trainables.methods._base import Knob, Method, peft_prompt_model


def apply(model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
    """Wrap the model with a P-tuning prompt encoder."""
    from peft import PromptEncoderConfig, PromptEncoderReparameterizationType

    kind = {
        "mlp": PromptEncoderReparameterizationType.MLP,
        "lstm": PromptEncoderReparameterizationType.LSTM,
    }
    return peft_prompt_model(
        model,
        PromptEncoderConfig,
        num_virtual_tokens=knobs["prompt_length"],
        encoder_reparameterization_type=kind[knobs["prompt_encoder"]],
        encoder_hidden_size=knobs["prompt_encoder_size"],
    )


METHOD = Method(
    name="p_tuning",
    apply=apply,
    help="virtual tokens from a prompt encoder (MLP or LSTM) + head; the encoder is frozen",
    knobs=(
        Knob("prompt_length", "int", 20, low=1, high=512, log=True, help="virtual tokens"),
        Knob("prompt_encoder", "choice", "mlp", choices=("mlp", "lstm"), help="the prompt encoder"),
        Knob(
            "prompt_encoder_size",
            "int",
            128,
            low=1,
            high=8192,
            log=True,
            help="hidden size of the prompt encoder",
        ),
    ),
    export="peft",
)
