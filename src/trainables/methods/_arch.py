"""Where things are in an encoder, discovered from the model itself; one owner all methods share.

:func:`roles` finds the encoder's layers and, in each, the attention
projections (query / key / value, separate or fused), the attention output,
the feed-forward in and out projections. It reads module structure and
shapes, not a table of model types:

* layers: the base model's lists of modules that hold linear layers. Lists
  that are elements of a list run one after another (Funnel's blocks); lists
  of one length that are attributes of one parent are zipped into one layer
  (XLM's ``attentions[i]``, ``ffns[i]``, ``layer_norm1[i]``, ...). A layer
  module reused across depths (ALBERT) is one layer: what it holds exists once.
* attention projections: linear layers under a module named ``*att*`` with
  the usual leaf names (``query``/``q``/``q_proj``/``q_lin``/``q_head``/...,
  fused ``qkv``/``Wqkv``/``in_proj``/``query_key_value``); the attention
  output is the one other projection there that reads the values' width.
* feed-forward: outside attention, the widest expanding projection(s)
  (``I``; two for gated blocks) and the projection(s) back from ``I`` (or
  ``I / 2`` when gate and up are fused, ModernBERT's ``Wi``).

:data:`OVERRIDES` corrects what discovery gets wrong for a model type.
:func:`attention_callers` finds the modules that call transformers' attention
interface (what prefix tuning needs), by running the model once.

Encoder-decoders (``config.is_encoder_decoder``: T5, BART, Marian, an
``EncoderDecoderModel``) have two stacks (:func:`stacks`): the encoder's
layers and the decoder's, found as above inside each (``get_encoder()``,
``get_decoder()``). The layers are numbered bottom to top, the encoder's
first, then the decoder's; each :class:`Layer` says its stack and its
position in it. A decoder layer's cross-attention (a module whose name holds
``cross``, ``encdec``, ``encoder_attn``, ...) has roles of its own,
:data:`CROSS_ROLES` (``cross_query``, ``cross_key``, ``cross_value``,
``cross_attn_out``); ``query`` ... ``attn_out`` there are its self-attention's.
:func:`attention_sites` gives each layer's attention modules (the decoder's
self- and cross-attention).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

from torch import nn

# Leaf names of attention projections (lower case).
QUERY = {"query", "q", "q_proj", "q_lin", "q_head", "query_proj", "wq"}
KEY = {"key", "k", "k_proj", "k_lin", "k_head", "key_proj", "wk"}
VALUE = {"value", "v", "v_proj", "v_lin", "v_head", "value_proj", "wv"}
FUSED_QKV = {"qkv", "wqkv", "in_proj", "query_key_value", "qkv_proj", "c_attn"}
ATTN_OUT = {"dense", "o", "o_proj", "out_proj", "out_lin", "post_proj", "wo", "out", "output"}
ROLES = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")
# A decoder layer's attention over the encoder's output.
CROSS_ROLES = ("cross_query", "cross_key", "cross_value", "cross_attn_out")
ALL_ROLES = ROLES + CROSS_ROLES
# Parts of module names (lower case) that mark a decoder layer's cross-attention: BERT's
# crossattention, T5's EncDecAttention, BART/Marian/mBART/Pegasus' encoder_attn.
CROSS = ("cross", "encdec", "enc_dec", "encoder_attn", "src_attn")
ENCODER, DECODER = "encoder", "decoder"

# Per model type: role -> regex of module paths relative to a layer, where discovery needs help.
OVERRIDES: dict[str, dict[str, str]] = {
    # MobileBERT's layers hold bottlenecks and extra feed-forward stacks beside the main one.
    "mobilebert": {"ffn_in": r"intermediate\.dense", "ffn_out": r"output\.dense"},
}


@dataclass(frozen=True)
class Layer:
    """One layer: its root modules' names and, per role, its projections' full names; its stack
    (``encoder``, or ``decoder`` in an encoder-decoder) and its position in that stack."""

    index: int
    roots: tuple[str, ...]
    found: dict[str, tuple[str, ...]] = field(default_factory=dict)
    problem: str | None = None  # why a role is missing or ambiguous
    stack: str = ENCODER
    position: int = 0


@dataclass(frozen=True)
class Roles:
    """The layers (bottom to top; an encoder-decoder's encoder first) and where each role is."""

    model_type: str
    layers: tuple[Layer, ...]
    head: frozenset[str] = frozenset()  # projections of the head: no tuner targets them

    def names(self, *roles: str, layers: Collection[int] | None = None) -> list[str]:
        """Full module names of ``roles`` in every layer (or in ``layers``, by index); a
        ValueError naming what is missing (in any layer: discovery holds for the whole model).
        A role a layer does not have (cross-attention in an encoder layer) names nothing there."""
        problem = next((x.problem for x in self.layers if x.problem), None)
        if problem:
            raise ValueError(problem)
        chosen = self.layers if layers is None else [self.layers[i] for i in layers]
        return sorted({n for layer in chosen for r in roles for n in layer.found.get(r, ())})

    def regex(self, *roles: str, layers: Collection[int] | None = None) -> str:
        """A full-match regex of those modules (peft's ``target_modules``), the head's aside."""
        return _full_match([n for n in self.names(*roles, layers=layers) if n not in self.head])

    def within(self, pattern: str, layers: Collection[int]) -> str:
        """``pattern`` (a full-match regex of this encoder's projections, as :meth:`regex` and
        ``peft_targets`` give) restricted to the projections of ``layers``."""
        found = self.names(*ALL_ROLES, layers=layers)
        return _full_match([n for n in found if re.fullmatch(pattern, n) and n not in self.head])

    def stacks(self) -> dict[str, list[int]]:
        """Stack -> the indices of its layers, bottom to top (``encoder`` alone, or ``encoder``
        and ``decoder``)."""
        out: dict[str, list[int]] = {}
        for layer in self.layers:
            out.setdefault(layer.stack, []).append(layer.index)
        return out

    def select(self, knobs: dict, method: str) -> list[int]:
        """The layers a method's ``layers`` knob selects among the distinct layers found here
        (ALBERT's one shared layer is one), in each stack of an encoder-decoder
        (:func:`trainables.methods._layers.select_in_stacks`); a ValueError ``"<method>: ..."``
        where it does not fit."""
        from trainables.methods._layers import select_in_stacks

        stacks = self.stacks()
        if len(stacks) == 1:
            return selected(knobs, len(self.layers), method)
        depths = {stack: len(indices) for stack, indices in stacks.items()}
        try:
            chosen = select_in_stacks(knobs.get("layers", "all"), depths)
        except ValueError as e:
            raise ValueError(f"{method}: {e}") from None
        return sorted(stacks[stack][i] for stack, positions in chosen.items() for i in positions)


def selected(knobs: dict, n: int, method: str) -> list[int]:
    """The layers ``knobs["layers"]`` selects of ``n``; a ValueError ``"<method>: ..."``."""
    from trainables.methods._layers import select_layers

    try:
        return select_layers(knobs.get("layers", "all"), n)
    except ValueError as e:
        raise ValueError(f"{method}: {e}") from None


def _full_match(names: list[str]) -> str:
    return "^(" + "|".join(re.escape(n) for n in names) + ")$"


def roles(model: nn.Module) -> Roles:
    """Discover the layers and their projections (see the module docstring)."""
    overrides = OVERRIDES.get(model.config.model_type, {})
    layers: list[Layer] = []
    for stack, root in stacks(model):
        groups = _groups_under(model, root)
        if not groups:
            where = f"{type(model).__name__}" + (f"'s {stack}" if stack == DECODER else "")
            raise ValueError(f"no {stack} layers found in {where}")
        for position, roots in enumerate(groups):
            index = len(layers)
            layers.append(_layer(model, index, roots, overrides, stack, position, root))
    return Roles(model.config.model_type, tuple(layers), _head_projections(model, layers))


def _head_projections(model: nn.Module, layers: list[Layer]) -> frozenset[str]:
    """The projections of the head among the layers' roles: a warm-started decoder's new
    cross-attention trains in full under every method, so no tuner adapts it (it would add
    nothing, and peft's export keeps a head module whole)."""
    from trainables.methods._base import head_names

    head = head_names(model)
    found = {n for x in layers for names in x.found.values() for n in names}
    return frozenset(n for n in found if f"{n}.weight" in head)


def arch_of(model: nn.Module, method: str) -> Roles:
    """The discovered roles, for ``method``'s error messages."""
    try:
        return roles(model)
    except ValueError as e:
        raise ValueError(f"{method}: {e}") from None


def is_encoder_decoder(model: nn.Module) -> bool:
    """Whether ``model`` is an encoder-decoder (two stacks: :func:`stacks`)."""
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


def stacks(model: nn.Module) -> list[tuple[str, str]]:
    """The stacks of layers as ``(stack, module name)``, bottom first: the base model
    (``base_model_prefix``) as the ``encoder`` of an encoder-only model; the encoder and the
    decoder (``get_encoder()``, ``get_decoder()``) of an encoder-decoder."""
    if not is_encoder_decoder(model):
        return [(ENCODER, model.base_model_prefix)]
    name_of = {id(m): n for n, m in model.named_modules()}
    return [
        (ENCODER, name_of[id(model.get_encoder())]),
        (DECODER, name_of[id(model.get_decoder())]),
    ]


def layer_groups(model: nn.Module) -> list[tuple[str, ...]]:
    """Each layer as the full names of its root modules, bottom to top (an encoder-decoder's
    encoder layers, then its decoder layers)."""
    return [g for _, root in stacks(model) for g in _groups_under(model, root)]


def mask_bits(model: nn.Module) -> int | None:
    """How many bits a layer mask has on ``model`` (a space's ``layers: {mask: true}``): one per
    distinct layer of an encoder; one per layer of a stack of an encoder-decoder, whose stacks
    must share their depth (None where they do not: no mask fits both;
    :mod:`trainables.methods._layers`)."""
    from trainables.methods._layers import stack_depth

    return stack_depth([len(layers) for layers in stack_layers(model).values()])


def stack_layers(model: nn.Module) -> dict[str, list[list[nn.Module]]]:
    """Stack -> each of its layers' root modules, bottom to top (:func:`stacks`)."""
    return {
        stack: [[model.get_submodule(r) for r in g] for g in _groups_under(model, root)]
        for stack, root in stacks(model)
    }


def _groups_under(model: nn.Module, base: str) -> list[tuple[str, ...]]:
    """The layers of the stack at module ``base``, bottom to top."""
    modules = dict(model.named_modules())
    lists = [
        n
        for n, m in modules.items()
        if n.startswith(base + ".")
        and isinstance(m, nn.ModuleList)
        and len(m)
        and all(not isinstance(c, nn.ModuleList) and _has_linear(c) for c in m)
    ]
    # A list inside another list's layer is part of that layer (MobileBERT's extra FFNs).
    lists = [n for n in lists if not any(n.startswith(o + ".") for o in lists)]
    groups: list[tuple[str, ...]] = []
    seen: set[str] = set()
    for name in lists:
        if name in seen:
            continue
        parent = name.rpartition(".")[0]
        # Attributes of one parent with the same length are parts of the same layers (XLM).
        siblings = [
            f"{parent}.{child}"
            for child, m in modules[parent].named_children()
            if isinstance(m, nn.ModuleList)
            and len(m) == len(modules[name])
            and not isinstance(modules[parent], nn.ModuleList)
        ] or [name]
        if name not in siblings:
            siblings = [name]
        seen.update(siblings)
        distinct: list[nn.Module] = []
        for i in range(len(modules[name])):
            module = modules[siblings[0]][i]
            if any(module is d for d in distinct):  # reused at several depths (ALBERT)
                continue
            distinct.append(module)
            groups.append(tuple(f"{s}.{i}" for s in siblings))
    return groups


def _has_linear(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Linear) for m in module.modules())


def _is_attention(path: str) -> bool:
    return any("att" in part.lower() for part in path.split("."))


def _is_cross(path: str) -> bool:
    return any(c in part.lower() for part in path.split(".") for c in CROSS)


def _layer(
    model: nn.Module,
    index: int,
    roots: tuple[str, ...],
    overrides,
    stack: str = ENCODER,
    position: int = 0,
    base: str | None = None,
) -> Layer:
    """One layer's roles; ``problem`` says what could not be found. In a decoder layer, the
    cross-attention's projections are found apart, as :data:`CROSS_ROLES`."""
    base = base if base is not None else model.base_model_prefix
    linears: list[tuple[str, str, nn.Linear]] = []  # (full name, path from the list on, module)
    for root in roots:
        list_attr = root.rpartition(".")[0].rpartition(".")[2]
        for sub, m in model.get_submodule(root).named_modules():
            if isinstance(m, nn.Linear):
                full = f"{root}.{sub}" if sub else root
                linears.append((full, list_attr + full[len(root) :], m))
    wanted = ROLES
    if stack == DECODER:
        cross = [x for x in linears if _is_cross(x[1])]
        linears = [x for x in linears if not _is_cross(x[1])]
        found = _discover(linears)
        found.update({f"cross_{r}": v for r, v in _attention_roles(cross).items()})
        wanted = ALL_ROLES
    else:
        found = _discover(linears)
    for role, pattern in overrides.items():  # paths relative to the layer's root module
        rel = re.compile(pattern)
        found[role] = tuple(
            n for n, _, _ in linears if any(rel.fullmatch(n[len(r) + 1 :]) for r in roots)
        )
    missing = [r for r in wanted if not found.get(r)]
    problem = None
    if missing:
        where = f"layer {index}" if stack == ENCODER else f"{stack} layer {position}"
        problem = (
            f"{model.config.model_type}: no {'/'.join(missing)} projection found in {where} "
            f"(linear layers: {[n[len(base) + 1 :] for n, _, _ in linears][:12]})"
        )
    return Layer(index, roots, found, problem, stack, position)


def _discover(linears: list[tuple[str, str, nn.Linear]]) -> dict[str, tuple[str, ...]]:
    attn = [x for x in linears if _is_attention(x[1])]
    rest = [(n, m) for n, path, m in linears if not _is_attention(path)]
    found = _attention_roles(attn)
    expanding = [(n, m) for n, m in rest if m.out_features > m.in_features]
    if expanding:
        inner = max(m.out_features for _, m in expanding)
        ffn_in = [(n, m) for n, m in expanding if m.out_features == inner]
        width = ffn_in[0][1].in_features
        back = [
            n for n, m in rest if m.in_features in (inner, inner // 2) and m.out_features == width
        ]
        found["ffn_in"] = tuple(n for n, _ in ffn_in)
        found["ffn_out"] = tuple(back)
    return found


def _attention_roles(linears: list[tuple[str, str, nn.Linear]]) -> dict[str, tuple[str, ...]]:
    """``query``, ``key``, ``value`` and ``attn_out`` among one attention's projections."""
    attn = [(n, m) for n, _, m in linears]
    leaf = {n: n.rpartition(".")[2].lower() for n, _ in attn}
    found: dict[str, tuple[str, ...]] = {}
    fused = [(n, m) for n, m in attn if leaf[n] in FUSED_QKV]
    for role, names in (("query", QUERY), ("key", KEY), ("value", VALUE)):
        hits = [n for n, _ in attn if leaf[n] in names]
        found[role] = tuple(hits) if len(hits) == 1 else tuple(n for n, _ in fused[:1])
    value = dict(attn).get(found["value"][0]) if found["value"] else None
    if value is not None:
        width = value.out_features // (3 if leaf[found["value"][0]] in FUSED_QKV else 1)
        qkv = {n for r in ("query", "key", "value") for n in found[r]}
        outs = [n for n, m in attn if n not in qkv and leaf[n] in ATTN_OUT]
        # The one that reads the values' width; else the one there is (ConvBERT's reads the
        # attention and convolution outputs together).
        reads = [n for n in outs if dict(attn)[n].in_features == width]
        pick = reads if len(reads) == 1 else outs
        found["attn_out"] = tuple(pick) if len(pick) == 1 else ()
    return found


def layer_modules(model: nn.Module) -> list[list[nn.Module]]:
    """Each layer's root modules, bottom to top."""
    return [[model.get_submodule(r) for r in g] for g in layer_groups(model)]


def last_layer(model: nn.Module) -> nn.Module:
    """The module whose output is the top layer's output (what a top adapter rewrites)."""
    group = layer_modules(model)[-1]
    return group[-1]


def norms_in_layers(model: nn.Module, layers: Collection[int] | None = None) -> list[nn.Module]:
    """The normalisation modules inside the encoder layers (or ``layers``, by index: LayerNorm,
    RMSNorm, ...)."""
    groups = layer_modules(model)
    return [
        m
        for i, group in enumerate(groups)
        if layers is None or i in layers
        for root in group
        for m in root.modules()
        # A norm holds no modules: RoBERTa-PreLayerNorm's layers are "...PreLayerNormLayer".
        if isinstance(m, nn.LayerNorm) or ("norm" in type(m).__name__.lower() and not m._modules)
    ]


def head_vector(model: nn.Module) -> str:
    """What the classification head reads from the base model's output.

    ``pooler``: the base model's pooler output (BERT, ALBERT, ...); ``mean`` or
    ``last``: the final hidden states pooled so, where the config says so
    (ModernBERT's ``classifier_pooling``, XLM's ``summary_type``); ``first``:
    the first token's final hidden state (RoBERTa, DeBERTa, BigBird, ...).
    """
    config = model.config
    pooling = getattr(config, "classifier_pooling", None) or getattr(config, "summary_type", None)
    if pooling in ("mean", "last"):
        return pooling
    return "pooler" if _head_reads_pooler(model) else "first"


class _Wider(nn.Module):
    """Stands in for a pooler: one feature too many, so a head that reads it fails."""

    def forward(self, hidden, *args, **kwargs):
        shape = (hidden.shape[0], hidden.shape[-1] + 1)
        return hidden.new_zeros(shape)


def _head_reads_pooler(model: nn.Module) -> bool:
    """Whether the head uses the base model's pooler output (BigBird's has one it ignores).

    Found by one forward with the pooler's output one feature too wide; where
    the model does not run on the meta device (BigBird's block-sparse
    attention reads values), by whether its forward's code reads the output.
    """
    import inspect

    base = getattr(model, model.base_model_prefix)
    pooler = base._modules.get("pooler")
    if pooler is None:
        return False
    try:
        probe_forward(model)
    except (RuntimeError, ValueError):
        code = inspect.getsource(type(model).forward)
        return any(s in code for s in ("pooled_output", "pooler_output", "outputs[1]"))
    base._modules["pooler"] = _Wider()
    try:
        probe_forward(model)
        return False
    except (RuntimeError, ValueError):
        return True
    finally:
        base._modules["pooler"] = pooler


def pick_vector(kind: str, output, attention_mask=None):
    """The vector of kind :func:`head_vector` from a base model's output."""
    if kind == "pooler":
        return output.pooler_output
    hidden = output.last_hidden_state
    if kind == "last":
        return hidden[:, -1]
    if kind == "mean":
        if attention_mask is None:  # no padding in the batch
            return hidden.mean(dim=1)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1)
    return hidden[:, 0]


def base_blocks(model: nn.Module) -> list[tuple[nn.Module, int | None]]:
    """The base encoder cut into blocks: (module, layer index or None), in definition order.

    Every root module of a layer is a block, and so is every largest module
    outside the layers that holds no layer: the embeddings, BERT's pooler,
    DeBERTa's relative embeddings, their norm and the convolution after
    layer 0, ModernBERT's final norm. Every parameter of the base model is in one block.
    An encoder-decoder is cut whole (both stacks, the shared embeddings, the LM head); a
    module it holds twice (T5's shared embeddings, also each stack's ``embed_tokens``) is one
    block, where it first appears; a module without parameters is no block there.
    """
    index = {id(m): i for i, group in enumerate(layer_modules(model)) for m in group}
    seen: set[int] = set()

    def holds_layer(module: nn.Module) -> bool:
        return any(id(m) in index for m in module.modules())

    def cut(module: nn.Module) -> list[tuple[nn.Module, int | None]]:
        out: list[tuple[nn.Module, int | None]] = []
        for child in module.children():
            if id(child) in seen:
                continue
            seen.add(id(child))
            if id(child) in index:
                out.append((child, index[id(child)]))
            elif holds_layer(child):
                out.extend(cut(child))
            else:
                out.append((child, None))
        return out

    if is_encoder_decoder(model):
        # Modules without parameters are left out: T5's stack runs its one dropout after the
        # embeddings and again after its final norm (not a block that finishes early).
        return [(m, i) for m, i in cut(model) if i is not None or any(True for _ in m.parameters())]
    return cut(getattr(model, model.base_model_prefix))


def run_order(model: nn.Module) -> dict[nn.Module, tuple[int, int]]:
    """When each module of ``model`` first starts and ends in a forward: module -> (start, end).

    One tiny forward (:func:`probe_forward`, eval mode, no gradient: no dropout, the RNG
    is untouched, the modes are restored) of the outermost module that takes
    ``input_ids``. Starts count module calls; a module's end is the count when
    its first call returns, before its other forward hooks (a top adapter runs
    in one). Modules that never run (DeBERTa's relative embeddings are read as
    a weight) are absent. On the meta device, a model whose forward reads
    values gets its definition order instead.
    """
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
        probe_forward(model, before_try=lambda: (starts.clear(), ends.clear()))
    except RuntimeError:
        if next(model.parameters()).device.type != "meta":
            raise
        return _definition_order(model)  # its forward reads values (a mask check, ...)
    finally:
        for h in handles:
            h.remove()
    return {m: (starts[m], ends.get(m, clock[0])) for m in starts}


def _definition_order(model: nn.Module) -> dict[nn.Module, tuple[int, int]]:
    """:func:`run_order` as if modules ran in the order they are defined (on the meta device,
    for a model whose forward cannot run there)."""
    position = {m: i for i, m in enumerate(model.modules())}
    return {m: (i, max(position[d] for d in m.modules())) for m, i in position.items()}


def probe_forward(model: nn.Module, before_try=lambda: None) -> None:
    """One forward of eight tokens in eval mode without gradients; the modes are restored.

    On the meta device (``validate`` applies methods to a weightless model)
    some mask code reads values: BERT's without a mask, DeBERTa's with one.
    An encoder-decoder's decoder reads five tokens (another length than the
    encoder's, so the two attentions' shapes differ).
    """
    import inspect

    import torch

    runner = next(
        m for m in model.modules() if "input_ids" in inspect.signature(m.forward).parameters
    )
    modes = {m: m.training for m in model.modules()}
    device = next(model.parameters()).device
    ids = torch.ones(1, 8, dtype=torch.long, device=device)  # Funnel pools it down twice
    extra = {}
    if "decoder_input_ids" in inspect.signature(runner.forward).parameters:
        extra = {"decoder_input_ids": torch.ones(1, 5, dtype=torch.long, device=device)}
    tries = [{"attention_mask": torch.ones_like(ids)}, {}]
    # On the meta device, masks that do not read the padding mask's values (BART's decoder
    # makes one of ones; SDPA's mask code asks whether it is all ones).
    meta_safe = device.type == "meta" and _can_route(model) and not _routed(model)
    try:
        model.eval()
        with attention_implementation(model, META_SAFE) if meta_safe else nullcontext():
            for i, kwargs in enumerate(tries):
                before_try()
                try:
                    with torch.no_grad():
                        runner(input_ids=ids, **kwargs, **extra)
                    return
                except RuntimeError:
                    if i == len(tries) - 1 or device.type != "meta":
                        raise
    finally:
        for m, mode in modes.items():
            m.training = mode


# An attention implementation for forwards on the meta device: SDPA, with masks always built
# (transformers' SDPA mask skips itself where the padding mask is all ones: a value read).
META_SAFE = "peftsearch_meta_safe"


def value_free_mask(*args, **kwargs):
    """transformers' SDPA mask, always built: it never asks whether it could be skipped (which
    reads the padding mask's values, impossible on the meta device)."""
    from transformers.masking_utils import sdpa_mask

    kwargs.update(allow_is_causal_skip=False, allow_is_bidirectional_skip=False)
    return sdpa_mask(*args, **kwargs)


def register_attention(name: str, function) -> None:
    """Register an attention function as implementation ``name``, with :func:`value_free_mask`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(name, function)
    AttentionMaskInterface.register(name, value_free_mask)


def _can_route(model: nn.Module) -> bool:
    hf = _hf_model(model)
    return hf is not None and bool(getattr(hf, "_can_set_attn_implementation", lambda: False)())


def _routed(model: nn.Module) -> bool:
    """Whether the model already attends through one of peftsearch's implementations."""
    hf = _hf_model(model)
    return str(hf.config._attn_implementation).startswith("peftsearch_")


def _hf_model(model: nn.Module):
    from transformers import PreTrainedModel

    return next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)


def set_attention(model: nn.Module, name: str) -> list[tuple[object, object]]:
    """Route ``model``'s attention through implementation ``name``; what it was, per config, for
    :func:`restore_attention`.

    ``set_attn_implementation`` sets the model's configs; the attention modules read theirs,
    which in an ``EncoderDecoderModel`` built from two models are other objects (it replaces
    its parts' configs by copies): those are set too.
    """
    hf = _hf_model(model)
    configs = {id(c): c for m in model.modules() if _is_config(c := getattr(m, "config", None))}
    before = [(c, c._attn_implementation) for c in configs.values()]
    hf.set_attn_implementation(name)
    for c in configs.values():
        if not getattr(c, "sub_configs", None) and c._attn_implementation != name:
            c._attn_implementation = name
    return before


def restore_attention(before: list[tuple[object, object]]) -> None:
    """Undo :func:`set_attention`."""
    for config, implementation in before:
        config._attn_implementation = implementation


def _is_config(c) -> bool:
    from transformers import PretrainedConfig

    return isinstance(c, PretrainedConfig)


@contextmanager
def attention_implementation(model: nn.Module, name: str):
    """:func:`set_attention` for the duration of a ``with`` block; ``name`` registered first as
    SDPA (with :func:`value_free_mask`) where it is :data:`META_SAFE`."""
    if name == META_SAFE:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        register_attention(META_SAFE, sdpa_attention_forward)
    before = set_attention(model, name)
    try:
        yield
    finally:
        restore_attention(before)


PROBE = "peftsearch_probe"


def attention_callers(model: nn.Module) -> tuple[list[tuple[nn.Module, int]], str | None]:
    """The modules that call transformers' attention interface, one per layer, with the width
    of their keys: ``([(module, key width), ...] bottom to top, None)``, or ``([], why not)``.

    Found by running the model once with a recording attention function. An
    encoder-decoder's decoder layers have two (:func:`attention_sites`).
    """
    calls, why = _recorded_callers(model)
    if why:
        return [], why
    owners = layer_modules(model)
    if [_layer_of(owners, m) for m, _ in calls] != list(range(len(owners))):
        return [], (
            f"{model.config.model_type}: {len(calls)} modules call the attention interface, not "
            f"one in each of its {len(owners)} layers"
        )
    return calls, None


def attention_sites(model: nn.Module) -> tuple[list[tuple[nn.Module, int, int]], str | None]:
    """Every attention module that calls transformers' attention interface, with its keys' width
    and its layer: ``([(module, key width, layer index), ...], None)`` or ``([], why not)``.

    One per layer of an encoder (:func:`attention_callers`); in an
    encoder-decoder, one per encoder layer, then two per decoder layer, its
    self-attention and its cross-attention (the module holding the layer's
    ``cross_query`` projection), in that order.
    """
    if not is_encoder_decoder(model):
        callers, why = attention_callers(model)
        return [(m, w, i) for i, (m, w) in enumerate(callers)], why
    found = roles(model)
    calls, why = _recorded_callers(model)
    if why:
        return [], why
    owners = layer_modules(model)
    sites = [(m, w, _layer_of(owners, m)) for m, w in calls]
    kind = model.config.model_type
    for layer in found.layers:
        here = [m for m, _, i in sites if i == layer.index]
        if layer.stack == DECODER:
            cross = model.get_submodule(layer.found["cross_query"][0])
            holds = [any(c is cross for c in m.modules()) for m in here]
            if holds != [False, True]:
                return [], (
                    f"{kind}: decoder layer {layer.position} does not call the attention "
                    f"interface once for self-attention, then once for cross-attention"
                )
        elif len(here) != 1:
            return [], (
                f"{kind}: encoder layer {layer.position} calls the attention interface "
                f"{len(here)} times, not once"
            )
    if any(i is None for _, _, i in sites):
        return [], f"{kind}: a module outside the layers calls the attention interface"
    return sorted(sites, key=lambda s: s[2]), None


def _layer_of(owners: list[list[nn.Module]], module: nn.Module) -> int | None:
    return next(
        (i for i, g in enumerate(owners) for r in g if any(module is x for x in r.modules())),
        None,
    )


def _recorded_callers(model: nn.Module) -> tuple[list[tuple[nn.Module, int]], str | None]:
    """Each module that calls the attention interface in one forward, in call order, with its
    keys' width; or ``([], why not)``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    kind = model.config.model_type
    can_set = getattr(model, "_can_set_attn_implementation", lambda: False)
    if not can_set():
        return (
            [],
            f"{kind} computes attention itself, not through transformers' attention interface",
        )
    calls: list[tuple[nn.Module, int]] = []

    def record(module, query, key, value, attention_mask, **kwargs):
        if not any(module is m for m, _ in calls):
            calls.append((module, key.shape[1] * key.shape[3]))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    register_attention(PROBE, record)
    try:
        with attention_implementation(model, PROBE):
            probe_forward(model, before_try=calls.clear)
    except (ValueError, RuntimeError, TypeError, NotImplementedError) as e:
        return [], f"{kind}: its attention could not be routed through the interface ({e})"
    return calls, None
