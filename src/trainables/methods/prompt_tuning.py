"""Prompt tuning (Lester et al. 2021) through peft: a trained soft prompt before the input.

Trainable: ``prompt_length * hidden`` + head. Weak on small encoders (the gap
to fine-tuning closes only at billions of parameters) - worth measuring.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from trainables.methods._base import Knob, Method, peft_prompt_model

INIT_TEXT = "Classify this text:"


def apply(model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
    """Wrap the model with a soft prompt of ``prompt_length`` virtual tokens."""
    from peft import PromptTuningConfig, PromptTuningInit

    extra: dict[str, Any] = {"prompt_tuning_init": PromptTuningInit.RANDOM}
    if knobs["prompt_init"] == "text":
        # Start from the embeddings of a real instruction (repeated to the length).
        extra = {
            "prompt_tuning_init": PromptTuningInit.TEXT,
            "prompt_tuning_init_text": INIT_TEXT,
            "tokenizer_name_or_path": model.name_or_path,
        }
    return peft_prompt_model(
        model, PromptTuningConfig, num_virtual_tokens=knobs["prompt_length"], **extra
    )


METHOD = Method(
    name="prompt_tuning",
    apply=apply,
    help="a trained soft prompt at the input + head; the encoder is frozen",
    knobs=(
        Knob("prompt_length", "int", 20, low=1, high=512, log=True, help="virtual tokens"),
        Knob(
            "prompt_init",
            "choice",
            "random",
            choices=("random", "text"),
            help=f"random, or the embeddings of {INIT_TEXT!r}",
        ),
    ),
    export="peft",
)
