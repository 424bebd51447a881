"""Trial start-up: from a trial's start to its first optimizer step, vs doing it by hand.

    python benchmarks/startup.py [--quick]

The floor is a hand-written load + apply method + one AdamW step on the same
batch size; loading alone (safetensors, memory-mapped) is listed too. Also
counts tokenization passes: a search tokenizes once, in the driver
(every split, one pass), and a trial tokenizes nothing - it receives token ids.
Goal (issue 7): one tokenization pass per search.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CONFIGS, parser, save, table  # noqa: E402

METHODS = {
    m: CONFIGS[m] for m in ["full", "lora", "adapter", "prefix", "prompt_tuning", "linear_probe"]
}


class Counter:
    """Counts calls of a function it wraps in place (module attribute)."""

    def __init__(self, owner, name: str) -> None:
        self.owner, self.name, self.calls = owner, name, 0
        self.original = getattr(owner, name)

        def wrapped(*a, **k):
            self.calls += 1
            return self.original(*a, **k)

        setattr(owner, name, wrapped)

    def restore(self) -> None:
        setattr(self.owner, self.name, self.original)


def bare_first_step(model_name: str, data, method: str, knobs: dict) -> float:
    """Load the model, apply the method, and take one optimizer step by hand: the floor."""
    import torch

    from trainables.trial import build_model

    t0 = time.perf_counter()
    model = build_model(model_name, data, method, {k: v for k, v in knobs.items()
                                                   if k != "learning_rate"}, seed=0)  # fmt: skip
    train = data.splits["train"]
    seqs = [torch.as_tensor(train.input_ids[i], dtype=torch.long) for i in range(16)]
    ids = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    model(input_ids=ids, attention_mask=(ids != 0).long(),
          labels=torch.as_tensor(train.labels[:16])).loss.backward()  # fmt: skip
    opt.step()
    return time.perf_counter() - t0


def main() -> None:
    from torch.optim.optimizer import register_optimizer_step_post_hook
    from transformers import PreTrainedTokenizerBase

    import trainables.data as data_mod
    from search.preflight import prepare_data
    from search.space import validate
    from trainables.model import load_classifier
    from trainables.trial import run_trial

    args = parser(__doc__.splitlines()[0]).parse_args()
    methods = ["full", "lora", "linear_probe"] if args.quick else list(METHODS)
    space = validate(
        {"experiment": {"model": "minilm", "dataset": "bbc_news", "max_length": 128,
                        "max_train_samples": 64, "max_eval_samples": 32, "feature_cache": False},
         "methods": ["full"]}, "startup")  # fmt: skip

    # Tokenization: the driver's one pass (encode once per split), then trials that tokenize nothing.
    encode = Counter(data_mod, "encode")
    calls = Counter(PreTrainedTokenizerBase, "__call__")
    data = prepare_data(space, progress=False)
    driver = {"encode_calls": encode.calls, "tokenizer_calls": calls.calls,
              "splits": len(data.splits)}  # fmt: skip
    calls.calls = 0
    data = data.without("test")

    load_classifier(space.model, data.num_labels)  # warm the file cache for everyone
    t0 = time.perf_counter()
    load_classifier(space.model, data.num_labels)
    load_s = time.perf_counter() - t0

    first: dict[str, float] = {}
    hook = register_optimizer_step_post_hook(
        lambda opt, a, k: first.setdefault("t", time.perf_counter())
    )
    rows = []
    for method in methods:
        first.clear()
        flat = {"method": method, **METHODS[method], "epochs": 1, "evals_per_epoch": 1, "seed": 0}
        t0 = time.perf_counter()
        run_trial(flat, data, space.model, lambda m, g: None, cpus=2)
        ours = first["t"] - t0
        bare = bare_first_step(space.model, data, method, METHODS[method])
        rows.append({"method": method, "to_first_step_s": round(ours, 2),
                     "bare_load_and_step_s": round(bare, 2),
                     "ratio_vs_bare": round(ours / bare, 2),
                     "model_load_alone_s": round(load_s, 3)})  # fmt: skip
    hook.remove()
    trial_tokenizer_calls = calls.calls
    encode.restore()
    calls.restore()
    print(table(rows))
    passes = driver["encode_calls"] / driver["splits"]
    print(f"\ntokenization: the driver encoded {driver['splits']} splits in "
          f"{driver['encode_calls']} calls ({passes:g} pass); {len(rows)} trials called the "
          f"tokenizer {trial_tokenizer_calls} times")  # fmt: skip
    path = save("startup", {"rows": rows, "tokenization": {**driver, "passes": passes,
                "trial_tokenizer_calls": trial_tokenizer_calls},
                "goal": "one tokenization pass per search",
                "met": passes == 1 and trial_tokenizer_calls == 0}, args.quick)  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
