"""One ranking value: the best round of the run's metric (experiment.metric), in its mode,
everywhere.

Optuna, trials.parquet, the Pareto front, export, the end-of-run checkpoint
pruning and confirm all rank a trial by the same number; a trial with fewer
steps than evaluation rounds plans only the rounds it runs.
"""

from __future__ import annotations

import json

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml
from conftest import tiny_space

import trainables.trial as trial_mod
from reports.figure_data import best_per_method, pareto_front, pareto_table, ranking
from search.export import pick_trial
from search.searcher import PeftOptunaSearch
from trainables.checkpoint import META_FILE as CHECKPOINT_META
from trainables.checkpoint import STATE_FILE as CHECKPOINT_FILE
from trainables.checkpoint import best_of
from trainables.data import DatasetSpec, prepare
from trainables.loop import TrainConfig, eval_steps, evaluate
from trainables.model import load_tokenizer
from trainables.trial import build_model, run_trial


@pytest.fixture(scope="module")
def data(tiny_bert, topics_tsv):
    spec = DatasetSpec(path=str(topics_tsv))
    return prepare(spec, load_tokenizer(str(tiny_bert)), 32, validation=0.2, test=0.2)


# --- planned rounds = rounds run (fewer steps than evaluations) --------------------------


@pytest.mark.parametrize("n_train,batch,epochs,per_epoch", [(20, 16, 1, 4), (5, 16, 2, 3)])
def test_planned_rounds_equal_the_rounds_a_short_trial_runs(
    n_train, batch, epochs, per_epoch, tiny_bert, data
):
    from dataclasses import replace

    small = replace(data, splits={**data.splits, "train": _head(data.splits["train"], n_train)})
    cfg = {"method": "linear_probe", "epochs": epochs, "evals_per_epoch": per_epoch,
           "batch_size": batch}  # fmt: skip
    seen: list[dict] = []
    out = run_trial(cfg, small.without("test"), str(tiny_bert), lambda m, g: seen.append(m))
    assert TrainConfig(**{k: v for k, v in cfg.items() if k != "method"}).planned_evals > len(seen)
    assert out["planned_iterations"] == len(seen) == len(eval_steps(n_train, TrainConfig(
        epochs=epochs, evals_per_epoch=per_epoch, batch_size=batch)))  # fmt: skip
    assert all(m["planned_iterations"] == len(seen) for m in seen)


def _head(split, n):
    from dataclasses import replace

    return replace(split, input_ids=split.input_ids[:n], labels=split.labels[:n])


# --- run_trial(test=True): one look at test, at the best round of the ranking metric ------


@pytest.mark.parametrize("metric,mode", [("val_accuracy", "max"), ("val_loss", "min")])
def test_test_split_is_read_once_at_the_best_round(metric, mode, tiny_bert, data, monkeypatch):
    test_split = data.splits["test"]
    reads: list[int] = []
    real = trial_mod.evaluate

    def counting(model, split, *a, **kw):  # the real evaluation, counted when it reads test
        if split is test_split:
            reads.append(1)
        return real(model, split, *a, **kw)

    monkeypatch.setattr(trial_mod, "evaluate", counting)
    rounds: list[tuple[int, float, dict]] = []
    cfg = {"method": "lora", "learning_rate": 3e-2, "epochs": 3, "evals_per_epoch": 2,
           "precision": "fp32"}  # fmt: skip
    out = run_trial(
        cfg,
        data,
        str(tiny_bert),
        lambda m, g: rounds.append((m["step"], m[metric], g()["trainable"])),
        test=True,
        metric=metric,
        mode=mode,
    )
    assert len(reads) == 1 and out["test_evaluations"] == 1
    values = [v for _, v, _ in rounds]
    best = int(np.argmax(values) if mode == "max" else np.argmin(values))  # earliest best
    assert len(set(values)) > 1, "the rounds must differ for the test to tell them apart"
    assert out["test_step"] == out["best_step"] == rounds[best][0]
    assert out["best_score"] == values[best]
    # The test figure is that round's model, not the last one.
    model = build_model(str(tiny_bert), data, "lora", {}, seed=0)
    model.load_state_dict(rounds[best][2], strict=False)
    scores = evaluate(model, test_split, 64, 0)
    assert out["test_accuracy"] == scores["val_accuracy"]
    assert out["test_loss"] == pytest.approx(scores["val_loss"], rel=1e-6)


# --- the searcher tells Optuna the best round -------------------------------------------


@pytest.mark.parametrize(
    "metric,mode,values,best",
    [("val_accuracy", "max", [0.5, 0.9, 0.7], 0.9), ("val_loss", "min", [0.9, 0.3, 0.6], 0.3)],
)
def test_optuna_is_told_the_best_round_not_the_last(metric, mode, values, best):
    s = PeftOptunaSearch(
        space=lambda t: t.suggest_float("x", 0, 1) and None,
        metric=metric,
        mode=mode,
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    s.suggest("a")
    for i, v in enumerate(values, 1):
        s.on_trial_result("a", {metric: v, "training_iteration": i, "planned_iterations": 3})
    s.on_trial_complete("a", {metric: values[-1], "training_iteration": 3, "planned_iterations": 3})
    (t,) = s._ot_study.trials
    assert t.state == optuna.trial.TrialState.COMPLETE and t.value == best


def test_multi_objective_optuna_gets_the_best_round_of_the_first_objective():
    s = PeftOptunaSearch(
        space=lambda t: t.suggest_float("x", 0, 1) and None,
        metric=["val_accuracy", "trainable_params"],
        mode=["max", "min"],
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    s.suggest("a")
    for i, v in enumerate([0.6, 0.8, 0.7], 1):
        s.on_trial_result("a", {"val_accuracy": v, "trainable_params": 10,
                                "training_iteration": i, "planned_iterations": 3})  # fmt: skip
    s.on_trial_complete("a", {"val_accuracy": 0.7, "trainable_params": 10,
                              "training_iteration": 3, "planned_iterations": 3})  # fmt: skip
    (t,) = s._ot_study.trials
    assert t.values == [0.8, 10]


# --- reports, export and checkpoints follow the recorded metric and mode ----------------


def _trials(metric: str, mode: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "trial_id": ["a", "b", "c", "d"],
            "method": ["full", "full", "lora", "lora"],
            "status": ["TERMINATED"] * 3 + ["ERROR"],
            "trainable_params": [1000, 1000, 10, 10],
            "trainable_fraction": [1.0, 1.0, 0.01, 0.01],
            "val_accuracy": [0.9, 0.8, 0.7, 0.95],
            "val_loss": [0.5, 0.2, 0.6, 0.1],
            "knobs_json": ["{}"] * 4,
            "metric": metric,
            "metric_mode": mode,
        }
    )


def test_figures_and_export_rank_by_the_recorded_metric():
    acc, loss = _trials("val_accuracy", "max"), _trials("val_loss", "min")
    assert ranking(acc) == ("val_accuracy", "max") and ranking(loss) == ("val_loss", "min")
    ok = lambda df: df[df["status"] != "ERROR"]  # noqa: E731
    # Accuracy: a is the best full trial; loss: b is (lower loss, lower accuracy).
    assert best_per_method(ok(acc)).set_index("method").loc["full", "trial_id"] == "a"
    assert best_per_method(ok(loss)).set_index("method").loc["full", "trial_id"] == "b"
    assert pareto_front(ok(acc))["trial_id"].tolist() == ["c", "a"]
    assert pareto_front(ok(loss))["trial_id"].tolist() == ["c", "b"]
    assert "val_loss" in pareto_table(loss).columns
    assert pick_trial(ok(acc), None)["trial_id"] == "a"
    assert pick_trial(ok(loss), None)["trial_id"] == "b"
    # A run written before the metric was recorded ranked by accuracy.
    assert ranking(acc.drop(columns=["metric", "metric_mode"])) == ("val_accuracy", "max")


def test_best_checkpoint_follows_metric_and_mode(tmp_path):
    rounds = [(1, 0.5, 0.9), (2, 0.9, 0.7), (3, 0.8, 0.4), (4, 0.9, 0.5)]  # step, acc, loss
    dirs = []
    for step, acc, loss in rounds:
        d = tmp_path / f"checkpoint_{step:06d}"
        d.mkdir()
        torch.save({"trainable": {}}, d / CHECKPOINT_FILE)
        (d / CHECKPOINT_META).write_text(
            json.dumps({"step": step, "val_accuracy": acc, "val_loss": loss})
        )
        dirs.append(d)
    assert best_of(dirs, "val_accuracy", "max").name == "checkpoint_000002"  # earliest of ties
    assert best_of(dirs, "val_loss", "min").name == "checkpoint_000003"


# --- end to end: a search ranked by val_loss keeps, exports and confirms by val_loss -----


@pytest.mark.slow
def test_a_val_loss_search_ranks_everything_by_val_loss(ray_local, tmp_path, tiny_bert, topics_tsv):
    import search
    from search.confirm import confirm
    from search.export import export_trial

    space = tiny_space(
        tiny_bert,
        topics_tsv,
        tmp_path / "runs",
        methods={
            "lora": {"learning_rate": {"log": [1e-3, 1e-1]}},
            "linear_probe": {"learning_rate": {"log": [1e-3, 1e-1]}},
        },  # fmt: skip
        search={"num_samples": 4, "searcher": "random"},
        scheduler={"type": "none"},
    )
    space["experiment"]["metric"] = "loss"  # the ranking metric's owner: objectives follow
    space["experiment"]["max_train_samples"] = 20  # 2 steps an epoch: 4 steps for 8 rounds
    space["train"]["evals_per_epoch"] = 4
    path = tmp_path / "loss.yaml"
    path.write_text(yaml.safe_dump(space))
    res = search.run(path, quiet=True)
    t, curves = search.load_results(res.run_dir)
    assert (t["status"] == "TERMINATED").all(), t[["status", "error"]]
    assert (t["metric"] == "val_loss").all() and (t["metric_mode"] == "min").all()
    # Short trials ran every round they planned: finished, not "stopped early".
    assert (t["iterations"] == t["planned_iterations"]).all() and not t["stopped_early"].any()
    # The Parquet's val_loss is the best (lowest) round, and best_iteration is that round.
    for tid, g in curves.groupby("trial_id"):
        row = t.set_index("trial_id").loc[tid]
        assert (
            row["val_loss"] == g["val_loss"].min()
            and row["val_loss_last"] == g["val_loss"].iloc[-1]
        )
        assert row["best_iteration"] == g.loc[g["val_loss"].idxmin(), "iteration"]
    # Optuna was told each trial's best round, and marked every finished trial COMPLETE.
    import pickle

    (state_file,) = res.run_dir.glob("searcher-state-*.pkl")  # Ray's own, written by this test
    study = pickle.loads(state_file.read_bytes())["_ot_study"]
    assert sorted(tr.value for tr in study.trials) == sorted(t["val_loss"])
    assert all(tr.state == optuna.trial.TrialState.COMPLETE for tr in study.trials)
    # The kept checkpoint of each trial is its lowest-val_loss round; export --best takes the
    # lowest-val_loss trial.
    for tid in t["trial_id"]:
        (ckpt,) = [c for d in res.run_dir.glob(f"*_{tid}_*") for c in d.glob("checkpoint_*")]
        meta = json.loads((ckpt / CHECKPOINT_META).read_text())
        assert meta["val_loss"] == pytest.approx(t.set_index("trial_id").loc[tid, "val_loss"])
    out = export_trial(res.run_dir, tmp_path / "export")
    exported = json.loads((out / "metrics.json").read_text())
    assert exported["trial_id"] == t.loc[t["val_loss"].idxmin(), "trial_id"]
    # confirm --top 1 retrains the lowest-val_loss trial and reads test at its lowest round.
    df = confirm(res.run_dir, seeds=1, top=1, quiet=True)
    assert df["trial_id"].tolist() == [exported["trial_id"]]
    row = df.iloc[0]
    rounds = json.loads(row["val_rounds_json"])
    assert row["test_evaluations"] == 1
    assert row["test_step"] == min(rounds, key=lambda r: r[1])[0]
