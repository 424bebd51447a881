"""A compact live view of a search: one line per evaluation and per trial end."""

from __future__ import annotations

import time

from ray.tune import Callback

from search.rundir import TRIALS_FILE


def _last_error_line(trial) -> str:
    """The line of a trial's error file that names the exception."""
    try:
        with open(trial.error_file) as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except (OSError, TypeError):
        return f"see {TRIALS_FILE}"
    named = [ln for ln in lines if "Error" in ln or "Exception" in ln]
    return (named or lines or ["?"])[-1][:160]


class ProgressPrinter(Callback):
    """Prints each trial's evaluations, how it ended, and the best so far per method."""

    def __init__(self, metric: str = "val_accuracy", mode: str = "max") -> None:
        self.metric, self.sign = metric, 1.0 if mode == "max" else -1.0  # the ranking metric
        self.started = time.time()
        self.best: dict[str, float] = {}
        self.counts = {"finished": 0, "stopped": 0, "errored": 0}

    def _line(self, text: str) -> None:
        print(f"[{time.time() - self.started:6.0f}s] {text}", flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        method = result.get("method", "?")
        value = result.get(self.metric)
        if value is None:
            return
        best = self.best.get(method)
        if best is None or self.sign * value > self.sign * best:
            self.best[method] = value
        self._line(
            f"{trial.trial_id} {method:<13} round {result['training_iteration']}/"
            f"{result.get('planned_iterations', '?')}  {self.metric} {value:.4f}"
        )

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        done, planned = last.get("training_iteration", 0), last.get("planned_iterations")
        early = planned is not None and done < planned
        self.counts["stopped" if early else "finished"] += 1
        how = f"stopped early at round {done}/{planned}" if early else "finished"
        self._line(
            f"{trial.trial_id} {last.get('method', '?'):<13} {how}  | {self._summary(trials)}"
        )

    def on_trial_error(self, iteration, trials, trial, **info):
        self.counts["errored"] += 1
        method = (trial.last_result or {}).get("method") or trial.config.get("method", "?")
        self._line(
            f"{trial.trial_id} {method:<13} FAILED: {_last_error_line(trial)}  | {self._summary(trials)}"
        )

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._line(
            f"{trial.trial_id} failed ({_last_error_line(trial)}); retrying from its last checkpoint"
        )

    def _summary(self, trials) -> str:
        running = sum(t.status == "RUNNING" for t in trials)
        best = ", ".join(
            f"{m} {v:.3f}" for m, v in sorted(self.best.items(), key=lambda kv: -self.sign * kv[1])
        )
        c = self.counts
        return (
            f"running {running}, finished {c['finished']}, stopped {c['stopped']}, "
            f"errored {c['errored']}; best {self.metric}: {best}"
        )
