"""Optuna as Tune's searcher: a conditional space, and early-stopped trials told as pruned.

Sampled values are named ``<method>.<key>`` so that each method has its own
learning-rate distribution (LoRA wants ~10x full fine-tuning's) and TPE
models each method separately.
"""

from __future__ import annotations

from typing import Any

from ray.tune.search.optuna import OptunaSearch

from search.rundir import JOURNAL_FILE
from search.space import Space
from trainables.loop import improves


class DefineByRun:
    """Optuna's define-by-run space: the method, then only that method's knobs.

    Fixed values are returned as constants. A class, not a closure, so Tune
    can pickle the searcher for resume.

    A layer mask is one boolean parameter per layer, ``<method>.layers.<i>``
    (bottom 0), as AutoPEFT searches placement: TPE learns which layers pay
    (:data:`search.space.MASK_BITS`). Tune's config keeps the names as they are
    (OptunaSearch unflattens on ``/`` only); ``trainables.trial.flat_config``
    folds the bits into the mask string the trial takes.
    """

    def __init__(self, space: Space) -> None:
        self.methods = {m: space.method_space(m) for m in space.methods}
        self.seed = space.seed
        # A layer mask without the model's layer count: its ValueError now, not in Tune.
        for knobs in self.methods.values():
            _ = [d.bits for d in knobs.values() if d.kind == "mask"]

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

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            # The study's trials name their Tune trial: the key of the trials table.
            self._ot_trials[trial_id].set_user_attr("trial_id", trial_id)
        return config

    def save(self, checkpoint_path: str) -> None:
        # A remote run's journal (search.tracking.RunJournal) goes up before this state is even
        # written: Tune uploads the state from a background thread, which could otherwise send
        # it ahead of the journal, and a resumed searcher that knows a trial its study lacks
        # cannot tell Optuna that trial's end (with one trial at a time, the search then waits
        # forever). The stored study always holds every trial the stored searcher knows.
        sync = getattr(self._storage, "sync", None)
        if sync is not None:
            sync()
        super().save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        if self._storage is not None:  # a journal: it may be ahead of this saved state
            self._reconcile()

    def _reconcile(self) -> None:
        """After a restore: trials the stored study finished or began after Tune saved this
        searcher (the driver died in between).

        One finished since is done here too: Tune reruns it from its checkpoint, and Optuna
        takes a trial's end once. One begun since belongs to no trial Tune restores: failed.
        """
        import optuna

        try:
            frozen = {t.number: t for t in self._ot_study.get_trials(deepcopy=False)}
            known = {ot_trial.number for ot_trial in self._ot_trials.values()}
        except KeyError:  # Tune only logs an error from restore() and starts over: say why
            raise RuntimeError(
                f"the Optuna study {self._study_name!r} lacks trials this saved searcher knows: "
                f"its journal ({JOURNAL_FILE} in the run folder) was removed or replaced"
            ) from None
        for trial_id, ot_trial in self._ot_trials.items():
            if ot_trial.number in frozen and frozen[ot_trial.number].state.is_finished():
                self._completed_trials.add(trial_id)
        for number, t in frozen.items():
            if t.state == optuna.trial.TrialState.RUNNING and number not in known:
                self._ot_study.tell(number, state=optuna.trial.TrialState.FAIL)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Keep each trial's best round of the ranking metric: what Optuna is told at the end.
        metric, mode = self._ranking()
        if metric in result and improves(result[metric], self._best.get(trial_id), mode):
            self._best[trial_id] = result[metric]
        return super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        import optuna

        best = self._best.get(trial_id)
        metric, mode = self._ranking()
        if result and metric in result and improves(result[metric], best, mode):
            # A round the scheduler ends the trial at (ASHA at max_t) comes here only, not
            # through on_trial_result.
            best = result[metric]
        if result and best is not None:
            # The best round, not the last: the value the trials table, the Pareto front, the
            # report, export and confirm rank by (Tune hands over the last result).
            result = {**result, metric: best}
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
