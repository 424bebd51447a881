"""Design space: does searching placement pay, and does the layer cache make it cheaper?

    python benchmarks/design_space.py [--quick] [--tasks sst2 rte] [--seeds N] [--trials N]
                                      [--train N] [--storage DIR]

Data from ../shared/data (see its README; exits 0 saying so when it is
missing): SST-2 (single sentences) and RTE (sentence pairs), validation a
stratified 10% of each training file. Nothing here reads a test split: every
figure is validation accuracy, the quantity the searches select by.

Three arms, each a multi-objective search of (validation accuracy, trainable
parameters) - TPE over the methods and their knobs, Pareto-ASHA - with the
same methods, learning-rate ranges, data and budget:

(a) ``fixed``: the methods with placement fixed to every layer (today's
    all-methods space: ``layers: all``), no layer cache;
(b) ``placement``: the same plus placement knobs - a layer mask (one bit per
    layer, AutoPEFT's) on adapter, LoRA, IA3 and prefix, adapter insertion and
    position - without the layer cache;
(c) ``cached``: (b) with the layer cache (hidden states entering the lowest
    trained layer computed once per search).

Per task and seed (the experiment's seed: split, initialisation, data order,
TPE's seed) the three arms run in a rotating order so that a drift in the
machine's load falls on all. The figure is the hypervolume of each run's front
(:mod:`reports.hypervolume`, reference point from the model and task) at equal
trial-seconds: the smallest total of the runs on that task, plus, for (c), the
driver's time building the cache charged as trial time (the cache is not free).
Mean ± std over seeds.

Then the components: MAM against its prefix and parallel adapter, UniPELT
against its LoRA, prefix and sequential adapter, and a parallel against a
sequential adapter of the same size, each a fixed configuration trained with
the same settings on the same seeds (a grid search of single configurations),
validation accuracy mean ± std.
"""

from __future__ import annotations

import json
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
    "sst2": {"files": {"train": "sst2/train.tsv"}, "text": "sentence", "label": "label",
             "max_length": 64},
    "rte": {"files": {"train": "rte/train.tsv"}, "text": "sentence1", "text_pair": "sentence2",
            "label": "label", "max_length": 128},
}  # fmt: skip
MASK = {"layers": {"mask": True}}
# (a): placement fixed to every layer (the default of the layers knob).
FIXED = {
    "linear_probe": {"learning_rate": {"log": [1e-2, 3e-1]}},
    "bitfit": {"learning_rate": {"log": [1e-3, 1e-2]}},
    "freeze": {"freeze_layers": {"int": [1, 5]}, "learning_rate": {"log": [3e-5, 3e-4]}},
    "adapter": {"adapter_size": {"log_int": [4, 64]}, "learning_rate": {"log": [1e-3, 1e-2]}},
    "lora": {"lora_rank": {"choice": [2, 8, 32]}, "learning_rate": {"log": [1e-3, 1e-2]}},
    "ia3": {"learning_rate": {"log": [3e-3, 3e-2]}},
    "prefix": {"prefix_length": {"choice": [4, 16]}, "learning_rate": {"log": [3e-3, 3e-2]}},
}
# (b), (c): the same plus placement.
PLACEMENT = {
    **FIXED,
    "adapter": {**FIXED["adapter"], **MASK,
                "adapter_insertion": {"choice": ["sequential", "parallel"]},
                "adapter_position": {"choice": ["ffn", "attention", "both"]}},
    "lora": {**FIXED["lora"], **MASK},
    "ia3": {**FIXED["ia3"], **MASK},
    "prefix": {**FIXED["prefix"], **MASK},
}  # fmt: skip
ARMS = {"fixed": (FIXED, "off"), "placement": (PLACEMENT, "off"), "cached": (PLACEMENT, "fp32")}
# The components: fixed configurations (one grid search per task and seed), learning rates
# in the middle of the searches' ranges.
SIZE, PREFIX, RANK = 32, 8, 8
COMPONENTS = {
    "mam": {"prefix_length": PREFIX, "adapter_size": SIZE, "learning_rate": 5e-3},
    "unipelt": {"lora_rank": RANK, "prefix_length": PREFIX, "adapter_size": SIZE,
                "learning_rate": 5e-3},
    "prefix": {"prefix_length": PREFIX, "learning_rate": 1e-2},
    "lora": {"lora_rank": RANK, "learning_rate": 3e-3},
    # parallel against sequential at equal size, on the feed-forward block (MAM's adapter)
    "adapter": {"adapter_size": SIZE, "adapter_position": "ffn",
                "adapter_insertion": {"choice": ["sequential", "parallel"]},
                "learning_rate": 3e-3},
}  # fmt: skip
FRACTIONS = (0.5, 1.0)


def _dataset(task: str) -> tuple[dict, int]:
    t = dict(TASKS[task])
    files = {k: str(DATA / v) for k, v in t.pop("files").items()}
    return {"files": files, **{k: t[k] for k in ("text", "text_pair", "label") if k in t}}, t[
        "max_length"
    ]


def space(task: str, seed: int, b: dict, storage: str, methods: dict, cache: str) -> dict:
    """One search: the benchmark's settings with ``methods`` and the layer cache ``cache``."""
    dataset, max_length = _dataset(task)
    return {
        "experiment": {"model": "minilm", "dataset": dataset, "max_length": max_length,
                       "split": {"validation": 0.1, "test": 0}, "max_train_samples": b["train"],
                       "max_eval_samples": b["eval"], "seed": seed, "layer_cache": cache},
        "train": {"epochs": 1, "evals_per_epoch": 2, "batch_size": 16},
        "methods": methods,
        "search": {"num_samples": b["trials"], "objectives": ["val_accuracy", "trainable_params"],
                   "max_concurrent": 1},
        "scheduler": {"type": "pareto_asha", "grace_period": 1, "reduction_factor": 2},
        "resources": {"cpu": 2},
        "storage": storage,
    }  # fmt: skip


def cache_seconds(res) -> float:
    """The driver's time building the layer cache (0 without one), from the run's record."""
    meta = json.loads((Path(res.run_dir) / "run.json").read_text())
    return float(meta.get("data", {}).get("layer_cache_s", 0.0) or 0.0)


def front(res) -> list[dict]:
    """The run's Pareto-optimal trials: method, knobs, accuracy, trainable parameters."""
    from reports.figure_data import healthy, pareto_front_nd

    rows = pareto_front_nd(
        healthy(res.trials), ["val_accuracy", "trainable_params"], ["max", "min"]
    )
    return [{"method": r["method"], "knobs": r["knobs_json"],
             "val_accuracy": round(float(r["val_accuracy"]), 4),
             "trainable_params": int(r["trainable_params"])} for _, r in rows.iterrows()]  # fmt: skip


def describe(res, arm: str, task: str, seed: int) -> dict:
    """One search: trial time, the cache's build time, its front and hypervolume curve."""
    from reports.hypervolume import hypervolume_curve

    t = res.trials
    curve = hypervolume_curve(t)
    return {"arm": arm, "task": task, "seed": seed, "trials": len(t),
            "trial_seconds": round(float(t["wall_time_s"].fillna(0).sum()), 1),
            "cache_seconds": round(cache_seconds(res), 2),
            "methods_run": t["method"].value_counts().to_dict(),
            "best_val_accuracy": round(float(t["val_accuracy"].max()), 4),
            "final_hypervolume": curve["final"], "front": front(res),
            "curve": curve["per_trial"], "reference_note": curve["reference_note"],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()]}  # fmt: skip


def hv_at(run: dict, seconds: float) -> float:
    """The run's hypervolume after ``seconds`` of trial time, its cache's build time charged."""
    spent = [p for p in run["curve"] if p["trial_seconds"] + run["cache_seconds"] <= seconds]
    return spent[-1]["hypervolume"] if spent else 0.0


def _ms(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def compare(runs: list[dict], task: str) -> list[dict]:
    """Per arm, the hypervolume at fractions of the task's equal budget: mean ± std over seeds."""
    mine = [r for r in runs if r["task"] == task]
    budget = min(r["trial_seconds"] + r["cache_seconds"] for r in mine)
    rows = []
    for f in FRACTIONS:
        row = {"task": task, "trial_seconds": round(f * budget, 1)}
        for arm in ARMS:
            m, s = _ms([hv_at(r, f * budget) for r in mine if r["arm"] == arm])
            row[arm] = f"{m:.4f} ± {s:.4f}"
            row[f"{arm}_mean"], row[f"{arm}_std"] = round(m, 4), round(s, 4)
        rows.append(row)
    return rows


def _component(row) -> str:
    """A component's name: the method, and the adapter's insertion."""
    if row["method"] != "adapter":
        return row["method"]
    return f"adapter_{row['adapter_insertion']}_ffn"


def components(task: str, seeds: list[int], b: dict, storage: str) -> list[dict]:
    """The fixed component configurations, each trained on every seed: validation accuracy."""
    from reports.figure_data import healthy

    scores: dict[str, list[float]] = {}
    params: dict[str, int] = {}
    for seed in seeds:
        raw = space(task, seed, b, storage, COMPONENTS, "off")
        raw["search"] = {"searcher": "grid", "objectives": ["val_accuracy"], "max_concurrent": 1}
        raw["scheduler"] = {"type": "none"}
        res = run_search(raw, f"{task}-components-s{seed}")
        for _, r in healthy(res.trials).iterrows():
            scores.setdefault(_component(r), []).append(float(r["val_accuracy"]))
            params[_component(r)] = int(r["trainable_params"])
    rows = []
    for name, values in scores.items():
        m, s = _ms(values)
        rows.append({"task": task, "config": name, "trainable_params": params[name],
                     "val_accuracy": f"{100 * m:.2f} ± {100 * s:.2f}", "seeds": len(values),
                     "mean": round(100 * m, 2), "std": round(100 * s, 2)})  # fmt: skip
    return rows


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--seeds", type=int, default=None, help="seeds per arm (default 3)")
    p.add_argument("--trials", type=int, default=None, help="trials per search (default 12)")
    p.add_argument("--train", type=int, default=None, help="training examples (default 500)")
    p.add_argument("--storage", default=None, help="keep the runs here (default: a temp dir)")
    args = p.parse_args()
    if not DATA.is_dir():
        print(f"{DATA} is missing: the design-space benchmark needs ../shared/data; nothing to do")
        return
    q = args.quick
    b = {"train": args.train or (100 if q else 500), "eval": 100 if q else 250,
         "trials": args.trials or (3 if q else 12)}  # fmt: skip
    seeds = list(range(args.seeds or (1 if q else 3)))
    started, load_start = time.time(), os.getloadavg()
    runs, rows, parts = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        storage = args.storage or tmp
        for task in args.tasks:
            for i, seed in enumerate(seeds):
                order = list(ARMS)[i % 3 :] + list(ARMS)[: i % 3]  # rotate: drift falls on all
                for arm in order:
                    methods, cache = ARMS[arm]
                    raw = space(task, seed, b, storage, methods, cache)
                    res = run_search(raw, f"{task}-{arm}-s{seed}")
                    runs.append(describe(res, arm, task, seed))
            rows += compare(runs, task)
            parts += components(task, seeds, b, storage)
            print(table([{k: r[k] for k in ("task", "trial_seconds", *ARMS)} for r in rows]))
            print(table([{k: r[k] for k in ("task", "config", "trainable_params",
                                            "val_accuracy")} for r in parts]))  # fmt: skip
        figures = {
            "settings": {**b, "seeds": seeds, "model": "minilm", "epochs": 1,
                         "evals_per_epoch": 2, "batch_size": 16, "scheduler": "pareto_asha",
                         "searcher": "tpe", "max_concurrent": 1, "cpu_per_trial": 2,
                         "objectives": ["val_accuracy", "trainable_params"],
                         "arms": {a: {"methods": m, "layer_cache": c}
                                  for a, (m, c) in ARMS.items()},
                         "components": COMPONENTS},
            "rows": rows,
            "components": parts,
            "runs": runs,
            "wall_time_s": round(time.time() - started),
            "loadavg_start": [round(x, 2) for x in load_start],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "command": " ".join(["python benchmarks/design_space.py", *sys.argv[1:]]),
        }  # fmt: skip
        path = save("design_space", figures, q)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
