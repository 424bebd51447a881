"""The fixed start of a trial in a search: with Tune's actor reuse (peftsearch's setting) and
without it (Tune's default).

A search of 8 short trials run one at a time (linear_probe on the cached features of 64 BBC
articles: a trial's own work is well under a second), so the wall time per trial is almost all
the fixed cost of starting one: a worker process, its imports, the model's load. The fixed start
is the search's wall time per trial (``fit()`` alone: data preparation and Ray's start are
outside it) minus the trial's own time (Tune's ``time_total_s``). Both settings alternate over
repetitions.

    python benchmarks/trial_start.py [--quick]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / p) for p in ("src", ".")]

from benchmarks._common import parser, save, table  # noqa: E402

TRIALS = 8


def search_once(reuse: bool, storage: Path) -> dict:
    """One search; Tune's TuneConfig is given ``reuse_actors=reuse`` whatever the driver says."""
    import ray.tune
    from ray.tune import TuneConfig

    import search

    class Config(TuneConfig):  # the driver builds its TuneConfig through ray.tune
        def __init__(self, *a, **k):
            super().__init__(*a, **{**k, "reuse_actors": reuse})

    space = {
        "experiment": {"name": f"start-{reuse}", "model": "minilm", "max_length": 64,
                       "max_train_samples": 64, "max_eval_samples": 32, "seed": 0},
        "train": {"epochs": 1, "evals_per_epoch": 1, "batch_size": 16, "precision": "fp32"},
        "methods": {"linear_probe": {"learning_rate": {"log": [1e-2, 1e-1]}}},
        "search": {"searcher": "random", "num_samples": TRIALS, "max_concurrent": 1},
        "scheduler": {"type": "none"},
        "storage": str(storage),
    }  # fmt: skip
    from search.space import validate

    fit = {}
    original_fit = ray.tune.Tuner.fit

    def timed_fit(self):
        started = time.perf_counter()
        try:
            return original_fit(self)
        finally:
            fit["s"] = time.perf_counter() - started

    ray.tune.TuneConfig, ray.tune.Tuner.fit = Config, timed_fit
    try:
        res = search.run(validate(space, "trial_start"), quiet=True)
    finally:
        ray.tune.TuneConfig, ray.tune.Tuner.fit = TuneConfig, original_fit
    own = float(res.trials["wall_time_s"].mean())
    per_trial = fit["s"] / len(res.trials)
    return {"reuse_actors": reuse, "fit_s": round(fit["s"], 2), "per_trial_s": round(per_trial, 2),
            "trial_own_s": round(own, 2), "fixed_start_s": round(per_trial - own, 2)}  # fmt: skip


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    reps = 1 if args.quick else args.reps
    import ray

    from search.preflight import init_ray

    init_ray(None)  # one local Ray for every search: its start is not a trial's
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for rep in range(reps):
            for reuse in (False, True) if rep % 2 == 0 else (True, False):
                rows.append({"rep": rep, **search_once(reuse, Path(d) / f"{rep}")})
                print(table(rows[-1:]), flush=True)
    ray.shutdown()
    summary = {}
    for reuse in (False, True):
        xs = [r["fixed_start_s"] for r in rows if r["reuse_actors"] is reuse]
        summary["with_reuse" if reuse else "without_reuse"] = {
            "fixed_start_s_median": round(statistics.median(xs), 2),
            "fixed_start_s": xs,
        }
    print(table(rows))
    print(summary)
    print(save("trial_start", {"trials_per_search": TRIALS, "rows": rows, "summary": summary},
               args.quick))  # fmt: skip


if __name__ == "__main__":
    main()
