"""What each method costs to serve: inference latency merged and unmerged, memory, artifact size.

    python benchmarks/inference_cost.py [--quick] [--precision fp32|bf16|auto]

MiniLM (all-MiniLM-L6-v2, 22.7M) with a 5-label head, every method at the
benchmark configuration (``_common.CONFIGS``, plus IA3), measured the way a
trial measures itself (``trainables.costs.measure_inference``): median ms per
example of a forward pass at 128 tokens, batch 1 and 32, with the method's
weights merged where peft allows it and unmerged; the memory of a batch-32
pass; the size of what ``export`` writes. Two threads, the trial's own
precision. Every method is measured in each of ``--rounds`` rounds, the order
of the methods rotating between rounds; the table gives the median over the
rounds and the JSON every round, with the load average.
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CONFIGS, parser, save, table  # noqa: E402

METHODS = {**{m: {k: v for k, v in c.items() if k != "learning_rate"} for m, c in CONFIGS.items()},
           "ia3": {}}  # fmt: skip
FIGURES = ("infer_ms_b1", "infer_ms_b1_unmerged", "infer_ms_b32", "infer_ms_b32_unmerged",
           "infer_peak_mb", "artifact_mb")  # fmt: skip
LABELS = ["business", "entertainment", "politics", "sport", "tech"]


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--precision", default="auto", help="fp32, bf16 or auto (the trial default)")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    import torch

    from trainables import costs
    from trainables import precision as amp
    from trainables.methods import apply_method
    from trainables.model import load_classifier, set_threads

    set_threads(2)
    precision = amp.resolve(args.precision, torch.device("cpu"))
    methods = ["full", "lora", "ia3"] if args.quick else list(METHODS)
    rounds = 1 if args.quick else args.rounds
    load_start = os.getloadavg()
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for r in range(rounds):
        order = methods[r % len(methods) :] + methods[: r % len(methods)]
        for m in order:
            torch.manual_seed(0)
            model = apply_method(load_classifier("minilm", len(LABELS), LABELS), m, METHODS[m])
            out = costs.measure_inference(model, m, METHODS[m], "minilm", LABELS, 128, precision)
            out["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
            runs[m].append(out)
            print(m, {k: round(v, 2) for k, v in out.items() if v is not None}, flush=True)
    rows = []
    for m in methods:
        row = {"method": m, "trainable_params": runs[m][0]["trainable_params"]}
        for f in FIGURES:
            values = [x[f] for x in runs[m] if x[f] is not None]
            row[f] = round(statistics.median(values), 2) if values else None
        b1, b1u = row["infer_ms_b1"], row["infer_ms_b1_unmerged"]
        row["unmerged_vs_merged_b1"] = round(b1u / b1, 2) if b1 else None
        row["b1_range"] = [round(min(x["infer_ms_b1"] for x in runs[m]), 2),
                           round(max(x["infer_ms_b1"] for x in runs[m]), 2)]  # fmt: skip
        rows.append(row)
    full = next(r for r in rows if r["method"] == "full")
    for r in rows:
        r["b1_vs_full"] = round(r["infer_ms_b1"] / full["infer_ms_b1"], 2)
    print(table(rows))
    path = save(
        "inference_cost",
        {"rows": rows, "runs": runs, "precision": precision, "rounds": rounds, "threads": 2,
         "max_length": 128, "model": "minilm",
         "loadavg_start": [round(x, 2) for x in load_start],
         "loadavg_end": [round(x, 2) for x in os.getloadavg()],
         "note": "CPU timings: noisy when other processes share the 2 cores (see loadavg); "
                 "memory and sizes do not depend on load"},
        args.quick,
    )  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
