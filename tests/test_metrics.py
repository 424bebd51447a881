"""Task metrics: computed right, on the device without per-batch syncs, and one ranking metric
(``experiment.metric``) that everything follows - here a case where accuracy and MCC disagree
and every consumer takes MCC's choice; regression end to end."""

from __future__ import annotations

import json
import random

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml
from conftest import make_texts, tiny_space

from reports.figure_data import best_per_method, method_summary, pareto_front, rank
from search.confirm import choose
from search.export import pick_trial
from search.results import metric_values
from search.schedulers import ParetoASHA
from search.searcher import PeftOptunaSearch
from trainables import checkpoint
from trainables.data import DataError, DatasetSpec, prepare
from trainables.loop import evaluate
from trainables.metrics import (
    Tally,
    classification_scores,
    f1_macro,
    mcc,
    per_class,
    regression_score,
    task_loss,
)
from trainables.model import load_tokenizer
from trainables.trial import build_model

# --- the formulas -------------------------------------------------------------------------


def _confusion(y: np.ndarray, p: np.ndarray, k: int) -> np.ndarray:
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y, p), 1)
    return cm


@pytest.mark.parametrize("k,seed", [(2, 0), (3, 1), (5, 2)])
def test_classification_metrics_match_scikit_learn(k, seed):
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, 200)
    p = np.where(rng.random(200) < 0.6, y, rng.integers(0, k, 200))
    p[p == k - 1] = 0  # one label never predicted: zero division handled as scikit-learn does
    cm = _confusion(y, p, k)
    assert f1_macro(cm) == pytest.approx(metrics.f1_score(y, p, average="macro"))
    assert mcc(cm) == pytest.approx(metrics.matthews_corrcoef(y, p))
    scores = classification_scores(cm, "f1_micro", None)
    assert scores["val_f1_micro"] == pytest.approx(metrics.f1_score(y, p, average="micro"))
    assert scores["val_accuracy"] == pytest.approx(metrics.accuracy_score(y, p))
    prf = per_class(cm)
    sk = metrics.precision_recall_fscore_support(y, p, labels=range(k), zero_division=0)
    for i, name in enumerate(("precision", "recall", "f1", "support")):
        assert prf[name] == pytest.approx(list(sk[i]))
    if k == 2:
        for pos in (0, 1):
            got = classification_scores(cm, "f1", pos)["val_f1"]
            assert got == pytest.approx(metrics.f1_score(y, p, pos_label=pos))


def test_correlations_match_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    target = np.round(rng.random(300) * 5) / 5  # many ties
    pred = target + rng.normal(0, 0.3, 300)
    pred[:50] = 1.0
    assert regression_score(pred, target, "pearson") == pytest.approx(
        stats.pearsonr(pred, target)[0]
    )
    assert regression_score(pred, target, "spearman") == pytest.approx(
        stats.spearmanr(pred, target)[0]
    )
    assert regression_score(np.ones(5), np.arange(5.0), "pearson") == 0.0  # undefined: 0


def test_the_shared_loss_is_what_transformers_computes():
    logits = torch.randn(6, 3)
    labels = torch.tensor([0, 2, 1, 1, 0, 2])
    assert torch.allclose(task_loss(logits, labels), torch.nn.CrossEntropyLoss()(logits, labels))
    out, target = torch.randn(6, 1), torch.randn(6)
    assert torch.allclose(task_loss(out, target), torch.nn.MSELoss()(out.squeeze(), target))


def test_the_tally_accumulates_batches_into_one_confusion_matrix():
    tally = Tally(torch.device("cpu"))
    y = torch.tensor([0, 1, 2, 2, 1, 0, 0])
    logits = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 2, 1, 2, 0]), 3).float()
    for part in (slice(0, 3), slice(3, 7)):
        tally.add(torch.tensor(0.5), logits[part], y[part])
    out = tally.scores("mcc", details=True)
    assert out["confusion"] == _confusion(y.numpy(), logits.argmax(-1).numpy(), 3).tolist()
    assert out["val_accuracy"] == pytest.approx(5 / 7) and out["val_loss"] == pytest.approx(0.5)
    assert out["val_mcc"] == pytest.approx(mcc(np.asarray(out["confusion"])))


# --- evaluation reads the device once per evaluation, not once per batch --------------------


@pytest.fixture(scope="module")
def data(tiny_bert, topics_tsv):
    return prepare(DatasetSpec(path=str(topics_tsv)), load_tokenizer(str(tiny_bert)), 32)


@pytest.mark.parametrize("metric", ["mcc", "f1_macro", "accuracy"])
def test_evaluation_syncs_do_not_grow_with_batches(metric, tiny_bert, data, monkeypatch):
    syncs = {"n": 0}
    for name in ("item", "__bool__", "__float__", "__int__", "tolist", "cpu", "numpy"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            syncs["n"] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    model = build_model(str(tiny_bert), data, "lora", {}, seed=0)
    counts = []
    for batch in (2, 64):  # about 36 batches, then 2
        syncs["n"] = 0
        evaluate(model, data.splits["validation"], batch, 0, metric=metric)
        counts.append(syncs["n"])
    assert counts[0] == counts[1] <= 3, counts


# --- accuracy and MCC choose differently: everything follows the ranking metric -----------

# Imbalanced validation: the majority-class round has the best accuracy, the balanced one the
# best MCC. Two trials, four rounds each: (val_accuracy, val_mcc) per round.
ROUNDS = {
    "major": [(0.70, 0.10), (0.90, 0.00), (0.80, 0.30), (0.85, 0.20)],  # best acc, weak MCC
    "balanced": [(0.60, 0.20), (0.75, 0.50), (0.84, 0.60), (0.80, 0.55)],  # best MCC
}


def _trials(metric: str = "val_mcc") -> pd.DataFrame:
    rows = []
    for tid, rounds in ROUNDS.items():
        df = pd.DataFrame(rounds, columns=["val_accuracy", "val_mcc"]).assign(val_loss=0.5)
        rows.append(
            {
                "trial_id": tid,
                "method": "lora",
                "status": "TERMINATED",
                "trainable_params": 100,
                "trainable_fraction": 0.01,
                "stopped_early": False,
                "knobs_json": "{}",
                "config_json": json.dumps({"method": "lora"}),
                **metric_values(df, "val_mcc", "max"),
                "metric": metric,
                "metric_mode": "max",
            }
        )
    return pd.DataFrame(rows)


def test_the_parquet_values_are_each_metrics_own_best_round():
    t = _trials().set_index("trial_id")
    assert t.loc["major", "val_accuracy"] == 0.90 and t.loc["major", "val_mcc"] == 0.30
    assert t.loc["balanced", "val_mcc"] == 0.60 and t.loc["balanced", "val_mcc_last"] == 0.55


def test_reports_export_and_confirm_pick_the_best_mcc_trial_not_the_most_accurate():
    mcc_run, acc_run = _trials("val_mcc"), _trials("val_accuracy")
    assert pick_trial(acc_run, None)["trial_id"] == "major"  # what accuracy would pick
    assert pick_trial(mcc_run, None)["trial_id"] == "balanced"  # export --best
    assert rank(mcc_run)["trial_id"].tolist() == ["balanced", "major"]
    assert best_per_method(mcc_run)["trial_id"].tolist() == ["balanced"]
    assert pareto_front(mcc_run)["trial_id"].tolist() == ["balanced"]
    assert choose(mcc_run, top=1)["trial_id"].tolist() == ["balanced"]  # confirm --top 1
    assert method_summary(mcc_run)["best_val_mcc"].tolist() == [0.60]


def test_the_kept_checkpoint_is_the_best_mcc_round(tmp_path):
    dirs = []
    for step, (acc, m) in enumerate(ROUNDS["major"], 1):
        d = tmp_path / f"checkpoint_{step:06d}"
        d.mkdir()
        # What the trial reports is what the meta keeps: every val_* metric.
        checkpoint.save(d, {"trainable": {}}, {"step": step, "val_accuracy": acc, "val_mcc": m})
        dirs.append(d)
    assert checkpoint.best_of(dirs, "val_accuracy", "max").name == "checkpoint_000002"
    assert checkpoint.best_of(dirs, "val_mcc", "max").name == "checkpoint_000003"


def test_optuna_is_told_the_best_mcc_round():
    s = PeftOptunaSearch(
        space=lambda t: t.suggest_float("x", 0, 1) and None,
        metric="val_mcc",
        mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    s.suggest("a")
    rounds = ROUNDS["major"]
    for i, (acc, m) in enumerate(rounds, 1):
        s.on_trial_result("a", {"val_accuracy": acc, "val_mcc": m, "training_iteration": i,
                                "planned_iterations": 4})  # fmt: skip
    s.on_trial_complete("a", {"val_accuracy": rounds[-1][0], "val_mcc": rounds[-1][1],
                              "training_iteration": 4, "planned_iterations": 4})  # fmt: skip
    (t,) = s._ot_study.trials
    assert t.value == 0.30


def test_pareto_asha_cuts_by_mcc():
    """At the first rung the accurate trial has the worse MCC: ranked by MCC it is the one cut."""
    sched = ParetoASHA(metric="val_mcc", mode="max", cost=None, max_t=4)
    assert sched._decide("balanced", 1, (0.20, 0.0)) == "CONTINUE"
    assert sched._decide("major", 1, (0.10, 0.0)) == "STOP"  # 0.70 accuracy, but MCC 0.10


# --- end to end: a search with metric: mcc keeps, exports and confirms by MCC --------------


@pytest.fixture(scope="module")
def imbalanced_tsv(tmp_path_factory):
    """Two labels, 80 / 20: a majority-class model is accurate and has MCC 0."""
    rows = [(t, "sport" if label == "sport" else "other") for t, label in make_texts(300)]
    rows = [r for r in rows if r[1] == "other"] + [r for r in rows if r[1] == "sport"][:50]
    path = tmp_path_factory.mktemp("imb") / "imbalanced.tsv"
    path.write_text("text\tlabel\n" + "".join(f"{t}\t{label}\n" for t, label in rows))
    return path


@pytest.mark.slow
def test_a_mcc_search_keeps_exports_and_confirms_by_mcc(
    ray_local, tmp_path, tiny_bert, imbalanced_tsv
):
    import search
    from search.confirm import confirm
    from search.export import export_trial

    space = tiny_space(
        tiny_bert, imbalanced_tsv, tmp_path / "runs",
        methods={"lora": {"learning_rate": {"log": [1e-3, 1e-1]}},
                 "linear_probe": {"learning_rate": {"log": [1e-3, 1e-1]}}},
        search={"num_samples": 4, "searcher": "random"}, scheduler={"type": "none"},
    )  # fmt: skip
    space["experiment"]["metric"] = "mcc"
    space["train"]["evals_per_epoch"] = 3
    path = tmp_path / "mcc.yaml"
    path.write_text(yaml.safe_dump(space))
    res = search.run(path, quiet=True)
    t, curves = search.load_results(res.run_dir)
    assert (t["status"] == "TERMINATED").all(), t[["status", "error"]]
    assert (t["metric"] == "val_mcc").all() and "val_mcc" in curves
    disagree = 0
    for tid, g in curves.groupby("trial_id"):
        row = t.set_index("trial_id").loc[tid]
        assert row["val_mcc"] == g["val_mcc"].max() and row["val_mcc_last"] == g["val_mcc"].iloc[-1]
        assert row["val_accuracy"] == g["val_accuracy"].max()
        assert row["best_iteration"] == g.loc[g["val_mcc"].idxmax(), "iteration"]
        (ckpt,) = [c for d in res.run_dir.glob(f"*_{tid}_*") for c in d.glob("checkpoint_*")]
        meta = json.loads((ckpt / checkpoint.META_FILE).read_text())
        assert meta["val_mcc"] == pytest.approx(row["val_mcc"])  # the best MCC round is kept
        disagree += g["val_mcc"].idxmax() != g["val_accuracy"].idxmax()
    out = export_trial(res.run_dir, tmp_path / "export")
    exported = json.loads((out / "metrics.json").read_text())
    assert exported["trial_id"] == t.loc[t["val_mcc"].idxmax(), "trial_id"]
    df = confirm(res.run_dir, seeds=1, top=1, quiet=True)
    row = df.iloc[0]
    assert row["trial_id"] == exported["trial_id"] and row["metric"] == "val_mcc"
    assert row["test_step"] == max(json.loads(row["val_rounds_json"]), key=lambda r: r[1])[0]
    labels = json.loads(row["label_names"])
    assert len(json.loads(row["test_per_class_json"])["f1"]) == len(labels) == 2
    assert np.asarray(json.loads(row["test_confusion_json"])).sum() == row["n_test"]  # one seed
    page = (res.run_dir / "report.html").read_text()
    assert "validation mcc" in page and "true \\ predicted" in page


# --- regression end to end ---------------------------------------------------------------


@pytest.fixture(scope="module")
def scores_tsv(tmp_path_factory):
    """A target that is a non-integer number: the share of sport words, plus noise."""
    rng = random.Random(0)
    lines = ["text\tscore"]
    for text, _ in make_texts(300, seed=3):
        words = text.split()
        sport = sum(w in ("goal", "match", "team", "score", "player", "coach", "league", "win")
                    for w in words)  # fmt: skip
        lines.append(f"{text}\t{sport / len(words) * 5 + rng.random() * 0.1:.3f}")
    path = tmp_path_factory.mktemp("reg") / "scores.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_regression_data_is_detected_split_by_quantiles_and_scored(tiny_bert, scores_tsv):
    spec = DatasetSpec(path=str(scores_tsv), label="score")
    tok = load_tokenizer(str(tiny_bert))
    with pytest.raises(DataError) as err:  # the default metric, accuracy, does not fit
        prepare(spec, tok, 32)
    assert "'accuracy' does not fit a regression task" in str(err.value)
    data = prepare(spec, tok, 32, metric="spearman", validation=0.2, test=0.2)
    assert data.task == "regression" and data.num_labels == 1
    assert data.splits["train"].labels.dtype == np.float32
    # Quantile-stratified: each split's targets spread like the whole set's.
    means = [data.splits[s].labels.mean() for s in ("train", "validation", "test")]
    assert max(means) - min(means) < 0.1 * np.mean(means)
    model = build_model(str(tiny_bert), data, "lora", {}, seed=0)
    out = evaluate(model, data.splits["validation"], 16, 0, metric="spearman")
    assert set(out) == {"val_loss", "val_spearman"} and -1 <= out["val_spearman"] <= 1


@pytest.mark.slow
def test_a_regression_search_runs_end_to_end(ray_local, tmp_path, tiny_bert, scores_tsv):
    import search
    from search.confirm import confirm
    from search.export import export_trial

    space = tiny_space(
        tiny_bert, scores_tsv, tmp_path / "runs",
        methods={"lora": {"learning_rate": {"log": [1e-3, 1e-2]}},
                 "linear_probe": {"learning_rate": {"log": [1e-3, 1e-1]}}},
        search={"num_samples": 3, "searcher": "random"},
    )  # fmt: skip
    space["experiment"]["dataset"]["label"] = "score"
    space["experiment"].update(task="regression", metric="pearson")
    path = tmp_path / "reg.yaml"
    path.write_text(yaml.safe_dump(space))
    res = search.run(path, quiet=True)
    t, curves = search.load_results(res.run_dir)
    assert (t["status"] == "TERMINATED").all(), t[["status", "error"]]
    assert (t["metric"] == "val_pearson").all() and (t["task"] == "regression").all()
    assert t["val_accuracy"].isna().all() and t["val_pearson"].between(-1, 1).all()
    assert t.loc[t["method"] == "linear_probe", "feature_cache"].all()  # the cache works too
    best = curves.groupby("trial_id")["val_pearson"].max().sort_index()
    assert best.tolist() == t.set_index("trial_id")["val_pearson"].sort_index().tolist()
    out = export_trial(res.run_dir, tmp_path / "export")
    assert json.loads((out / "metrics.json").read_text())["trial_id"] == rank(t)["trial_id"].iloc[0]
    df = confirm(res.run_dir, seeds=1, top=1, quiet=True)
    assert (df["status"] == "ok").all(), df[["status", "error"]]
    assert df["test_metric"].between(-1, 1).all() and df["test_accuracy"].isna().all()
    assert "validation pearson" in (res.run_dir / "report.html").read_text()
