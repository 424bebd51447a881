"""Shared fixtures: tiny random encoders saved to disk and a synthetic data set.

Everything is built locally from transformers configs: no download, a few
seconds per test.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

# Three topics, each with its own words; every text mixes topic words with
# shared filler, so a tiny model can learn the task in a few steps.
TOPICS = {
    "sport": ["goal", "match", "team", "score", "player", "coach", "league", "win"],
    "tech": ["chip", "software", "phone", "code", "data", "robot", "laptop", "cloud"],
    "food": ["bread", "cheese", "soup", "apple", "pasta", "spice", "bake", "salad"],
}
FILLER = ["the", "a", "of", "and", "to", "in", "is", "was", "it", "on", "for", "with"]
HIDDEN, LAYERS, HEADS, INTERMEDIATE = 32, 2, 2, 64
DEBERTA_BUCKETS, DEBERTA_CONV, DEBERTA_EMBEDDING = 4, 3, 16  # relative buckets, conv kernel, E
MODERNBERT_WINDOW = 4  # local attention: 2 tokens each side
MPNET_BUCKETS, ALBERT_EMBEDDING = 32, 16  # MPNet: its code assumes 32 buckets; ALBERT: E
ARCHS = ("bert", "roberta", "distilbert", "deberta-v2", "modernbert", "mpnet", "albert")
# Architectures whose attention does not go through transformers' attention interface.
NO_PREFIX = ("deberta-v2", "mpnet")


def make_texts(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = list(TOPICS)[i % len(TOPICS)]
        words = rng.choices(TOPICS[label], k=6) + rng.choices(FILLER, k=6)
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def vocab() -> dict[str, int]:
    words = sorted({w for ws in TOPICS.values() for w in ws} | set(FILLER))
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    return {w: i for i, w in enumerate(special + words)}


def build_tiny(arch: str, out: Path) -> Path:
    """Save a tiny randomly initialised ``arch`` encoder + a WordPiece tokenizer to ``out``."""
    import torch
    from transformers import AutoModel, BertTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    tok = BertTokenizerFast(vocab=vocab())
    tok.save_pretrained(out)
    size = len(tok)
    # A wide initialisation makes random features input-dependent enough that
    # methods and learning rates give different accuracies within a few steps.
    common = {
        "vocab_size": size,
        "pad_token_id": 0,
        "max_position_embeddings": 64,
        "initializer_range": 0.3,
    }
    if arch == "bert":
        from transformers import BertConfig

        cfg = BertConfig(
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            intermediate_size=INTERMEDIATE,
            **common,
        )
    elif arch == "roberta":
        from transformers import RobertaConfig

        cfg = RobertaConfig(
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            intermediate_size=INTERMEDIATE,
            type_vocab_size=1,
            **common,
        )
    elif arch == "distilbert":
        from transformers import DistilBertConfig

        cfg = DistilBertConfig(
            dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=INTERMEDIATE, **common
        )
    elif arch == "deberta-v2":
        from transformers import DebertaV2Config

        # Every optional module of DeBERTa-v2/v3: relative attention (log-bucketed positions,
        # both c2p and p2c, separate positional projections), the normalised relative
        # embeddings, the convolution after layer 0, an embedding projection (E != H).
        cfg = DebertaV2Config(
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            intermediate_size=INTERMEDIATE,
            relative_attention=True,
            position_buckets=DEBERTA_BUCKETS,
            pos_att_type="p2c|c2p",
            share_att_key=False,
            norm_rel_ebd="layer_norm",
            conv_kernel_size=DEBERTA_CONV,
            conv_act="gelu",
            embedding_size=DEBERTA_EMBEDDING,
            pooler_dropout=0.1,
            **common,
        )
    elif arch == "modernbert":
        from transformers import ModernBertConfig

        ids = {
            "cls_token_id": tok.cls_token_id,
            "sep_token_id": tok.sep_token_id,
            "bos_token_id": tok.cls_token_id,
            "eos_token_id": tok.sep_token_id,
        }
        # Global attention in layer 0, local attention (a window shorter than the test texts)
        # in layer 1; mean pooling; dropout everywhere it can be (the default is none).
        cfg = ModernBertConfig(
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            intermediate_size=INTERMEDIATE,
            global_attn_every_n_layers=2,
            local_attention=MODERNBERT_WINDOW,
            classifier_pooling="mean",
            embedding_dropout=0.1,
            attention_dropout=0.1,
            mlp_dropout=0.1,
            classifier_dropout=0.1,
            **ids,
            **common,
        )
    elif arch == "mpnet":
        from transformers import MPNetConfig

        cfg = MPNetConfig(
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            intermediate_size=INTERMEDIATE,
            relative_attention_num_buckets=MPNET_BUCKETS,
            **common,
        )
    elif arch == "albert":
        from transformers import AlbertConfig

        # One layer shared by every depth (ALBERT's parameter sharing), an embedding
        # projection (E != H), dropout everywhere (ALBERT's default is none).
        cfg = AlbertConfig(
            embedding_size=ALBERT_EMBEDDING,
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            intermediate_size=INTERMEDIATE,
            num_hidden_groups=1,
            inner_group_num=1,
            hidden_dropout_prob=0.1,
            attention_probs_dropout_prob=0.1,
            classifier_dropout_prob=0.1,
            **common,
        )
    else:
        raise ValueError(arch)
    torch.manual_seed(0)
    AutoModel.from_config(cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {arch: build_tiny(arch, root / arch) for arch in ARCHS}


@pytest.fixture(scope="session")
def tiny_bert(tiny_models) -> Path:
    return tiny_models["bert"]


@pytest.fixture(scope="session")
def topics_tsv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "topics.tsv"
    lines = ["text\tlabel"] + [f"{t}\t{label}" for t, label in make_texts(480)]
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_space(model: Path, data: Path, storage: Path, **sections) -> dict:
    """A space mapping for the tiny model (seconds per trial)."""
    space = {
        "experiment": {
            "name": "tiny",
            "model": str(model),
            "dataset": {"path": str(data), "text": "text", "label": "label"},
            "max_length": 32,
            "split": {"validation": 0.2, "test": 0.2},
            "seed": 0,
        },
        "train": {"epochs": 2, "evals_per_epoch": 2, "batch_size": 16},
        "methods": {
            "full": {"learning_rate": {"log": [1e-4, 1e-3]}},
            "linear_probe": {"learning_rate": {"log": [1e-3, 1e-1]}},
            "adapter": {"adapter_size": {"choice": [4, 8]}, "learning_rate": {"log": [1e-3, 1e-2]}},
            "lora": {"lora_rank": {"choice": [2, 4]}, "learning_rate": {"log": [1e-3, 1e-2]}},
        },
        "search": {"num_samples": 6},
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "storage": str(storage),
    }
    for key, value in sections.items():
        space[key] = value
    return space


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 2 CPUs, shared by the tests that need it."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
