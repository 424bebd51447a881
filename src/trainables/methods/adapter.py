"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020).

A residual bottleneck ``x + up(act(down(x)))``. Placement ``layer`` puts one
after the feed-forward output projection of every layer (variant
``pfeiffer``), or after both the attention and the feed-forward output
projections (``houlsby``); placement ``top`` puts a single one on the
encoder's final hidden states. ``up`` starts at zero, so the adapted model
begins exactly as the pretrained one. Parameters per adapter:
``2 * hidden * size + size + hidden``. With ``adapter_train_layernorm`` (by
default on for ``houlsby``, as in the paper, off for ``pfeiffer``) the
LayerNorms inside the adapted layers train too; a ``top`` adapter sits in no
layer, so it trains none.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from trainables.methods._arch import arch_of, last_layer, layer_groups, norms_in_layers
from trainables.methods._base import LAST_LAYER, Knob, Method, freeze_base

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


def _top_hook(module: nn.Module, inputs, output):
    # Layers return a tensor or a tuple whose first item is the hidden states.
    if isinstance(output, tuple):
        return (module.top_adapter(output[0]), *output[1:])
    return module.top_adapter(output)


def apply(model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
    """Freeze the encoder and add adapters (see the module docstring)."""
    freeze_base(model)
    size, act = knobs["adapter_size"], knobs["adapter_activation"]
    if knobs["adapter_placement"] == "top":
        groups = layer_groups(model)
        if len(groups) < model.config.num_hidden_layers:
            # Its last layer runs at every depth: a hook on it would adapt every depth.
            raise ValueError(
                f"adapter: placement top needs a last layer of its own; {model.config.model_type} "
                "reuses one layer at every depth (use placement layer)"
            )
        last = last_layer(model)
        ref = next(model.parameters())
        last.top_adapter = Bottleneck(model.config.hidden_size, size, act).to(ref.device, ref.dtype)
        last.register_forward_hook(_top_hook)
        return model
    roles = arch_of(model, "adapter")
    wanted = ["ffn_out"] + (["attn_out"] if knobs["adapter_variant"] == "houlsby" else [])
    try:
        targets = roles.names(*wanted)
    except ValueError as e:
        raise ValueError(f"adapter: {e}") from None
    norms = knobs["adapter_train_layernorm"]
    if norms == "auto":
        norms = knobs["adapter_variant"] == "houlsby"
    if norms:
        for m in norms_in_layers(model):
            m.requires_grad_(True)
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, child)
        wrapped = AdaptedLinear(base, size, act).to(
            device=base.weight.device, dtype=base.weight.dtype
        )
        setattr(parent, child, wrapped)
    return model


METHOD = Method(
    name="adapter",
    apply=apply,
    help="bottleneck adapters (in every layer, or one on top) + head; the encoder is frozen",
    knobs=(
        Knob(
            "adapter_placement",
            "choice",
            "layer",
            choices=("layer", "top"),
            help="layer: in every layer; top: one adapter on the final hidden states",
        ),
        Knob("adapter_size", "int", 16, low=1, high=4096, log=True, help="bottleneck width"),
        Knob(
            "adapter_variant",
            "choice",
            "pfeiffer",
            choices=("pfeiffer", "houlsby"),
            help="placement layer: pfeiffer after the feed-forward block; houlsby after attention and feed-forward",
        ),
        Knob(
            "adapter_activation", "choice", "relu", choices=tuple(ACTIVATIONS), help="non-linearity"
        ),
        Knob(
            "adapter_train_layernorm",
            "choice",
            "auto",
            choices=("auto", True, False),
            help="placement layer: train the layers' LayerNorms too; auto: for houlsby (as in the paper), not pfeiffer",
        ),
    ),
    # A top adapter is position-wise on the last layer's output: it trains on cached features.
    frozen=lambda knobs, config: LAST_LAYER if knobs.get("adapter_placement") == "top" else None,
)
