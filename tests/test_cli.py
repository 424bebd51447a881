"""The command line: bad input exits 2 before Ray starts; ``trial --json``; any working directory."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_space

PROBE = (
    "import sys, ray; from search.cli import main; rc = main(sys.argv[1:]); "
    "print('RAY_STARTED', ray.is_initialized()); sys.exit(rc)"
)


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``peftsearch ARGS`` in a fresh process that also reports whether Ray was started."""
    return subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},  # no network in tests: an unknown id fails fast
    )


def _set(key: str, value):
    """A change to the space: ``key`` (a dotted path) set to ``value``."""

    def change(space: dict, tmp: Path) -> None:
        node = space
        *parents, last = key.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = value

    return change


def _data(text: str, **dataset):
    """A change to the space: a local data file with ``text``, and dataset keys."""

    def change(space: dict, tmp: Path) -> None:
        path = tmp / "data.tsv"
        path.write_text(text)
        space["experiment"]["dataset"] = {"path": str(path), **dataset}

    return change


ROWS = "".join(f"goal match {i}\tsport\nchip code {i}\ttech\n" for i in range(20))


def _split_files(dev: str):
    """A change to the space: one training file and one validation file with ``dev`` rows."""

    def change(space: dict, tmp: Path) -> None:
        (tmp / "train.tsv").write_text("text\tlabel\n" + ROWS)
        (tmp / "dev.tsv").write_text("text\tlabel\n" + dev)
        files = {"train": str(tmp / "train.tsv"), "validation": str(tmp / "dev.tsv")}
        space["experiment"]["dataset"] = {"files": files}

    return change


# (case, change, what the message must name) - the list of bad input, each exit 2.
BAD = [
    ("unknown method", _set("methods.lorax", {}), "methods.lorax: unknown method"),
    ("unknown knob", _set("methods.lora.rank", 8), "methods.lora.rank: unknown key"),
    ("low > high", _set("methods.lora.lora_rank", {"int": [16, 4]}), "swap them"),
    ("log low <= 0", _set("methods.full.learning_rate", {"log": [0.0, 0.1]}), "low > 0"),
    ("empty choice", _set("methods.adapter.adapter_size", {"choice": []}), "non-empty list"),
    ("num_samples 0", _set("search.num_samples", 0), "search.num_samples"),
    ("unknown model id", _set("experiment.model", "no-such-org/no-such-model"), "experiment.model"),
    ("unknown model path", _set("experiment.model", "/nonexistent/model"), "/nonexistent/model"),
    ("missing data file", _set("experiment.dataset", {"path": "/nonexistent/d.tsv"}),
     "experiment.dataset.path: no such file"),
    ("no text column", _data("sentence\tlabel\n" + ROWS), "experiment.dataset.text"),
    ("no label column", _data("text\ttopic\n" + ROWS), "experiment.dataset.label"),
    ("validation label unseen in training", _split_files(ROWS + "soup\tfood\n"),
     "experiment.dataset.label: validation labels ['food'] never occur"),
    ("empty split", _split_files(""), "experiment.split: split 'validation' is empty"),
    ("max_length 0", _set("experiment.max_length", 0), "experiment.max_length"),
    ("GPU on a machine without one", _set("resources.gpu", 0.5),
     "resources.gpu: 0.5 GPU per trial, but this machine has no GPU"),
]  # fmt: skip


@pytest.mark.parametrize("case,change,expect", BAD, ids=[b[0] for b in BAD])
def test_bad_input_exits_2_naming_the_field_and_writes_nothing(
    case, change, expect, tmp_path, tiny_bert, topics_tsv
):
    storage = tmp_path / "runs"
    space = tiny_space(tiny_bert, topics_tsv, storage)
    change(space, tmp_path)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(space))
    for command in ("validate", "run"):
        out = run_cli([command, str(path)], tmp_path)
        assert out.returncode == 2, out.stderr
        assert expect in out.stderr, out.stderr
        assert "RAY_STARTED False" in out.stdout
    assert not storage.exists()


def test_unknown_set_key_for_trial_exits_2(tmp_path, tiny_bert, topics_tsv):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_space(tiny_bert, topics_tsv, tmp_path / "runs")))
    out = run_cli(["trial", "--method", "lora", "--space", str(path), "--set", "rank=4"], tmp_path)
    assert out.returncode == 2 and "knob of lora" in out.stderr


def test_trial_json_prints_one_object(tmp_path, tiny_bert, topics_tsv):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_space(tiny_bert, topics_tsv, tmp_path / "runs")))
    out = subprocess.run(
        ["peftsearch", "trial", "--method", "lora", "--space", str(path), "--json",
         "--set", "lora_rank=4", "--set", "epochs=1", "--set", "learning_rate=3e-3", "--set", "max_length=16"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["method"] == "lora" and result["config"]["lora_rank"] == 4
    assert 0 < result["trainable_params"] < result["total_params"]
    assert 0.0 <= result["val_accuracy"] <= 1.0


def test_validate_and_help_work_from_any_directory(tmp_path):
    out = subprocess.run(["peftsearch", "validate"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0 and "quick.yaml: ok" in out.stdout
    for cmd in ([], ["run"], ["trial"], ["validate"], ["methods"], ["report"]):
        h = subprocess.run(["peftsearch", *cmd, "--help"], capture_output=True, text=True)
        assert h.returncode == 0 and "usage: peftsearch" in h.stdout
    run_help = subprocess.run(
        ["peftsearch", "run", "--help"], capture_output=True, text=True
    ).stdout
    for flag in ("--name", "--storage", "--num-samples", "--max-concurrent", "--set", "--resume"):
        assert flag in run_help


@pytest.mark.slow
def test_trial_on_the_offline_default_model_and_data(tmp_path):
    """The demo's real model (all-MiniLM-L6-v2) and data (BBC News), installed from PyPI."""
    out = subprocess.run(
        ["peftsearch", "trial", "--method", "lora", "--json", "--set", "max_train_samples=32",
         "--set", "max_eval_samples=20", "--set", "max_length=32", "--set", "evals_per_epoch=1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["total_params"] > 22_000_000  # MiniLM-L6 + LoRA
    # LoRA r=8 on query/value of 6 layers (384 -> 384) + the 5-way head.
    assert result["trainable_params"] == 6 * 2 * 8 * (384 + 384) + 384 * 5 + 5


def test_method_that_cannot_apply_to_the_architecture_exits_2(tmp_path, tiny_models, topics_tsv):
    space = tiny_space(tiny_models["deberta-v2"], topics_tsv, tmp_path / "runs")
    space["methods"]["prefix"] = {"prefix_length": 4}
    space["methods"]["freeze"] = {"freeze_layers": {"int": [1, 9]}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(space))
    for cmd in (["validate", str(path)], ["run", str(path)]):
        out = run_cli(cmd, tmp_path)
        assert out.returncode == 2, out.stderr
        assert "methods.prefix: prefix: deberta-v2 computes attention itself" in out.stderr
        assert re.search(
            r"methods.freeze: freeze: freeze_layers=\d+ but the model has 2 layers", out.stderr
        )
        assert "RAY_STARTED False" in out.stdout
    assert not (tmp_path / "runs").exists()
