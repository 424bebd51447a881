"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020) in every layer.

A residual bottleneck ``y + up(act(down(y)))`` follows the output projection of
the feed-forward block (``pfeiffer``), or of both the attention and the
feed-forward blocks (``houlsby``). ``up`` starts at zero, so the adapted model
begins exactly as the pretrained one. Parameters per adapter:
``2 * hidden * size + size + hidden``.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from trainables.methods._base import Knob, Method, freeze_base

# model_type -> (feed-forward output projection, attention output projection)
TARGETS: dict[str, tuple[str, str]] = {
    "bert": (r"layer\.\d+\.output\.dense", r"layer\.\d+\.attention\.output\.dense"),
    "roberta": (r"layer\.\d+\.output\.dense", r"layer\.\d+\.attention\.output\.dense"),
    "xlm-roberta": (r"layer\.\d+\.output\.dense", r"layer\.\d+\.attention\.output\.dense"),
    "electra": (r"layer\.\d+\.output\.dense", r"layer\.\d+\.attention\.output\.dense"),
    "deberta-v2": (r"layer\.\d+\.output\.dense", r"layer\.\d+\.attention\.output\.dense"),
    "distilbert": (r"layer\.\d+\.ffn\.lin2", r"layer\.\d+\.attention\.out_lin"),
    "modernbert": (r"layers\.\d+\.mlp\.Wo", r"layers\.\d+\.attn\.Wo"),
}
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


class Bottleneck(nn.Module):
    """down -> activation -> up, added to its input."""

    def __init__(self, hidden: int, size: int, activation: str) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, size)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(size, hidden)
        # down keeps nn.Linear's default init: with a tiny down, up's gradient
        # (the bottleneck activations) is tiny too and the adapter barely learns.
        nn.init.zeros_(self.up.weight)  # identity at the start
        nn.init.zeros_(self.up.bias)

    def forward(self, x):
        return x + self.up(self.act(self.down(x)))


class AdaptedLinear(nn.Module):
    """A frozen projection followed by a trainable bottleneck adapter."""

    def __init__(self, base: nn.Linear, size: int, activation: str) -> None:
        super().__init__()
        self.base = base
        self.adapter = Bottleneck(base.out_features, size, activation)

    def forward(self, x):
        return self.adapter(self.base(x))


def target_patterns(model: nn.Module, variant: str) -> list[str]:
    """The module-name patterns adapters follow in this architecture."""
    model_type = model.config.model_type
    if model_type not in TARGETS:
        raise ValueError(
            f"adapter: architecture {model_type!r} is not supported; supported: {sorted(TARGETS)}"
        )
    ffn, attn = TARGETS[model_type]
    return [ffn, attn] if variant == "houlsby" else [ffn]


def apply(model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
    """Freeze the encoder and add adapters after the targeted projections."""
    freeze_base(model)
    patterns = [
        re.compile(rf"(^|\.){p}$") for p in target_patterns(model, knobs["adapter_variant"])
    ]
    targets = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any(p.search(name) for p in patterns)
    ]
    if not targets:
        raise ValueError(f"adapter: no target projection found in {type(model).__name__}")
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, child)
        wrapped = AdaptedLinear(base, knobs["adapter_size"], knobs["adapter_activation"])
        wrapped.to(device=base.weight.device, dtype=base.weight.dtype)
        setattr(parent, child, wrapped)
    return model


METHOD = Method(
    name="adapter",
    apply=apply,
    help="bottleneck adapters in every layer + head; the encoder is frozen",
    knobs=(
        Knob("adapter_size", "int", 16, low=1, high=4096, help="bottleneck width"),
        Knob(
            "adapter_variant",
            "choice",
            "pfeiffer",
            choices=("pfeiffer", "houlsby"),
            help="pfeiffer: after the feed-forward block; houlsby: after attention and feed-forward",
        ),
        Knob(
            "adapter_activation", "choice", "relu", choices=tuple(ACTIVATIONS), help="non-linearity"
        ),
    ),
)
