"""Data: built-in BBC News, local files, stratified seeded splits, one tokenization."""

from __future__ import annotations

import numpy as np
import pytest

from trainables.data import (
    DataError,
    DatasetSpec,
    TextTable,
    load_bbc_news,
    load_table,
    prepare,
    split_indices,
    stratified_order,
)
from trainables.model import load_tokenizer


def test_bbc_news_reads_all_articles_from_the_package_files():
    table = load_bbc_news()
    assert len(table.texts) == 2225
    assert table.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    assert np.bincount(table.labels).tolist() == [510, 386, 417, 511, 401]


def test_stratified_order_prefixes_keep_class_balance():
    labels = np.array([0] * 600 + [1] * 300 + [2] * 100)
    order = stratified_order(labels, seed=1)
    assert sorted(order.tolist()) == list(range(1000))
    counts = np.bincount(labels[order[:100]], minlength=3)
    assert abs(counts[0] - 60) <= 2 and abs(counts[1] - 30) <= 2 and abs(counts[2] - 10) <= 2


def test_split_is_fixed_by_seed_disjoint_and_caps_do_not_move_test():
    table = TextTable(
        texts=[str(i) for i in range(500)], labels=np.arange(500) % 5, label_names=list("abcde")
    )
    a = split_indices(table, 0.2, 0.2, seed=3)
    b = split_indices(table, 0.2, 0.2, seed=3, max_train=50)
    c = split_indices(table, 0.2, 0.2, seed=4)
    assert {k: len(v) for k, v in a.items()} == {"test": 100, "validation": 100, "train": 300}
    assert not set(a["train"]) & set(a["test"]) and not set(a["train"]) & set(a["validation"])
    assert np.array_equal(a["test"], b["test"]) and len(b["train"]) == 50
    assert set(b["train"]) <= set(a["train"])
    assert not np.array_equal(a["test"], c["test"])
    assert np.bincount(table.labels[b["train"]]).tolist() == [10] * 5


def test_local_pair_file_gets_segment_ids(tmp_path, tiny_bert):
    path = tmp_path / "pairs.csv"
    path.write_text(
        "premise,hypothesis,label\n"
        + "".join(f"goal team,match {i},{'yes' if i % 2 else 'no'}\n" for i in range(40))
    )
    spec = DatasetSpec(path=str(path), text="premise", text_pair="hypothesis")
    data = prepare(spec, load_tokenizer(str(tiny_bert)), 16, validation=0.25, test=0.25)
    assert data.label_names == ["no", "yes"]
    enc = data.splits["train"]
    assert enc.token_type_ids is not None and max(enc.token_type_ids[0]) == 1
    assert data.meta["n_train"] + data.meta["n_validation"] + data.meta["n_test"] == 40


def test_missing_column_and_file_are_named(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("sentence\tlabel\nhi\t1\n")
    with pytest.raises(DataError, match=r"\['text'\] not found.*dataset.text") as err:
        load_table(DatasetSpec(path=str(path)))
    assert err.value.key == "experiment.dataset.text"
    with pytest.raises(DataError, match="no such file") as err:
        load_table(DatasetSpec(path=str(tmp_path / "nope.csv")))
    assert err.value.key == "experiment.dataset.path"


def test_a_header_less_file_takes_column_names(tmp_path):
    path = tmp_path / "agnews.tsv"
    path.write_text("goal match\tSports\nchip code\tSci/Tech\n")
    table = load_table(DatasetSpec(path=str(path), columns=["text", "label"]))
    assert table.texts == ["goal match", "chip code"]
    assert table.label_names == ["Sci/Tech", "Sports"] and table.labels.tolist() == [1, 0]


def test_one_file_per_split_keeps_the_given_splits(tmp_path):
    rows = lambda n, k: "text\tlabel\n" + "".join(f"w{i} {k}\t{'ab'[i % 2]}\n" for i in range(n))  # noqa: E731
    (tmp_path / "train.tsv").write_text(rows(30, "tr"))
    (tmp_path / "dev.tsv").write_text(rows(8, "dev"))
    spec = DatasetSpec(
        files={"train": str(tmp_path / "train.tsv"), "test": str(tmp_path / "dev.tsv")}
    )
    table = load_table(spec)
    idx = split_indices(table, validation=0.2, test=0.5, seed=0)
    # test is the given file, untouched by the fractions; validation is carved from train
    assert sorted(table.texts[i] for i in idx["test"]) == sorted(f"w{i} dev" for i in range(8))
    assert len(idx["validation"]) == 6 and len(idx["train"]) == 24
    assert all(table.texts[i].endswith("tr") for i in idx["validation"])


def test_unseen_validation_label_is_an_error(tmp_path, tiny_bert):
    path = tmp_path / "d.tsv"
    # label "rare" has one example: it lands in one split only
    path.write_text(
        "text\tlabel\n" + "".join(f"goal {i}\tsport\n" for i in range(30)) + "chip\trare\n"
    )
    spec = DatasetSpec(path=str(path))
    table = load_table(spec)
    rare = table.label_names.index("rare")
    # the first seed that puts the one "rare" example into validation
    seed = next(
        s
        for s in range(50)
        if rare in table.labels[split_indices(table, 0.5, 0.0, s)["validation"]]
    )
    with pytest.raises(ValueError, match=r"\['rare'\] never occur in the training split"):
        prepare(spec, load_tokenizer(str(tiny_bert)), 16, validation=0.5, test=0.0, seed=seed)


def test_eval_cap_is_for_validation_and_test_cap_for_test():
    table = TextTable(
        texts=[str(i) for i in range(500)], labels=np.arange(500) % 5, label_names=list("abcde")
    )
    full = split_indices(table, 0.2, 0.2, seed=3)
    val_only = split_indices(table, 0.2, 0.2, seed=3, max_eval=20)
    assert len(val_only["validation"]) == 20 and np.array_equal(val_only["test"], full["test"])
    test_only = split_indices(table, 0.2, 0.2, seed=3, max_test=30)
    assert len(test_only["test"]) == 30 and set(test_only["test"]) <= set(full["test"])
    assert np.array_equal(test_only["validation"], full["validation"])
    assert np.bincount(table.labels[test_only["test"]]).tolist() == [6] * 5


def test_max_test_samples_reaches_the_test_split(tmp_path, tiny_bert, topics_tsv):
    from conftest import tiny_space

    from search.preflight import prepare_data
    from search.space import validate

    raw = tiny_space(tiny_bert, topics_tsv, tmp_path / "runs")
    raw["experiment"].update(max_eval_samples=12, max_test_samples=30)
    data = prepare_data(validate(raw), progress=False)
    # 480 rows, 20% each: validation capped at 12, test at 30, train untouched
    assert {k: len(v) for k, v in data.splits.items()} == {
        "train": 288,
        "validation": 12,
        "test": 30,
    }
    assert validate(tiny_space(tiny_bert, topics_tsv, tmp_path)).experiment.max_test_samples is None


def test_empty_rows_are_an_error_unless_drop_invalid_drops_and_counts_them(tmp_path):
    path = tmp_path / "d.tsv"
    rows = "".join(f"goal {i}\tsport\nchip {i}\ttech\n" for i in range(10))
    path.write_text("text\tlabel\n" + rows + "soup\t\n \tsport\nbread\t  \n")
    with pytest.raises(DataError, match="column 'text' is empty in 1 of 23 rows") as err:
        load_table(DatasetSpec(path=str(path)))
    assert err.value.key == "experiment.dataset.text"
    table = load_table(DatasetSpec(path=str(path), drop_invalid=True))
    assert len(table.texts) == 20 and table.label_names == ["sport", "tech"]
    assert table.dropped_rows == 3 and table.dropped == {"text": 1, "label": 2}


def test_drop_invalid_works_per_given_split_and_is_recorded(tmp_path, tiny_bert):
    rows = "text\tlabel\n" + "".join(f"goal {i}\tsport\nchip {i}\ttech\n" for i in range(10))
    (tmp_path / "train.tsv").write_text(rows + "\tsport\n")
    (tmp_path / "dev.tsv").write_text(rows + "soup\t\n")
    files = {"train": str(tmp_path / "train.tsv"), "validation": str(tmp_path / "dev.tsv")}
    with pytest.raises(DataError, match=r"train.tsv: column 'text' is empty in 1 of 21 rows"):
        load_table(DatasetSpec(files=files))
    spec = DatasetSpec(files=files, drop_invalid=True)
    data = prepare(spec, load_tokenizer(str(tiny_bert)), 16)
    assert data.meta["n_train"] == 20 and data.meta["n_validation"] == 20
    assert data.meta["dropped_rows"] == 2
    assert data.meta["dropped_empty"] == {"text": 1, "label": 1}


def test_a_training_split_with_one_class_is_an_error(tmp_path, tiny_bert):
    (tmp_path / "train.tsv").write_text("text\tlabel\n" + "goal\tsport\n" * 10)
    (tmp_path / "dev.tsv").write_text("text\tlabel\ngoal\tsport\n")
    (tmp_path / "test.tsv").write_text("text\tlabel\ngoal\tsport\nchip\ttech\n")
    files = {split: str(tmp_path / f"{split}.tsv") for split in ("train", "test")}
    files["validation"] = str(tmp_path / "dev.tsv")
    with pytest.raises(DataError, match=r"training split has one class \('sport'\) in all 10"):
        prepare(DatasetSpec(files=files), load_tokenizer(str(tiny_bert)), 16)


def test_the_file_encoding_is_a_key(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes("text,label\ncafé,food\ngoal,sport\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"d.csv: not utf-8 text.*encoding: latin-1") as err:
        load_table(DatasetSpec(path=str(path)))
    assert err.value.key == "experiment.dataset.encoding"
    table = load_table(DatasetSpec(path=str(path), encoding="latin-1"))
    assert table.texts == ["café", "goal"]
    json_path = tmp_path / "d.jsonl"
    json_path.write_bytes(
        '{"text": "crème", "label": "a"}\n{"text": "x", "label": "b"}\n'.encode("cp1252")
    )
    assert load_table(DatasetSpec(path=str(json_path), encoding="cp1252")).texts[0] == "crème"


def test_the_task_follows_the_label_column_unless_given(tmp_path):
    from trainables.data import detect_task, load_table, split_indices

    assert detect_task([0.0, 1.0, 1.0]) == "classification"  # 0.0/1.0 stays classification
    assert detect_task([1, 2, 3]) == detect_task(["a", "b"]) == "classification"
    assert detect_task([0.5, 1, "2.25"]) == "regression"
    assert detect_task([0.5, "n/a"]) == "classification"  # not all numbers: classes
    assert detect_task([0.5, 1.5], "classification") == "classification"
    path = tmp_path / "scores.tsv"
    path.write_text("text\tlabel\n" + "".join(f"t {i}\t{i / 3:.2f}\n" for i in range(90)))
    table = load_table(DatasetSpec(path=str(path)))
    assert table.task == "regression" and table.label_names == ["label"]
    # Stratified by quantile bins: a capped training split spans the whole range.
    idx = split_indices(table, 0.2, 0.2, seed=0, max_train=10)
    capped = np.sort(table.labels[idx["train"]])
    assert capped[0] < 3 and capped[-1] > 26 and len(capped) == 10
    assert load_table(DatasetSpec(path=str(path)), task="classification").task == "classification"
