"""Shared by the benchmarks: where results go, what machine ran them, a markdown table."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
# One configuration per method for the benchmarks that time or measure single trials.
CONFIGS = {
    "full": {"learning_rate": 1e-4},
    "lora": {"lora_rank": 8, "learning_rate": 3e-3},
    "adapter": {"adapter_size": 32, "learning_rate": 3e-3},
    "prefix": {"prefix_length": 16, "learning_rate": 1e-2},
    "prompt_tuning": {"prompt_length": 20, "learning_rate": 3e-2},
    "bitfit": {"learning_rate": 3e-3},
    "linear_probe": {"learning_rate": 3e-2},
}


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a smoke run of at most ~2 minutes")
    return p


def machine() -> dict[str, Any]:
    """The machine and package versions a figure was measured with."""
    from search.results import versions

    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        gpu = None
    return {
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "gpu": gpu,
        "versions": versions(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of ``rows`` (dicts with the same keys)."""
    if not rows:
        return "(no rows)"
    keys = list(rows[0])
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def save(name: str, figures: dict[str, Any], quick: bool) -> Path:
    """Write ``results/<name>.json`` (``<name>.quick.json`` for a smoke run), atomically.

    A benchmark killed while saving leaves the previous results whole.
    """
    from trainables.atomic import atomic_write

    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / (f"{name}.quick.json" if quick else f"{name}.json")
    text = json.dumps({"benchmark": name, "quick": quick, "machine": machine(),
                       **figures}, indent=2, default=str)  # fmt: skip
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path


def run_search(raw: dict, name: str):
    """Validate and run one search quietly, printing its trial count and wall time."""
    import time

    import search
    from search.space import validate

    started = time.time()
    res = search.run(validate(raw, f"{name}.yaml"), name=name, quiet=True)
    print(f"{name}: {len(res.trials)} trials in {time.time() - started:.0f} s", flush=True)
    return res
