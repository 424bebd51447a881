"""Time per training step: a peftsearch trial vs a bare PyTorch loop vs Hugging Face Trainer.

    python benchmarks/overhead.py [--quick]

The same model (MiniLM with the method applied, same initialisation), the
same batches (16 BBC News articles, 128 tokens, dynamic padding), AdamW with
linear decay and gradient clipping, 2 threads. The bare loop runs twice: with
the fused AdamW kernel that peftsearch and Trainer use (``ratio_vs_bare``:
the loop's own overhead), and with AdamW's defaults, as most hand-written
loops do (``ratio_vs_bare_default``). A step is timed between the
starts of consecutive training forward passes (a forward pre-hook), so model
loading and setup count for none of the three. Goal (issue 7): peftsearch at
most 1.03x the bare loop, and faster than Trainer.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CONFIGS, parser, save, table  # noqa: E402

METHODS = {m: CONFIGS[m] for m in ["full", "lora", "adapter", "prefix"]}


def step_times(model) -> tuple[list[float], object]:
    """Timestamps of the training forward passes of ``model``."""
    stamps: list[float] = []

    def hook(module, args, kwargs):
        if module.training:
            stamps.append(time.perf_counter())

    return stamps, model.register_forward_pre_hook(hook, with_kwargs=True)


def per_step(stamps: list[float]) -> float:
    gaps = np.diff(stamps)
    return float(np.median(gaps))  # robust to a stray slow step


def run_peftsearch(model, train, cfg, pad_id) -> None:
    from trainables.loop import train as loop_train

    loop_train(model, train, train.__class__(input_ids=train.input_ids[:1], labels=train.labels[:1]),
               cfg, pad_id, lambda m, g: None)  # fmt: skip


def run_bare(model, train, cfg, pad_id, fused: bool = True) -> None:
    """A hand-written loop: what anyone would write for this model."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                            fused=fused or None)  # fmt: skip
    steps = len(train) // cfg.batch_size
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))
    order = np.random.default_rng(0).permutation(len(train))
    model.train()
    for k in range(steps):
        idx = order[k * cfg.batch_size : (k + 1) * cfg.batch_size]
        seqs = [torch.as_tensor(train.input_ids[i], dtype=torch.long) for i in idx]
        ids = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=pad_id)
        mask = (ids != pad_id).long()
        labels = torch.as_tensor(train.labels[idx])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)


def run_trainer(model, train, cfg, pad_id) -> None:
    from transformers import Trainer, TrainingArguments
    from transformers.utils import logging

    logging.set_verbosity_error()

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(train)

        def __getitem__(self, i):
            return {"input_ids": train.input_ids[i].tolist(), "labels": int(train.labels[i])}

    def collate(rows):
        seqs = [torch.as_tensor(r["input_ids"]) for r in rows]
        ids = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=pad_id)
        return {"input_ids": ids, "attention_mask": (ids != pad_id).long(),
                "labels": torch.as_tensor([r["labels"] for r in rows])}  # fmt: skip

    with tempfile.TemporaryDirectory() as d:
        args = TrainingArguments(
            output_dir=d, per_device_train_batch_size=cfg.batch_size,
            max_steps=len(train) // cfg.batch_size, learning_rate=cfg.learning_rate,
            weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
            lr_scheduler_type="linear", logging_strategy="no", save_strategy="no",
            eval_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True,
            dataloader_num_workers=0, remove_unused_columns=False,
        )  # fmt: skip
        Trainer(model=model, args=args, train_dataset=Rows(), data_collator=collate).train()


def main() -> None:
    from search.driver import prepare_data
    from search.space import validate
    from trainables.loop import TrainConfig
    from trainables.trial import build_model

    args = parser(__doc__.splitlines()[0]).parse_args()
    steps = 6 if args.quick else 24
    methods = ["full", "lora"] if args.quick else list(METHODS)
    torch.set_num_threads(2)
    space = validate(
        {"experiment": {"model": "minilm", "dataset": "bbc_news", "max_length": 128,
                        "max_train_samples": 16 * steps, "max_eval_samples": 16},
         "methods": ["full"]}, "overhead")  # fmt: skip
    data = prepare_data(space, progress=False)
    train, pad_id = data.splits["train"], data.meta["pad_token_id"]
    rows = []
    for method in methods:
        knobs = {k: v for k, v in METHODS[method].items() if k != "learning_rate"}
        cfg = TrainConfig(learning_rate=METHODS[method]["learning_rate"], epochs=1,
                          evals_per_epoch=1, batch_size=16)  # fmt: skip
        times = {}

        def bare_default(*a):
            run_bare(*a, fused=False)

        for name, runner in (("peftsearch", run_peftsearch), ("bare", run_bare),
                             ("bare_default", bare_default), ("trainer", run_trainer)):  # fmt: skip
            model = build_model(space.model, data, method, knobs, seed=0)
            stamps, handle = step_times(model)
            runner(model, train, cfg, pad_id)
            handle.remove()
            times[name] = per_step(stamps)
            del model
        rows.append({"method": method, "steps": steps,
                     "peftsearch_s_per_step": round(times["peftsearch"], 4),
                     "bare_s_per_step": round(times["bare"], 4),
                     "bare_default_s_per_step": round(times["bare_default"], 4),
                     "trainer_s_per_step": round(times["trainer"], 4),
                     "ratio_vs_bare": round(times["peftsearch"] / times["bare"], 3),
                     "ratio_vs_bare_default": round(times["peftsearch"] / times["bare_default"], 3),
                     "ratio_vs_trainer": round(times["peftsearch"] / times["trainer"], 3)})  # fmt: skip
        print(table(rows[-1:]), flush=True)
    print()
    print(table(rows))
    met = all(r["ratio_vs_bare"] <= 1.03 and r["ratio_vs_trainer"] < 1 for r in rows)
    path = save("overhead", {"rows": rows, "goal": "<= 1.03x bare, < 1x Trainer", "met": met},
                args.quick)  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
