"""Pareto-aware ASHA and the Optuna trap, with a real Ray Tune and a real Optuna study.

The trainable here is a plain function whose accuracy curve and parameter
count are fixed by its config, so which trial a scheduler stops is known in
advance; everything around it (Tune, schedulers, searcher) is the real thing.
"""

from __future__ import annotations

import optuna
import pytest
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from search.schedulers import ParetoASHA, dominates
from search.searcher import PeftOptunaSearch

# Full fine-tuning is ahead at every rung; the cheap method learns slower but costs 1000x less.
CURVES = {
    "full": ([0.80, 0.88, 0.92, 0.94], 1_000_000),
    "cheap": ([0.50, 0.70, 0.85, 0.90], 1_000),
    "bad_full": ([0.40, 0.45, 0.50, 0.55], 1_000_000),
}


def fake_trial(config):
    accs, params = CURVES[config["method"]]
    for acc in accs:
        tune.report(
            {
                "val_accuracy": acc,
                "trainable_params": params,
                "planned_iterations": len(accs),
                "method": config["method"],
            }
        )


def run_order(scheduler, order: list[str]) -> dict[str, int]:
    """Run one trial per method, one at a time in ``order``; rounds each trial ran."""
    import sys

    from ray import cloudpickle

    # Ray's workers cannot import a test module: ship this one's functions by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    tuner = tune.Tuner(
        fake_trial,
        param_space={"method": tune.grid_search(order)},
        tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=1),
        run_config=tune.RunConfig(verbose=0),
    )
    grid = tuner.fit()
    return {r.config["method"]: r.metrics["training_iteration"] for r in grid}


def asha_args():
    return {"max_t": 4, "grace_period": 1, "reduction_factor": 2}


@pytest.mark.slow
def test_pareto_asha_keeps_the_cheap_trial_accuracy_only_asha_stops(ray_local, tmp_path):
    order = ["full", "cheap", "bad_full"]
    plain = run_order(ASHAScheduler(metric="val_accuracy", mode="max", **asha_args()), order)
    pareto = run_order(ParetoASHA(metric="val_accuracy", mode="max", **asha_args()), order)
    # Accuracy-only ASHA cuts the cheap method at the first rung: 0.50 < 0.80.
    assert plain == {"full": 4, "cheap": 1, "bad_full": 1}
    # Pareto-aware: nothing has fewer parameters and more accuracy, so it runs to the end;
    # bad_full is dominated by full (same cost, less accurate) and is still stopped.
    assert pareto == {"full": 4, "cheap": 4, "bad_full": 1}


def test_pareto_asha_stops_what_asha_stops_unless_on_the_front():
    s = ParetoASHA(max_t=8, grace_period=1, reduction_factor=2)
    assert s._decide("a", 1, (0.9, 100)) == "CONTINUE"  # first at the rung
    assert s._decide("b", 1, (0.8, 100)) == "STOP"  # same cost, less accurate
    assert s._decide("c", 1, (0.5, 10)) == "CONTINUE"  # cheaper: on the front
    assert s._decide("d", 1, (0.4, 10)) == "STOP"  # dominated by c
    assert s._decide("e", 1, (0.95, 1000)) == "CONTINUE"  # most accurate: ASHA's rule
    assert s._decide("a", 2, (0.91, 100)) == "CONTINUE"  # next rung
    assert s.kept_by_front == 1 and s.num_stopped == 0  # num_stopped counts on_trial_result
    assert dominates((0.9, 10), (0.9, 20)) and not dominates((0.9, 10), (0.9, 10))


def test_pareto_asha_keeps_the_front_on_the_searchs_cost_objectives():
    # (accuracy, latency ms, artifact MB): a slower but smaller trial is on the 3-D front.
    s = ParetoASHA(cost=["infer_ms_b1", "artifact_mb"], max_t=8, grace_period=1, reduction_factor=2)
    assert s._decide("full", 1, (0.9, 10.0, 90.0)) == "CONTINUE"
    assert s._decide("lora", 1, (0.8, 14.0, 1.0)) == "CONTINUE"  # slower, but 90x smaller
    assert s._decide("worse", 1, (0.7, 14.0, 1.0)) == "STOP"  # dominated by lora in all three
    assert s.kept_by_front == 1
    assert dominates((0.9, 1.0, 1.0), (0.9, 1.0, 2.0)) and not dominates((0.9, 1, 3), (0.8, 2, 2))

    # A result without a cost (not measurable here) counts as the worst on it, not as free.
    class T:
        trial_id = "x"

    r = {"training_iteration": 1, "val_accuracy": 0.95, "infer_ms_b1": None, "artifact_mb": 1.0}
    assert s.on_trial_result(None, T(), r) == "CONTINUE"  # most accurate: ASHA's own rule
    assert s._rungs[(None, 1)]["x"] == (0.95, float("inf"), 1.0)


def test_the_search_objectives_reach_the_scheduler_and_optuna():
    from search.driver import make_scheduler, make_searcher
    from search.space import validate

    methods = {"full": {}, "lora": {}}
    objectives = ["val_accuracy", "infer_latency_ms", "artifact_mb"]
    space = validate(
        {
            "methods": methods,
            "search": {"objectives": objectives},
            "scheduler": {"type": "pareto_asha"},
        }
    )
    assert make_scheduler(space)._cost == ["infer_ms_b1", "artifact_mb"]
    searcher = make_searcher(space)
    assert searcher.metric == ["val_accuracy", "infer_ms_b1", "artifact_mb"]
    assert searcher.mode == ["max", "min", "min"]
    assert len(searcher._ot_study.directions) == 3


def test_per_method_rungs_judge_a_trial_only_against_its_own_method():
    # Accuracy-only rungs per method: a slow-starting full fine-tuning trial is not cut by a
    # linear probe that is near its best after one round.
    s = ParetoASHA(cost=None, group_by="method", max_t=8, grace_period=1, reduction_factor=2)
    assert s._decide("probe1", 1, (0.90, 0.0), "linear_probe") == "CONTINUE"
    assert s._decide("full1", 1, (0.30, 0.0), "full") == "CONTINUE"  # first full at the rung
    assert s._decide("full2", 1, (0.20, 0.0), "full") == "STOP"  # below full1
    assert s._decide("probe2", 1, (0.85, 0.0), "linear_probe") == "STOP"  # below probe1
    assert s._decide("full3", 1, (0.35, 0.0), "full") == "CONTINUE"  # top half of full's
    assert s.kept_by_front == 0
    one = ParetoASHA(cost=None, max_t=8, grace_period=1, reduction_factor=2)
    assert one._decide("probe1", 1, (0.90, 0.0)) == "CONTINUE"
    assert one._decide("full1", 1, (0.30, 0.0)) == "STOP"  # one set of rungs
    assert "trials per rung {1: 5, 2: 0" in s.debug_string()


@pytest.mark.slow
def test_per_method_asha_in_tune_and_from_a_space(ray_local, tiny_bert, topics_tsv, tmp_path):
    from conftest import tiny_space

    from search.driver import make_scheduler
    from search.space import validate

    order = ["cheap", "bad_full"]
    plain = run_order(ASHAScheduler(metric="val_accuracy", mode="max", **asha_args()), order)
    per = run_order(ParetoASHA(cost=None, group_by="method", **asha_args()), order)
    assert plain == {"cheap": 4, "bad_full": 1}  # 0.40 < 0.50 at the first rung
    assert per == {"cheap": 4, "bad_full": 4}  # alone among its own method
    for kind, cost in (("asha", []), ("pareto_asha", ["trainable_params"])):
        space = tiny_space(tiny_bert, topics_tsv, tmp_path, methods=["lora"],
                           scheduler={"type": kind, "per_method": True})  # fmt: skip
        sched = make_scheduler(validate(space))
        assert isinstance(sched, ParetoASHA)
        assert (sched._group_by, sched._cost) == ("method", cost)
    space = tiny_space(tiny_bert, topics_tsv, tmp_path, methods=["lora"])
    assert isinstance(make_scheduler(validate(space)), ASHAScheduler)


def _x(trial) -> None:
    trial.suggest_float("x", 0, 1)


def _searcher(objectives: list[str]) -> PeftOptunaSearch:
    modes = {"val_accuracy": "max", "trainable_params": "min"}
    if len(objectives) == 1:
        metric, mode = objectives[0], modes[objectives[0]]
    else:
        metric, mode = objectives, [modes[o] for o in objectives]
    return PeftOptunaSearch(
        space=_x, metric=metric, mode=mode, sampler=optuna.samplers.RandomSampler(seed=0)
    )


def _result(acc: float, params: int, rounds: int, planned: int = 4) -> dict:
    return {
        "val_accuracy": acc,
        "trainable_params": params,
        "training_iteration": rounds,
        "planned_iterations": planned,
    }


def test_trials_stopped_early_are_pruned_not_on_optunas_pareto_front():
    s = _searcher(["val_accuracy", "trainable_params"])
    for tid in "abcd":
        s.suggest(tid)
    s.on_trial_complete("a", _result(0.90, 1_000_000, 4))  # finished
    s.on_trial_complete("b", _result(0.85, 10_000, 4))  # finished, cheaper
    # Stopped after one round: 0.3 accuracy with 100 parameters would be Pareto-optimal.
    s.on_trial_complete("c", _result(0.30, 100, 1))
    s.on_trial_complete("d", None, error=True)
    states = [t.state for t in s._ot_study.trials]
    S = optuna.trial.TrialState
    assert states == [S.COMPLETE, S.COMPLETE, S.PRUNED, S.FAIL]
    front = {tuple(t.values) for t in s._ot_study.best_trials}
    assert front == {(0.90, 1_000_000), (0.85, 10_000)}

    # Plain OptunaSearch (the trap): the stopped trial lands on the front.
    from ray.tune.search.optuna import OptunaSearch

    plain = OptunaSearch(
        space=_x,
        metric=["val_accuracy", "trainable_params"],
        mode=["max", "min"],
    )
    plain.suggest("c")
    plain.on_trial_complete("c", _result(0.30, 100, 1))
    assert (0.30, 100) in {tuple(t.values) for t in plain._ot_study.best_trials}


def test_single_objective_pruned_trial_keeps_its_intermediate_values():
    s = _searcher(["val_accuracy"])
    s.suggest("a")
    s.on_trial_result("a", _result(0.5, 10, 1))
    s.on_trial_complete("a", _result(0.5, 10, 1))
    (t,) = s._ot_study.trials
    assert t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values == {1: 0.5}


def test_the_first_trials_try_every_method_once():
    from search.driver import make_searcher
    from search.space import validate

    methods = {"full": {}, "lora": {"lora_rank": {"choice": [4, 8]}}, "bitfit": {}, "ia3": {}}
    space = validate({"methods": methods, "search": {"num_samples": 6}})
    searcher = make_searcher(space)
    first = [searcher.suggest(str(i))["method"] for i in range(4)]
    assert sorted(first) == sorted(methods)
