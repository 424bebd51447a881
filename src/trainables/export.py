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

Every export holds ``peftsearch.json`` (base model, method, knobs, labels,
task), the tokenizer, and :func:`load_model` loads any of them. Safetensors only.

A seq2seq export (``task: seq2seq``) is the same with ``AutoModelForSeq2SeqLM``
in place of ``AutoModelForSequenceClassification`` (an ``EncoderDecoderModel``
warm-started from an encoder loads through it too), and a ``README.md`` with a
one-line generate example. Its head - what loading initialised anew, the
warm start's cross-attention and LM-head transform and bias - goes into a peft
adapter as ``modules_to_save``: whole modules, so the LM head's copy holds its
output projection too (the pretrained embedding matrix it is tied to: peft
saves and loads every tensor of such a module).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainables.features import FeatureHead
from trainables.methods import apply_method, get_method
from trainables.metrics import CLASSIFICATION, SEQ2SEQ
from trainables.model import head_module_names, load_tokenizer
from trainables.model import load_model as load_pretrained  # load_model here: an export's

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
    task: str = CLASSIFICATION,
) -> nn.Module:
    """The trained model: pretrained weights, the method applied, the trained parameters loaded.

    ``feature_cache``: the trial trained a :class:`FeatureHead` around the model,
    whose checkpoint names the same parameters through it. ``task``: the data's
    (``seq2seq``: :func:`trainables.model.load_seq2seq`).
    """
    model = load_pretrained(model_name, task, label_names)
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
    if manifest.get("task") == SEQ2SEQ:
        (out / README).write_text(seq2seq_readme({**manifest, "format": fmt}, model))
    return out


README = "README.md"


def seq2seq_readme(manifest: dict[str, Any], model: nn.Module) -> str:
    """The export's README: how to load it, and one line that generates."""
    base, fmt = manifest["base_model"], manifest["format"]
    warm = type(_hf_model(model)).__name__ == "EncoderDecoderModel"
    base_load = (
        f"load_seq2seq({base!r})  # from trainables.model: the warm-started EncoderDecoderModel"
        if warm else f"AutoModelForSeq2SeqLM.from_pretrained({base!r})"
    )  # fmt: skip
    auto = "EncoderDecoderModel" if warm else "AutoModelForSeq2SeqLM"  # the former loads as both
    load = {
        "transformers": f"model = {auto}.from_pretrained(OUT)",
        "peft": f"model = PeftModel.from_pretrained({base_load}, OUT)",
        "peftsearch": "model = load_model(OUT)  # from trainables.export",
    }[fmt]
    prefix = manifest.get("source_prefix") or ""
    source = json.dumps(prefix + "Your text here.")
    return "\n".join([
        f"# {manifest['method']} on {base} (peftsearch export, format: {fmt})",
        "",
        "```python",
        f"from transformers import {auto}, AutoTokenizer",
        *(["from peft import PeftModel"] if fmt == "peft" else []),
        *(["from trainables.model import load_seq2seq"] if fmt == "peft" and warm else []),
        *(["from trainables.export import load_model"] if fmt == "peftsearch" else []),
        "",
        'OUT = "."  # this folder',
        load,
        "tok = AutoTokenizer.from_pretrained(OUT)",
        "ids = tok([" + source + "], return_tensors='pt', return_token_type_ids=False)",
        "print(tok.batch_decode(model.eval().generate(**ids, max_new_tokens=64), "
        "skip_special_tokens=True))",
        "```",
        "",
        "Every format also loads with `trainables.export.load_model(OUT)`.",
        "",
    ])  # fmt: skip


def _hf_model(model: nn.Module) -> nn.Module:
    """The transformers model inside ``model`` (a peft wrapper's base model)."""
    from transformers import PreTrainedModel

    return next(m for m in model.modules() if isinstance(m, PreTrainedModel))


def _has_tuner(model: nn.Module) -> bool:
    """Whether peft wrapped or injected into ``model`` (a tuner placed in no layer did not)."""
    from peft import PeftModel

    return isinstance(model, PeftModel) or hasattr(model, "peft_config")


def _save_peft(model: nn.Module, out: Path, manifest: dict[str, Any], model_name: str) -> None:
    """Write a peft adapter directory that loads onto the original base model.

    Prompt methods already are ``PeftModel``s: saved as they are, unless the head trained
    in the base model, outside peft's ``modules_to_save`` (a seq2seq warm start's new
    cross-attention), which peft would not save: then, as for the rest, the head goes in
    as ``modules_to_save``. A tuner injected in place (LoRA,
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

    task = manifest.get("task", CLASSIFICATION)
    if isinstance(model, PeftModel):
        if _saves_its_head(model, task):
            model.save_pretrained(out, safe_serialization=True)
            return
        config = copy.deepcopy(model.peft_config["default"])
        config.modules_to_save, config.inference_mode = head_module_names(model.base_model), False
        wrapped = quiet_get_peft_model(load_pretrained(model_name, task, []), config)
        _copy_trained(model, wrapped, source="base_model.", target="base_model.")
        wrapped.save_pretrained(out, safe_serialization=True)
        return
    config = copy.deepcopy(model.peft_config["default"])  # what the injection recorded
    fresh = load_pretrained(model_name, task, manifest["label_names"])
    if task == SEQ2SEQ:  # the head is what loading left new (none for a pretrained seq2seq)
        config.task_type, config.modules_to_save = "SEQ_2_SEQ_LM", head_module_names(fresh) or None
    else:
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


def _saves_its_head(model: nn.Module, task: str) -> bool:
    """Whether peft's own save of the ``PeftModel`` holds every trained parameter: no seq2seq
    head trained in its base model outside ``modules_to_save``."""
    if task != SEQ2SEQ or model.peft_config["default"].modules_to_save:
        return True
    return not head_module_names(model.base_model)


def _copy_trained(
    model: nn.Module, wrapped: nn.Module, source: str = "", target: str = "base_model.model."
) -> None:
    """The trained parameters of ``model`` into peft's ``wrapped`` copy; the head modules
    (``modules_to_save``) whole, as peft saves them. ``source``: the prefix of the base
    model's parameters in ``model`` (none where the tuner was injected in place; a prompt
    method's ``PeftModel``: ``base_model.``), ``target``: theirs in ``wrapped``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    params = dict(wrapped.named_parameters(remove_duplicate=False))
    head = [f"{source}{h}" for h in wrapped.peft_config["default"].modules_to_save or []]
    inside = [
        n for n, m in model.named_modules()
        if isinstance(m, BaseTunerLayer) and any(n.startswith(f"{h}.") for h in head)
    ]  # fmt: skip
    if inside:  # peft keeps a head module whole, as trained: no adapter can sit inside it
        raise ValueError(
            f"a peft tuner sits inside the head, which trains in full ({inside[0]}, ...): a "
            "method must leave the head's modules untargeted"
        )
    with torch.no_grad():
        for name, p in model.named_parameters(remove_duplicate=False):
            module = next((h for h in head if name.startswith(f"{h}.")), None)
            if module is not None:  # the head trains as peft's modules_to_save copy
                rest, module = name[len(module) + 1 :], module[len(source) :]
                params[f"{target}{module}.modules_to_save.default.{rest}"].copy_(p)
            elif p.requires_grad:
                inner = name.startswith(source)  # else the tuner's own (a prompt encoder)
                params[f"{target}{name[len(source) :]}" if inner else name].copy_(p)


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
    fmt, task = manifest["format"], manifest.get("task", CLASSIFICATION)
    if fmt == "transformers":
        from transformers import AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

        auto = AutoModelForSeq2SeqLM if task == SEQ2SEQ else AutoModelForSequenceClassification
        return auto.from_pretrained(path).eval()
    base = load_pretrained(manifest["base_model"], task, manifest["label_names"])
    if fmt == "peft":
        from peft import PeftModel

        return PeftModel.from_pretrained(base, str(path)).eval()
    from safetensors.torch import load_file

    model = apply_method(base, manifest["method"], manifest["knobs"])
    model.load_state_dict(load_file(str(path / TRAINABLE_FILE)), strict=False)
    return model.eval()
