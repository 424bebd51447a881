"""Optuna as Tune's searcher: a conditional space, and early-stopped trials told as pruned.

Sampled values are named ``<method>.<key>`` so that each method has its own
learning-rate distribution (LoRA wants ~10x full fine-tuning's) and TPE
models each method separately.
"""

from __future__ import annotations

from typing import Any

from ray.tune.search.optuna import OptunaSearch

from search.space import Space
from trainables.loop import improves


class DefineByRun:
    """Optuna's define-by-run space: the method, then only that method's knobs.

    Fixed values are returned as constants. A class, not a closure, so Tune
    can pickle the searcher for resume.
    """

    def __init__(self, space: Space) -> None:
        self.methods = {m: space.method_space(m) for m in space.methods}
        self.seed = space.seed

    def __call__(self, trial) -> dict[str, Any]:
        method = trial.suggest_categorical("method", list(self.methods))
        # The experiment's seed: head initialisation and data order (confirm varies it).
        constants: dict[str, Any] = {f"{method}.seed": self.seed}
        for key, dist in self.methods[method].items():
            name = f"{method}.{key}"
            if dist.kind == "fixed":
                constants[name] = dist.value
            else:
                dist.suggest(trial, name)
        return constants


class PeftOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells Optuna the truth about trials a scheduler stopped.

    Tune hands a trial that ASHA stopped to ``on_trial_complete`` with its
    last, partial result, and ``OptunaSearch`` records it as COMPLETE with
    those values. With two objectives such a trial (a few rounds of training,
    low accuracy, few parameters) can land on Optuna's Pareto front and steer
    the sampler; with one it reads as a finished bad configuration. Here a
    trial that ended before its planned evaluation rounds without an error is
    told as PRUNED: single-objective TPE still ranks it by its intermediate
    values (reported per round), and it never enters a Pareto front. A trial
    that errored is FAILED even if it had reported results.

    A completed trial is told the *best* round of the ranking metric (the
    first objective, in its mode), the one value every other consumer of a
    run ranks by; ``OptunaSearch`` would tell the last round.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._best: dict[str, float] = {}  # trial id -> its best round of the ranking metric

    def _ranking(self) -> tuple[str, str]:
        """The validation metric (the first objective) and its mode."""
        metric, mode = self.metric, self.mode
        return (metric[0], mode[0]) if isinstance(metric, list) else (metric, mode)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Keep each trial's best round of the ranking metric: what Optuna is told at the end.
        metric, mode = self._ranking()
        if metric in result and improves(result[metric], self._best.get(trial_id), mode):
            self._best[trial_id] = result[metric]
        return super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        import optuna

        best = self._best.get(trial_id)
        if result and best is not None:
            # The best round, not the last: the value the trials table, the Pareto front, the
            # report, export and confirm rank by (Tune hands over the last result).
            result = {**result, self._ranking()[0]: best}
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        planned = (result or {}).get("planned_iterations")
        done = (result or {}).get("training_iteration", 0)
        if error or (planned is not None and done < planned):
            state = optuna.trial.TrialState.FAIL if error else optuna.trial.TrialState.PRUNED
            self._ot_study.tell(self._ot_trials[trial_id], state=state)
            self._completed_trials.add(trial_id)
            return None
        return super().on_trial_complete(trial_id, result, error)
