"""The tools people already use to look at runs, read back with their own clients, offline.

A search with ``search.loggers: [tensorboard, mlflow]`` leaves an MLflow store that the
MLflow client reads (one run per trial, the metric of every round), TensorBoard event files
in each trial folder, and the Optuna study in a journal that ``optuna.load_study`` opens, its
trials those of ``trials.parquet``. A logger whose package is missing is exit 2 before Ray.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import struct
import subprocess
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from conftest import tiny_space

from search.rundir import JOURNAL_FILE, MLFLOW_FILE, TRIALS_FILE, RunDir
from search.space import SpaceError, validate


def journal_study(path: Path) -> optuna.Study:
    """The study as its users open it: optuna.load_study on the journal file."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    # A run's journal holds one study: its name can be left out.
    return optuna.load_study(study_name=None, storage=JournalStorage(JournalFileBackend(str(path))))


def tb_scalars(event_file: Path) -> dict[str, list[tuple[int, float]]]:
    """A TensorBoard event file's scalars, read from its TFRecord framing."""
    from tensorboardX.proto import event_pb2

    data, i, out = event_file.read_bytes(), 0, {}
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i : i + 8])
        event = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
        i += 12 + n + 4  # length, its CRC, the record, its CRC
        for v in event.summary.value:
            out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


@pytest.fixture(scope="module")
def logged_run(ray_local, tmp_path_factory, tiny_bert, topics_tsv):
    import search

    tmp = tmp_path_factory.mktemp("tracking")
    space = tiny_space(
        tiny_bert,
        topics_tsv,
        tmp / "runs",
        methods={
            "linear_probe": {"learning_rate": {"log": [1e-3, 1e-1]}},
            "lora": {"lora_rank": 2, "learning_rate": {"log": [1e-3, 1e-2]}},
        },
        train={"epochs": 1, "evals_per_epoch": 2, "batch_size": 16, "precision": "fp32"},
        search={"num_samples": 5, "loggers": ["tensorboard", "mlflow"]},
    )
    path = tmp / "logged.yaml"
    path.write_text(yaml.safe_dump(space))
    res = search.run(path, quiet=True)
    return res.run_dir, pd.read_parquet(res.run_dir / TRIALS_FILE)


@pytest.mark.slow
def test_mlflow_store_in_the_run_folder_has_one_run_per_trial(logged_run):
    from mlflow.tracking import MlflowClient

    run_dir, trials = logged_run
    client = MlflowClient(f"sqlite:///{run_dir / MLFLOW_FILE}")
    experiment = client.get_experiment_by_name(run_dir.name)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    by_trial = {r.data.tags["trial_name"].rpartition("_")[2]: r for r in runs}
    assert len(runs) == len(trials) and set(by_trial) == set(trials["trial_id"])
    for row in trials.itertuples():
        run = by_trial[row.trial_id]
        assert run.info.status == "FINISHED" and run.data.params["method"] == row.method
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert len(history) == row.iterations  # every evaluation round, as reported
        assert max(m.value for m in history) == pytest.approx(row.val_accuracy)
    assert not (Path.cwd() / "mlruns").exists() and not (Path.cwd() / "mlartifacts").exists()


@pytest.mark.slow
def test_tensorboard_event_files_are_in_each_trial_folder(logged_run):
    run_dir, trials = logged_run
    for row in trials.itertuples():
        (folder,) = run_dir.glob(f"*_{row.trial_id}_*")
        (events,) = folder.glob("events.out.tfevents.*")
        points = tb_scalars(events)["ray/tune/val_accuracy"]
        assert [step for step, _ in points] == list(range(1, row.iterations + 1))
        assert max(v for _, v in points) == pytest.approx(row.val_accuracy, abs=1e-6)


@pytest.mark.slow
def test_the_journal_holds_the_study_of_the_trials_table(logged_run):
    run_dir, trials = logged_run
    study = journal_study(run_dir / JOURNAL_FILE)
    assert study.study_name == run_dir.name
    by_id = {t.user_attrs["trial_id"]: t for t in study.trials}
    assert len(study.trials) == len(trials) and set(by_id) == set(trials["trial_id"])
    for row in trials.itertuples():
        t = by_id[row.trial_id]
        assert t.params["method"] == row.method
        if row.stopped_early:
            assert t.state == optuna.trial.TrialState.PRUNED
        else:  # told the best round, the value the trials table ranks by
            assert t.state == optuna.trial.TrialState.COMPLETE
            assert t.value == pytest.approx(row.val_accuracy)
    record = RunDir.at(run_dir).read_record()
    assert record["optuna_journal"] == JOURNAL_FILE and record["optuna_study"] == run_dir.name
    assert record["loggers"] == ["tensorboard", "mlflow"]
    assert record["mlflow_tracking_uri"] == MLFLOW_FILE


def test_without_loggers_only_the_tables_loggers_run(tmp_path, topics_tsv):
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

    from search.tracking import MLflowLogger, callbacks

    run = RunDir.at(tmp_path / "runs" / "x")
    plain = space_of(tmp_path, topics_tsv)
    assert [type(c) for c in callbacks(plain, run)] == [CSVLoggerCallback, JsonLoggerCallback]
    both = space_of(tmp_path, topics_tsv, loggers=["mlflow", "tensorboard"])
    kinds = [type(c) for c in callbacks(both, run)]
    assert kinds == [CSVLoggerCallback, JsonLoggerCallback, MLflowLogger, TBXLoggerCallback]


def space_of(tmp_path: Path, data: Path, **search):
    raw = tiny_space(Path("model"), data, tmp_path / "runs", search={"num_samples": 4, **search})
    return validate(raw, "s.yaml")


def test_a_missing_package_or_an_unknown_logger_is_named_with_its_fix(
    tmp_path, topics_tsv, monkeypatch
):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    with pytest.raises(SpaceError) as e:
        space_of(tmp_path, topics_tsv, loggers=["mlflow", "tensorbord", "tensorboard"])
    problems = dict(e.value.problems)
    assert len(e.value.problems) == 2 and "search.loggers" in problems
    text = str(e.value)
    assert "pip install 'peftsearch[mlflow]'" in text
    assert "'tensorbord'" in text and "['tensorboard', 'mlflow', 'wandb']" in text
    with pytest.raises(SpaceError, match="a list out of"):
        space_of(tmp_path, topics_tsv, loggers={"mlflow": True})


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_a_logger_without_its_package_is_exit_2_before_ray(tmp_path, topics_tsv):
    raw = tiny_space(Path("model"), topics_tsv, tmp_path / "runs", search={"loggers": ["wandb"]})
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = subprocess.run(["peftsearch", "run", str(path)], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert "search.loggers" in out.stderr and "pip install 'peftsearch[wandb]'" in out.stderr
    assert not (tmp_path / "runs").exists()


def test_a_journal_searcher_survives_tunes_save_and_restore(tmp_path, topics_tsv):
    """Tune pickles the searcher at the start (tuner.pkl) and saves its state now and then; the
    journal goes on between. Restored, the searcher takes the journal's word for what ended
    since, and fails what was begun since (no Tune trial is restored for it)."""
    import ray.cloudpickle as cloudpickle

    from search.driver import make_searcher

    space = space_of(tmp_path, topics_tsv, num_samples=6)
    run = RunDir.at(tmp_path / "runs" / "tiny")
    run.mkdir()
    searcher = make_searcher(space, run=run)
    at_start = cloudpickle.dumps(searcher)  # tuner.pkl
    metric = space.metric

    def report(trial_id: str, value: float, rounds: int = 2) -> None:
        for i in range(1, rounds + 1):
            result = {metric: value, "training_iteration": i, "planned_iterations": 2}
            searcher.on_trial_result(trial_id, result)
        searcher.on_trial_complete(trial_id, result)

    for trial_id in ("a", "b", "c"):
        searcher.suggest(trial_id)
    report("a", 0.5)
    state = tmp_path / "searcher-state.pkl"
    searcher.save(str(state))
    report("b", 0.6)  # ended after the save
    searcher.suggest("d")  # begun after the save: the driver dies here

    restored = cloudpickle.loads(at_start)
    restored.restore(str(state))
    restored.on_trial_result("b", {metric: 0.7, "training_iteration": 2})  # Tune reruns b
    restored.on_trial_complete("b", {metric: 0.7, "training_iteration": 2})
    searcher = restored
    report("c", 0.4)
    searcher.suggest("e")
    report("e", 0.8)

    study = journal_study(run.local / JOURNAL_FILE)
    states = {t.user_attrs["trial_id"]: (t.state.name, t.value) for t in study.trials}
    assert states == {
        "a": ("COMPLETE", 0.5),
        "b": ("COMPLETE", 0.6),  # told once
        "c": ("COMPLETE", 0.4),
        "d": ("FAIL", None),
        "e": ("COMPLETE", 0.8),
    }
    assert study.study_name == "tiny"


def test_a_remote_runs_journal_is_kept_locally_and_reopened_from_the_cache(tmp_path, monkeypatch):
    """Pickled as the run, the journal reopens where this machine keeps it: another machine
    (another cache folder) reads the copy downloaded there."""
    from search import tracking

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-a"))
    run = RunDir.at("s3://bucket/runs/tiny?endpoint_override=127.0.0.1:1&scheme=http")
    storage = tracking.journal(run)
    study = optuna.create_study(storage=storage, study_name=tracking.study_name(run))
    study.add_trial(optuna.trial.create_trial(value=1.0))
    first = storage.path
    assert first.is_relative_to(tmp_path / "cache-a") and first.name == JOURNAL_FILE

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-b"))
    elsewhere = tracking.local_dir(run) / JOURNAL_FILE
    elsewhere.parent.mkdir(parents=True)
    elsewhere.write_bytes(first.read_bytes())  # what prepare() downloads on a resume
    study.add_trial(optuna.trial.create_trial(value=2.0))  # on the first machine only
    reopened = pickle.loads(pickle.dumps(storage))
    assert reopened.path == elsewhere
    assert [t.value for t in optuna.load_study(study_name="tiny", storage=reopened).trials] == [1.0]


def test_a_copied_run_folder_resumes_with_its_own_journal(tmp_path, topics_tsv, monkeypatch):
    """The pickled journal names the first folder; a resume of a copy reopens the copy's."""
    import shutil

    from search import tracking

    monkeypatch.setattr(tracking, "_reopening", None)  # restored after the test
    first = RunDir.at(tmp_path / "runs" / "tiny")
    first.mkdir()
    storage = tracking.journal(first)
    optuna.create_study(storage=storage, study_name="tiny")
    shutil.copytree(first.local, tmp_path / "copy" / "tiny")
    copy = RunDir.at(tmp_path / "copy" / "tiny")
    tracking.prepare(space_of(tmp_path, topics_tsv), copy, resume=True)  # what the driver does
    reopened = pickle.loads(pickle.dumps(storage))
    assert reopened.path == copy.local / JOURNAL_FILE
    optuna.load_study(study_name="tiny", storage=reopened).add_trial(
        optuna.trial.create_trial(value=1.0)
    )
    assert len(journal_study(copy.local / JOURNAL_FILE).trials) == 1
    assert len(journal_study(first.local / JOURNAL_FILE).trials) == 0


def test_a_resumed_trial_goes_on_in_its_mlflow_run(tmp_path, monkeypatch):
    """Each session sets up a new logger (Tune's resume); a trial keeps its one MLflow run."""
    from mlflow.tracking import MlflowClient
    from ray.tune.experiment import Trial

    from search import tracking

    monkeypatch.setattr(tracking, "_reopening", None)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the run's own store
    run = RunDir.at(tmp_path / "runs" / "tiny")
    trial = Trial("tune_trainable", config={"method": "lora"}, trial_id="abc123", stub=True)
    for session, rounds in enumerate([(1, 2), (3, 4)]):
        logger = tracking.MLflowLogger(run, experiment_name="tiny")
        logger.setup()
        logger.log_trial_start(trial)
        for i in rounds:
            logger.log_trial_result(i, trial, {"val_accuracy": i / 10, "training_iteration": i})
        if session:
            logger.log_trial_end(trial)
    client = MlflowClient(tracking.mlflow_uri(run))
    (only,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert only.info.status == "FINISHED" and only.data.params["method"] == "lora"
    history = client.get_metric_history(only.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [1, 2, 3, 4]
    assert "MLFLOW_TRACKING_URI" not in os.environ  # the next run's own store is its own


def test_wandb_runs_offline_unless_configured(tmp_path, topics_tsv, monkeypatch):
    from search import tracking

    real = importlib.util.find_spec
    monkeypatch.setattr(  # as if wandb were installed: validation passes
        importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "wandb" else real(name, *a),
    )
    monkeypatch.setattr(tracking, "_reopening", None)
    space = space_of(tmp_path, topics_tsv, loggers=["wandb"])
    run = RunDir.at(tmp_path / "runs" / "tiny")
    for key in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    tracking.prepare(space, run, resume=False)
    assert os.environ["WANDB_MODE"] == "offline"
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "k")  # the user's W&B: its own mode
    tracking.prepare(space, run, resume=False)
    assert "WANDB_MODE" not in os.environ
