"""Peer: transformers' ``Trainer.hyperparameter_search`` (Ray backend, ASHA) against ``peftsearch run``.

The same budget on both sides: the same train/validation files, written once (400 / 200 BBC
articles, stratified), all-MiniLM-L6-v2 at 128 tokens, 4 trials of full fine-tuning or LoRA,
3 epochs, batch 16, ASHA (grace 1, reduction factor 2), one CPU per trial, two trials at once.
Each side keeps its own defaults otherwise (LoRA's rank and targets, evaluations per epoch,
learning-rate ranges per method: full 3e-5..3e-4, LoRA 1e-3..1e-2 on both sides).

Each side runs in a fresh process (its wall time includes imports and Ray's start), for each
precision pairing and seed:

* ``defaults``: peftsearch's ``precision: auto`` (bf16 where the CPU runs it natively) against
  the peer's default (fp32);
* ``bf16``: both in bf16 (``TrainingArguments(bf16=True)``); ``fp32``: both in fp32.

Reported: wall time, compute (the trials' seconds), and the best validation accuracy (the best
round of any trial, on the same 200 articles: one article is half a point), mean ± std over
seeds. Goals: defaults, peftsearch <= 0.5x the peer's wall time with accuracy within the
spread; both bf16 and both fp32: peftsearch faster.

    python benchmarks/peer.py [--quick] [--seeds 3]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / p) for p in ("src", ".")]

from benchmarks._common import parser, save, table  # noqa: E402

TRAIN, VALIDATION, LENGTH, EPOCHS, TRIALS, BATCH = 400, 200, 128, 3, 4, 16
LR = {"full": (3e-5, 3e-4), "lora": (1e-3, 1e-2)}
PAIRINGS = {"defaults": ("auto", "fp32"), "bf16": ("bf16", "bf16"), "fp32": ("fp32", "fp32")}


def write_data(folder: Path, n_train: int, n_val: int) -> dict[str, str]:
    """The BBC articles both sides train and validate on, as two TSV files."""
    import pandas as pd

    from trainables.data import DatasetSpec, load_table, split_indices

    table_ = load_table(DatasetSpec(name="bbc_news"))
    frac = n_val / len(table_.labels)
    idx = split_indices(table_, frac, 0.0, seed=0, max_train=n_train, max_eval=n_val)
    files = {}
    for split, rows in (("train", idx["train"]), ("validation", idx["validation"])):
        path = folder / f"{split}.tsv"
        frame = pd.DataFrame({"text": [table_.texts[i].replace("\t", " ").replace("\n", " ")
                                       for i in rows],
                              "label": [table_.label_names[table_.labels[i]] for i in rows]})  # fmt: skip
        frame.to_csv(path, sep="\t", index=False)
        files[split] = str(path)
    return files


def run_peftsearch(files: dict[str, str], precision: str, seed: int, out: Path) -> dict:
    import search

    space = {
        "experiment": {"name": "peer", "model": "minilm", "max_length": LENGTH, "seed": seed,
                       "dataset": {"files": files, "text": "text", "label": "label"}},
        "train": {"epochs": EPOCHS, "batch_size": BATCH, "precision": precision},
        "methods": {m: {"learning_rate": {"log": list(lr)}} for m, lr in LR.items()},
        "search": {"searcher": "random", "num_samples": TRIALS, "max_concurrent": 2},
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "resources": {"cpu": 1, "gpu": 0},
        "storage": str(out),
    }  # fmt: skip
    from search.space import validate

    res = search.run(validate(space, "peer"), quiet=True)
    t = res.trials
    return {"best_val_accuracy": float(t["val_accuracy"].max()),
            "trial_s": float(t["wall_time_s"].sum()), "trials": len(t),
            "methods": t["method"].value_counts().to_dict(),
            "precision_used": sorted(t["precision_used"].dropna().unique().tolist())}  # fmt: skip


def run_peer(files: dict[str, str], precision: str, seed: int, out: Path) -> dict:
    """``Trainer.hyperparameter_search`` over {full, LoRA} x learning rate, Ray backend, ASHA."""
    import numpy as np
    import pandas as pd
    import torch
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

    from trainables.model import load_tokenizer, resolve_model

    tok = load_tokenizer("minilm")
    frames = {k: pd.read_csv(v, sep="\t") for k, v in files.items()}
    labels = sorted(frames["train"]["label"].unique())

    def encode(frame):
        enc = tok(frame["text"].tolist(), truncation=True, max_length=LENGTH)
        ids = [frame["label"].map(labels.index).tolist()]
        return [{"input_ids": i, "attention_mask": m, "labels": y}
                for i, m, y in zip(enc["input_ids"], enc["attention_mask"], ids[0])]  # fmt: skip

    train, val = encode(frames["train"]), encode(frames["validation"])

    def model_init(trial):
        model = AutoModelForSequenceClassification.from_pretrained(
            resolve_model("minilm"), num_labels=len(labels)
        )
        if trial and trial.get("method") == "lora":
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS"))  # peft's defaults
        return model

    def accuracy(pred):
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

    def lr(spec):
        lo, hi = LR[spec.config["method"]]
        return float(np.exp(np.random.uniform(np.log(lo), np.log(hi))))

    args = TrainingArguments(
        output_dir=str(out), num_train_epochs=EPOCHS, per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=64, eval_strategy="epoch", save_strategy="no",
        logging_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True, seed=seed,
        bf16=precision == "bf16", dataloader_num_workers=0,
    )  # fmt: skip
    from transformers import DataCollatorWithPadding

    trainer = Trainer(model_init=model_init, args=args, train_dataset=train, eval_dataset=val,
                      data_collator=DataCollatorWithPadding(tok), compute_metrics=accuracy)  # fmt: skip
    torch.manual_seed(seed)
    best = trainer.hyperparameter_search(
        hp_space=lambda _: {"method": tune.choice(list(LR)), "learning_rate": tune.sample_from(lr)},
        backend="ray", n_trials=TRIALS, direction="maximize",
        compute_objective=lambda m: m["eval_accuracy"],
        scheduler=ASHAScheduler(metric="objective", mode="max", max_t=EPOCHS, grace_period=1,
                                reduction_factor=2),
        resources_per_trial={"cpu": 1}, max_concurrent_trials=2, storage_path=str(out),
        verbose=0,
    )  # fmt: skip
    frames_ = best.run_summary.trial_dataframes.values()
    trials = best.run_summary.trials
    methods = [t.config.get("method") for t in trials]
    return {"best_val_accuracy": float(max(f["objective"].max() for f in frames_)),
            "trial_s": float(sum((t.last_result or {}).get("time_total_s", 0) for t in trials)),
            "trials": len(trials), "methods": {m: methods.count(m) for m in set(methods)},
            "precision_used": [precision]}  # fmt: skip


def one(side: str, precision: str, seed: int, files: dict[str, str]) -> dict:
    """One search in a fresh process; its wall time from the parent."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--one", side, precision, str(seed), json.dumps(files)],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"{side} {precision} seed {seed} failed:\n{proc.stderr[-3000:]}")
    # Ray may print after the result at shutdown: the result is the last line that is a JSON object.
    result = next(ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("{"))
    return {"wall_s": time.perf_counter() - started, **json.loads(result)}


def summarise(runs: list[dict]) -> dict:
    def ms(key):
        xs = [r[key] for r in runs]
        return round(statistics.mean(xs), 4), round(statistics.stdev(xs), 4) if len(xs) > 1 else 0.0

    return {k: ms(k) for k in ("wall_s", "trial_s", "best_val_accuracy")}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--pairings", nargs="*", default=list(PAIRINGS))
    p.add_argument("--one", nargs=4, help=argparse_hidden())
    args = p.parse_args()
    if args.one:
        side, precision, seed, files = args.one
        with tempfile.TemporaryDirectory() as d:
            run = run_peftsearch if side == "peftsearch" else run_peer
            print(json.dumps(run(json.loads(files), precision, int(seed), Path(d))))
        return
    global TRAIN, VALIDATION, EPOCHS
    if args.quick:
        TRAIN, VALIDATION, EPOCHS, args.seeds = 64, 32, 1, 1
    rows, load_start = [], os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        files = write_data(Path(d), TRAIN, VALIDATION)
        for pairing in args.pairings:
            ours, theirs = PAIRINGS[pairing]
            runs = {"peftsearch": [], "peer": []}
            for seed in range(args.seeds):  # alternate the sides: drift hits both alike
                for side, precision in (("peftsearch", ours), ("peer", theirs)):
                    runs[side].append(one(side, precision, seed, files))
            s, t = summarise(runs["peftsearch"]), summarise(runs["peer"])
            rows.append({
                "pairing": pairing, "peftsearch_precision": ours, "peer_precision": theirs,
                "wall_s": s["wall_s"], "peer_wall_s": t["wall_s"],
                "wall_ratio": round(s["wall_s"][0] / t["wall_s"][0], 3),
                "trial_s": s["trial_s"], "peer_trial_s": t["trial_s"],
                "best_val_accuracy": s["best_val_accuracy"],
                "peer_best_val_accuracy": t["best_val_accuracy"],
                "runs": runs,
            })  # fmt: skip
            print(table([{k: v for k, v in rows[-1].items() if k != "runs"}]), flush=True)
    goals = {
        "defaults": "peftsearch <= 0.5x the peer's wall time, best validation accuracy within spread",
        "bf16": "peftsearch faster than the peer, both in bf16",
        "fp32": "peftsearch faster than the peer, both in fp32",
    }
    for r in rows:
        r["goal"] = goals[r["pairing"]]
        if r["pairing"] == "defaults":
            # Within the spread: the larger std over seeds, and at least one article.
            spread = max(r["best_val_accuracy"][1], r["peer_best_val_accuracy"][1], 1 / VALIDATION)
            close = r["best_val_accuracy"][0] >= r["peer_best_val_accuracy"][0] - spread
            r["met"] = r["wall_ratio"] <= 0.5 and close
        else:
            r["met"] = r["wall_ratio"] < 1.0
    print(table([{k: v for k, v in r.items() if k != "runs"} for r in rows]))
    print(save("peer", {"train": TRAIN, "validation": VALIDATION, "epochs": EPOCHS,
                        "trials": TRIALS, "seeds": args.seeds, "rows": rows,
                        "loadavg_start": [round(x, 2) for x in load_start],
                        "loadavg_end": [round(x, 2) for x in os.getloadavg()]}, args.quick))  # fmt: skip


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
