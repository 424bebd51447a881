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


def refused_before_ray(path: Path, cwd: Path, expect: str | tuple[str, ...]) -> None:
    """``validate`` and ``run`` of the space at ``path`` each exit 2 before Ray starts, with
    every part of ``expect`` on stderr and no traceback; nothing is written under ``cwd``."""
    before = sorted(cwd.rglob("*"))
    for command in ("validate", "run"):
        out = run_cli([command, str(path)], cwd)
        assert out.returncode == 2, out.stderr
        for part in (expect,) if isinstance(expect, str) else expect:
            assert part in out.stderr, out.stderr
        assert "Traceback" not in out.stderr, out.stderr
        assert "RAY_STARTED False" in out.stdout
    assert sorted(cwd.rglob("*")) == before  # nothing written, here or beside it


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


def _yaml(text: str, drop: str | None = None):
    """A change to the space file's text: ``text`` appended (after dropping section ``drop``)."""

    def change(space: dict, tmp: Path) -> str:
        space.pop(drop, None)
        return text

    return change


def _latin1_data(space: dict, tmp: Path) -> None:
    """A change to the space: a data file in Latin-1, not UTF-8 (the default encoding)."""
    path = tmp / "data.tsv"
    path.write_bytes(("text\tlabel\n" + ROWS + "caf\u00e9 cr\u00e8me\tfood\n").encode("latin-1"))
    space["experiment"]["dataset"] = {"path": str(path)}


def _storage_under_a_file(space: dict, tmp: Path) -> None:
    """A change to the space: storage below a regular file (no folder can be made there)."""
    (tmp / "a-file").write_text("not a folder")
    space["storage"] = str(tmp / "a-file" / "runs")


def _split_files(dev: str):
    """A change to the space: one training file and one validation file with ``dev`` rows."""

    def change(space: dict, tmp: Path) -> None:
        (tmp / "train.tsv").write_text("text\tlabel\n" + ROWS)
        (tmp / "dev.tsv").write_text("text\tlabel\n" + dev)
        files = {"train": str(tmp / "train.tsv"), "validation": str(tmp / "dev.tsv")}
        space["experiment"]["dataset"] = {"files": files}

    return change


def _sets(**keys):
    """A change to the space: several keys (dotted paths, ``__`` for the dots) set at once."""

    def change(space: dict, tmp: Path) -> None:
        for k, v in keys.items():
            _set(k.replace("__", "."), v)(space, tmp)

    return change


FLOATS = "".join(f"goal match {i}\t{i / 7:.3f}\n" for i in range(40))

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
    ("name with ../", _set("experiment.name", "../escape"),
     "experiment.name: '../escape' is not a plain name"),
    ("name with a separator", _set("experiment.name", "a/b"),
     "experiment.name: 'a/b' is not a plain name"),
    ("max_length beyond the model's positions", _set("experiment.max_length", 100000),
     "experiment.max_length: 100000 tokens, but the model has 64 positions"),
    ("duplicate top-level key", _yaml("experiment:\n  seed: 1\n"),
     ("duplicate key 'experiment' at line", "the second would replace the first")),
    ("duplicate nested key", _yaml("search:\n  num_samples: 2\n  num_samples: 3\n", drop="search"),
     "duplicate key 'num_samples' at line"),
    ("single-class label column",
     _data("text\tlabel\n" + "".join(f"goal {i}\tsport\n" for i in range(40))),
     ("experiment.dataset.label: ", "data.tsv: column 'label' has one class ('sport') in all 40 rows")),
    ("empty labels", _data("text\tlabel\n" + ROWS + "soup\t\n" * 3),
     ("experiment.dataset.label: ", "data.tsv: column 'label' is empty in 3 of 43 rows")),
    ("text empty in every row", _data("text\tlabel\n" + "\tsport\n \ttech\n" * 20),
     ("experiment.dataset.text: ", "data.tsv: column 'text' is empty in all 40 rows")),
    ("text empty in some rows", _data("text\tlabel\n" + ROWS + "\tsport\n\ttech\n"),
     ("experiment.dataset.text: ", "data.tsv: column 'text' is empty in 2 of 42 rows")),
    ("data file not UTF-8", _latin1_data,
     ("experiment.dataset.encoding: ", "data.tsv: not utf-8 text", "encoding: latin-1")),
    ("unknown encoding", _set("experiment.dataset.encoding", "utf-9"),
     "experiment.dataset.encoding: unknown encoding 'utf-9'"),
    ("drop_invalid not a boolean", _set("experiment.dataset.drop_invalid", "yes please"),
     "experiment.dataset.drop_invalid: must be true or false"),
    ("grace_period beyond the rounds", _set("scheduler.grace_period", 5),
     "scheduler.grace_period: 5 rounds before the first cut, but a trial runs at most 4"),
    ("storage below a file", _storage_under_a_file, ("storage: ", "a-file is not a folder")),
    ("metric that does not fit the task",
     _sets(experiment__task="regression", experiment__metric="mcc"),
     ("experiment.metric: 'mcc' does not fit a regression task", "pearson")),
    ("f1 on more than two labels", _set("experiment.metric", "f1"),
     ("experiment.metric: f1 is binary, but the label column has 3 labels", "f1_macro",
      "f1_micro")),
    ("regression labels that are not numbers", _set("experiment.task", "regression"),
     ("experiment.dataset.label: ", "holds 480 value(s) that are not numbers", "'sport'")),
    ("non-integer labels ranked by accuracy", _data("text\tlabel\n" + FLOATS),
     ("experiment.metric: 'accuracy' does not fit a regression task", "experiment.task")),
]  # fmt: skip


@pytest.mark.parametrize("case,change,expect", BAD, ids=[b[0] for b in BAD])
def test_bad_input_exits_2_naming_the_field_and_writes_nothing(
    case, change, expect, tmp_path, tiny_bert, topics_tsv
):
    storage = tmp_path / "runs"
    space = tiny_space(tiny_bert, topics_tsv, storage)
    extra = change(space, tmp_path)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(space) + (extra or ""))
    refused_before_ray(path, tmp_path, expect)
    assert not storage.exists()


def test_unknown_set_key_for_trial_exits_2(tmp_path, tiny_bert, topics_tsv):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_space(tiny_bert, topics_tsv, tmp_path / "runs")))
    out = run_cli(["trial", "--method", "lora", "--space", str(path), "--set", "rank=4"], tmp_path)
    assert out.returncode == 2 and "knob of lora" in out.stderr


def test_trial_json_prints_one_object(tmp_path, tiny_bert, topics_tsv):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_space(tiny_bert, topics_tsv, tmp_path / "runs")))

    def trial() -> dict:
        out = subprocess.run(
            ["peftsearch", "trial", "--method", "lora", "--space", str(path), "--json",
             "--set", "lora_rank=4", "--set", "epochs=1", "--set", "learning_rate=1e-2",
             "--set", "max_length=16"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    result = trial()
    assert result["method"] == "lora" and result["config"]["lora_rank"] == 4
    assert 0 < result["trainable_params"] < result["total_params"]
    # one epoch, evals_per_epoch 2 (the space's): two rounds, in order
    rounds = result["rounds"]
    assert len(rounds) == result["planned_iterations"] == 2
    assert [r["epoch"] for r in rounds] == [0.5, 1.0]
    assert rounds[0]["step"] < rounds[1]["step"] == result["step"]
    # val_accuracy is the best round, val_accuracy_last the last one
    assert result["val_accuracy"] == max(r["val_accuracy"] for r in rounds)
    assert result["val_accuracy_last"] == rounds[-1]["val_accuracy"]
    # the tiny task is learnable: above chance (1/3) after one epoch
    assert result["val_accuracy"] > 0.4, rounds
    # the seed fixes the run: the same command gives the same numbers
    again = trial()
    assert again["rounds"] == rounds
    assert again["val_accuracy"] == result["val_accuracy"]


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


def test_run_name_with_a_path_is_refused(tmp_path, tiny_bert, topics_tsv):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_space(tiny_bert, topics_tsv, tmp_path / "runs")))
    before = sorted(tmp_path.rglob("*"))
    out = run_cli(["run", str(path), "--name", "../escape"], tmp_path)
    assert out.returncode == 2, out.stderr
    assert "--name: '../escape' is not a plain name" in out.stderr
    assert "RAY_STARTED False" in out.stdout
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize(
    "command", [["results"], ["report"], ["export", "--best", "OUT"]], ids=lambda c: c[0]
)
def test_a_folder_that_is_not_a_run_is_named(command, tmp_path):
    folder = tmp_path / "not-a-run"
    folder.mkdir()
    args = [a if a != "OUT" else str(tmp_path / "out") for a in command]
    out = run_cli([args[0], str(folder), *args[1:]], tmp_path)
    assert out.returncode == 2, out.stderr
    assert f"{folder} is not a peftsearch run (no trials.parquet)" in out.stderr
    assert "Traceback" not in out.stderr and "RAY_STARTED False" in out.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-run"]


def test_validate_says_which_methods_use_the_feature_cache_and_why_not(
    tmp_path, tiny_models, topics_tsv
):
    """A top adapter on ModernBERT cannot train on the cache, and validate says why; its
    linear probe can."""
    space = tiny_space(tiny_models["modernbert"], topics_tsv, tmp_path / "runs")
    space["methods"] = {
        "linear_probe": {},
        "adapter": {"adapter_placement": "top"},
        "lora": {},
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(space))
    out = run_cli(["validate", str(path)], tmp_path)
    assert out.returncode == 0, out.stderr
    lines = {ln.split(":")[0].strip(): ln for ln in out.stdout.splitlines()}
    assert lines["linear_probe"].endswith("feature cache: used")
    # (the tiny ModernBERT pools by mean: a top module would change the mean it reads)
    assert "feature cache: not used (its head reads the mean vector" in lines["adapter"]
    assert "feature cache" not in lines["lora"]


@pytest.mark.parametrize("flag", [["--matrix"]])
def test_methods_matrix_is_printed(tmp_path, flag):
    out = run_cli(["methods", *flag], tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("| model type | full | linear_probe |")
    assert "| bert | yes | yes |" in out.stdout and "Why not:" in out.stdout
