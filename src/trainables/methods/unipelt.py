"""UniPELT (Mao et al., ACL 2022): LoRA, prefix tuning and an adapter, each behind a learned gate.

In each selected layer (``layers``), each gate ``g = sigmoid(w . x + b)`` is
read from its submodule's input ``x``, per token:

* LoRA on the query and value projections (a fused projection once), done
  here rather than by peft, whose LoRA has no gate: ``W x + g(x) * (alpha / r)
  * B A x``, ``B`` starting at zero; one gate per adapted projection.
* prefixes (:mod:`~trainables.methods.prefix`), gated from the attention's
  input: each query's unnormalised attention to the prefix is scaled by its
  gate (an approximation of the paper's gate on the prefix keys and values;
  see ``prefix``).
* a sequential adapter after the feed-forward block
  (:mod:`~trainables.methods.adapter`), whose change is scaled by a gate read
  from the adapter's input.

The paper's settings are the defaults (rank 8, 10 prefix positions, a
bottleneck of 48). Refused where prefixes cannot go. Trainable per selected
layer: ``r * (in + out) + in + 1`` per LoRA projection, the prefixes
(``prefix``'s count) and ``hidden + 1`` for their gate, ``2 * hidden * size +
size + hidden`` and ``hidden + 1`` for the adapter and its gate; + the head.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from trainables.methods import adapter, lora, prefix
from trainables.methods._arch import Roles, arch_of, is_encoder_decoder
from trainables.methods._base import Method, freeze_base, layers_knob
from trainables.methods._layers import frozen_below


class Gate(nn.Module):
    """``sigmoid(w . x + b)``: one gate value per token, read from ``x``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, 1)

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(x))


class GatedLoRA(nn.Module):
    """A frozen projection plus a gated low-rank update of it."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        # A keeps nn.Linear's default init (as peft's LoRA); B starts at zero: no change at first.
        self.lora_A = nn.Linear(base.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False)
        nn.init.zeros_(self.lora_B.weight)
        self.gate = Gate(base.in_features)
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.gate(x) * self.scale * self.lora_B(self.lora_A(x))


def _prefix_gates(model: nn.Module, roles: Roles, callers, layers: list[int]) -> dict[int, Any]:
    """Per selected layer, a gate on the attention's input (the query projection's), kept on
    the attention module; layer -> a function giving its logits for the current forward."""
    gates = {}
    for i in layers:
        source, width = adapter.tap(model, roles, i, "query")
        module = callers[i][0]
        ref = next(model.parameters())
        module.unipelt_prefix_gate = Gate(width).to(ref.device, ref.dtype)
        gates[i] = lambda g=module.unipelt_prefix_gate, t=source: g.logit(t.take())
    return gates


def apply(model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
    """Freeze the encoder; add gated LoRA, prefixes and adapters in the selected layers."""
    if is_encoder_decoder(model):
        raise ValueError(
            "unipelt: encoder-decoders are not supported: its gates are defined for encoder "
            "layers (Mao et al. evaluate on GLUE); use mam, prefix, lora or adapter there"
        )
    callers = prefix.attention_layers(model, "unipelt")
    roles = arch_of(model, "unipelt")
    layers = roles.select(knobs, "unipelt")
    try:
        targets = roles.names("query", "value", layers=layers)
    except ValueError as e:
        raise ValueError(f"unipelt: {e}") from None
    freeze_base(model)
    # The prefix gates tap the query projections' input before LoRA wraps them (the tap stays
    # on the projection, which the wrapper calls with the same input).
    prefix.add_prefix(model, knobs, callers, layers, _prefix_gates(model, roles, callers, layers))
    for name in targets:
        parent, _, child = name.rpartition(".")
        base = model.get_submodule(name)
        wrapped = GatedLoRA(base, knobs["lora_rank"], knobs["lora_alpha"])
        setattr(
            model.get_submodule(parent), child, wrapped.to(base.weight.device, base.weight.dtype)
        )
    size, act = knobs["adapter_size"], knobs["adapter_activation"]
    adapter.add_sequential(model, roles, ("ffn",), layers, size, act, gate=Gate)
    return model


def _lora_knob(name: str, default: Any, help: str):
    """``lora``'s knob of that name (one column in the results), with this method's default."""
    knob = lora.METHOD.knob(name)
    assert knob is not None
    return dataclasses.replace(knob, default=default, help=help)


METHOD = Method(
    name="unipelt",
    apply=apply,
    help="UniPELT: gated LoRA (query, value), gated prefixes and a gated adapter in the selected "
    "layers + head; the encoder is frozen",
    knobs=(
        _lora_knob("lora_rank", 8, "rank r of the gated LoRA updates"),
        _lora_knob("lora_alpha", 16.0, "scale: the gated update is multiplied by alpha / r"),
        prefix.length_knob(10),
        *prefix.projection_knobs(),
        adapter.size_knob(48),
        adapter.activation_knob(),
        layers_knob(),
    ),
    frozen=frozen_below,
)
