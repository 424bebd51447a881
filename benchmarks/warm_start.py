"""Warm start: AG News searches warm-started from an SST-2 run vs cold, by hypervolume.

    python benchmarks/warm_start.py [--quick] [--seeds N] [--trials N] [--train N]
                                    [--storage DIR]

Data from ../shared/data (see its README; exits 0 saying so when it is
missing). One SST-2 search is the source, with seed 100: not one of the AG
News seeds, whose TPE sampler would otherwise draw the very configurations the
source ran. Then, for each seed (the experiment's seed: the split,
initialisation, data order and the TPE sampler's seed), an AG News search
cold and one with ``search.warm_start``
naming the SST-2 run: the same model (MiniLM), other data and other labels,
so the warm search runs SST-2's best configuration per method first, without
its results (``search.warmstart``). Cold and warm of a seed share the split;
they run in the order cold, warm, warm, cold, ... so that a drift in the
machine's load falls on both.

Every search: MiniLM, ``max_length`` 64, ``--train`` training and 200
validation examples, 1 epoch, 2 evaluations, ``--trials`` trials of four cheap
methods (linear_probe, bitfit, lora, prompt_tuning), one trial at a time on
both cores, ASHA, objectives ``[val_accuracy, trainable_params]`` (TPE
multi-objective). The figure is the hypervolume of each run's front of
validation accuracy vs trainable parameters (:mod:`reports.hypervolume`: the
reference point follows from the model and task) after the same trial-seconds
(the trial time of the trials ended so far): the smallest total trial time of
the AG News searches, so every search is measured at a budget it reached; and
at a quarter, half and three quarters of it. Mean ± std over seeds, and the
paired difference warm - cold.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parser, run_search, save, table  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TASKS = {
    "sst2": {"files": {"train": "sst2/train.tsv"}, "text": "sentence", "label": "label"},
    "agnews": {"files": {"train": "agnews/train.tsv"}, "columns": ["text", "label"],
               "text": "text", "label": "label"},
}  # fmt: skip
# Broad ranges, so that a good configuration is worth knowing in advance.
METHODS = {
    "linear_probe": {"learning_rate": {"log": [1e-3, 1.0]}},
    "bitfit": {"learning_rate": {"log": [1e-4, 3e-2]}},
    "lora": {"lora_rank": {"choice": [4, 16]}, "learning_rate": {"log": [1e-4, 3e-2]}},
    "prompt_tuning": {"prompt_length": {"choice": [8, 20]}, "learning_rate": {"log": [1e-3, 3e-1]}},
}
FRACTIONS = (0.25, 0.5, 0.75, 1.0)
SOURCE_SEED = 100


def space(task: str, seed: int, b: dict, storage: str, warm: str | None = None) -> dict:
    """One search on ``task``: the benchmark's settings, warm-started from ``warm`` if given."""
    t = dict(TASKS[task])
    dataset = {"files": {k: str(DATA / v) for k, v in t.pop("files").items()}, **t}
    return {
        "experiment": {"model": "minilm", "dataset": dataset, "max_length": 64,
                       "split": {"validation": 0.1, "test": 0}, "max_train_samples": b["train"],
                       "max_eval_samples": b["eval"], "seed": seed},
        "train": {"epochs": 1, "evals_per_epoch": 2, "batch_size": 16},
        "methods": {m: METHODS[m] for m in b["methods"]},
        "search": {"num_samples": b["trials"], "objectives": ["val_accuracy", "trainable_params"],
                   "max_concurrent": 1, **({"warm_start": [warm]} if warm else {})},
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "resources": {"cpu": 2},
        "storage": storage,
    }  # fmt: skip


def describe(res, arm: str, seed: int) -> dict:
    """One search: its hypervolume curve, trial time and best accuracy."""
    from reports.hypervolume import hypervolume_curve

    t = res.trials
    curve = hypervolume_curve(t)
    return {"arm": arm, "seed": seed, "trials": len(t),
            "trial_seconds": round(float(t["wall_time_s"].fillna(0).sum()), 1),
            "best_val_accuracy": round(float(t["val_accuracy"].max()), 4),
            "final_hypervolume": curve["final"],
            "first_configs": [{"method": r["method"], "knobs": r["knobs_json"]}
                              for _, r in t.sort_values("ended_at").head(len(METHODS)).iterrows()],
            "curve": curve["per_trial"], "reference_note": curve["reference_note"],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()]}  # fmt: skip


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _row(at: dict, seeds: list[int]) -> dict:
    """Warm vs cold at one budget: mean ± std over seeds, and the paired difference."""
    warm = [at[("warm", s)] for s in seeds]
    cold = [at[("cold", s)] for s in seeds]
    diff = [w - c for w, c in zip(warm, cold)]
    (wm, ws), (cm, cs), (dm, ds) = _stats(warm), _stats(cold), _stats(diff)
    return {"warm": f"{wm:.4f} ± {ws:.4f}", "cold": f"{cm:.4f} ± {cs:.4f}",
            "warm - cold": f"{dm:+.4f} ± {ds:.4f}", "warm_mean": wm, "warm_std": ws,
            "cold_mean": cm, "cold_std": cs, "diff_mean": dm, "diff_std": ds,
            "warm_values": warm, "cold_values": cold, "warm_ahead": sum(d > 0 for d in diff),
            "seeds": len(seeds)}  # fmt: skip


def compare(results: dict, runs: dict, seeds: list[int]) -> tuple[float, list[dict], list[dict]]:
    """(the budget in trial-seconds, one row per fraction of it, one row per number of trials
    ended: a view that the machine's load does not move)."""
    from reports.hypervolume import hypervolume_at

    budget = min(r["trial_seconds"] for r in runs.values())
    by_time = [{"trial_seconds": round(f * budget, 1), "fraction": f, **_row(
        {k: hypervolume_at(results[k].trials, f * budget) for k in runs}, seeds)}
        for f in FRACTIONS]  # fmt: skip
    n = min(len(r["curve"]) for r in runs.values())
    by_trials = [{"trials": k, **_row({key: r["curve"][k - 1]["hypervolume"]
                                       for key, r in runs.items()}, seeds)}
                 for k in sorted({max(1, n // 4), max(1, n // 2), n})]  # fmt: skip
    return budget, by_time, by_trials


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=None, help="AG News seeds per arm (default 3)")
    p.add_argument("--trials", type=int, default=None, help="trials per search (default 8)")
    p.add_argument("--train", type=int, default=None, help="training examples (default 500)")
    p.add_argument("--storage", default=None, help="keep the runs here (default: a temp dir)")
    args = p.parse_args()
    if not DATA.is_dir():
        print(f"{DATA} is missing: the warm-start benchmark needs ../shared/data; nothing to do")
        return
    q = args.quick
    b = {"train": args.train or (100 if q else 500), "eval": 100 if q else 200,
         "trials": args.trials or (3 if q else 8),
         "methods": ["linear_probe", "lora"] if q else list(METHODS)}  # fmt: skip
    seeds = list(range(args.seeds or (2 if q else 3)))
    started, load_start = time.time(), os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        storage = args.storage or tmp
        source = run_search(space("sst2", SOURCE_SEED, b, storage), "sst2-source")
        results, runs = {}, {}
        for i, seed in enumerate(seeds):
            arms = ("cold", "warm") if i % 2 == 0 else ("warm", "cold")
            for arm in arms:
                warm = str(source.run_dir) if arm == "warm" else None
                res = run_search(space("agnews", seed, b, storage, warm), f"agnews-{arm}-s{seed}")
                results[(arm, seed)], runs[(arm, seed)] = res, describe(res, arm, seed)
        budget, rows, by_trials = compare(results, runs, seeds)
        for first, group in (("trial_seconds", rows), ("trials", by_trials)):
            print(table([{k: r[k] for k in (first, "warm", "cold", "warm - cold")} | {
                "warm ahead": f"{r['warm_ahead']}/{r['seeds']}"} for r in group]))  # fmt: skip
        figures = {
            "settings": {**b, "seeds": seeds, "model": "minilm", "max_length": 64, "epochs": 1,
                         "evals_per_epoch": 2, "scheduler": "asha", "max_concurrent": 1,
                         "cpu_per_trial": 2, "source": f"sst2, seed {SOURCE_SEED}",
                         "objectives": ["val_accuracy", "trainable_params"]},
            "budget_trial_seconds": round(budget, 1),
            "rows": rows,
            "by_trials": by_trials,
            "source": describe(source, "source", SOURCE_SEED),
            "runs": list(runs.values()),
            "wall_time_s": round(time.time() - started),
            "loadavg_start": [round(x, 2) for x in load_start],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "command": "python benchmarks/warm_start.py" + (" --quick" if q else ""),
        }  # fmt: skip
        path = save("warm_start", figures, q)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
