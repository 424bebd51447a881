"""Frozen-feature cache: linear_probe and top adapter trials with and without it.

    python benchmarks/feature_cache.py [--quick]

The same trial (MiniLM on BBC News, the same settings and seed) runs once on
token ids through the frozen encoder and once on encoder features computed
once per search. Goal (issue 7): at least 10x faster, same accuracy within
noise. Reports the trial's training + evaluation time, and the one-time
feature pass apart.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parser, save, table  # noqa: E402

CONFIGS = {
    "linear_probe": {"learning_rate": 0.03},
    "adapter (top)": {"adapter_placement": "top", "adapter_size": 64, "learning_rate": 3e-3},
}


def main() -> None:
    import dataclasses

    from search.driver import prepare_data
    from search.space import validate
    from trainables.features import add_features
    from trainables.trial import run_trial

    args = parser(__doc__.splitlines()[0]).parse_args()
    n_train, epochs = (160, 1) if args.quick else (400, 2)
    space = validate(
        {"experiment": {"model": "minilm", "dataset": "bbc_news", "max_length": 128,
                        "max_train_samples": n_train, "max_eval_samples": 150},
         "methods": ["linear_probe"]}, "feature_cache")  # fmt: skip
    data = prepare_data(space, progress=False).without("test")
    started = time.perf_counter()
    cached = add_features(dataclasses.replace(data), space.model)
    feature_pass = time.perf_counter() - started
    rows = []
    for name, knobs in CONFIGS.items():
        method = name.split()[0]
        flat = {"method": method, **knobs, "epochs": epochs, "evals_per_epoch": 2, "seed": 0}
        out = {}
        for label, d in (("tokens", data), ("cached", cached)):
            t0 = time.perf_counter()
            result = run_trial(flat, d, space.model, lambda m, g: None, cpus=2)
            out[label] = (time.perf_counter() - t0 - result["setup_s"], result)
        (t_tok, r_tok), (t_cache, r_cache) = out["tokens"], out["cached"]
        assert r_cache["feature_cache"] and not r_tok["feature_cache"]
        rows.append({
            "method": name, "train_eval_s_tokens": round(t_tok, 2),
            "train_eval_s_cached": round(t_cache, 3), "speedup": round(t_tok / t_cache, 1),
            "speedup_with_feature_pass": round(t_tok / (t_cache + feature_pass), 1),
            "best_val_acc_tokens": round(r_tok["best_val_accuracy"], 4),
            "best_val_acc_cached": round(r_cache["best_val_accuracy"], 4),
        })  # fmt: skip
    print(table(rows))
    print(f"\none-time feature pass (train + validation): {feature_pass:.1f} s")
    met = all(r["speedup"] >= 10 for r in rows)
    path = save("feature_cache", {"rows": rows, "feature_pass_s": round(feature_pass, 2),
                                  "n_train": n_train, "epochs": epochs, "goal": ">= 10x",
                                  "met": met}, args.quick)  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
