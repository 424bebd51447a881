"""Export a trained trial as files standard tools load; load any export in one line.

* ``full``, ``freeze``, ``bitfit``, ``head_only``, and ``linear_probe`` on
  BERT (whose head already is one linear layer): a transformers model
  directory - ``AutoModelForSequenceClassification.from_pretrained(OUT)``.
* ``lora``, ``ia3``, ``prompt_tuning``, ``p_tuning``: a peft adapter directory -
  ``PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(BASE, num_labels=C), OUT)``.
* ``adapter``, ``prefix`` (in-house modules) and ``linear_probe`` elsewhere
  (the native head reduced to its classifier): the trained parameters in
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
    if fmt == "transformers":
        model.save_pretrained(out, safe_serialization=True)
    elif fmt == "peft":
        _to_peft(model, manifest, model_name).save_pretrained(out, safe_serialization=True)
    else:
        trained = {
            n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad
        }
        save_file(trained, str(out / TRAINABLE_FILE))
    load_tokenizer(model_name).save_pretrained(out)
    (out / MANIFEST).write_text(json.dumps({**manifest, "format": fmt}, indent=2, default=str))
    return out


def _to_peft(model: nn.Module, manifest: dict[str, Any], model_name: str):
    """A real ``PeftModel`` holding the trained parameters (LoRA and IA3 were injected in place)."""
    from peft import IA3Config, LoraConfig, PeftModel

    if isinstance(model, PeftModel):
        return model  # prompt methods already are PeftModels

    from trainables.methods._base import head_modules, quiet_get_peft_model

    peft_cfg = model.peft_config["default"]  # what inject_adapter_in_model recorded
    kwargs = {k: getattr(peft_cfg, k) for k in ("target_modules",)}
    if manifest["method"] == "lora":
        cfg = LoraConfig(
            r=peft_cfg.r,
            lora_alpha=peft_cfg.lora_alpha,
            lora_dropout=peft_cfg.lora_dropout,
            **kwargs,
        )
    else:
        cfg = IA3Config(feedforward_modules=peft_cfg.feedforward_modules, **kwargs)
    fresh = load_classifier(model_name, len(manifest["label_names"]), manifest["label_names"])
    cfg.task_type = "SEQ_CLS"
    cfg.modules_to_save = head_modules(fresh)
    wrapped = quiet_get_peft_model(fresh, cfg)
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    target = dict(wrapped.named_parameters())
    with torch.no_grad():
        for name, p in trained.items():
            top = name.split(".")[0]
            if top in cfg.modules_to_save:  # the head trains as peft's modules_to_save copy
                rest = name[len(top) + 1 :]
                key = f"base_model.model.{top}.modules_to_save.default.{rest}"
            else:
                key = f"base_model.model.{name}"
            target[key].copy_(p)
    return wrapped


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
