"""Export round trips: every method's export loads with standard tools and predicts the same."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch
from test_methods import first

from trainables.data import DatasetSpec, prepare
from trainables.export import MANIFEST, export, load_model, rebuild
from trainables.loop import TrainConfig, collate, train, trainable_state
from trainables.model import load_tokenizer
from trainables.trial import build_model

CASES = [
    ("full", {}, "transformers"),
    ("linear_probe", {}, "transformers"),  # on BERT: classifier on the frozen pooler
    ("head_only", {}, "transformers"),
    ("freeze", {"freeze_layers": 1}, "transformers"),
    ("bitfit", {}, "transformers"),
    ("lora", {"lora_rank": 2}, "peft"),
    ("lora", {"lora_rank": 2, "lora_targets": "all_linear"}, "peft"),
    ("ia3", {}, "peft"),
    ("prompt_tuning", {"prompt_length": 4}, "peft"),
    ("p_tuning", {"prompt_length": 4, "prompt_encoder_size": 8}, "peft"),
    ("adapter", {"adapter_size": 4, "adapter_variant": "houlsby"}, "peftsearch"),
    ("adapter", {"adapter_size": 4, "adapter_placement": "top"}, "peftsearch"),
    ("prefix", {"prefix_length": 4}, "peftsearch"),
    ("prefix", {"prefix_length": 4, "layers": "top_1"}, "peftsearch"),
    (
        "adapter",
        {"adapter_size": 4, "adapter_insertion": "parallel", "adapter_position": "both",
         "adapter_scaling": "learned", "layers": [1]},
        "peftsearch",
    ),
    ("mam", {"prefix_length": 4, "adapter_size": 4}, "peftsearch"),
    ("unipelt", {"lora_rank": 2, "prefix_length": 4, "adapter_size": 4}, "peftsearch"),
    # peft tuners in some layers: their target regex names those layers' projections only
    ("lora", {"lora_rank": 2, "layers": "top_1"}, "peft"),
    ("ia3", {"layers": "0b10"}, "peft"),
    # ... in none: nothing injected, the head alone, as trained parameters
    ("lora", {"lora_rank": 2, "layers": "0b00"}, "peftsearch"),
]  # fmt: skip


# LoRA's variants and peft's other tuners (the rest go through the same code as LoHa): a peft
# directory each, after a few training steps.
PEFT_TUNERS = [
    ("lora", {"lora_rank": 2, "lora_variant": "dora"}),
    ("lora", {"lora_rank": 2, "lora_variant": "rslora", "lora_init": "gaussian"}),
    # PiSSA and OLoRA rewrote the base weights: exported as plain LoRA of the original ones.
    ("lora", {"lora_rank": 2, "lora_init": "pissa"}),
    ("lora", {"lora_rank": 2, "lora_init": "olora", "lora_variant": "rslora"}),
    ("lora", {"lora_rank": 2, "lora_init": "pissa", "lora_variant": "dora"}),
    ("adalora", {"adalora_rank": 4}),
    ("vera", {"vera_rank": 16}),
    ("loha", {"loha_rank": 2}),
]


@pytest.fixture(scope="module")
def data(tiny_bert, topics_tsv):
    return prepare(DatasetSpec(path=str(topics_tsv)), load_tokenizer(str(tiny_bert)), 32)


def logits(model, data) -> torch.Tensor:
    batch = collate(data.splits["validation"], np.arange(24), 0, torch.device("cpu"))
    batch.pop("labels")
    with torch.no_grad():
        return model.eval()(**batch).logits


@pytest.mark.parametrize(
    "method,knobs,fmt", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_export_round_trip(method, knobs, fmt, tiny_bert, data, tmp_path):
    round_trip(method, knobs, fmt, tiny_bert, data, tmp_path, data.splits["train"])


@pytest.mark.parametrize(
    "method,knobs", PEFT_TUNERS, ids=[f"{c[0]}-{i}" for i, c in enumerate(PEFT_TUNERS)]
)
def test_peft_tuner_export_round_trip(method, knobs, tiny_bert, data, tmp_path):
    """Loads onto the original base model, PiSSA's and OLoRA's rewritten weights included."""
    round_trip(method, knobs, "peft", tiny_bert, data, tmp_path, first(data.splits["train"], 32))


def round_trip(method, knobs, fmt, tiny_bert, data, tmp_path, train_split) -> None:
    """Train, rebuild from the trainable state, export, load (ours and standard): same logits."""
    model = build_model(str(tiny_bert), data, method, knobs, seed=0)
    cfg = TrainConfig(learning_rate=1e-2, epochs=1, evals_per_epoch=1)
    train(model, train_split, data.splits["validation"], cfg, 0, lambda m, s: None)
    expected = logits(model, data)

    rebuilt = rebuild(str(tiny_bert), data.label_names, method, knobs, trainable_state(model))
    torch.testing.assert_close(logits(rebuilt, data), expected)

    manifest = {
        "base_model": str(tiny_bert),
        "method": method,
        "knobs": knobs,
        "label_names": data.label_names,
    }
    out = export(rebuilt, tmp_path / "out", manifest, str(tiny_bert))
    assert json.loads((out / MANIFEST).read_text())["format"] == fmt
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt"))  # safetensors only
    torch.testing.assert_close(logits(load_model(out), data), expected)

    # ... and with the standard tools, as a user would.
    from transformers import AutoModelForSequenceClassification

    if fmt == "transformers":
        std = AutoModelForSequenceClassification.from_pretrained(out)
        torch.testing.assert_close(logits(std, data), expected)
    elif fmt == "peft":
        from peft import PeftModel

        base = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=3)
        torch.testing.assert_close(
            logits(PeftModel.from_pretrained(base, str(out)), data), expected
        )


@pytest.mark.slow
def test_cli_exports_the_best_trial_of_a_run(tmp_path, ray_local, tiny_bert, topics_tsv):
    import yaml
    from conftest import tiny_space

    import search
    from search.export import best_checkpoint

    space = tiny_space(tiny_bert, topics_tsv, tmp_path / "runs", search={"num_samples": 3})
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(space))
    res = search.run(path)
    out = tmp_path / "best"
    run = subprocess.run(
        ["peftsearch", "export", str(res.run_dir), "--best", str(out)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    best = res.trials.loc[res.trials["val_accuracy"].idxmax()]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["trial_id"] == best["trial_id"]
    # The exported weights are those of the best evaluation, not the last one.
    assert metrics["checkpoint"]["val_accuracy"] == pytest.approx(best["val_accuracy"])
    assert json.loads((out / "trial_config.json").read_text())["method"] == best["method"]
    model = load_model(out)
    data = prepare(
        DatasetSpec(path=str(topics_tsv)),
        load_tokenizer(str(tiny_bert)),
        32,
        validation=0.2,
        test=0.2,
    )
    assert logits(model, data).shape == (24, 3)
    ckpt = best_checkpoint(res.run_dir, best["trial_id"], "val_accuracy", "max")
    state = torch.load(ckpt / "state.pt", weights_only=True)
    knobs = {k: v for k, v in json.loads((out / "trial_config.json").read_text()).items()}
    from trainables.trial import split_config

    method, knobs, _ = split_config(knobs)
    rebuilt = rebuild(str(tiny_bert), data.label_names, method, knobs, state["trainable"])
    torch.testing.assert_close(logits(model, data), logits(rebuilt, data))
    bad = subprocess.run(
        ["peftsearch", "export", str(res.run_dir), "--trial", "nope", str(out)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "no such trial" in bad.stderr


@pytest.mark.parametrize("arch", ["roberta", "distilbert", "deberta-v2", "modernbert"])
def test_linear_probe_exports_beyond_bert(arch, tiny_models, data, tmp_path):
    """linear_probe removes part of the native head: an in-house export that loads back."""
    path = str(tiny_models[arch])
    model = build_model(path, data, "linear_probe", {}, seed=0)
    cfg = TrainConfig(learning_rate=1e-2, epochs=1, evals_per_epoch=1)
    train(model, data.splits["train"], data.splits["validation"], cfg, 0, lambda m, s: None)
    expected = logits(model, data)
    rebuilt = rebuild(path, data.label_names, "linear_probe", {}, trainable_state(model))
    torch.testing.assert_close(logits(rebuilt, data), expected)
    manifest = {
        "base_model": path,
        "method": "linear_probe",
        "knobs": {},
        "label_names": data.label_names,
    }
    out = export(rebuilt, tmp_path / "out", manifest, path)
    assert json.loads((out / MANIFEST).read_text())["format"] == "peftsearch"
    torch.testing.assert_close(logits(load_model(out), data), expected)


def test_modernbert_lora_exports(tiny_models, data, tmp_path):
    """ModernBERT's encoder is called "model": parameter names start with "model."."""
    path = str(tiny_models["modernbert"])
    model = build_model(path, data, "lora", {"lora_rank": 2}, seed=0)
    train(
        model,
        data.splits["train"],
        data.splits["validation"],
        TrainConfig(learning_rate=1e-2),
        0,
        lambda m, s: None,
    )
    expected = logits(model, data)
    rebuilt = rebuild(path, data.label_names, "lora", {"lora_rank": 2}, trainable_state(model))
    torch.testing.assert_close(logits(rebuilt, data), expected)
    manifest = {
        "base_model": path,
        "method": "lora",
        "knobs": {"lora_rank": 2},
        "label_names": data.label_names,
    }
    torch.testing.assert_close(
        logits(load_model(export(rebuilt, tmp_path / "out", manifest, path)), data), expected
    )


def test_a_trial_trained_on_cached_features_rebuilds_to_the_same_model(tiny_bert, data):
    from trainables.features import FeatureHead, add_features, with_cached_features

    cached = with_cached_features(add_features(data, str(tiny_bert)))
    knobs = {"adapter_placement": "top", "adapter_size": 4}
    model = build_model(str(tiny_bert), data, "adapter", knobs, seed=0)
    head = FeatureHead(model)
    train(
        head,
        cached.splits["train"],
        cached.splits["validation"],
        TrainConfig(learning_rate=1e-2),
        0,
        lambda m, s: None,
    )
    rebuilt = rebuild(
        str(tiny_bert),
        data.label_names,
        "adapter",
        knobs,
        trainable_state(head),
        feature_cache=True,
    )
    torch.testing.assert_close(logits(rebuilt, data), logits(model, data))
