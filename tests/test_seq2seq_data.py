"""Sequence-to-sequence data: source/target tables from every source, tokenized once with
targets as each tokenizer family makes them, generation metrics, and bad input refused before
Ray (exit 2, nothing written)."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import yaml
from conftest import FILLER, TOPICS, vocab
from test_cli import refused_before_ray, run_cli

from search.space import SCHEMA, Eval, SpaceError, _Loader, validate
from trainables.data import (
    DataError,
    DatasetSpec,
    Seq2Seq,
    bbc_news_dir,
    encode_seq2seq,
    load_table,
    prepare,
    split_indices,
    strips_start,
)
from trainables.metrics import generation_scores, task_problems
from trainables.model import load_tokenizer

WORDS = sorted({w for ws in TOPICS.values() for w in ws} | set(FILLER))


def pairs(n: int) -> list[tuple[str, str]]:
    """Sources of topic words and filler; each target: the source's first three words."""
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(n):
        words = list(rng.choice(WORDS, size=8))
        rows.append((" ".join(words), " ".join(words[:3])))
    return rows


def write_csv(path, rows, header=("document", "summary")) -> str:
    import pandas as pd

    pd.DataFrame(rows, columns=list(header)).to_csv(path, index=False)
    return str(path)


# --- loading --------------------------------------------------------------------------------


def test_csv_and_jsonl_give_sources_and_targets(tmp_path):
    rows = pairs(30)
    csv = write_csv(tmp_path / "d.csv", rows)
    table = load_table(DatasetSpec(path=csv, source="document", target="summary"), "seq2seq")
    assert table.task == "seq2seq" and table.label_names == []
    assert list(zip(table.texts, table.targets)) == rows
    assert table.labels.tolist() == [0] * 30
    # JSON lines, with the target a field of a column of mappings (as Hub translation sets are)
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(
        "".join(json.dumps({"translation": {"en": s, "xx": t}}) + "\n" for s, t in rows)
    )
    spec = DatasetSpec(path=str(jsonl), source="translation.en", target="translation.xx")
    table = load_table(spec, "seq2seq")
    assert list(zip(table.texts, table.targets)) == rows


def test_one_file_per_split_keeps_its_splits(tmp_path):
    rows = pairs(40)
    files = {
        "train": write_csv(tmp_path / "train.csv", rows[:30]),
        "validation": write_csv(tmp_path / "dev.csv", rows[30:36]),
        "test": write_csv(tmp_path / "test.csv", rows[36:]),
    }
    spec = DatasetSpec(files=files, source="document", target="summary")
    table = load_table(spec, "seq2seq")
    idx = split_indices(table, 0.2, 0.2, seed=0)
    assert {k: len(v) for k, v in idx.items()} == {"train": 30, "validation": 6, "test": 4}
    assert [table.targets[i] for i in idx["validation"]] == [t for _, t in rows[30:36]]


def test_bbc_news_body_is_the_article_without_its_title_line():
    table = load_table(DatasetSpec(name="bbc_news"), "seq2seq")
    assert len(table.texts) == 2225 and len(table.targets) == 2225
    first = sorted((bbc_news_dir() / "business").glob("*.txt"))[0].read_text(encoding="utf-8")
    title = first.split("\n")[0].strip()
    assert table.targets[0] == title == "Ad sales boost Time Warner profit"
    assert table.texts[0].startswith("Quarterly profits at US media giant TimeWarner")
    assert title not in table.texts[0]
    assert all(t and b and not b.startswith(t) for t, b in zip(table.targets, table.texts))
    # the other way round is a choice of columns
    swapped = load_table(DatasetSpec(name="bbc_news", source="title", target="body"), "seq2seq")
    assert swapped.texts[0] == title


@pytest.mark.parametrize("key", ["source", "target"])
def test_a_missing_column_names_its_key(tmp_path, key):
    csv = write_csv(tmp_path / "d.csv", pairs(10))
    cols = {"source": "document", "target": "summary", key: "nope"}
    with pytest.raises(DataError, match=r"column\(s\) \['nope'\] not found") as err:
        load_table(DatasetSpec(path=csv, **cols), "seq2seq")
    assert err.value.key == f"experiment.dataset.{key}"
    assert "document" in str(err.value) and "dataset.source / dataset.target" in str(err.value)


def test_an_empty_target_is_an_error_unless_drop_invalid(tmp_path):
    rows = pairs(20)
    rows[4] = (rows[4][0], "  ")
    rows[9] = (rows[9][0], "")
    csv = write_csv(tmp_path / "d.csv", rows)
    spec = DatasetSpec(path=csv, source="document", target="summary")
    with pytest.raises(DataError, match="column 'summary' is empty in 2 of 20 rows") as err:
        load_table(spec, "seq2seq")
    assert err.value.key == "experiment.dataset.target"
    spec.drop_invalid = True
    table = load_table(spec, "seq2seq")
    assert len(table.texts) == 18 and table.dropped == {"summary": 2} and table.dropped_rows == 2


def test_splits_are_seeded_random_and_capped(tmp_path):
    csv = write_csv(tmp_path / "d.csv", pairs(100))
    table = load_table(DatasetSpec(path=csv, source="document", target="summary"), "seq2seq")
    a = split_indices(table, 0.2, 0.1, seed=1)
    assert split_indices(table, 0.2, 0.1, seed=1)["train"].tolist() == a["train"].tolist()
    assert split_indices(table, 0.2, 0.1, seed=2)["train"].tolist() != a["train"].tolist()
    assert {k: len(v) for k, v in a.items()} == {"test": 10, "validation": 20, "train": 70}
    assert sorted(np.concatenate(list(a.values())).tolist()) == list(range(100))
    capped = split_indices(table, 0.2, 0.1, seed=1, max_train=15, max_eval=5)
    assert len(capped["train"]) == 15 and set(capped["train"]) <= set(a["train"])
    assert len(capped["validation"]) == 5 and capped["test"].tolist() == a["test"].tolist()


# --- tokenization ---------------------------------------------------------------------------


def t5_like():
    """A T5-style tokenizer (Unigram; eos </s>, no bos, no cls), built offline."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(f"\u2581{w}", -1.0) for w in WORDS] + [
        (c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz:\u2581"
    ]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def bart_like():
    """A BART-style tokenizer (byte-level BPE; <s> is bos and cls), built offline."""
    from transformers import BartTokenizer

    chars = list("abcdefghijklmnopqrstuvwxyz:") + ["\u0120"]
    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>", *chars])}
    return BartTokenizer(vocab=vocab, merges=[])


def table_of(rows):
    from trainables.data import TextTable

    return TextTable(
        texts=[s for s, _ in rows],
        labels=np.zeros(len(rows), np.int64),
        label_names=[],
        task="seq2seq",
        targets=[t for _, t in rows],
    )


def test_bert_targets_lose_their_cls_and_end_in_sep():
    tok = load_tokenizer("minilm")
    assert strips_start(tok)
    rows = [("the goal of the match was a win", "goal of the match"), ("chip code", "chip")]
    enc = encode_seq2seq(table_of(rows), np.arange(2), tok, (6, 4), prefix="summarize: ")
    plain = tok(text_target=["goal of the match", "chip"])["input_ids"]
    assert plain[1][0] == tok.cls_token_id  # what the tokenizer gives: [CLS] chip [SEP]
    assert enc.targets[1].tolist() == plain[1][1:]
    # truncated to 4 with [CLS] and [SEP] kept by the tokenizer, then [CLS] stripped: 3 tokens
    assert enc.targets[0].tolist() == [*plain[0][1:3], tok.sep_token_id]
    # the prefix is tokenized in front of the source, within max_source_length; raw texts kept
    first = tok("summarize: the goal", truncation=True, max_length=6)["input_ids"]
    assert enc.input_ids[0].tolist() == first and len(first) == 6
    assert enc.sources == [s for s, _ in rows] and enc.references == [t for _, t in rows]
    assert enc.labels.tolist() == [0, 0] and enc.token_type_ids is None


def test_t5_targets_are_ids_then_eos():
    tok = t5_like()
    assert not strips_start(tok)
    enc = encode_seq2seq(
        table_of([("the goal of the match", "the goal")]), np.arange(1), tok, (16, 8)
    )
    ids = enc.targets[0].tolist()
    assert ids == tok(text_target=["the goal"])["input_ids"][0]
    assert ids[-1] == tok.eos_token_id and len(ids) == 3  # ▁the ▁goal </s>


def test_bart_targets_keep_their_leading_bos():
    tok = bart_like()
    assert not strips_start(tok)  # <s> is bos: BART's labels keep it
    enc = encode_seq2seq(table_of([("the goal", "goal")]), np.arange(1), tok, (16, 8))
    ids = enc.targets[0].tolist()
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) == 6
    # a warm-started decoder that starts from <s> (strip_start True) loses it
    enc = encode_seq2seq(
        table_of([("the goal", "goal")]), np.arange(1), tok, (16, 8), strip_start=True
    )
    assert enc.targets[0].tolist() == ids[1:]


def test_prepare_tokenizes_once_and_records_the_settings(tmp_path):
    csv = write_csv(tmp_path / "d.csv", pairs(50))
    spec = DatasetSpec(path=csv, source="document", target="summary")
    tok = load_tokenizer("minilm")
    settings = Seq2Seq("summarize: ", 12, 5)
    data = prepare(spec, tok, 128, seed=0, task="seq2seq", metric="rougeL", seq2seq=settings,
                   num_beams=3, max_new_tokens=7, max_samples=4, max_train=20)  # fmt: skip
    assert data.task == "seq2seq" and data.label_names == [] and data.num_labels == 0
    assert (data.scoring.metric, data.scoring.num_beams) == ("rougeL", 3)
    assert (data.scoring.max_new_tokens, data.scoring.max_samples) == (7, 4)
    meta = data.meta
    assert (meta["max_source_length"], meta["max_target_length"]) == (12, 5)
    assert meta["pad_token_id"] == tok.pad_token_id and meta["n_train"] == 20
    train = data.splits["train"]
    assert max(len(x) for x in train.input_ids) <= 12 and max(len(x) for x in train.targets) <= 4
    assert all(x[-1] == tok.sep_token_id and x[0] != tok.cls_token_id for x in train.targets)
    assert len(train.sources) == len(train.references) == len(train) == 20

    def digest(**change):
        kwargs = {"task": "seq2seq", "metric": "rougeL", "seq2seq": settings}
        return prepare(spec, tok, 128, **{**kwargs, **change}).meta["fingerprint"]["digest"]

    base = digest()
    assert digest(metric="bleu") == base  # how it is scored is not the data
    assert digest(seq2seq=Seq2Seq("translate: ", 12, 5)) != base
    assert digest(seq2seq=Seq2Seq("summarize: ", 13, 5)) != base
    assert digest(seq2seq=Seq2Seq("summarize: ", 12, 6)) != base
    other = write_csv(tmp_path / "e.csv", pairs(50), header=("summary", "document"))
    swapped = DatasetSpec(path=other, source="summary", target="document")
    assert prepare(swapped, tok, 128, task="seq2seq", metric="rougeL",
                   seq2seq=settings).meta["fingerprint"]["seq2seq"]["source"] == "summary"  # fmt: skip


def test_a_classification_fingerprint_has_no_seq2seq_part(tmp_path, topics_tsv):
    data = prepare(DatasetSpec(path=str(topics_tsv)), load_tokenizer("minilm"), 16)
    assert "seq2seq" not in data.meta["fingerprint"] and "source" not in data.meta
    assert data.splits["train"].targets is None and data.scoring.num_beams == 1


# --- metrics --------------------------------------------------------------------------------


def test_generation_scores_by_hand():
    # the cat sat / the cat ran: 2 of 3 unigrams, 1 of 2 bigrams, an LCS of 2
    s = generation_scores(["the cat sat"], ["the cat ran"])
    assert s["val_rouge1"] == pytest.approx(200 / 3)
    assert s["val_rouge2"] == pytest.approx(50.0)
    assert s["val_rougeL"] == pytest.approx(200 / 3)
    same = generation_scores(["the cat sat on the mat"] * 2, ["the cat sat on the mat"] * 2)
    assert all(v == pytest.approx(100.0) for v in same.values()), same
    assert set(same) == {
        f"val_{m}" for m in ("rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "chrf")
    }
    # the stemmer: cats ~ cat, running ~ run
    assert generation_scores(["cats running"], ["cat run"])["val_rouge1"] == pytest.approx(100.0)
    # ROUGE-Lsum: an LCS per reference sentence (newline-split); ROUGE-L: one over the text
    swap = generation_scores(["c d\na b"], ["a b\nc d"])
    assert swap["val_rougeLsum"] == pytest.approx(100.0) and swap["val_rougeL"] == pytest.approx(
        50.0
    )
    # averaged over examples: one perfect, one empty prediction
    mixed = generation_scores(["the cat", ""], ["the cat", "a dog"])
    assert mixed["val_rouge1"] == pytest.approx(50.0)


def test_empty_predictions_score_zero():
    empty = generation_scores(["", " "], ["the cat", "a dog"])
    assert all(v == 0.0 for v in empty.values()), empty
    assert all(v == 0.0 for v in generation_scores([], []).values())
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        generation_scores(["a", "b"], ["a"])


def test_metrics_and_tasks_must_fit():
    ((key, msg),) = task_problems("rougeL", "classification")
    assert key == "experiment.metric" and "experiment.task: seq2seq" in msg
    ((key, msg),) = task_problems("accuracy", "seq2seq")
    assert "'rougeL'" in msg and "'bleu'" in msg and "'loss'" in msg
    assert task_problems("loss", "seq2seq") == [] and task_problems("chrf", "seq2seq") == []


# --- the space ------------------------------------------------------------------------------

BASE = {"methods": {"full": {}}}


def seq2seq_space(**experiment) -> dict:
    return {"experiment": {"task": "seq2seq", **experiment}, **BASE}


def problems(raw: dict) -> list[tuple[str, str]]:
    with pytest.raises(SpaceError) as err:
        validate(raw)
    return err.value.problems


def test_the_schema_shows_the_eval_defaults():
    shown = yaml.load(SCHEMA.split("\n\nA distribution")[0], Loader=_Loader)
    assert shown["eval"] == asdict(Eval())
    assert shown["experiment"]["dataset"]["source"] is None


def test_seq2seq_defaults_and_settings():
    space = validate(seq2seq_space())
    assert space.metric == "val_rougeL" and space.dataset.seq2seq_columns() == ("body", "title")
    assert (space.experiment.max_source_length, space.experiment.max_target_length) == (256, 64)
    space = validate({**seq2seq_space(metric="bleu", source_prefix="translate: "),
                      "eval": {"num_beams": 4, "max_samples": 10}})  # fmt: skip
    assert space.metric == "val_bleu" and space.eval == Eval(4, 64, 10)
    assert space.experiment.seq2seq == Seq2Seq("translate: ", 256, 64)


def test_every_seq2seq_problem_is_reported_at_once():
    raw = seq2seq_space(dataset={"path": "x.csv"}, max_source_length=0, max_target_length="64",
                        metric="accuracy")  # fmt: skip
    raw["eval"] = {"num_beams": 0, "max_new_tokens": 0, "max_samples": 0}
    keys = [k for k, _ in problems(raw)]
    for key in ("experiment.dataset.source", "experiment.dataset.target",
                "experiment.max_source_length", "experiment.max_target_length",
                "experiment.metric", "eval.num_beams", "eval.max_new_tokens", "eval.max_samples"):  # fmt: skip
        assert key in keys, (key, keys)


def test_seq2seq_settings_on_another_task_are_refused():
    found = dict(problems({"experiment": {"source_prefix": "x: ", "dataset": {"source": "a"},
                                          "max_target_length": 8}, "eval": {"num_beams": 2},
                           **BASE}))  # fmt: skip
    for key in ("experiment.source_prefix", "experiment.dataset.source",
                "experiment.max_target_length", "eval.num_beams"):  # fmt: skip
        assert key in found and "seq2seq" in found[key], (key, found)
    ((key, msg),) = problems({"experiment": {"metric": "rougeL"}, **BASE})
    assert key == "experiment.metric" and "experiment.task: seq2seq" in msg


# --- bad input through the command line: exit 2 before Ray, nothing written ------------------


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A tiny decoder-only (GPT-2) model's config and a tokenizer."""
    from transformers import BertTokenizerFast, GPT2Config

    out = tmp_path_factory.mktemp("gpt2")
    GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=64).save_pretrained(out)
    BertTokenizerFast(vocab=vocab()).save_pretrained(out)
    return out


def cli_space(tmp_path, model, rows, **experiment) -> dict:
    csv = write_csv(tmp_path / "d.csv", rows)
    return {
        "experiment": {
            "model": str(model),
            "task": "seq2seq",
            "dataset": {"path": csv, "source": "document", "target": "summary"},
            "max_source_length": 16,
            "max_target_length": 8,
            **experiment,
        },
        "eval": {"max_new_tokens": 8},
        "train": {"epochs": 1, "evals_per_epoch": 1},
        "methods": {"full": {}},
        "search": {"num_samples": 1},
        "storage": str(tmp_path / "runs"),
    }


def _empty_target(space, tmp_path):
    rows = pairs(30)
    rows[7] = (rows[7][0], "")
    space["experiment"]["dataset"]["path"] = write_csv(tmp_path / "d.csv", rows)


def _set(key, value):
    def change(space, tmp_path):
        node = space
        *parents, last = key.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = value

    return change


def _classification(space, tmp_path):
    """The space as a classification task on a label column, ranked by a seq2seq metric."""
    (tmp_path / "c.tsv").write_text("text\tlabel\n" + "goal\tsport\nchip\ttech\n" * 20)
    space["experiment"].update(task="classification", metric="rougeL", max_length=16,
                               dataset={"path": str(tmp_path / "c.tsv")})  # fmt: skip
    for key in ("max_source_length", "max_target_length"):
        space["experiment"].pop(key)
    space.pop("eval")


def _eval_on_classification(space, tmp_path):
    """A classification space with a seq2seq-only eval section."""
    _classification(space, tmp_path)
    space["experiment"].pop("metric")
    space["eval"] = {"num_beams": 2}


def _nothing(space, tmp_path):
    pass


# (case, model, change, what the message must name); model: a tiny_models key or gpt2
CLI_BAD = [
    ("seq2seq metric on classification", "bert", _classification,
     "experiment.metric: 'rougeL' does not fit a classification task"),
    ("classification metric on seq2seq", "bert", _set("experiment.metric", "accuracy"),
     "experiment.metric: 'accuracy' does not fit a seq2seq task"),
    ("decoder-only model", "gpt2", _nothing, ("experiment.model: ", "is decoder-only")),
    ("encoder that cannot be a decoder", "distilbert", _nothing,
     ("experiment.model: ", "cannot run as a decoder")),
    ("missing source column", "bert", _set("experiment.dataset.source", "article"),
     ("experiment.dataset.source: ", "column(s) ['article'] not found")),
    ("missing target column", "bert", _set("experiment.dataset.target", "headline"),
     ("experiment.dataset.target: ", "column(s) ['headline'] not found")),
    ("empty target", "bert", _empty_target,
     ("experiment.dataset.target: ", "column 'summary' is empty in 1 of 30 rows")),
    ("max_new_tokens 0", "bert", _set("eval.max_new_tokens", 0),
     "eval.max_new_tokens: must be an integer >= 1"),
    ("num_beams 0", "bert", _set("eval.num_beams", 0), "eval.num_beams: must be an integer >= 1"),
    ("eval on a classification task", "bert", _eval_on_classification,
     "eval.num_beams: generation settings apply to experiment.task: seq2seq only"),
    ("target beyond the positions", "bert", _set("experiment.max_target_length", 100),
     "experiment.max_target_length: 100 tokens, but the model has 64 positions"),
]  # fmt: skip


@pytest.mark.parametrize("case,model,change,expect", CLI_BAD, ids=[c[0] for c in CLI_BAD])
def test_bad_seq2seq_input_exits_2_and_writes_nothing(
    case, model, change, expect, tmp_path, tiny_models, gpt2_dir
):
    space = cli_space(tmp_path, gpt2_dir if model == "gpt2" else tiny_models[model], pairs(30))
    change(space, tmp_path)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(space))
    refused_before_ray(path, tmp_path, expect)


def test_a_good_seq2seq_space_validates(tmp_path, tiny_bert):
    """The same space, unbroken, passes: the cases above fail for the reason they name."""
    path = tmp_path / "good.yaml"
    path.write_text(yaml.safe_dump(cli_space(tmp_path, tiny_bert, pairs(30))))
    out = run_cli(["validate", str(path)], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "good.yaml: ok" in out.stdout and "val_rougeL" in out.stdout


def test_a_layer_mask_on_an_encoder_decoder_has_a_bit_per_layer_of_each_stack(tmp_path):
    """check_fit gives a seq2seq mask the depth of a stack (BART 3 + 3 layers: 3 bits, not 6),
    and refuses a mask where the stacks differ in depth, naming the key."""
    from transformers import BartConfig

    from search.preflight import check_fit
    from search.space import SpaceError, validate

    (tmp_path / "pairs.csv").write_text("s,t\na b c,a\n")

    def space(decoder_layers: int):
        folder = tmp_path / f"bart{decoder_layers}"
        BartConfig(
            vocab_size=50, d_model=16, encoder_layers=3, decoder_layers=decoder_layers,
            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
            decoder_ffn_dim=32, max_position_embeddings=512,
        ).save_pretrained(folder)  # fmt: skip
        raw = {
            "experiment": {"model": str(folder), "task": "seq2seq",
                           "dataset": {"path": str(tmp_path / "pairs.csv"), "source": "s",
                                       "target": "t"}},
            "methods": {"lora": {"layers": {"mask": True}}},
        }  # fmt: skip
        return validate(raw, "mask.yaml")

    same = space(3)
    check_fit(same)
    assert same.methods["lora"]["layers"].value == 3
    with pytest.raises(SpaceError, match="differ in depth") as e:
        check_fit(space(2))
    assert "methods.lora.layers" in str(e.value)
