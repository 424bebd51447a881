"""Export a trained trial as files standard tools load; load any export in one line.

* ``full``, ``freeze``, ``bitfit``, ``head_only``, and ``linear_probe`` on
  BERT (whose head already is one linear layer): a transformers model
  directory - ``AutoModelForSequenceClassification.from_pretrained(OUT)``.
* peft's methods (``lora`` and its variants, ``ia3``, ``adalora``, ``vera``, ``loha``,
  ``lokr``, ``oft``, ``boft``, ``hra``, ``fourierft``, ``ln_tuning``, ``prompt_tuning``,
  ``p_tuning``): a peft adapter directory -
  ``PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(BASE, num_labels=C), OUT)``.
* ``adapter``, ``prefix``, ``mam``, ``unipelt`` (in-house modules), ``linear_probe``
  elsewhere (the native head reduced to its classifier) and a peft tuner placed
  in no layer (``layers: 0b00``: the head alone): the trained parameters in
  ``trainable.safetensors`` - ``trainables.export.load_model(OUT)``.

Every export holds ``peftsearch.json`` (base model, method, knobs, labels),
the tokenizer, and :func:`load_model` loads any of them. Safetensors only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainables.features import FeatureHead
from trainables.methods import apply_method, get_method
from trainables.model import load_classifier, load_tokenizer

MANIFEST = "peftsearch.json"
TRAINABLE_FILE = "trainable.safetensors"


def export_format(method: str, model_type: str) -> str:
    """``transformers``, ``peft`` or ``peftsearch`` (``trainable.safetensors``): the method's own."""
    return get_method(method).export_format(model_type)


def rebuild(
    model_name: str,
    label_names: list[str],
    method: str,
    knobs: dict[str, Any],
    trainable: dict,
    feature_cache: bool = False,
) -> nn.Module:
    """The trained model: pretrained weights, the method applied, the trained parameters loaded.

    ``feature_cache``: the trial trained a :class:`FeatureHead` around the model,
    whose checkpoint names the same parameters through it.
    """
    model = load_classifier(model_name, len(label_names), label_names)
    model = apply_method(model, method, knobs)
    target = FeatureHead(model) if feature_cache else model
    missing = set(trainable) - {n for n, _ in target.named_parameters()}
    if missing:
        raise ValueError(f"checkpoint parameters not in the rebuilt model: {sorted(missing)[:5]}")
    target.load_state_dict(trainable, strict=False)
    return model.eval()


def export(model: nn.Module, out: Path, manifest: dict[str, Any], model_name: str) -> Path:
    """Write ``model`` (built by :func:`rebuild`) to ``out`` in its method's format."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fmt = export_format(manifest["method"], model.config.model_type)
    if fmt == "peft" and not _has_tuner(model):
        fmt = "peftsearch"  # a tuner placed in no layer (layers: 0b00...): the head alone
    if fmt == "transformers":
        model.save_pretrained(out, safe_serialization=True)
    elif fmt == "peft":
        _save_peft(model, out, manifest, model_name)
    else:
        trained = {
            n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad
        }
        save_file(trained, str(out / TRAINABLE_FILE))
    load_tokenizer(model_name).save_pretrained(out)
    (out / MANIFEST).write_text(json.dumps({**manifest, "format": fmt}, indent=2, default=str))
    return out


def _has_tuner(model: nn.Module) -> bool:
    """Whether peft wrapped or injected into ``model`` (a tuner placed in no layer did not)."""
    from peft import PeftModel

    return isinstance(model, PeftModel) or hasattr(model, "peft_config")


def _save_peft(model: nn.Module, out: Path, manifest: dict[str, Any], model_name: str) -> None:
    """Write a peft adapter directory that loads onto the original base model.

    Prompt methods already are ``PeftModel``s. A tuner injected in place (LoRA,
    IA3, AdaLoRA, LoHa, ...) recorded its config in ``model.peft_config``: the
    same config, on a fresh copy of the base model, gives a ``PeftModel`` of the
    same structure, and the trained parameters are copied into it. An
    initialisation that rewrote the base weights (PiSSA, OLoRA) is converted by
    peft to a plain LoRA adapter of the original weights (rank ``2r``).
    """
    import copy
    import tempfile

    from peft import PeftModel

    from trainables.methods._base import head_modules, quiet_get_peft_model

    if isinstance(model, PeftModel):
        model.save_pretrained(out, safe_serialization=True)
        return
    config = copy.deepcopy(model.peft_config["default"])  # what the injection recorded
    fresh = load_classifier(model_name, len(manifest["label_names"]), manifest["label_names"])
    config.task_type, config.modules_to_save = "SEQ_CLS", head_modules(fresh)
    config.inference_mode = False
    wrapped = quiet_get_peft_model(fresh, config)
    mutated = str(getattr(config, "init_lora_weights", "")).lower() in MUTATING_INITS
    with tempfile.TemporaryDirectory(prefix="peftsearch-export-") as tmp:
        if mutated:  # the adapter as initialised: what peft subtracts to convert
            wrapped.save_pretrained(Path(tmp) / "initial", safe_serialization=True)
        _copy_trained(model, wrapped)
        if not mutated:
            wrapped.save_pretrained(out, safe_serialization=True)
            return
        wrapped.save_pretrained(Path(tmp) / "plain", safe_serialization=True)
        wrapped.save_pretrained(
            out,
            safe_serialization=True,
            path_initial_model_for_weight_conversion=str(Path(tmp) / "initial"),
        )
        _restore_left_out(out / ADAPTER_FILE, Path(tmp) / "plain" / ADAPTER_FILE)


# peft's names: the initialisations that rewrite the base weights, its adapter weights file.
MUTATING_INITS = ("pissa", "olora")
ADAPTER_FILE = "adapter_model.safetensors"


def _copy_trained(model: nn.Module, wrapped: nn.Module) -> None:
    """The trained parameters of the in-place ``model`` into peft's ``wrapped`` copy."""
    target = dict(wrapped.named_parameters())
    head = set(wrapped.peft_config["default"].modules_to_save)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            top = name.split(".")[0]
            if top in head:  # the head trains as peft's modules_to_save copy
                key = f"base_model.model.{top}.modules_to_save.default.{name[len(top) + 1 :]}"
            else:
                key = f"base_model.model.{name}"
            target[key].copy_(p)


def _restore_left_out(converted: Path, plain: Path) -> None:
    """Put back what peft's PiSSA/OLoRA conversion leaves out of the adapter file: it keeps only
    the LoRA matrices, not the head (``modules_to_save``) nor DoRA's magnitudes, which apply to
    the original weights unchanged (DoRA normalises ``W + BA``, the same matrix either way)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(converted))
    for name, t in load_file(str(plain)).items():
        tensors.setdefault(name, t)
    save_file(tensors, str(converted), metadata={"format": "pt"})


def load_model(path: str | Path) -> nn.Module:
    """Load any peftsearch export (the one-line loader): ``trainables.export.load_model(OUT)``."""
    path = Path(path)
    manifest = json.loads((path / MANIFEST).read_text())
    fmt = manifest["format"]
    if fmt == "transformers":
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(path).eval()
    base = load_classifier(
        manifest["base_model"], len(manifest["label_names"]), manifest["label_names"]
    )
    if fmt == "peft":
        from peft import PeftModel

        return PeftModel.from_pretrained(base, str(path)).eval()
    from safetensors.torch import load_file

    model = apply_method(base, manifest["method"], manifest["knobs"])
    model.load_state_dict(load_file(str(path / TRAINABLE_FILE)), strict=False)
    return model.eval()
