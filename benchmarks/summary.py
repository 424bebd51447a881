"""The README's benchmark summary: one line per benchmark from results/*.json.

python benchmarks/summary.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS  # noqa: E402


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def lines() -> list[tuple[str, str, str, str]]:
    """(benchmark, figure, goal, met) rows for what has results."""
    out = []
    if r := _load("overhead"):
        worst_bare = max(x["ratio_vs_bare"] for x in r["rows"])
        worst_tr = max(x["ratio_vs_trainer"] for x in r["rows"])
        out.append(("overhead", f"step time ≤ {worst_bare:.2f}x bare loop, ≤ {worst_tr:.2f}x Trainer "
                    f"({', '.join(x['method'] for x in r['rows'])})", "≤ 1.03x bare, < 1x Trainer",
                    "yes" if r["met"] else "no"))  # fmt: skip
    if r := _load("startup"):
        tok = r["tokenization"]
        worst = max(x["ratio_vs_bare"] for x in r["rows"])
        out.append(("startup", f"{tok['passes']:g} tokenization pass per search, "
                    f"{tok['trial_tokenizer_calls']} in trials; first step ≤ {worst:.2f}x a "
                    "hand-written load + step", "one tokenization pass", "yes" if r["met"] else "no"))  # fmt: skip
    if r := _load("early_stopping"):
        rows = {x["scheduler"]: x for x in r["rows"]}
        parts = [f"{s}: {x['compute_vs_none']:.2f}x time ({x.get('rounds_vs_none', float('nan')):.2f}x "
                 f"rounds), best {x['best_minus_none_points']:+.1f} pt"
                 for s, x in rows.items() if s != "none"]  # fmt: skip
        out.append(("early_stopping", "; ".join(parts), "best within 0.5 pt at ≤ 1/3 compute",
                    ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in r["met"].items())))  # fmt: skip
    if r := _load("feature_cache"):
        out.append(("feature_cache", ", ".join(f"{x['method']} {x['speedup']:.0f}x" for x in r["rows"]),
                    "≥ 10x, same accuracy", "yes" if r["met"] else "no"))  # fmt: skip
    if r := _load("memory"):
        out.append(("memory", f"worst PEFT / full peak RSS: {r['worst_peft_ratio']:.2f}x as is, "
                    f"{r['worst_peft_ckpt_ratio']:.2f}x with gradient checkpointing "
                    f"({r['worst_peft_ckpt_vs_full_ckpt']:.2f}x of full with it too)", "≤ 0.7x",
                    f"as is: {'yes' if r['met_default'] else 'no'}, with checkpointing: "
                    f"{'yes' if r['met_with_checkpointing'] else 'no'}"))  # fmt: skip
    if r := _load("quality"):
        v = r["verdicts"]
        out.append(("quality", "; ".join(f"{t}: full {x['full']}, best ≤1% {x['best_under_1pct']}, "
                    f"best {x['best']}" for t, x in v.items()), "≤1% params within 1 pt of full",
                    ", ".join(f"{t}: {'yes' if x['under_1pct_within_1pt'] else 'no'}"
                              for t, x in v.items())))  # fmt: skip
    if r := _load("report_scale"):
        k = next(x for x in r["rows"] if x["trials"] == 1000)
        out.append(("report_scale", f"1,000 trials: {k['build_s']} s, {k['html_mb']} MB",
                    "a few seconds, < 10 MB", "yes" if r["met"] else "no"))  # fmt: skip
    if r := _load("cluster_scaling"):
        out.append(("cluster_scaling", f"2 nodes / 1 node: {r['ratio']:.2f}x trials per hour",
                    "≥ 1.8x", "yes" if r["met"] else "no"))  # fmt: skip
    return out


def quality_lines() -> list[str]:
    """Test accuracy per task and method (mean ± std over seeds), from quality.json."""
    r = _load("quality")
    if not r:
        return []
    caps = {
        t: f"{v.get('train_cap', r['train_cap'])} training examples"
        for t, v in r["verdicts"].items()
    }
    out = ["Quality: MiniLM, a Pareto search per task, then `confirm --per-method` (3 seeds, "
           "test mean ± std); " + ", ".join(f"{t}: {c}" for t, c in caps.items()) + ".", "",
           "| task | method | trainable % | test accuracy | published, other models |",
           "|---|---|---|---|---|"]  # fmt: skip
    for task, v in r["verdicts"].items():
        rows = sorted((x for x in r["rows"] if x["task"] == task), key=lambda x: x["trainable_%"])
        for i, x in enumerate(rows):
            context = v["published_context"] if i == 0 else ""
            out.append(f"| {task} | {x['method']} | {x['trainable_%']:g} | "
                       f"{x['test_acc_mean']:.2f} ± {x['test_acc_std']:.2f} | {context} |")  # fmt: skip
    return out


if __name__ == "__main__":
    print("| benchmark | measured | goal | met |\n|---|---|---|---|")
    for row in lines():
        print("| " + " | ".join(row) + " |")
    if quality := quality_lines():
        print("\n" + "\n".join(quality))
