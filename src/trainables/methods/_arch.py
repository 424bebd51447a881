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
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field

from torch import nn

# Leaf names of attention projections (lower case).
QUERY = {"query", "q", "q_proj", "q_lin", "q_head", "query_proj", "wq"}
KEY = {"key", "k", "k_proj", "k_lin", "k_head", "key_proj", "wk"}
VALUE = {"value", "v", "v_proj", "v_lin", "v_head", "value_proj", "wv"}
FUSED_QKV = {"qkv", "wqkv", "in_proj", "query_key_value", "qkv_proj", "c_attn"}
ATTN_OUT = {"dense", "o", "o_proj", "out_proj", "out_lin", "post_proj", "wo", "out", "output"}
ROLES = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")

# Per model type: role -> regex of module paths relative to a layer, where discovery needs help.
OVERRIDES: dict[str, dict[str, str]] = {
    # MobileBERT's layers hold bottlenecks and extra feed-forward stacks beside the main one.
    "mobilebert": {"ffn_in": r"intermediate\.dense", "ffn_out": r"output\.dense"},
}


@dataclass(frozen=True)
class Layer:
    """One encoder layer: its root modules' names and, per role, its projections' full names."""

    index: int
    roots: tuple[str, ...]
    found: dict[str, tuple[str, ...]] = field(default_factory=dict)
    problem: str | None = None  # why a role is missing or ambiguous


@dataclass(frozen=True)
class Roles:
    """The encoder's layers (bottom to top) and where each role is in them."""

    model_type: str
    layers: tuple[Layer, ...]

    def names(self, *roles: str, layers: Collection[int] | None = None) -> list[str]:
        """Full module names of ``roles`` in every layer (or in ``layers``, by index); a
        ValueError naming what is missing (in any layer: discovery holds for the whole model)."""
        problem = next((x.problem for x in self.layers if x.problem), None)
        if problem:
            raise ValueError(problem)
        chosen = self.layers if layers is None else [self.layers[i] for i in layers]
        return sorted({n for layer in chosen for r in roles for n in layer.found[r]})

    def regex(self, *roles: str, layers: Collection[int] | None = None) -> str:
        """A full-match regex of those modules (peft's ``target_modules``)."""
        return _full_match(self.names(*roles, layers=layers))

    def within(self, pattern: str, layers: Collection[int]) -> str:
        """``pattern`` (a full-match regex of this encoder's projections, as :meth:`regex` and
        ``peft_targets`` give) restricted to the projections of ``layers``."""
        found = self.names(*ROLES, layers=layers)
        return _full_match([n for n in found if re.fullmatch(pattern, n)])

    def select(self, knobs: dict, method: str) -> list[int]:
        """The layers a method's ``layers`` knob selects among the distinct layers found here
        (ALBERT's one shared layer is one); a ValueError ``"<method>: ..."`` where it does not fit."""
        return selected(knobs, len(self.layers), method)


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
    groups = layer_groups(model)
    if not groups:
        raise ValueError(f"no encoder layers found in {type(model).__name__}")
    overrides = OVERRIDES.get(model.config.model_type, {})
    layers = tuple(_layer(model, i, roots, overrides) for i, roots in enumerate(groups))
    return Roles(model.config.model_type, layers)


def arch_of(model: nn.Module, method: str) -> Roles:
    """The discovered roles, for ``method``'s error messages."""
    try:
        return roles(model)
    except ValueError as e:
        raise ValueError(f"{method}: {e}") from None


def layer_groups(model: nn.Module) -> list[tuple[str, ...]]:
    """Each encoder layer as the full names of its root modules, bottom to top."""
    base = model.base_model_prefix
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


def _layer(model: nn.Module, index: int, roots: tuple[str, ...], overrides) -> Layer:
    """One layer's roles; ``problem`` says what could not be found."""
    base = model.base_model_prefix
    linears: list[tuple[str, str, nn.Linear]] = []  # (full name, path from the list on, module)
    for root in roots:
        list_attr = root.rpartition(".")[0].rpartition(".")[2]
        for sub, m in model.get_submodule(root).named_modules():
            if isinstance(m, nn.Linear):
                full = f"{root}.{sub}" if sub else root
                linears.append((full, list_attr + full[len(root) :], m))
    found = _discover(linears)
    for role, pattern in overrides.items():  # paths relative to the layer's root module
        rel = re.compile(pattern)
        found[role] = tuple(
            n for n, _, _ in linears if any(rel.fullmatch(n[len(r) + 1 :]) for r in roots)
        )
    missing = [r for r in ROLES if not found.get(r)]
    problem = None
    if missing:
        problem = (
            f"{model.config.model_type}: no {'/'.join(missing)} projection found in layer {index} "
            f"(linear layers: {[n[len(base) + 1 :] for n, _, _ in linears][:12]})"
        )
    return Layer(index, roots, found, problem)


def _discover(linears: list[tuple[str, str, nn.Linear]]) -> dict[str, tuple[str, ...]]:
    attn = [(n, m) for n, path, m in linears if _is_attention(path)]
    rest = [(n, m) for n, path, m in linears if not _is_attention(path)]
    leaf = {n: n.rpartition(".")[2].lower() for n, *_ in linears}
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
    """
    index = {id(m): i for i, group in enumerate(layer_modules(model)) for m in group}

    def holds_layer(module: nn.Module) -> bool:
        return any(id(m) in index for m in module.modules())

    def cut(module: nn.Module) -> list[tuple[nn.Module, int | None]]:
        out: list[tuple[nn.Module, int | None]] = []
        for child in module.children():
            if id(child) in index:
                out.append((child, index[id(child)]))
            elif holds_layer(child):
                out.extend(cut(child))
            else:
                out.append((child, None))
        return out

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
    """
    import inspect

    import torch

    runner = next(
        m for m in model.modules() if "input_ids" in inspect.signature(m.forward).parameters
    )
    modes = {m: m.training for m in model.modules()}
    device = next(model.parameters()).device
    ids = torch.ones(1, 8, dtype=torch.long, device=device)  # Funnel pools it down twice
    tries = [{"attention_mask": torch.ones_like(ids)}, {}]
    try:
        model.eval()
        for i, kwargs in enumerate(tries):
            before_try()
            try:
                with torch.no_grad():
                    runner(input_ids=ids, **kwargs)
                return
            except RuntimeError:
                if i == len(tries) - 1 or device.type != "meta":
                    raise
    finally:
        for m, mode in modes.items():
            m.training = mode


PROBE = "peftsearch_probe"


def attention_callers(model: nn.Module) -> tuple[list[tuple[nn.Module, int]], str | None]:
    """The modules that call transformers' attention interface, one per layer, with the width
    of their keys: ``([(module, key width), ...] bottom to top, None)``, or ``([], why not)``.

    Found by running the model once with a recording attention function.
    """
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

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

    AttentionInterface.register(PROBE, record)
    AttentionMaskInterface.register(PROBE, sdpa_mask)
    previous = model.config._attn_implementation
    try:
        model.set_attn_implementation(PROBE)
        probe_forward(model, before_try=calls.clear)
    except (ValueError, RuntimeError, TypeError, NotImplementedError) as e:
        return [], f"{kind}: its attention could not be routed through the interface ({e})"
    finally:
        model.set_attn_implementation(previous)
    owners = layer_modules(model)
    layer_of = [
        next((i for i, g in enumerate(owners) for r in g if any(m is x for x in r.modules())), None)
        for m, _ in calls
    ]
    if len(calls) != len(owners) or layer_of != list(range(len(owners))):
        return [], (
            f"{kind}: {len(calls)} modules call the attention interface, not one in each of "
            f"its {len(owners)} layers"
        )
    return calls, None
