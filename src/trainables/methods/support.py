"""Which method applies to which encoder type: the support matrix (``peftsearch methods --matrix``).

Every encoder-only type that transformers' ``AutoModelForSequenceClassification``
maps (not an encoder-decoder, not a decoder-only language model, not
multimodal) and that builds from its default config without remote code. Each
method is applied with its defaults (:data:`KNOBS` where they do not fit two
layers) to a weightless (meta-device) model: it
applies, or it is refused with a one-line reason, as ``validate`` does.
"""

from __future__ import annotations

from torch import nn

NUM_LABELS = 3
# The knobs a method is applied with where its defaults do not fit a two-layer model.
KNOBS = {"freeze": {"freeze_layers": 1}}
# Left out by :func:`encoder_types`, with the reason, rather than silently missing.
SKIPPED: dict[str, str] = {}
# Types transformers maps to masked LM that are not token encoders.
NOT_ENCODERS = {
    "mistral4": "a decoder language model (its head reads the last token)",
    "perceiver": "a latent-array model (its head reads latents, not token states)",
}


def encoder_types() -> list[str]:
    """The encoder-only model types of the installed transformers (see the module docstring)."""
    import warnings

    from transformers import CONFIG_MAPPING
    from transformers.models.auto import modeling_auto as auto

    causal = set(auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    masked = set(auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES)
    out = []
    for kind in sorted(auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES):
        if kind in causal and kind not in masked:  # decoder-only language models
            continue
        if kind in NOT_ENCODERS:
            SKIPPED[kind] = NOT_ENCODERS[kind]
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                config = CONFIG_MAPPING[kind]()
        except Exception as e:  # a config that needs arguments or a missing package
            SKIPPED[kind] = f"no default config ({type(e).__name__})"
            continue
        if config.is_encoder_decoder or getattr(config, "is_decoder", False):
            continue
        if any("vision" in name for name in getattr(config, "sub_configs", {})):
            SKIPPED[kind] = "multimodal"
            continue
        try:
            meta_model(kind)
        except Exception as e:  # e.g. an optional package it imports
            SKIPPED[kind] = f"does not build ({type(e).__name__})"
            continue
        out.append(kind)
    return out


def meta_model(model_type: str) -> nn.Module:
    """A weightless classifier of ``model_type`` (its default config, two layers where it can)."""
    import warnings

    import torch
    from transformers import CONFIG_MAPPING, AutoModelForSequenceClassification

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = CONFIG_MAPPING[model_type]()
        config.num_labels = NUM_LABELS
        small = CONFIG_MAPPING[model_type]()
        small.num_labels = NUM_LABELS
        try:
            small.num_hidden_layers = 2  # faster; the layers are alike
            with torch.device("meta"):
                return AutoModelForSequenceClassification.from_config(small)
        except Exception:
            with torch.device("meta"):
                return AutoModelForSequenceClassification.from_config(config)


def support(model_type: str, methods: list[str] | None = None) -> dict[str, str | None]:
    """Per method: None where it applies to ``model_type``, else why not (one line)."""
    from trainables.methods import METHODS, apply_method

    out: dict[str, str | None] = {}
    for name in methods or list(METHODS):
        try:
            apply_method(meta_model(model_type), name, KNOBS.get(name))
            out[name] = None
        except ValueError as e:
            out[name] = str(e).splitlines()[0]
    return out


def matrix(types: list[str] | None = None) -> dict[str, dict[str, str | None]]:
    """:func:`support` for every encoder type."""
    return {kind: support(kind) for kind in types or encoder_types()}


def format_matrix(table: dict[str, dict[str, str | None]]) -> str:
    """A markdown table (yes / no per type and method) and the reasons for each no."""
    methods = list(next(iter(table.values())))
    lines = [
        "| model type | " + " | ".join(methods) + " |",
        "|---" * (len(methods) + 1) + "|",
    ]
    reasons: dict[str, list[str]] = {}
    for kind, row in table.items():
        cells = []
        for method in methods:
            why = row[method]
            cells.append("yes" if why is None else "no")
            if why is not None:
                reasons.setdefault(why, []).append(f"{kind}/{method}")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    full = [k for k, row in table.items() if all(w is None for w in row.values())]
    architectural = ("no bias terms", "attention itself")
    nearly = [
        k
        for k, row in table.items()
        if all(w is None or any(a in w for a in architectural) for w in row.values())
    ]
    lines += [
        "",
        f"{len(full)} of {len(table)} types take every method; {len(nearly)} take every method "
        "that their architecture allows (no bitfit without biases, no prefix where attention "
        "does not go through transformers' attention interface).",
        "",
        "Why not:",
    ]
    lines += [f"- {', '.join(where)}: {why}" for why, where in reasons.items()]
    return "\n".join(lines)
