"""GPU: steps per second per method in fp32 and bf16, peak memory, utilisation, and trials per hour
with 1, 2 and 4 trials packed on one GPU.

Runs the shared training loop (``trainables.loop.train``) on CUDA. The encoders are built from
their configurations with random weights (MiniLM-L6: 384 wide, 6 layers; and a BERT-base-sized
110M encoder): speed and memory do not depend on the weights' values, and no download is needed.
Inputs are 128 tokens, no padding (as BBC articles cut at 128 tokens are), batch 32.

Packing starts 1, 2 or 4 worker processes at once on the one GPU, as Ray does for
``resources.gpu`` 1, 0.5 and 0.25 (Ray only sets which GPU a worker sees; it does not split it),
each running one whole trial from a cold process: start, build, train.

On a machine without a CUDA GPU it says so and exits 0.

    python benchmarks/gpu.py [--quick]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / p) for p in ("src", ".")]

from benchmarks._common import parser, save, table  # noqa: E402

METHODS = {  # one configuration per method: the knobs of benchmarks/_common.CONFIGS
    "full": {},
    "lora": {"lora_rank": 8},
    "adapter": {"adapter_size": 32},
    "bitfit": {},
    "ia3": {},
    "prefix": {"prefix_length": 16},
    "prompt_tuning": {"prompt_length": 20},
    "linear_probe": {},
}
ENCODERS = {
    "minilm-l6": {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
                  "intermediate_size": 1536},
    "bert-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                  "intermediate_size": 3072},
}  # fmt: skip
LENGTH, BATCH, LABELS = 128, 32, 5


def build_encoder(kind: str, folder: Path) -> str:
    """A randomly initialised BERT-style encoder of ``kind``'s shape, saved where
    ``from_pretrained`` loads it."""
    from transformers import BertConfig, BertModel

    path = folder / kind
    if not path.exists():
        BertModel(BertConfig(**ENCODERS[kind], max_position_embeddings=512)).save_pretrained(path)
    return str(path)


def synthetic(n: int, seed: int = 0):
    """``n`` examples of LENGTH token ids (no padding) and LABELS classes."""
    import numpy as np

    from trainables.data import Encoded

    rng = np.random.default_rng(seed)
    ids = [np.concatenate([[101], rng.integers(1000, 29000, LENGTH - 2), [102]]) for _ in range(n)]
    return Encoded(input_ids=ids, labels=rng.integers(0, LABELS, n))


class Utilisation:
    """Samples the GPU's utilisation (NVML) every 100 ms while in the ``with`` block."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()

    def __enter__(self):
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # no NVML: no utilisation figure
            return self

        def sample() -> None:
            while not self._stop.wait(0.1):
                self.samples.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    @property
    def mean(self) -> float | None:
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


def train_steps(model_path: str, method: str, precision: str, steps: int) -> dict:
    """Train ``steps`` steps of ``method`` with the shared loop; time, memory and utilisation."""
    import torch

    from trainables.data import PreparedData
    from trainables.loop import TrainConfig, train
    from trainables.trial import build_model

    data = PreparedData(
        splits={"train": synthetic(steps * BATCH), "validation": synthetic(BATCH, 1)},
        label_names=[str(i) for i in range(LABELS)],
    )
    model = build_model(model_path, data, method, METHODS[method], seed=0)
    cfg = TrainConfig(learning_rate=1e-4, epochs=1, batch_size=BATCH, evals_per_epoch=1,
                      precision=precision)  # fmt: skip
    cuda = torch.cuda.is_available()  # (without one: a smoke run of this code on the CPU)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    out: dict = {}
    with Utilisation() as util:
        train(model, data.splits["train"], data.splits["validation"], cfg, 0,
              lambda m, s: out.update(m))  # fmt: skip
        if cuda:
            torch.cuda.synchronize()
    return {
        "steps_per_s": round(steps / out["time_s"], 2),
        "peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None,
        "gpu_util_pct": util.mean,
        "precision_used": out["precision_used"],
    }


def speed(model_path: str, encoder: str, steps: int) -> list[dict]:
    rows = []
    for method in METHODS:
        for precision in ("fp32", "bf16"):
            train_steps(model_path, method, precision, 5)  # warm-up: kernels, cuBLAS handles
            rows.append({"encoder": encoder, "method": method, "precision": precision,
                         **train_steps(model_path, method, precision, steps)})  # fmt: skip
            print(table(rows[-1:]), flush=True)
    return rows


def packing(model_path: str, steps: int) -> list[dict]:
    """Trials per hour with 1, 2 and 4 whole trials (cold worker processes) on the one GPU."""
    rows = []
    for packed in (1, 2, 4):
        started = time.perf_counter()
        with Utilisation() as util:
            procs = [
                subprocess.Popen(
                    [sys.executable, __file__, "--worker", model_path, "lora", "auto", str(steps)],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for _ in range(packed)
            ]
            outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        wall = time.perf_counter() - started
        rows.append({
            "trials_packed": packed,
            "resources_gpu": round(1 / packed, 2),
            "wall_s": round(wall, 1),
            "trials_per_hour": round(packed * 3600 / wall),
            "steps_per_s_each": round(sum(o["steps_per_s"] for o in outs) / packed, 2),
            "gpu_util_pct": util.mean,
        })  # fmt: skip
        print(table(rows[-1:]), flush=True)
    return rows


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--worker", nargs=4, help=argparse_hidden())
    args = p.parse_args()
    if args.worker:  # one packed trial, in its own process
        path, method, precision, steps = args.worker
        print(json.dumps(train_steps(path, method, precision, int(steps))))
        return
    import torch

    if not torch.cuda.is_available():
        print("no CUDA GPU on this machine: nothing measured (run it where there is one)")
        return
    steps = 30 if args.quick else 200
    with tempfile.TemporaryDirectory() as d:
        minilm = build_encoder("minilm-l6", Path(d))
        rows = speed(minilm, "minilm-l6", steps)
        if not args.quick:
            rows += speed(build_encoder("bert-base", Path(d)), "bert-base", steps)
        packing_steps = 100 if args.quick else 1000
        packed = packing(minilm, packing_steps)
    print("\n" + table(rows) + "\n\n" + table(packed))
    props = torch.cuda.get_device_properties(0)
    path = save("gpu", {"gpu": props.name, "gpu_memory_gb": round(props.total_memory / 2**30, 1),
                        "length": LENGTH, "batch_size": BATCH, "steps": steps,
                        "packing_steps": packing_steps, "speed": rows, "packing": packed}, args.quick)  # fmt: skip
    print(path)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
