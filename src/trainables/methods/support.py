"""Which method applies to which encoder type: the support matrix (``peftsearch methods --matrix``).

Every encoder-only type that transformers' ``AutoModelForSequenceClassification``
maps (not an encoder-decoder, not a decoder-only language model, not
multimodal) and that builds from its default config without remote code. Each
method is applied with its defaults (:data:`KNOBS` where they do not fit two
layers) to a weightless (meta-device) model: it
applies, or it is refused with a one-line reason, as ``validate`` does.

The sequence-to-sequence matrix (:func:`seq2seq_matrix`) does the same for
the text encoder-decoders ``AutoModelForSeq2SeqLM`` maps (:func:`seq2seq_types`:
T5, BART, Marian, mBART, Pegasus, ...) and for an ``EncoderDecoderModel``
warm-started from a BERT encoder (type ``encoder-decoder``), built by
:func:`meta_seq2seq` as ``validate`` builds them.
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


def support(model_type: str, methods: list[str] | None = None, build=None) -> dict[str, str | None]:
    """Per method: None where it applies to ``model_type``, else why not (one line).
    ``build``: the weightless model of a type (default :func:`meta_model`, a classifier)."""
    from trainables.methods import METHODS, apply_method

    build = build or meta_model
    out: dict[str, str | None] = {}
    for name in methods or list(METHODS):
        try:
            apply_method(build(model_type), name, KNOBS.get(name))
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


# The sequence-to-sequence types built for the matrix besides those found: an EncoderDecoderModel
# of two BERTs (what an encoder-only checkpoint is warm-started as).
WARM_STARTED = "encoder-decoder"


def seq2seq_types() -> list[str]:
    """The text encoder-decoder types of the installed transformers that ``AutoModelForSeq2SeqLM``
    maps and that build from their default config (multimodal and speech models left out, with
    the reason in :data:`SKIPPED`), and ``encoder-decoder`` (:data:`WARM_STARTED`)."""
    import warnings

    from transformers import CONFIG_MAPPING
    from transformers.models.auto import modeling_auto as auto

    out = []
    for kind in sorted(auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES):
        if kind == WARM_STARTED:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                config = CONFIG_MAPPING[kind]()
        except Exception as e:  # a config that needs arguments or a missing package
            SKIPPED[kind] = f"no default config ({type(e).__name__})"
            continue
        if not getattr(config, "is_encoder_decoder", False) or getattr(config, "sub_configs", {}):
            SKIPPED[kind] = "not a text encoder-decoder (speech, audio or multimodal)"
            continue
        try:
            meta_seq2seq_model(kind)
        except Exception as e:  # e.g. an optional package it imports
            SKIPPED[kind] = f"does not build ({type(e).__name__})"
            continue
        out.append(kind)
    return [*out, WARM_STARTED]


def meta_seq2seq_model(model_type: str) -> nn.Module:
    """A weightless encoder-decoder of ``model_type`` (its default config, two layers in each
    stack where it can); ``encoder-decoder``: warm-started from a default BERT config."""
    import warnings

    from transformers import CONFIG_MAPPING

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = CONFIG_MAPPING["bert" if model_type == WARM_STARTED else model_type]()
        for key in ("num_layers", "num_decoder_layers", "encoder_layers", "decoder_layers",
                    "num_hidden_layers"):  # fmt: skip
            if isinstance(getattr(config, key, None), int) and key in config.to_dict():
                setattr(config, key, 2)
    return meta_seq2seq(config)


def meta_seq2seq(config) -> nn.Module:
    """The weightless (meta-device) sequence-to-sequence model of ``config``, as loading builds
    it (``trainables.model.load_seq2seq``): ``AutoModelForSeq2SeqLM`` for an encoder-decoder;
    for an encoder-only config, the warm start of ``trainables.model.warm_start``, whose new
    parameters (what the encoder's checkpoint lacks: the cross-attention, the LM head's transform
    and bias) are recorded as the checkpoint would leave them (``NEW_PARAMETERS``)."""
    import warnings

    import torch
    from transformers import AutoModelForSeq2SeqLM

    from trainables.model import NEW_PARAMETERS, new_parameter_names, warm_start

    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        if getattr(config, "is_encoder_decoder", False):
            model, missing = AutoModelForSeq2SeqLM.from_config(config), set()
        else:
            model, missing = warm_start(config)
    model.__dict__[NEW_PARAMETERS] = new_parameter_names(model, missing)
    return model


def seq2seq_support(model_type: str, methods: list[str] | None = None) -> dict[str, str | None]:
    """:func:`support` for an encoder-decoder type (:func:`seq2seq_types`)."""
    return support(model_type, methods, meta_seq2seq_model)


def seq2seq_matrix(types: list[str] | None = None) -> dict[str, dict[str, str | None]]:
    """:func:`seq2seq_support` for every encoder-decoder type (:func:`format_matrix` prints it)."""
    return {kind: seq2seq_support(kind) for kind in types or seq2seq_types()}
