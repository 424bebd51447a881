"""Partial freezing: everything below encoder layer ``freeze_layers`` is frozen.

Layers ``k..`` train, and so does whatever runs after layer ``k`` starts
(after the last layer when every layer is frozen): BERT's pooler, ModernBERT's
final norm, DeBERTa's convolution when ``k = 0`` (it runs after layer 0), the
head. The rest stays frozen: the embeddings and what feeds every layer
(DeBERTa's relative embeddings and their norm). So "the bottom ``k`` layers
frozen" holds, and with ``k`` = all layers nothing below the head's input
trains (the feature cache trains the same parameters).

On an encoder-decoder, ``k`` counts in each stack: the bottom ``k`` layers of
the encoder and the bottom ``k`` of the decoder are frozen, with what runs
before them in their stack (the embeddings, positions, an embedding norm); the
layers above and what follows them in their stack (a final norm) train, and
so does the LM head, unless it is the input embeddings themselves (tied, as in
T5, BART and Marian): the input embeddings stay frozen. ``freeze_encoder``
freezes the whole encoder stack (and the embeddings it shares with the
decoder); ``k`` then applies to the decoder alone. The new parameters (an
``EncoderDecoderModel``'s cross-attention) train wherever they are.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from trainables.methods._arch import (
    ENCODER,
    base_blocks,
    is_encoder_decoder,
    layer_modules,
    run_order,
    stack_layers,
    stacks,
)
from trainables.methods._base import LAST_LAYER, Knob, Method, freeze_base, head_names


def apply(model: nn.Module, knobs: dict[str, Any]) -> nn.Module:
    """Freeze everything that runs before layer ``freeze_layers`` (see the module docstring)."""
    k = knobs["freeze_layers"]
    if is_encoder_decoder(model):
        return _apply_stacks(model, k, bool(knobs.get("freeze_encoder")))
    if knobs.get("freeze_encoder"):
        raise ValueError(
            "freeze: freeze_encoder freezes an encoder-decoder's encoder stack; "
            f"{model.config.model_type} is an encoder (freeze_layers counts its layers)"
        )
    layers = layer_modules(model)
    if k > len(layers):
        raise ValueError(f"freeze: freeze_layers={k} but the model has {len(layers)} layers")
    freeze_base(model)  # the head trains
    order = run_order(model)
    ran = [[order[m] for m in roots if m in order] for roots in layers]
    cut = min(s for s, _ in ran[k]) if k < len(layers) else max(e for _, e in ran[-1])
    for block, _ in base_blocks(model):
        # A block that never runs as a module (DeBERTa's relative embeddings) feeds the layers.
        if block in order and order[block][0] >= cut:
            block.requires_grad_(True)
    return model


def _apply_stacks(model: nn.Module, k: int, whole_encoder: bool) -> nn.Module:
    """:func:`apply` on an encoder-decoder: ``k`` layers frozen at the bottom of each stack."""
    per_stack = stack_layers(model)
    for stack, layers in per_stack.items():
        if k > len(layers) and not (whole_encoder and stack == ENCODER):
            raise ValueError(f"freeze: freeze_layers={k} but the {stack} has {len(layers)} layers")
    head = head_names(model)
    freeze_base(model)
    order = run_order(model)
    cuts = {}
    for stack, layers in per_stack.items():
        ran = [[order[m] for m in roots if m in order] for roots in layers]
        cuts[stack] = min(s for s, _ in ran[k]) if k < len(layers) else max(e for _, e in ran[-1])
    if whole_encoder:
        cuts[ENCODER] = float("inf")
    roots = stacks(model)
    name_of = {id(m): n for n, m in model.named_modules()}
    last = roots[-1][0]  # outside the stacks (the LM head), a block runs after the decoder's cut
    for block, _ in base_blocks(model):
        name = name_of[id(block)]
        stack = next((s for s, r in roots if name.startswith(r + ".")), last)
        if block in order and order[block][0] >= cuts[stack]:
            block.requires_grad_(True)
    # A tied output projection is the input embeddings: they stay frozen.
    for m in _input_embeddings(model):
        m.requires_grad_(False)
    for name, p in model.named_parameters():
        if name in head:
            p.requires_grad_(True)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(
            f"freeze: freeze_layers={k} leaves nothing to train in {model.config.model_type} "
            "(every layer frozen, its LM head is its input embeddings)"
        )
    return model


def _input_embeddings(model: nn.Module) -> list[nn.Module]:
    """The input embeddings of the model and of each of its stacks."""
    found = [model.get_input_embeddings()]
    for _, root in stacks(model):
        getter = getattr(model.get_submodule(root), "get_input_embeddings", None)
        if getter is not None:
            found.append(getter())
    return [m for m in found if m is not None]


def _frozen(knobs: dict[str, Any], config) -> str | int | None:
    # Every layer frozen: the head's vector is cached; k of them: the hidden states entering k.
    # An encoder-decoder's stacks are not what the caches serve.
    if getattr(config, "is_encoder_decoder", False):
        return None
    if knobs.get("freeze_layers", 0) >= config.num_hidden_layers:
        return LAST_LAYER
    return knobs.get("freeze_layers") or None


METHOD = Method(
    name="freeze",
    apply=apply,
    help="the embeddings and the bottom k layers frozen (in each stack of an encoder-decoder; "
    "or its whole encoder); upper layers (and what follows them) + head train",
    knobs=(
        Knob(
            "freeze_layers",
            "int",
            4,
            low=0,
            high=1000,
            help="k: layers frozen from the bottom (of each stack of an encoder-decoder)",
        ),
        Knob(
            "freeze_encoder",
            "choice",
            False,
            choices=(False, True),
            help="encoder-decoders: freeze the whole encoder stack too (freeze_layers then "
            "counts the decoder's layers)",
        ),
    ),
    frozen=_frozen,
    export="transformers",
)
