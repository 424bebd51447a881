"""Layer cache: ``freeze`` k trials on MiniLM (L = 6) with and without the cached states.

    python benchmarks/layer_cache.py [--quick]

The same trial (MiniLM on BBC News, 128 tokens, fp32, the same seed) trains
for one epoch on token ids through all six layers, and on the hidden states
entering layer k, computed once per search (``trainables.layercache``), for
k = L-1, L-2 and L/2 (5, 4, 3). The time per epoch is CPU time of this
process on one torch thread (``time.process_time``: on a machine shared with
other work, wall-clock times swing by 3x), the training steps of one epoch
(the trial's model, caches, optimizer and loop step; the first step and
evaluation not counted); each pair runs alternately, ``repeats`` times, the
fastest kept.

Beside each speed-up, its bound: an epoch costs the forward of all L layers
and the backward of the L-k trained ones (backward already stops at k); the
cache removes the forward of the k frozen ones. ``bound_measured`` is
``t_uncached / (t_uncached - F_k)``, with F_k the measured forward time of
layers 0..k-1 (eval mode, no gradients, the same batch shape, CPU time too);
``bound_2x`` assumes backward costs twice the forward:
``(L + 2(L-k)) / (L-k + 2(L-k))``.

Goal (issue 17): >= 2.5x at k = L-1, and >= 80% of the (measured) bound at
k = L/2.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parser, save, table  # noqa: E402

DEPTHS = (5, 4, 3)  # L-1, L-2, L/2 of MiniLM's six layers
LAYERS = 6


def forward_below(model, batches, k: int) -> float:
    """Seconds per batch of the frozen forward up to layer ``k`` (embeddings included)."""
    import torch

    from trainables.layercache import _Enough, _layers

    def stop(module, args):
        raise _Enough

    hook = _layers(model)[k].register_forward_pre_hook(stop) if k < LAYERS else None
    try:
        with torch.no_grad():
            started = time.process_time()
            for inputs in batches:
                with contextlib.suppress(_Enough):
                    model(**inputs)
            return (time.process_time() - started) / len(batches)
    finally:
        if hook is not None:
            hook.remove()


def layer_forward_s(space, data, batch_size: int, repeats: int = 5) -> dict[int, float]:
    """F_k per training batch: the forward of layers 0..k-1, for each k of :data:`DEPTHS`
    (the fastest of ``repeats`` passes over 8 batches, the depths in turn: a busy machine
    slows some passes)."""
    import numpy as np

    from trainables.loop import collate
    from trainables.model import load_classifier, set_threads

    set_threads(1)
    model = load_classifier(space.model, data.num_labels).eval()
    idx = np.random.default_rng(0).permutation(len(data.splits["train"]))
    batches = []
    for start in range(0, 8 * batch_size, batch_size):
        inputs = collate(data.splits["train"], idx[start : start + batch_size], 0, "cpu")
        inputs.pop("labels")
        batches.append(inputs)
    best = dict.fromkeys((0, *DEPTHS), float("inf"))
    for _ in range(repeats):
        for k in best:
            best[k] = min(best[k], forward_below(model, batches, k))
    # Less the embeddings (k = 0): they run either way.
    return {k: best[k] - best[0] for k in DEPTHS}


def epoch_s(flat: dict, data, model_name: str) -> tuple[float, int | None]:
    """One epoch's training in CPU seconds of this process (the trial's model, method, caches,
    optimizer and loop step; no evaluation), and the layer it ran from."""
    from trainables.loop import collate, epoch_order, make_optimizer, optimizer_step
    from trainables.model import train_mode
    from trainables.trial import build_model, on_caches, split_config

    method, knobs, cfg = split_config(flat)
    model = build_model(model_name, data, method, knobs, cfg.seed)
    model, data, _, k = on_caches(model, method, knobs, data)
    optimizer, train = make_optimizer(model, cfg), data.splits["train"]
    params = [p for g in optimizer.param_groups for p in g["params"]]
    train_mode(model)
    order = epoch_order(cfg.seed, 0, len(train))
    steps = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    started = 0.0
    for n, idx in enumerate(steps):
        if n == 1:  # the first step warms up (allocations, first kernel calls)
            started = time.process_time()
        loss = model(**collate(train, idx, 0, "cpu")).loss
        optimizer_step(loss, params, optimizer, None, cfg.max_grad_norm)
        optimizer.zero_grad(set_to_none=True)
    return (time.process_time() - started) * len(steps) / (len(steps) - 1), k


def main() -> None:
    import dataclasses
    import math

    from search.preflight import prepare_data
    from search.space import validate
    from trainables.layercache import add_layer_states, cache_bytes

    args = parser(__doc__.splitlines()[0]).parse_args()
    load_start = os.getloadavg()
    n_train, repeats, batch = (96, 1, 16) if args.quick else (224, 2, 16)
    space = validate(
        {"experiment": {"model": "minilm", "dataset": "bbc_news", "max_length": 128,
                        "max_train_samples": n_train, "max_eval_samples": 48},
         "methods": ["freeze"]}, "layer_cache")  # fmt: skip
    data = prepare_data(space, progress=False).without("test")
    started = time.perf_counter()
    cached = add_layer_states(dataclasses.replace(data), space.model, DEPTHS, "fp32")
    cache_pass = time.perf_counter() - started
    steps = math.ceil(len(data.splits["train"]) / batch)
    forward = layer_forward_s(space, data, batch)
    rows = []
    for k in DEPTHS:
        flat = {"method": "freeze", "freeze_layers": k, "learning_rate": 1e-4, "epochs": 1,
                "evals_per_epoch": 1, "batch_size": batch, "precision": "fp32", "seed": 0}  # fmt: skip
        best: dict[str, float] = {}
        for _ in range(repeats):  # alternately: a load change hits both
            for label, d in (("uncached", data), ("cached", cached)):
                t, ran_from = epoch_s(flat, d, space.model)
                assert ran_from == (k if label == "cached" else None)
                best[label] = min(best.get(label, math.inf), t)
        t_unc, t_c = best["uncached"], best["cached"]
        bound = t_unc / max(t_unc - forward[k] * steps, 1e-9)
        speedup = t_unc / t_c
        rows.append({"k": k, "epoch_s_uncached": round(t_unc, 2), "epoch_s_cached": round(t_c, 2),
                     "speedup": round(speedup, 2), "bound_measured": round(bound, 2),
                     "of_bound": round(speedup / bound, 2),
                     "bound_2x": round((3 * LAYERS - 2 * k) / (3 * (LAYERS - k)), 2),
                     "forward_below_k_s_per_epoch": round(forward[k] * steps, 2)})  # fmt: skip
    print(table(rows))
    mib = sum(cache_bytes(data, DEPTHS, "fp32", 384).values()) / 2**20
    print(f"\none-time pass (train + validation, k = 5, 4, 3): {cache_pass:.1f} s, {mib:.1f} MiB")
    by_k = {r["k"]: r for r in rows}
    met = {
        "k=L-1 >= 2.5x": by_k[5]["speedup"] >= 2.5,
        "k=L/2 >= 80% of bound": by_k[3]["of_bound"] >= 0.8,
    }
    print("goal: " + ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in met.items()))
    load_end = os.getloadavg()
    path = save("layer_cache", {"rows": rows, "cache_pass_s": round(cache_pass, 2),
                                "cache_mib": round(mib, 1), "n_train": n_train,
                                "steps_per_epoch": steps, "batch_size": batch, "repeats": repeats,
                                "dataset": "bbc_news", "max_length": 128, "layers": LAYERS,
                                "goal": ">= 2.5x at k = L-1, >= 80% of the bound at k = L/2",
                                "met": met,
                                "loadavg_start": [round(x, 2) for x in load_start],
                                "loadavg_end": [round(x, 2) for x in load_end],
                                "note": "CPU seconds of one torch thread (process time: a busy "
                                        "machine's other processes do not count; cache and "
                                        "memory-bandwidth contention still can)"}, args.quick)  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
