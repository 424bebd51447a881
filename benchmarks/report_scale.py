"""Report build time and size for many trials (synthetic), e.g. 1,000.

    python benchmarks/report_scale.py [--quick] [--trials 1000]

Goal (issue 5): a report over 1,000 trials renders in a few seconds and stays
under 10 MB. Prints a markdown table and writes results/report_scale.json.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parser, save, table  # noqa: E402

METHODS = {  # method -> (trainable params, a knob and its values)
    "full": (22_715_141, None, []),
    "linear_probe": (1_925, None, []),
    "bitfit": (28_037, None, []),
    "lora": (75_653, "lora_rank", [2, 4, 8, 16]),
    "adapter": (151_877, "adapter_size", [8, 16, 32, 64]),
    "prefix": (75_653, "prefix_length", [8, 16, 32]),
    "prompt_tuning": (9_605, "prompt_length", [10, 20]),
    "ia3": (15_749, None, []),
}


def synthetic_run(n: int, rounds: int = 8, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``n`` trials (about a third stopped early) and their learning curves."""
    rng = np.random.default_rng(seed)
    trials, curves = [], []
    for i in range(n):
        method = list(METHODS)[i % len(METHODS)]
        params, knob, values = METHODS[method]
        knobs = {"learning_rate": float(10 ** rng.uniform(-5, -1))}
        if knob:
            knobs[knob] = int(rng.choice(values))
            params = params * knobs[knob] // max(values)
        done = rounds if rng.random() < 0.65 else int(rng.integers(1, rounds))
        acc = np.clip(
            0.5 + 0.45 * (1 - np.exp(-np.arange(1, done + 1) / 2)) + rng.normal(0, 0.02, done), 0, 1
        )
        tid = f"{i:08x}"
        trials.append({
            "trial_id": tid, "method": method, "status": "TERMINATED",
            "trainable_params": params, "total_params": 22_715_141,
            "trainable_fraction": params / 22_715_141, "val_accuracy": float(acc.max()),
            "val_accuracy_last": float(acc[-1]), "iterations": done, "planned_iterations": rounds,
            "stopped_early": done < rounds, "wall_time_s": 6.0 * done, "error": None,
            "node": "node-1", "knobs_json": json.dumps(knobs), "config_json": json.dumps(knobs),
            "learning_rate": knobs["learning_rate"], **({knob: knobs[knob]} if knob else {}),
            "run_name": "synthetic", "model": "minilm", "dataset": "bbc_news", "seed": 0,
            "versions": json.dumps({"python": "3"}),
        })  # fmt: skip
        for r, a in enumerate(acc, start=1):
            curves.append({"trial_id": tid, "method": method, "iteration": r, "epoch": r / 4,
                           "val_accuracy": float(a), "val_loss": float(1 - a)})  # fmt: skip
    return pd.DataFrame(trials), pd.DataFrame(curves)


def browser_seconds(page: Path) -> float | None:
    """Headless Chromium: load the page until its last script has run (None: no chromium)."""
    import re
    import shutil
    import subprocess

    browser = shutil.which("chromium")
    if browser is None:
        return None
    with tempfile.TemporaryDirectory() as profile:
        started = time.perf_counter()
        out = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        seconds = time.perf_counter() - started
    status = re.search(r'<pre id="js-status">([^<]*)</pre>', out.stdout)
    ok = status and json.loads(status.group(1)) == {"errors": [], "figures": 4}
    return round(seconds, 2) if ok else float("nan")


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, nargs="*", default=None)
    args = p.parse_args()
    sizes = args.trials or ([100, 1000] if args.quick else [10, 100, 1000, 3000])
    from search.results import write_report

    rows = []
    for n in sizes:
        trials, curves = synthetic_run(n)
        with tempfile.TemporaryDirectory() as d:
            trials.to_parquet(Path(d) / "trials.parquet")
            curves.to_parquet(Path(d) / "curves.parquet")
            started = time.perf_counter()
            out = write_report(d)
            seconds = time.perf_counter() - started
            rows.append({"trials": n, "curve_rows": len(curves), "build_s": round(seconds, 2),
                         "html_mb": round(out.stat().st_size / 2**20, 2),
                         "svg_kb": round((Path(d) / "pareto.svg").stat().st_size / 1024, 1),
                         "browser_s": browser_seconds(out)})  # fmt: skip
    print(table(rows))
    at_1000 = next((r for r in rows if r["trials"] == 1000), None)
    goal = {"goal": "1,000 trials: a few seconds, under 10 MB"}
    if at_1000:
        goal["met"] = at_1000["html_mb"] < 10 and at_1000["build_s"] < 10
    print(f"\nwrote {save('report_scale', {'rows': rows, **goal}, args.quick)}")


if __name__ == "__main__":
    main()
