"""MAM adapter (He et al. 2022, "Towards a unified view of parameter-efficient transfer learning").

Prefix tuning on attention (:mod:`~trainables.methods.prefix`) plus a scaled
parallel adapter beside the feed-forward block
(:mod:`~trainables.methods.adapter`), in the selected layers (``layers``).
The paper's setting is the default: 30 prefix positions, a bottleneck of 512,
scale 4 (``adapter_scaling``: a number or ``learned``); its prefixes went
through a reparameterising MLP, here optional (``prefix_projection``), as in
``prefix``. Refused where prefixes cannot go (attention computed in-house).

Trainable: the prefixes (``prefix``'s count over the selected layers) +
``2 * hidden * size + size + hidden`` per selected layer (+1 with a learned
scale) + the head. On an encoder-decoder: prefixes at every attention of the
selected layers of each stack (the decoder's self- and cross-attention, as
``prefix``), a parallel adapter beside each selected layer's feed-forward block
in both stacks (``2 * hidden * size + size + hidden`` each: the feed-forward
input and output are ``hidden`` wide; T5's too).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from trainables.methods import adapter, prefix
from trainables.methods._arch import arch_of
from trainables.methods._base import Method, freeze_base, layers_knob
from trainables.methods._layers import frozen_below


def apply(model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
    """Freeze the encoder; add prefixes and parallel feed-forward adapters in the selected layers."""
    sites = prefix.attention_layers(model, "mam")
    roles = arch_of(model, "mam")
    layers = roles.select(knobs, "mam")
    try:
        roles.names("ffn_in", "ffn_out")
    except ValueError as e:
        raise ValueError(f"mam: {e}") from None
    freeze_base(model)
    prefix.add_prefix(model, knobs, sites, prefix.sites_in(sites, layers))
    size, act, scaling = (
        knobs["adapter_size"],
        knobs["adapter_activation"],
        knobs["adapter_scaling"],
    )
    adapter.add_parallel(model, roles, ("ffn",), layers, size, act, scaling, "mam")
    return model


METHOD = Method(
    name="mam",
    apply=apply,
    help="MAM adapter: prefixes on attention + a scaled parallel adapter beside the feed-forward "
    "block, in the selected layers + head; the encoder is frozen",
    knobs=(
        prefix.length_knob(30),
        *prefix.projection_knobs(),
        adapter.size_knob(512),
        adapter.scaling_knob(4.0),
        adapter.activation_knob(),
        layers_knob(),
    ),
    frozen=frozen_below,
)
