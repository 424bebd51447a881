"""Warm starts: earlier runs seed a new search (results on the same model and data, the best
configuration per method on the model alone), and runs that do not fit are refused before Ray."""

from __future__ import annotations

import json
import shutil

import optuna
import pytest
import yaml
from conftest import make_texts, tiny_space

import search
from search.cli import main
from search.driver import make_searcher
from search.preflight import prepare_data
from search.space import SpaceError, validate
from search.warmstart import model_fingerprint, plan_warm_start, same_model

METHODS = {
    "linear_probe": {"learning_rate": {"log": [1e-3, 1e-1]}},
    "lora": {"lora_rank": {"choice": [2, 4]}, "learning_rate": {"log": [1e-3, 1e-2]}},
}
TRAIN = {"epochs": 1, "evals_per_epoch": 2, "batch_size": 16}


def write_tsv(path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(["text\tlabel"] + [f"{t}\t{y}" for t, y in rows]) + "\n")


def space_dict(model, data, storage, name: str, **search_keys) -> dict:
    space = tiny_space(model, data, storage, methods=METHODS, train=TRAIN)
    space["experiment"]["name"] = name
    space["search"] = {"num_samples": 2, **search_keys}
    return space


@pytest.fixture(scope="module")
def source(ray_local, tmp_path_factory, tiny_bert):
    """A finished search on its own copy of the topics data: what the others warm-start from."""
    tmp = tmp_path_factory.mktemp("warm")
    data = tmp / "a" / "topics.tsv"
    write_tsv(data, make_texts(300))
    space = space_dict(tiny_bert, data, tmp / "runs", "source", num_samples=5)
    res = search.run(validate(space, "source.yaml"), quiet=True)
    return res, space, tmp


def test_a_matching_run_seeds_its_finished_trials_into_the_study(source):
    res, space_raw, _ = source
    space = validate({**space_raw, "search": {"num_samples": 2, "warm_start": [str(res.run_dir)]}})
    warm = plan_warm_start(space, prepare_data(space, progress=False))
    study = make_searcher(space, warm)._ot_study
    t = res.trials
    done = t[(t["status"] == "TERMINATED") & ~t["stopped_early"]]
    stopped = t[t["stopped_early"]]
    trials = study.get_trials(deepcopy=False)
    complete = [x for x in trials if x.state == optuna.trial.TrialState.COMPLETE]
    pruned = [x for x in trials if x.state == optuna.trial.TrialState.PRUNED]
    assert len(complete) == len(done) > 0 and len(pruned) == len(stopped)
    # The values are the trials' best rounds; the params, the sampled knobs by their names.
    assert sorted(x.value for x in complete) == sorted(done["val_accuracy"])
    for x in complete:
        assert set(x.params) == {"method"} | {f"{x.params['method']}.{k}" for k in
                                             METHODS[x.params["method"]]}  # fmt: skip
    # A stopped trial keeps its per-round values, as the searcher told Optuna of its own.
    assert all(x.intermediate_values for x in pruned)
    # Each names the run and the trial it came from.
    assert {x.user_attrs["warm_start_trial_id"] for x in complete + pruned} == set(
        done["trial_id"]
    ) | set(stopped["trial_id"])
    assert {x.user_attrs["warm_start_run"] for x in trials} == {str(res.run_dir)}
    # Nothing is queued: the study has the results, each method is covered.
    assert not [x for x in trials if x.state == optuna.trial.TrialState.WAITING]
    assert warm.summary()["trials_seeded"] == len(done) + len(stopped)


def warm_plan(source_run, raw: dict):
    raw = {**raw, "search": {"num_samples": 2, "warm_start": [str(source_run.run_dir)]}}
    space = validate(raw)
    return plan_warm_start(space, prepare_data(space, progress=False))


def test_trials_outside_the_new_space_are_not_seeded(source):
    res, space_raw, _ = source
    lora = (res.trials["method"] == "lora").sum()
    # A knob's value outside the new distribution: those trials stay out.
    raw = {**space_raw, "methods": {**METHODS, "lora": {**METHODS["lora"], "lora_rank": 8}}}
    (entry,) = warm_plan(res, raw).summary()["runs"]
    assert entry["skipped"]["outside_space"] == lora > 0
    assert entry["trials_seeded"] == len(res.trials) - lora
    raw["methods"]["lora"]["lora_rank"] = {"choice": [8, 16]}
    (entry,) = warm_plan(res, raw).summary()["runs"]
    assert entry["skipped"]["outside_space"] == lora
    # Another fixed setting: no trial fits, and the best configurations are queued instead,
    # with the knobs outside the new space left to the sampler.
    raw["train"] = {**TRAIN, "evals_per_epoch": 4}
    warm = warm_plan(res, raw)
    (entry,) = warm.summary()["runs"]
    assert entry["trials_seeded"] == 0 and entry["skipped"]["outside_space"] == len(res.trials)
    assert entry["reused"].startswith("configurations") and warm.enqueued
    assert {p["method"] for p in warm.enqueued} == set(METHODS)
    assert all("lora.lora_rank" not in p for p in warm.enqueued)
    assert entry["knobs_resampled"] == 1


def test_a_warm_run_records_what_it_reused(source):
    res, space_raw, tmp = source
    space = {**space_raw, "search": {"num_samples": 2, "warm_start": [str(res.run_dir)]}}
    space["experiment"] = {**space["experiment"], "name": "same"}
    warm = search.run(validate(space, "same.yaml"), quiet=True)
    record = json.loads((warm.run_dir / "run.json").read_text())
    (entry,) = record["warm_start"]["runs"]
    assert entry["run"] == str(res.run_dir) and entry["same"] == ["model", "data"]
    assert entry["reused"] == "results" and entry["trials_seeded"] > 0
    assert record["warm_start"]["trials_seeded"] == entry["trials_seeded"]
    assert len(warm.trials) == 2 and (warm.trials["status"] == "TERMINATED").all()
    # Both runs record the same fingerprints: the next warm start compares them.
    first = json.loads((res.run_dir / "run.json").read_text())
    assert record["fingerprint"] == first["fingerprint"]
    assert record["fingerprint"]["model"]["weights_sha256"]


def test_a_model_only_match_runs_the_best_configuration_per_method_first(source, tiny_bert):
    res, _, tmp = source
    # Other data, other labels (as SST-2 for AG News): configurations carry over, not results.
    data = tmp / "b" / "two.tsv"
    write_tsv(data, [(t, y) for t, y in make_texts(300, seed=1) if y != "food"])
    space = space_dict(tiny_bert, data, tmp / "runs", "other", num_samples=3, max_concurrent=1)
    space["search"]["warm_start"] = [str(res.run_dir)]
    warm = search.run(validate(space, "other.yaml"), quiet=True)
    best = res.trials.sort_values("val_accuracy", ascending=False, kind="stable")
    best = best[best["status"] != "ERROR"].drop_duplicates("method")
    expected = [{"method": r["method"], **json.loads(r["knobs_json"])} for _, r in best.iterrows()]
    ran = warm.trials.sort_values("ended_at")  # one trial at a time: the order they started
    got = [{"method": r["method"], **json.loads(r["knobs_json"])} for _, r in ran.iterrows()]
    assert got[: len(expected)] == expected
    record = json.loads((warm.run_dir / "run.json").read_text())
    (entry,) = record["warm_start"]["runs"]
    assert entry["same"] == ["model"] and entry["reused"] == "configurations"
    assert entry["configurations_enqueued"] == expected
    assert record["warm_start"]["trials_seeded"] == 0


def run_cli(tmp_path, space: dict, monkeypatch) -> int:
    """``peftsearch run`` on ``space``; Ray must not start."""
    import search.driver

    def no_ray(*_):
        raise AssertionError("Ray started before the warm start was refused")

    monkeypatch.setattr(search.driver, "init_ray", no_ray)
    path = tmp_path / f"{space['experiment']['name']}.yaml"
    path.write_text(yaml.safe_dump(space))
    return main(["run", str(path)])


def test_a_folder_that_is_not_a_run_is_refused_before_ray(
    tmp_path, tiny_bert, topics_tsv, monkeypatch, capsys
):
    empty = tmp_path / "empty"
    empty.mkdir()
    space = space_dict(tiny_bert, topics_tsv, tmp_path / "runs", "cold")
    space["search"]["warm_start"] = [str(empty), str(tmp_path / "missing")]
    assert run_cli(tmp_path, space, monkeypatch) == 2
    err = capsys.readouterr().err
    assert "2 problem(s)" in err and "search.warm_start[0]" in err and "search.warm_start[1]" in err
    assert f"{empty} is not a peftsearch run" in err
    assert not (tmp_path / "runs").exists()  # nothing written


def test_a_run_with_another_label_set_on_the_same_data_is_refused(
    ray_local, tmp_path, tiny_bert, monkeypatch, capsys
):
    data = tmp_path / "c" / "topics.tsv"
    write_tsv(data, make_texts(120))
    space = space_dict(tiny_bert, data, tmp_path / "runs", "before", num_samples=1)
    space["methods"] = {"linear_probe": METHODS["linear_probe"]}
    before = search.run(validate(space, "before.yaml"), quiet=True)
    # The same file, relabelled since: a fourth topic.
    write_tsv(data, make_texts(120) + [(f"song band {i}", "music") for i in range(40)])
    space["experiment"]["name"] = "after"
    space["search"]["warm_start"] = [str(before.run_dir)]
    assert run_cli(tmp_path, space, monkeypatch) == 2
    err = capsys.readouterr().err
    assert str(before.run_dir) in err and "label set" in err and "music" in err
    assert not (tmp_path / "runs" / "after").exists()


def test_the_same_weights_elsewhere_are_the_same_model(tmp_path, tiny_models):
    copy = shutil.copytree(tiny_models["bert"], tmp_path / "copy")
    a, b = model_fingerprint(str(tiny_models["bert"])), model_fingerprint(str(copy))
    assert a["id"] != b["id"] and same_model(a, b) == "weights"
    assert same_model(a, model_fingerprint(str(tiny_models["roberta"]))) is None
    hub = {"id": "bert-base-uncased", "weights_sha256": None}
    assert same_model(hub, dict(hub)) == "id" and same_model(hub, a) is None


@pytest.mark.parametrize(
    "value, message",
    [(3, "a list of earlier run folders"), (["a", "a"], "listed twice"), ([""], "a list of")],
)
def test_the_schema_checks_warm_start(tmp_path, tiny_bert, topics_tsv, value, message):
    space = space_dict(tiny_bert, topics_tsv, tmp_path, "x")
    space["search"]["warm_start"] = value
    with pytest.raises(SpaceError) as e:
        validate(space)
    assert any(k == "search.warm_start" and message in m for k, m in e.value.problems)


def test_a_grid_has_no_searcher_to_warm_start(tmp_path, tiny_bert, topics_tsv):
    space = space_dict(tiny_bert, topics_tsv, tmp_path, "x", searcher="grid")
    space["methods"] = {"linear_probe": {"learning_rate": {"choice": [0.01]}}}
    space["search"]["warm_start"] = "runs/x"  # one folder may be given as a string
    with pytest.raises(SpaceError, match="no searcher to warm-start"):
        validate(space)
