"""Any encoder: roles discovered from the model, every method on every encoder type of transformers.

Apply-and-count runs on weightless (meta-device) models of every encoder-only
type the installed transformers maps (``trainables.methods.support``); each
method applies with its trainable count equal to a formula of the discovered
modules' shapes, or is refused with a one-line reason. Training and
frozen-is-frozen run on the tiny models of tests/test_methods.py.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from trainables.methods import apply_method
from trainables.methods._arch import attention_callers, roles
from trainables.methods.support import (
    KNOBS,
    NUM_LABELS,
    encoder_types,
    format_matrix,
    matrix,
    meta_model,
)
from trainables.model import count_parameters, head_parameter_names

NINE = (
    "full",
    "linear_probe",
    "head_only",
    "bitfit",
    "adapter",
    "lora",
    "ia3",
    "prompt_tuning",
    "p_tuning",
)
TYPES = encoder_types()


def _modules(model: nn.Module, names: list[str]) -> list[nn.Linear]:
    return [model.get_submodule(n) for n in names]


def _last_has_bias(model: nn.Module) -> bool:
    heads = [m for n, m in model.named_children() if n != model.base_model_prefix]
    last = [
        m
        for h in heads
        for m in h.modules()
        if isinstance(m, nn.Linear) and m.out_features == NUM_LABELS
    ]
    return last[0].bias is not None


def expected(model: nn.Module, method: str) -> int:
    """The trainable count of ``method`` (its defaults) from the model's structure, before applying it."""
    head = sum(p.numel() for n, p in model.named_parameters() if n in head_parameter_names(model))
    c = NUM_LABELS
    token = (
        model.get_input_embeddings().embedding_dim if method in ("prompt_tuning", "p_tuning") else 0
    )
    if method == "full":  # what the model itself trains (RoFormer's sinusoidal positions do not)
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
    if method == "head_only":
        return head
    if method == "linear_probe":  # the head's Linear(hidden, labels), with its bias if it has one
        h = model.config.hidden_size
        return h * c + (c if _last_has_bias(model) else 0)
    if method == "bitfit":
        base = model.base_model_prefix + "."
        biases = sum(
            p.numel()
            for n, p in model.named_parameters()
            if n.startswith(base) and n.endswith(".bias")
        )
        return head + biases
    if method == "prompt_tuning":  # 20 virtual tokens
        return head + 20 * token
    if method == "p_tuning":  # 20 virtual tokens, an MLP encoder of width 128
        e = 128
        return head + 20 * token + (token * e + e) + (e * e + e) + (e * token + token)
    if method == "prefix":  # 16 positions, keys and values, in every layer that calls the interface
        callers, _ = attention_callers(model)
        return head + sum(16 * 2 * width for _, width in callers)
    r = roles(model)
    if method in ("mam", "unipelt"):
        return head + _prefixed(model, method, r)
    if method == "adapter":  # pfeiffer, size 16: after each feed-forward output projection
        return head + sum(
            2 * m.out_features * 16 + 16 + m.out_features
            for m in _modules(model, r.names("ffn_out"))
        )
    if method == "lora":  # rank 8 on query and value (a fused projection once)
        return head + sum(
            8 * (m.in_features + m.out_features) for m in _modules(model, r.names("query", "value"))
        )
    if (
        method == "ia3"
    ):  # keys and values rescaled on their outputs, the feed-forward output on its input
        kv = sum(m.out_features for m in _modules(model, r.names("key", "value")))
        return head + kv + sum(m.in_features for m in _modules(model, r.names("ffn_out")))
    raise AssertionError(method)


def _prefixed(model: nn.Module, method: str, r) -> int:
    """mam (30 prefix positions, a parallel adapter of 512 beside the feed-forward block) or
    unipelt (10 positions and their gate, gated rank-8 LoRA on query and value, a gated
    sequential adapter of 48 after the feed-forward block), all layers, without the head."""
    callers, why = attention_callers(model)
    if why:
        raise ValueError(why)
    per_position = 30 if method == "mam" else 10
    total = sum(per_position * 2 * width for _, width in callers)
    for layer in r.layers:
        ffn_in, ffn_out = (_modules(model, list(layer.found[k])) for k in ("ffn_in", "ffn_out"))
        query = _modules(model, list(layer.found["query"]))[0]
        if method == "mam":
            (out,) = ffn_out
            total += ffn_in[0].in_features * 512 + 512 + 512 * out.out_features + out.out_features
            continue
        qv = {id(m): m for k in ("query", "value") for m in _modules(model, list(layer.found[k]))}
        total += sum(8 * (m.in_features + m.out_features) + m.in_features + 1 for m in qv.values())
        total += query.in_features + 1  # the prefix gate
        total += sum(2 * m.out_features * 48 + 48 + 2 * m.out_features + 1 for m in ffn_out)
    return total


@pytest.mark.parametrize("kind", TYPES)
def test_every_method_applies_with_its_count_or_is_refused_with_a_reason(kind):
    for method in (*NINE, "prefix", "mam", "unipelt"):
        model = meta_model(kind)
        try:
            want = expected(model, method)
        except (ValueError, NotImplementedError, AttributeError):
            want = None  # what it needs is not there (roles, input embeddings): apply must refuse
        try:
            applied = apply_method(model, method, KNOBS.get(method))
        except ValueError as e:
            message = str(e)
            assert message.startswith(f"{method}:") and "\n" not in message, message
            continue
        assert want is not None, f"{kind}/{method} applied without the roles it needs"
        trainable, _ = count_parameters(applied)
        assert trainable == want, f"{kind}/{method}"


def test_at_least_twenty_encoder_types_take_all_nine_methods():
    """The support matrix the README shows; bitfit counts where the model has biases."""
    table = matrix(TYPES)
    complete = [
        kind
        for kind, row in table.items()
        if all(row[m] is None or (m == "bitfit" and "no bias terms" in row[m]) for m in NINE)
    ]
    assert len(complete) >= 20, format_matrix(table)
    for kind in ("bert", "roberta", "deberta-v2", "modernbert", "mpnet", "albert", "electra"):
        assert kind in complete, kind
    # prefix wherever attention goes through transformers' attention interface
    for kind in ("bert", "roberta", "distilbert", "modernbert", "albert"):
        assert table[kind]["prefix"] is None, kind
    assert "attention itself" in table["mpnet"]["prefix"]
    text = format_matrix(table)
    assert "| mpnet | yes | yes | yes |" in text and "take every method" in text


ROLES = {  # model type -> role -> module paths relative to a layer, as discovery must find them
    "bert": {
        "query": ["attention.self.query"],
        "value": ["attention.self.value"],
        "attn_out": ["attention.output.dense"],
        "ffn_in": ["intermediate.dense"],
        "ffn_out": ["output.dense"],
    },
    "mpnet": {
        "query": ["attention.attn.q"],
        "attn_out": ["attention.attn.o"],
        "ffn_out": ["output.dense"],
    },
    "albert": {  # the layer group holds the one shared layer
        "key": ["albert_layers.0.attention.key"],
        "ffn_in": ["albert_layers.0.ffn"],
        "ffn_out": ["albert_layers.0.ffn_output"],
    },
    "modernbert": {
        "query": ["attn.Wqkv"],
        "value": ["attn.Wqkv"],
        "ffn_in": ["mlp.Wi"],
        "ffn_out": ["mlp.Wo"],
    },
    "distilbert": {"key": ["attention.k_lin"], "ffn_in": ["ffn.lin1"], "ffn_out": ["ffn.lin2"]},
    "deberta": {"query": ["attention.self.in_proj"], "attn_out": ["attention.output.dense"]},
    "funnel": {"value": ["attention.v_head"], "attn_out": ["attention.post_proj"]},
    "gte": {"ffn_in": ["mlp.gate_proj", "mlp.up_proj"], "ffn_out": ["mlp.down_proj"]},
    "mobilebert": {"ffn_in": ["intermediate.dense"], "ffn_out": ["output.dense"]},
    "xlm": {"query": ["q_lin"], "attn_out": ["out_lin"], "ffn_in": ["lin1"], "ffn_out": ["lin2"]},
}


@pytest.mark.parametrize("kind", sorted(ROLES))
def test_roles_are_found_where_they_are(kind):
    found = roles(meta_model(kind))
    first = found.layers[0]
    for role, paths in ROLES[kind].items():
        got = sorted(
            n.removeprefix(r + ".")
            for n in first.found[role]
            for r in first.roots
            if n.startswith(r + ".")
        )
        assert got == sorted(paths), (kind, role, first.found[role])


def test_shared_and_zipped_layers():
    """ALBERT's one layer at every depth is one layer; XLM's parallel lists zip into layers."""
    assert len(roles(meta_model("albert")).layers) == 1
    xlm = roles(meta_model("xlm"))
    assert len(xlm.layers) == 2 and all(len(x.roots) == 4 for x in xlm.layers)
    funnel = roles(meta_model("funnel"))  # blocks of layers, one after another
    assert len(funnel.layers) == sum(meta_model("funnel").config.block_sizes)


def tiny(kind: str) -> nn.Module | None:
    """A tiny randomly initialised classifier of ``kind`` (weights on the CPU), or None."""
    from transformers import CONFIG_MAPPING, AutoModelForSequenceClassification

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = CONFIG_MAPPING[kind]()
        sizes = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
                 "num_hidden_layers": 2, "embedding_size": 16, "vocab_size": 99,
                 "hidden_dropout_prob": 0.0}  # fmt: skip
        for key, value in sizes.items():
            if hasattr(config, key):
                try:
                    setattr(config, key, value)
                except Exception:
                    return None
        config.num_labels = NUM_LABELS
        try:
            torch.manual_seed(0)
            model = AutoModelForSequenceClassification.from_config(config).eval()
            ids = torch.randint(5, 90, (2, 12))
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
        except Exception:
            return None
    return model


def test_the_cached_vector_is_what_each_head_reads():
    """For every type that builds tiny: the model's logits from the cached vector (the cache's
    and the linear probe's view of the head input) equal its logits from the full forward."""
    from trainables.features import base_output, cache_plan, tail_logits
    from trainables.methods._arch import pick_vector

    checked = []
    for kind in TYPES:
        model = tiny(kind)
        if model is None:
            continue
        ids = torch.randint(5, 90, (3, 10))
        mask = torch.ones_like(ids)
        mask[0, 7:] = 0  # padding in the batch
        with torch.no_grad():
            try:
                full = model(input_ids=ids, attention_mask=mask).logits
            except Exception:
                continue
            out = base_output(model, {"input_ids": ids, "attention_mask": mask})
            vector = pick_vector(cache_plan(model.config).vector, out, mask)
            cached = tail_logits(model, vector)
        torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-4, msg=kind)
        checked.append(kind)
    assert len(checked) >= 20, checked


def test_validate_accepts_every_method_on_mpnet_except_prefix(tiny_models, topics_tsv, tmp_path):
    """MPNet (all-mpnet-base-v2's architecture): every method but the prefix methods (prefix,
    mam, unipelt), whose attention does not go through transformers' interface, as the matrix
    says."""
    from conftest import tiny_space

    from search.preflight import check_fit
    from search.space import SpaceError, validate
    from trainables.methods import METHODS

    space = tiny_space(tiny_models["mpnet"], topics_tsv, tmp_path / "runs")
    space["methods"] = {m: {} for m in METHODS}
    space["methods"]["freeze"] = {"freeze_layers": 1}
    with pytest.raises(SpaceError) as err:
        check_fit(validate(space, "mpnet"))
    prefixed = ["methods.prefix", "methods.mam", "methods.unipelt"]
    assert sorted(key for key, _ in err.value.problems) == sorted(prefixed)
    assert all("mpnet computes attention itself" in why for _, why in err.value.problems)
    for key in prefixed:
        del space["methods"][key.split(".")[1]]
    check_fit(validate(space, "mpnet"))
