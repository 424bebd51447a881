"""Where things are in each encoder architecture: one table all methods share.

Module paths are relative to one encoder layer (``...layer.N.`` or
``...layers.N.``); :func:`layer_regex` anchors them inside the base model so
the pooler and the head are never matched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Arch:
    """Names of one layer's projections (regex fragments, relative to the layer)."""

    query: str
    key: str
    value: str
    attn_out: str
    ffn_in: str
    ffn_out: str
    # The module that calls transformers' attention interface; None: attention is computed in-house.
    attn_module: str | None = None


_BERT = Arch(
    query=r"attention\.self\.query",
    key=r"attention\.self\.key",
    value=r"attention\.self\.value",
    attn_out=r"attention\.output\.dense",
    ffn_in=r"intermediate\.dense",
    ffn_out=r"output\.dense",
    attn_module=r"attention\.self",
)
ARCHS: dict[str, Arch] = {
    "bert": _BERT,
    "roberta": _BERT,
    "xlm-roberta": _BERT,
    "electra": _BERT,
    "deberta-v2": Arch(
        query=r"attention\.self\.query_proj",
        key=r"attention\.self\.key_proj",
        value=r"attention\.self\.value_proj",
        attn_out=r"attention\.output\.dense",
        ffn_in=r"intermediate\.dense",
        ffn_out=r"output\.dense",
    ),
    "distilbert": Arch(
        query=r"attention\.q_lin",
        key=r"attention\.k_lin",
        value=r"attention\.v_lin",
        attn_out=r"attention\.out_lin",
        ffn_in=r"ffn\.lin1",
        ffn_out=r"ffn\.lin2",
        attn_module=r"attention",
    ),
    # ModernBERT fuses query, key and value (Wqkv) and gate + up (Wi).
    "modernbert": Arch(
        query=r"attn\.Wqkv",
        key=r"attn\.Wqkv",
        value=r"attn\.Wqkv",
        attn_out=r"attn\.Wo",
        ffn_in=r"mlp\.Wi",
        ffn_out=r"mlp\.Wo",
        attn_module=r"attn",
    ),
}


def arch_of(model: nn.Module, method: str) -> Arch:
    """The table row of ``model``'s architecture; a clear error if it has none."""
    model_type = model.config.model_type
    if model_type not in ARCHS:
        raise ValueError(
            f"{method}: architecture {model_type!r} is not supported; supported: {sorted(ARCHS)}"
        )
    return ARCHS[model_type]


def layer_regex(model: nn.Module, fragments: list[str]) -> str:
    """A full-match regex for the given layer-relative module paths."""
    alternatives = "|".join(sorted(set(fragments)))
    return rf"^{re.escape(model.base_model_prefix)}\.(.*\.)?layers?\.\d+\.({alternatives})$"


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The base model's list of transformer layers."""
    base = getattr(model, model.base_model_prefix)
    for name, module in base.named_modules():
        if isinstance(module, nn.ModuleList) and re.search(r"(^|\.)layers?$", name):
            return module
    raise ValueError(f"no encoder layer list found in {type(model).__name__}")


def layer_index(name: str) -> int | None:
    """The encoder layer a parameter belongs to, or None (embeddings, pooler, head)."""
    m = re.search(r"\blayers?\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def base_blocks(model: nn.Module) -> list[tuple[nn.Module, int | None]]:
    """The base encoder cut into blocks: (module, layer index or None), in definition order.

    Every encoder layer is a block, and so is every largest module outside the
    layer list that holds no layer: the embeddings, BERT's pooler, DeBERTa's
    relative embeddings, their norm and the convolution after layer 0,
    ModernBERT's final norm. Every parameter of the base model is in one block.
    """
    layers = encoder_layers(model)

    def cut(module: nn.Module) -> list[tuple[nn.Module, int | None]]:
        out: list[tuple[nn.Module, int | None]] = []
        for child in module.children():
            if child is layers:
                out.extend((layer, i) for i, layer in enumerate(child))
            elif any(m is layers for m in child.modules()):
                out.extend(cut(child))
            else:
                out.append((child, None))
        return out

    return cut(getattr(model, model.base_model_prefix))


def run_order(model: nn.Module) -> dict[nn.Module, tuple[int, int]]:
    """When each module of ``model`` first starts and ends in a forward: module -> (start, end).

    One tiny forward (four tokens, eval mode, no gradient: no dropout, the RNG
    is untouched, the modes are restored) of the outermost module that takes
    ``input_ids``. Starts count module calls; a module's end is the count when
    its first call returns, before its other forward hooks (a top adapter runs
    in one). Modules that never run (DeBERTa's relative embeddings are read as
    a weight) are absent.
    """
    import inspect

    import torch

    runner = next(
        m for m in model.modules() if "input_ids" in inspect.signature(m.forward).parameters
    )
    modes = {m: m.training for m in model.modules()}
    starts: dict[nn.Module, int] = {}
    ends: dict[nn.Module, int] = {}
    clock = [0]

    def pre(module, args):
        clock[0] += 1
        starts.setdefault(module, clock[0])

    def post(module, args, output):
        ends.setdefault(module, clock[0])

    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post, prepend=True))
    try:
        device = next(model.parameters()).device
        ids = torch.ones(1, 4, dtype=torch.long, device=device)
        model.eval()
        # On the meta device (``validate`` applies methods to a weightless model) some
        # mask code reads values: BERT's without a mask, DeBERTa's with one.
        tries = [{"attention_mask": torch.ones_like(ids)}, {}]
        for i, kwargs in enumerate(tries):
            starts.clear(), ends.clear()
            try:
                with torch.no_grad():
                    runner(input_ids=ids, **kwargs)
                break
            except RuntimeError:
                if i == len(tries) - 1 or device.type != "meta":
                    raise
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return {m: (starts[m], ends.get(m, clock[0])) for m in starts}
