"""Faults, each with a real Ray in a real ``peftsearch run`` process.

A trial that raises or whose process is SIGKILLed is recorded with its
status and error and the search goes on; with retries it resumes from its
checkpoint. The driver SIGKILLed mid-search resumes to exactly num_samples
trials; Ctrl-C writes what finished. (A trial whose loss becomes NaN, from a
real overflow, is in test_e2e.)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import tiny_space

from search.rundir import REPORT_FILE, TRIALS_FILE
from trainables.trial import FAULT_ENV

pytestmark = pytest.mark.slow


def write_space(tmp_path: Path, model: Path, data: Path, **sections) -> Path:
    space = tiny_space(model, data, tmp_path / "runs", **sections)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def grid_space(tmp_path, model, data, max_failures: int) -> Path:
    """Three trials, one per method, no early stopping: which trial fails is known."""
    return write_space(
        tmp_path,
        model,
        data,
        methods={
            "full": {"learning_rate": 3e-4},
            "lora": {"lora_rank": 4, "learning_rate": 3e-3},
            "adapter": {"adapter_size": 4, "learning_rate": 3e-3},
        },
        search={"searcher": "grid", "max_failures": max_failures, "max_concurrent": 2},
        scheduler={"type": "none"},
    )


def start(space: Path, cwd: Path, env: dict | None = None, **kw) -> subprocess.Popen:
    """``peftsearch run SPACE`` in its own process group (so a kill takes its Ray too)."""
    return subprocess.Popen(
        [sys.executable, "-m", "search.cli", "run", str(space)],
        cwd=cwd,
        # PYTHONFAULTHANDLER: a SIGABRT (finish's, at its timeout) prints every thread's stack.
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONFAULTHANDLER": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        **kw,
    )


def finish(proc: subprocess.Popen, timeout: float = 400) -> tuple[int, str]:
    """The return code and output of a :func:`start`-ed run. One still running after
    ``timeout`` fails the test with its output and the driver's stacks (a SIGABRT), and is
    killed with its process group: its Ray must not outlive the test."""
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()  # a retried communicate loses no output
    pytest.fail(f"the run was still going after {timeout:.0f} s; its output:\n{out[-30000:]}")


def wait_for(proc: subprocess.Popen, text: str, timeout: float = 300) -> str:
    """Read the process's output until a line contains ``text``."""
    seen = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"never saw {text!r}:\n{''.join(seen)}")


def trials_of(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(run_dir / TRIALS_FILE).set_index("method")


def test_trial_that_raises_or_is_killed_is_recorded_and_the_search_goes_on(
    tmp_path, tiny_bert, topics_tsv
):
    space = grid_space(tmp_path, tiny_bert, topics_tsv, max_failures=0)
    rc, out = finish(start(space, tmp_path, {FAULT_ENV: "raise@1:lora,kill@2:adapter"}))
    assert rc == 0, out
    t = trials_of(tmp_path / "runs" / "tiny")
    assert len(t) == 3
    assert t.loc["lora", "status"] == "ERROR"
    assert "RuntimeError: injected fault" in t.loc["lora", "error"]
    assert t.loc["adapter", "status"] == "ERROR"
    # The trial's process died: Ray reports the actor's death, and that is what is recorded.
    assert "died" in t.loc["adapter", "error"].lower(), t.loc["adapter", "error"]
    assert t.loc["adapter", "iterations"] == 2  # its reported rounds are kept
    assert t.loc["full", "status"] == "TERMINATED" and pd.isna(t.loc["full", "error"])
    assert "injected fault" in (tmp_path / "runs" / "tiny" / REPORT_FILE).read_text()


def test_with_retries_a_killed_trial_resumes_from_its_checkpoint(tmp_path, tiny_bert, topics_tsv):
    space = grid_space(tmp_path, tiny_bert, topics_tsv, max_failures=1)
    rc, out = finish(start(space, tmp_path, {FAULT_ENV: "kill@2:lora,raise@3:full"}))
    assert rc == 0, out
    run_dir = tmp_path / "runs" / "tiny"
    t = trials_of(run_dir)
    assert (t["status"] == "TERMINATED").all(), t[["status", "error"]]
    assert t.loc["lora", "num_failures"] == 1 and t.loc["full", "num_failures"] == 1
    assert t.loc["adapter", "num_failures"] == 0
    assert (t["iterations"] == t["planned_iterations"]).all()
    # Resumed from the checkpoint after round 2, not from scratch: each round reported once.
    curves = pd.read_parquet(run_dir / "curves.parquet")
    lora = curves[curves["method"] == "lora"]["iteration"].tolist()
    assert lora == list(range(1, t.loc["lora", "planned_iterations"] + 1))
    steps = curves[curves["method"] == "lora"]["step"].tolist()
    assert steps == sorted(steps) and len(set(steps)) == len(steps)


def one_at_a_time(tmp_path, model, data, num_samples: int) -> Path:
    """Trials of 6 rounds, one at a time, none stopped: an interruption lands mid-trial."""
    return write_space(
        tmp_path,
        model,
        data,
        train={"epochs": 3, "evals_per_epoch": 2, "batch_size": 16},
        search={"num_samples": num_samples, "max_concurrent": 1},
        scheduler={"type": "none"},
    )


def test_driver_killed_mid_search_resumes_to_exactly_num_samples(tmp_path, tiny_bert, topics_tsv):
    space = one_at_a_time(tmp_path, tiny_bert, topics_tsv, num_samples=5)
    proc = start(space, tmp_path)
    wait_for(proc, "finished  |")  # one trial done, the next one running
    wait_for(proc, "round 2/")
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local Ray, as if the machine died
    proc.wait()
    run_dir = tmp_path / "runs" / "tiny"
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"

    rc, out = finish(start(space, tmp_path))  # the same command again
    assert rc == 0, out
    assert f"resuming {run_dir}" in out
    t = pd.read_parquet(run_dir / TRIALS_FILE)
    assert len(t) == 5 and t["trial_id"].is_unique
    assert (t["status"] == "TERMINATED").all() and (t["iterations"] == 6).all()
    curves = pd.read_parquet(run_dir / "curves.parquet")
    assert not curves.duplicated(["trial_id", "iteration"]).any()
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "finished" and record["sessions"] == 2
    assert not (run_dir.parent / "tiny-2").exists()


def test_ctrl_c_writes_what_finished_then_the_same_command_resumes(tmp_path, tiny_bert, topics_tsv):
    space = one_at_a_time(tmp_path, tiny_bert, topics_tsv, num_samples=4)
    proc = start(space, tmp_path)
    wait_for(proc, "finished  |")
    proc.send_signal(signal.SIGINT)  # Ctrl-C reaches the driver
    rc, out = finish(proc)
    assert rc == 130, out
    run_dir = tmp_path / "runs" / "tiny"
    t = pd.read_parquet(run_dir / TRIALS_FILE)
    assert (t["status"] == "TERMINATED").sum() >= 1
    assert (run_dir / REPORT_FILE).exists()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    assert "run the same command again to resume" in out

    rc, out = finish(start(space, tmp_path))
    assert rc == 0, out
    t = pd.read_parquet(run_dir / TRIALS_FILE)
    assert len(t) == 4 and (t["status"] == "TERMINATED").all() and t["trial_id"].is_unique
