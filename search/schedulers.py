"""Pareto-aware asynchronous successive halving (a Ray Tune ``TrialScheduler``).

Plain ASHA ranks trials at each rung by accuracy alone, so cheap methods
(prompt tuning, BitFit, small adapters, LoRA at a low rank) are cut early:
full fine-tuning is ahead at every early rung. But a search over methods
wants the whole accuracy / trainable-parameter front, not just the single
best accuracy.

``ParetoASHA`` keeps ASHA's rungs (``grace_period * reduction_factor**k``
evaluation rounds) and its rule - a trial continues when its accuracy is in
the top ``1 / reduction_factor`` of those recorded at the rung - and adds a
second way through, in the spirit of Syne Tune's MOASHA: a trial also
continues when no trial recorded at the rung *dominates* it, i.e. none is at
least as accurate with at most as many trainable parameters (and better in
one of them). So it stops what accuracy-only ASHA stops, except trials on
the rung's Pareto front. Trials of one method compete as before (same cost,
so accuracy decides); a cheaper method survives while it is the most
accurate at its price.

With ``group_by="method"`` (``scheduler.per_method: true``) each method has
rungs of its own: a trial is compared only with trials of its method. Methods
learn at different speeds - a linear probe on cached features is near its
best after a third of an epoch, full fine-tuning is still warming up - so
one set of rungs stops slow starters that would have ended best, and the
best configuration of each method is judged against its peers.
"""

from __future__ import annotations

import json

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler


def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Whether point ``a`` = (accuracy, cost, ...) dominates ``b``: no worse in any, better in one.

    Accuracy is maximised, each cost after it minimised.
    """
    no_worse = a[0] >= b[0] and all(x <= y for x, y in zip(a[1:], b[1:]))
    return no_worse and (a[0] > b[0] or any(x < y for x, y in zip(a[1:], b[1:])))


class ParetoASHA(FIFOScheduler):
    """ASHA that also keeps every trial on the rung's (accuracy, trainable parameters) front.

    Args:
        metric: the accuracy-like result key (higher is better with ``mode="max"``).
        mode: ``"max"`` or ``"min"`` for ``metric``.
        cost: the result key to minimise, reported with every result, or several
            (the search's cost objectives: ``trainable_params``, ``infer_ms_b1``, ...);
            ``None`` for accuracy-only ASHA (useful with ``group_by``).
        group_by: a result key (``"method"``): trials with different values of it
            never compete; ``None`` for one set of rungs.
        time_attr, max_t, grace_period, reduction_factor: as ``ASHAScheduler``.
    """

    def __init__(
        self,
        metric: str = "val_accuracy",
        mode: str = "max",
        cost: str | list[str] | tuple[str, ...] | None = "trainable_params",
        group_by: str | None = None,
        time_attr: str = "training_iteration",
        max_t: int = 100,
        grace_period: int = 1,
        reduction_factor: float = 2,
    ) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if not (0 < grace_period <= max_t) or reduction_factor <= 1:
            raise ValueError("need 0 < grace_period <= max_t and reduction_factor > 1")
        super().__init__()
        costs = [cost] if isinstance(cost, str) else list(cost or [])
        self._metric, self._mode, self._cost, self._group_by = metric, mode, costs, group_by
        self._sign = 1.0 if mode == "max" else -1.0
        self._time_attr, self._max_t, self._rf = time_attr, max_t, reduction_factor
        n_rungs = int(np.log(max_t / grace_period) / np.log(reduction_factor) + 1)
        self._milestones = [grace_period * reduction_factor**k for k in range(n_rungs)]
        # (group, milestone) -> {trial_id: (signed metric, *costs)}
        self._rungs: dict[tuple[str | None, float], dict[str, tuple[float, ...]]] = {}
        self.num_stopped = 0
        self.kept_by_front = 0  # trials accuracy-only ASHA would have stopped

    def set_search_properties(self, metric, mode, **spec) -> bool:
        # Metric and cost are fixed at construction; Tune's (possibly list) metric is not ours.
        return True

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self._time_attr not in result or self._metric not in result:
            return TrialScheduler.CONTINUE
        t = result[self._time_attr]
        if t >= self._max_t:
            return TrialScheduler.CONTINUE  # the trial ends by itself
        # A cost a result lacks (or None: not measurable here) counts as the worst.
        costs = [result.get(c) for c in self._cost]
        costs = [np.inf if c is None else float(c) for c in costs]
        group = str(result.get(self._group_by)) if self._group_by else None
        action = self._decide(trial.trial_id, t, (self._sign * result[self._metric], *costs), group)
        if action == TrialScheduler.STOP:
            self.num_stopped += 1
        return action

    def _decide(
        self, trial_id: str, t: float, point: tuple[float, ...], group: str | None = None
    ) -> str:
        """Record ``point`` at the highest rung ``t`` has reached in ``group``; stop or continue."""
        reached = [m for m in self._milestones if t >= m]
        if not reached:
            return TrialScheduler.CONTINUE
        recorded = self._rungs.setdefault((group, max(reached)), {})
        if trial_id in recorded:
            return TrialScheduler.CONTINUE
        others = list(recorded.values())
        recorded[trial_id] = point
        if not others:
            return TrialScheduler.CONTINUE
        cutoff = np.nanpercentile([p[0] for p in others], (1 - 1 / self._rf) * 100)
        if point[0] >= cutoff:
            return TrialScheduler.CONTINUE
        if self._cost and not any(dominates(o, point) for o in others):
            self.kept_by_front += 1
            return TrialScheduler.CONTINUE
        return TrialScheduler.STOP

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        pass  # rungs are recorded as results arrive

    def debug_string(self) -> str:
        per = {m: sum(len(r) for (_, rung), r in self._rungs.items() if rung == m)
               for m in self._milestones}  # fmt: skip
        sizes = ", ".join(f"{m:g}: {n}" for m, n in per.items())
        return (
            f"ParetoASHA: stopped {self.num_stopped}, kept by the front {self.kept_by_front}; "
            f"trials per rung {{{sizes}}}"
        )

    # What save() writes besides the rungs: settings and counters, all plain JSON values.
    _STATE = ("_metric", "_mode", "_cost", "_group_by", "_sign", "_time_attr", "_max_t", "_rf",
              "_milestones", "num_stopped", "kept_by_front")  # fmt: skip

    def save(self, checkpoint_path: str) -> None:
        """Write the scheduler's state as JSON (never a pickle: restoring runs no code)."""
        from trainables.atomic import atomic_write

        state = {k: getattr(self, k) for k in self._STATE}
        # JSON has no tuple keys: each rung is [group, milestone, {trial_id: [metric, *costs]}].
        state["rungs"] = [
            [group, milestone, {t: [float(v) for v in p] for t, p in points.items()}]
            for (group, milestone), points in self._rungs.items()
        ]
        text = json.dumps({"format": "peftsearch.ParetoASHA/1", **state})
        atomic_write(checkpoint_path, lambda tmp: tmp.write_text(text))

    def restore(self, checkpoint_path: str) -> None:
        """Load what :meth:`save` wrote; anything else (a pickle) raises ``ValueError``."""
        with open(checkpoint_path, "rb") as f:
            state = json.loads(f.read().decode("utf-8"))
        if not isinstance(state, dict) or state.get("format") != "peftsearch.ParetoASHA/1":
            raise ValueError(f"{checkpoint_path}: not a ParetoASHA state saved as JSON")
        for k in self._STATE:
            if k in state:
                setattr(self, k, state[k])
        if isinstance(self._cost, str):  # saved before several costs: one name
            self._cost = [self._cost]
        self._rungs = {
            (group, milestone): {t: tuple(p) for t, p in points.items()}
            for group, milestone, points in state["rungs"]
        }
