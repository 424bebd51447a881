"""Early stopping: accuracy-only ASHA vs Pareto-aware ASHA (each also per method) vs none.

    python benchmarks/early_stopping.py [--quick] [--schedulers asha pareto_asha ...]

The offline default (MiniLM on BBC News), four methods, 24 trials of 9
evaluation rounds (3 epochs, 3 evaluations each; ASHA: grace 1, reduction
factor 3), each ASHA also with rungs per method (``per_method: true``: a
trial competes only with its own method's). The random searcher with one seed proposes the same 24
configurations under every scheduler, so the differences are the scheduler's
alone (checked: ``same_configs``). Reports total trial time and evaluation
rounds run, the best validation accuracy (300 validation articles: one is
0.33 points) and the hypervolume of the (trainable parameters, accuracy)
front (log10 parameters, reference point: every parameter, accuracy 0).
Goal (issue 7): the best within 0.5 points of no early stopping, at no more
than a third of its compute.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parser, save, table  # noqa: E402


def space(storage: str, quick: bool, scheduler: str) -> dict:
    kind, _, per = scheduler.partition(" ")
    return {
        "experiment": {"model": "minilm", "dataset": "bbc_news", "max_length": 96,
                       "max_train_samples": 64 if quick else 400,
                       "max_eval_samples": 50 if quick else 300},
        "train": {"epochs": 2 if quick else 3, "evals_per_epoch": 2 if quick else 3,
                  "batch_size": 16},
        "methods": {
            "full": {"learning_rate": {"log": [3e-5, 3e-4]}},
            "linear_probe": {"learning_rate": {"log": [1e-2, 3e-1]}},
            "adapter": {"adapter_size": {"choice": [8, 32, 64]},
                        "learning_rate": {"log": [1e-3, 1e-2]}},
            "lora": {"lora_rank": {"choice": [2, 8, 16]}, "learning_rate": {"log": [1e-3, 1e-2]}},
        },
        "search": {"searcher": "random", "num_samples": 4 if quick else 24, "max_concurrent": 2},
        "scheduler": {"type": kind, "per_method": bool(per), "grace_period": 1, "reduction_factor": 2 if quick else 3},
        "storage": storage,
    }  # fmt: skip


# "per method": rungs per method (scheduler.per_method), so a trial competes with its own kind.
SCHEDULERS = ("none", "asha", "pareto_asha", "asha per method", "pareto_asha per method")


def hypervolume(trials, total_params: float) -> float:
    """Area dominated by the front in (log10 params, accuracy), up to (log10 total, 0)."""
    from reports.figure_data import healthy, pareto_front

    front = pareto_front(healthy(trials))
    ref = math.log10(total_params)
    # The front is sorted by parameters, accuracy rising: each point dominates the strip
    # from its own x to the next point's x (the last one: to the reference).
    xs = [math.log10(max(1.0, x)) for x in front["trainable_params"]]
    ys = list(front["val_accuracy"])
    return sum(((xs[i + 1] if i + 1 < len(xs) else ref) - xs[i]) * ys[i] for i in range(len(xs)))


def main() -> None:
    import search
    from reports.figure_data import healthy, pareto_front
    from search.space import validate

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--schedulers", nargs="+", choices=SCHEDULERS, default=None,
                   help="run only these (none is always run first: the others compare with it)")  # fmt: skip
    args = p.parse_args()
    chosen = SCHEDULERS[::2] if args.quick else SCHEDULERS
    if args.schedulers:
        chosen = ("none", *[x for x in SCHEDULERS[1:] if x in args.schedulers])
    rows, configs, load_start = [], {}, os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        for scheduler in chosen:
            s = validate(space(d, args.quick, scheduler), f"early-{scheduler}")
            res = search.run(s, name=scheduler.replace(" ", "-"), quiet=True)
            t = res.trials
            knobs = [
                c
                for c in t.columns
                if c in ("method", "learning_rate", "adapter_size", "lora_rank")
            ]
            configs[scheduler] = sorted(t[knobs].round(12).astype(str).itertuples(index=False))
            rows.append({"scheduler": scheduler, "trials": len(t),
                         "stopped_early": int(t["stopped_early"].sum()),
                         "rounds": int(t["iterations"].sum()),
                         "trial_time_s": round(float(t["wall_time_s"].sum()), 1),
                         "best_val_accuracy": round(float(t["val_accuracy"].max()), 4),
                         "hypervolume": round(hypervolume(t, float(t["total_params"].max())), 3),
                         "front": ", ".join(pareto_front(healthy(t))["method"])})  # fmt: skip
    base = rows[0]
    for r in rows:
        r["compute_vs_none"] = round(r["trial_time_s"] / base["trial_time_s"], 3)
        r["rounds_vs_none"] = round(r["rounds"] / base["rounds"], 3)
        r["best_minus_none_points"] = round(
            100 * (r["best_val_accuracy"] - base["best_val_accuracy"]), 2
        )
    print(table(rows))
    met = {r["scheduler"]: r["best_minus_none_points"] >= -0.5 and r["compute_vs_none"] <= 1 / 3
           for r in rows[1:]}  # fmt: skip
    same = all(c == configs["none"] for c in configs.values())
    print(f"\nthe same configurations under every scheduler: {same}")
    print(f"goal (best within 0.5 points at <= 1/3 of the compute): {met}")
    path = save("early_stopping", {"rows": rows, "goal": "best within 0.5 points at <= 1/3 compute",
                                   "met": met, "same_configs": same,
                                   "loadavg_start": [round(x, 2) for x in load_start],
                                   "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
                args.quick)  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
