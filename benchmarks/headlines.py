"""Headlines: the seq2seq demo (spaces/headlines.yaml), then each method confirmed on test.

    python benchmarks/headlines.py [--quick] [--seeds N]

1. ``peftsearch run headlines`` as shipped (BBC News bodies -> titles, MiniLM warm-started as a
   BERT2BERT encoder-decoder, ASHA on validation ROUGE-L): its wall time is the demo's, whose
   bound is 10 minutes on 2 CPU cores.
2. ``confirm --per-method --top 1``: each method's best configuration by validation ROUGE-L,
   retrained with ``--seeds`` seeds (3), each read once on the held-out test split (10% of
   BBC News, 222 articles) at its best validation round.
Rows: trainable % (and without the parameters every method trains: the new cross-attention),
test ROUGE-1/2/L mean ± std over seeds, and the validation-to-test gap of ROUGE-L. Nothing is
downloaded: the model and the data come from PyPI.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parser, save, table  # noqa: E402

SPACE = Path(__file__).resolve().parents[1] / "spaces" / "headlines.yaml"
SCORES = ("rouge1", "rouge2", "rougeL")


def _ms(values) -> str:
    """``mean ± std`` of a column (already x100: ROUGE is on a 0-100 scale)."""
    import pandas as pd

    v = pd.to_numeric(values, errors="coerce").dropna()
    return f"{v.mean():.2f} ± {v.std():.2f}" if len(v) > 1 else f"{v.mean():.2f}"


def rows(res, conf) -> list[dict]:
    """One row per method: its confirmed configuration's test figures."""
    out = []
    trials = res.trials.set_index("trial_id")
    for (trial_id, method), runs in conf[conf["status"] == "ok"].groupby(["trial_id", "method"]):
        t = trials.loc[trial_id]
        new = float(t.get("new_params") or 0)
        total = float(t["total_params"])
        row = {"method": method, "trainable_%": round(100 * t["trainable_params"] / total, 2),
               "method_%": round(100 * (t["trainable_params"] - new) / total, 2)}  # fmt: skip
        for s in SCORES:
            row[f"test_{s}"] = _ms(runs[f"test_{s}"])
        val, test = runs["best_val_metric"].mean(), runs["test_rougeL"].mean()
        row["val_rougeL"] = f"{val:.2f}"
        row["val_test_gap"] = round(float(val - test), 2)
        row["seeds"] = len(runs)
        out.append(row)
    return out


def main() -> None:
    import yaml

    import search
    from search.confirm import confirm
    from search.space import validate

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=None, help="confirm seeds per method (3)")
    args = p.parse_args()
    raw = yaml.safe_load(SPACE.read_text())
    if args.quick:
        raw["experiment"].update(max_train_samples=64, max_eval_samples=16)
        raw["search"]["num_samples"] = 4
        raw["train"]["epochs"] = 1
    seeds = args.seeds or (1 if args.quick else 3)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        raw["storage"] = tmp
        started = time.time()
        res = search.run(validate(raw, str(SPACE)), name="headlines", quiet=True)
        demo_s = time.time() - started
        print(f"demo: {len(res.trials)} trials in {demo_s:.0f} s", flush=True)
        started = time.time()
        conf = confirm(res.run_dir, seeds=seeds, top=1, per_method=True, quiet=True)
        confirm_s = time.time() - started
    out = rows(res, conf)
    print(table(out))
    figures = {
        "settings": {
            "space": "spaces/headlines.yaml",
            "seeds": seeds,
            "overrides": "quick: 64 train, 16 eval, 4 trials, 1 epoch" if args.quick else None,
        },  # fmt: skip
        "rows": out,
        "demo_wall_s": round(demo_s),
        "demo_trials": len(res.trials),
        "demo_methods": sorted(res.trials["method"].unique()),
        "confirm_wall_s": round(confirm_s),
        "test_examples": int(conf["n_test"].iloc[0]) if "n_test" in conf else None,
        "met": {"demo_under_10_min": demo_s <= 600},
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "command": " ".join(["python benchmarks/headlines.py", *sys.argv[1:]]),
    }
    print(f"wrote {save('headlines', figures, args.quick)}")


if __name__ == "__main__":
    main()
