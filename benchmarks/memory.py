"""Peak memory (RSS) of a PEFT trial vs a full fine-tuning trial.

    python benchmarks/memory.py [--quick]

Each trial runs alone in a fresh process (MiniLM on BBC News, batch 16, 128
tokens); its peak resident memory is read from the kernel at the end. The
first row is the same process loading the model and data without training.
Goal (issue 7): a PEFT trial at most 0.7x the peak of full fine-tuning.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CONFIGS, parser, save, table  # noqa: E402

CHILD = r"""
import json, resource, sys
from search.driver import prepare_data
from search.space import validate
from trainables.model import load_classifier
from trainables.trial import run_trial
flat = json.loads(sys.argv[1]); n = int(sys.argv[2])
space = validate({"experiment": {"model": "minilm", "dataset": "bbc_news", "max_length": 128,
                  "max_train_samples": n, "max_eval_samples": 64, "feature_cache": False},
                  "methods": ["full"]}, "memory")
data = prepare_data(space, progress=False).without("test")
if flat["method"] == "none":
    load_classifier(space.model, data.num_labels)
    out = {"trainable_params": 0}
else:
    out = run_trial(flat, data, space.model, lambda m, g: None, cpus=2)
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "trainable_params": out["trainable_params"]}))
"""

METHODS = {
    "model + data only": {"method": "none"},
    **{m: {"method": m, **CONFIGS[m]}
       for m in ("full", "lora", "adapter", "prefix", "bitfit", "linear_probe")},
}  # fmt: skip


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    n = 48 if args.quick else 160
    methods = ["model + data only", "full", "lora", "linear_probe"] if args.quick else list(METHODS)
    rows = []
    for name in methods:
        flat = {**METHODS[name], "epochs": 1, "evals_per_epoch": 1, "batch_size": 16, "seed": 0}
        out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(flat), str(n)],
                             capture_output=True, text=True, check=True)  # fmt: skip
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"method": name, "trainable_params": r["trainable_params"],
                     "peak_rss_mb": round(r["peak_rss_mb"], 1)})  # fmt: skip
    full = next(r["peak_rss_mb"] for r in rows if r["method"] == "full")
    base = rows[0]["peak_rss_mb"]
    for r in rows:
        r["ratio_vs_full"] = round(r["peak_rss_mb"] / full, 3)
        r["above_model_mb"] = round(r["peak_rss_mb"] - base, 1)
    print(table(rows))
    peft = [r for r in rows if r["method"] not in ("model + data only", "full")]
    worst = max(r["ratio_vs_full"] for r in peft)
    print(f"\nworst PEFT / full peak RSS: {worst:.2f}x (goal <= 0.7x)")
    path = save("memory", {"rows": rows, "worst_peft_ratio": worst, "goal": "<= 0.7x",
                           "met": worst <= 0.7}, args.quick)  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
