"""Safety: what the tool deletes, unpickles, exposes on the network, and how it writes files.

* ``export`` never deletes what it did not write, and ``--best`` skips failed trials;
* checkpoints (and the scheduler's state) never run a pickle planted in a run folder;
* a local search binds every Ray process to the loopback address;
* atomic writes (a temporary file, fsync, rename, fsync of the folder) for
  ``space.yaml`` and the benchmark JSON files too.

One real ``peftsearch run`` (its own local Ray, a trial that fails after its
first round) is shared by most tests here; nothing is mocked.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch
import yaml
from conftest import tiny_space

from search.rundir import TRIALS_FILE
from trainables.checkpoint import STATE_FILE as CHECKPOINT_FILE
from trainables.trial import FAULT_ENV

ROOT = Path(__file__).resolve().parents[1]


class Payload:
    """A pickle whose loading runs ``os.mkdir(marker)``: what a planted checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def plant(path: Path, marker: Path) -> None:
    """Replace ``path`` with a torch file whose unpickling would create ``marker``."""
    torch.save(Payload(marker), path)


# ---------------------------------------------------------------- one real run, shared

# The run's driver, with an audit hook that logs every file it opens for writing and every
# rename (os.replace) under the storage folder: how space.yaml and run.json were written.
DRIVER = r"""
import os, sys
log, watched = open(sys.argv[1], "w", buffering=1), sys.argv[2]
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

def hook(event, args):
    if event == "open" and isinstance(args[0], (str, os.PathLike)):
        path, mode, flags = os.fspath(args[0]), args[1], args[2]
        writing = (mode and any(c in mode for c in "wax+")) or (not mode and flags & WRITE)
        if writing and isinstance(path, str) and path.startswith(watched):
            log.write(f"write\t{path}\n")
    elif event == "os.rename" and str(args[1]).startswith(watched):
        log.write(f"rename\t{args[0]}\t{args[1]}\n")

sys.addaudithook(hook)
from search.cli import main
sys.exit(main(["run", sys.argv[3]]))
"""


def listening(pids: list[int]) -> set[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket of ``pids``."""
    seen = set()
    for pid in pids:
        try:
            p = psutil.Process(pid)
            name = p.name()
            for c in p.net_connections(kind="tcp"):
                if c.status == psutil.CONN_LISTEN:
                    seen.add((name, c.laddr.ip, c.laddr.port))
        except psutil.Error:
            pass
    return seen


def loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory, tiny_bert, topics_tsv):
    """A real ``peftsearch run``: full (fails after round 1), linear_probe, lora.

    The failing trial is the most accurate (the other two barely train), so
    ``--best`` must skip it. While the run goes on, the listening sockets of
    its processes (driver, GCS, raylet, agents, trial workers) are sampled.
    """
    tmp = tmp_path_factory.mktemp("safety")
    space = tiny_space(
        tiny_bert,
        topics_tsv,
        tmp / "runs",
        train={"epochs": 1, "evals_per_epoch": 2, "batch_size": 16},
        methods={
            "full": {"learning_rate": 1e-3},
            "linear_probe": {"learning_rate": 1e-9},
            "lora": {"lora_rank": 2, "learning_rate": 1e-9},
        },
        search={"searcher": "grid", "max_concurrent": 2},
        scheduler={"type": "none"},
    )
    path = tmp / "faulty.yaml"
    path.write_text(yaml.safe_dump(space))
    log, out = tmp / "writes.log", tmp / "out.log"
    with open(out, "w") as stdout:
        proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(log), str(tmp / "runs"), str(path)],
            cwd=tmp,
            env={**os.environ, "HF_HUB_OFFLINE": "1", FAULT_ENV: "raise@1:full"},
            stdout=stdout,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        sockets: set[tuple[str, str, int]] = set()
        deadline = time.time() + 600
        while proc.poll() is None and time.time() < deadline:
            try:
                tree = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(True)]
            except psutil.Error:
                tree = []
            sockets |= listening(tree)
            time.sleep(0.5)
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
        proc.wait()
    run_dir = tmp / "runs" / "tiny"
    assert proc.returncode == 0, out.read_text()[-4000:]
    return {"run_dir": run_dir, "sockets": sockets, "writes": log.read_text(), "tmp": tmp}


def trial_ids(run_dir: Path) -> dict[str, str]:
    t = pd.read_parquet(run_dir / TRIALS_FILE)
    return dict(zip(t["method"], t["trial_id"]))


def export_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "search.cli", "export", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ---------------------------------------------------------------- 3. Ray on loopback only


@pytest.mark.slow
def test_a_local_search_listens_on_the_loopback_address_only(faulty_run):
    seen = faulty_run["sockets"]
    names = {name for name, _, _ in seen}
    # The sampling did see Ray: its GCS, the raylet and the trial workers.
    assert {"gcs_server", "raylet"} <= names, seen
    exposed = sorted(s for s in seen if not loopback(s[1]))
    assert not exposed, f"listening beyond 127.0.0.1: {exposed}"


# ---------------------------------------------------------------- 1. export


@pytest.mark.slow
def test_export_best_skips_a_failed_trial(faulty_run, tmp_path):
    run_dir = faulty_run["run_dir"]
    t = pd.read_parquet(run_dir / TRIALS_FILE).set_index("method")
    assert t.loc["full", "status"] == "ERROR"
    # The failed trial reported the best accuracy before it failed: the trap --best avoids.
    assert t.loc["full", "val_accuracy"] > t.drop("full")["val_accuracy"].max(), t
    done = export_cli(run_dir, "--best", tmp_path / "best")
    assert done.returncode == 0, done.stderr
    picked = json.loads((tmp_path / "best" / "metrics.json").read_text())
    others = t.drop("full")
    assert picked["trial_id"] in set(others["trial_id"]) and picked["status"] != "ERROR"
    assert picked["val_accuracy"] == others["val_accuracy"].max()


@pytest.mark.slow
def test_export_never_deletes_a_folder_it_did_not_write(faulty_run, tmp_path):
    run_dir = faulty_run["run_dir"]
    lora = trial_ids(run_dir)["lora"]
    work = tmp_path / "work"
    (work / "notes").mkdir(parents=True)
    (work / "thesis.tex").write_text("three years of work")
    (work / "notes" / "a.txt").write_text("more")
    before = files(work)
    for out, cwd in ((".", work), (work, None)):  # `export RUN --trial ID .` in a working folder
        for force in ((), ("--force",)):
            done = export_cli(run_dir, "--trial", lora, out, *force, cwd=cwd)
            assert done.returncode == 2, (force, done.stdout, done.stderr)
            assert "not empty" in done.stderr or "did not write" in done.stderr, done.stderr
            assert files(work) == before  # nothing deleted, nothing added
    assert sorted(p.name for p in work.iterdir()) == ["notes", "thesis.tex"]


@pytest.mark.slow
def test_export_force_replaces_only_a_previous_export(faulty_run, tmp_path):
    run_dir = faulty_run["run_dir"]
    ids = trial_ids(run_dir)
    out = tmp_path / "model"
    assert export_cli(run_dir, "--trial", ids["lora"], out).returncode == 0
    first = files(out)
    assert "adapter_model.safetensors" in first  # a peft directory
    # Without --force an export is refused like any non-empty folder.
    again = export_cli(run_dir, "--trial", ids["linear_probe"], out)
    assert again.returncode == 2 and "--force" in again.stderr, again.stderr
    assert files(out) == first
    # With --force it replaces the previous export: none of its files is left behind.
    done = export_cli(run_dir, "--trial", ids["linear_probe"], out, "--force")
    assert done.returncode == 0, done.stderr
    second = files(out)
    assert json.loads(second["peftsearch.json"])["method"] == "linear_probe"
    assert "model.safetensors" in second and "adapter_model.safetensors" not in second
    assert json.loads(second["metrics.json"])["trial_id"] == ids["linear_probe"]
    # A file the export did not write: --force refuses, and touches nothing.
    (out / "my_eval.csv").write_text("acc\n0.9\n")
    kept = files(out)
    refused = export_cli(run_dir, "--trial", ids["lora"], out, "--force")
    assert refused.returncode == 2 and "my_eval.csv" in refused.stderr, refused.stderr
    assert files(out) == kept


# ---------------------------------------------------------------- 2. no pickle from a run folder


@pytest.fixture
def planted(faulty_run, tmp_path):
    """A copy of the run whose failed trial's checkpoints are planted pickles."""
    run_dir = tmp_path / "run"
    shutil.copytree(faulty_run["run_dir"], run_dir)
    full = trial_ids(run_dir)["full"]
    states = list(run_dir.glob(f"*_{full}_*/checkpoint_*/{CHECKPOINT_FILE}"))
    assert states
    marker = tmp_path / "PWNED"
    for state in states:
        plant(state, marker)
    return run_dir, full, marker


@pytest.mark.slow
def test_export_does_not_unpickle_a_planted_checkpoint(planted, tmp_path):
    from search.export import export_trial

    run_dir, full, marker = planted
    with pytest.raises(pickle.UnpicklingError):
        export_trial(run_dir, tmp_path / "out", full)
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_pruning_does_not_unpickle_a_planted_checkpoint(planted):
    from search.driver import prune_checkpoints

    run_dir, _, marker = planted
    with pytest.raises(pickle.UnpicklingError):
        prune_checkpoints(run_dir, "val_accuracy", "max")
    assert not marker.exists()


@pytest.mark.slow
def test_a_restored_trial_does_not_unpickle_a_planted_checkpoint(planted, ray_local):
    """Tune restores the failed trial from its (planted) checkpoint: the trial fails, nothing runs."""
    from ray import tune

    from search.preflight import prepare_data
    from search.space import validate
    from trainables.trial import tune_trainable

    run_dir, full, marker = planted
    space = validate(yaml.safe_load((run_dir / "space.yaml").read_text()), str(run_dir))
    data = prepare_data(space, progress=False)
    trainable = tune.with_resources(
        tune.with_parameters(
            tune_trainable, data=data.without("test"), model_name=space.model, cpus=1
        ),
        {"cpu": 1, "gpu": 0},
    )
    tuner = tune.Tuner.restore(str(run_dir), trainable, resume_errored=True)
    grid = tuner.fit()
    (restored,) = [r for r in grid if full in str(r.path)]
    assert restored.error is not None
    assert "UnpicklingError" in str(restored.error) or "Weights only load failed" in str(
        restored.error
    ), restored.error
    assert not marker.exists()


def test_the_scheduler_state_is_json_and_restores(tmp_path):
    from search.schedulers import ParetoASHA

    def fresh():
        return ParetoASHA(max_t=8, grace_period=1, reduction_factor=2, group_by="method")

    s = fresh()
    assert s._decide("a", 1, (0.9, 100), "lora") == "CONTINUE"
    assert s._decide("b", 1, (0.8, 100), "lora") == "STOP"
    assert s._decide("c", 2, (0.5, 10), "full") == "CONTINUE"
    s.num_stopped = 1
    path = tmp_path / "scheduler.json"
    s.save(str(path))
    json.loads(path.read_text())  # plain JSON, no pickle
    r = fresh()
    r.restore(str(path))
    assert r._rungs == s._rungs and r.num_stopped == 1
    # The restored scheduler decides as the saved one would.
    assert r._decide("d", 1, (0.85, 100), "lora") == s._decide("d", 1, (0.85, 100), "lora")
    assert r._rungs == s._rungs


def test_the_scheduler_never_unpickles_a_planted_state(tmp_path):
    from search.schedulers import ParetoASHA

    marker = tmp_path / "PWNED"
    path = tmp_path / "scheduler.pkl"
    path.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ValueError):
        ParetoASHA().restore(str(path))
    assert not marker.exists()


# ---------------------------------------------------------------- 4. atomic writes


def test_atomic_write_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path):
    if not shutil.which("strace"):
        pytest.skip("strace is not installed")
    target = tmp_path / "out.json"
    code = (
        "import sys; from trainables.atomic import atomic_write; "
        "atomic_write(sys.argv[1], lambda tmp: tmp.write_text('{}'))"
    )
    log = tmp_path / "strace.log"
    done = subprocess.run(
        ["strace", "-f", "-o", str(log), "-e", "trace=openat,fsync,fdatasync,rename,renameat,"
         "renameat2,close", sys.executable, "-c", code, str(target)],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    if done.returncode != 0 and "ptrace" in done.stderr:
        pytest.skip(f"strace cannot trace here: {done.stderr[-200:]}")
    assert done.returncode == 0, done.stderr
    assert target.read_text() == "{}"
    fds: dict[str, str] = {}  # open fd -> path
    events = []
    for line in log.read_text().splitlines():
        if m := re.search(r'openat\([^"]*"([^"]+)".*\)\s+=\s+(\d+)$', line):
            fds[m.group(2)] = m.group(1)
        elif m := re.search(r"\bf(?:data)?sync\((\d+)\)\s+=\s+0", line):
            events.append(("fsync", fds.get(m.group(1))))
        elif m := re.search(r'rename(?:at2?)?\(.*"([^"]+)".*"([^"]+)"', line):
            events.append(("rename", m.group(2)))
    renamed = events.index(("rename", str(target)))
    synced = [path for kind, path in events[:renamed] if kind == "fsync"]
    assert any(p and Path(p).name.endswith(".tmp") for p in synced), events
    assert ("fsync", str(tmp_path)) in events[renamed:], events


class WriteWatch:
    """Files opened for writing and renames, seen through a (process-wide) audit hook."""

    active: WriteWatch | None = None
    installed = False

    def __init__(self, under: Path) -> None:
        self.under, self.writes, self.renames = str(under), [], []

    @staticmethod
    def _hook(event: str, args: tuple) -> None:
        w = WriteWatch.active
        if w is None:
            return
        if event == "open" and isinstance(args[0], str | Path):
            path, mode, flags = str(args[0]), args[1], args[2]
            wants = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
            writing = (mode and any(c in mode for c in "wax+")) or (not mode and flags & wants)
            if writing and path.startswith(w.under):
                w.writes.append(path)
        elif event == "os.rename" and str(args[1]).startswith(w.under):
            w.renames.append((str(args[0]), str(args[1])))

    def __enter__(self) -> WriteWatch:
        if not WriteWatch.installed:
            sys.addaudithook(WriteWatch._hook)
            WriteWatch.installed = True
        WriteWatch.active = self
        return self

    def __exit__(self, *exc) -> None:
        WriteWatch.active = None


def written_atomically(path: Path, writes: list[str], renames: list[tuple[str, str]]) -> bool:
    """Never opened for writing itself; a temporary file beside it renamed over it."""
    return str(path) not in writes and any(
        dst == str(path) and Path(src).parent == path.parent and src in writes
        for src, dst in renames
    )


def test_benchmark_results_are_written_atomically():
    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "benchmarks/_common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    name = f"_test_safety_{os.getpid()}"  # <name>.quick.json: ignored by git
    path = common.RESULTS / f"{name}.quick.json"
    try:
        with WriteWatch(common.RESULTS) as w:
            assert common.save(name, {"figure": 1.5}, quick=True) == path
        assert json.loads(path.read_text())["figure"] == 1.5
        assert written_atomically(path, w.writes, w.renames), (w.writes, w.renames)
        assert not list(common.RESULTS.glob(f".{name}*"))  # no temporary left
    finally:
        path.unlink(missing_ok=True)


@pytest.mark.slow
def test_space_yaml_and_run_json_are_written_atomically(faulty_run):
    run_dir = faulty_run["run_dir"]
    writes, renames = [], []
    for line in faulty_run["writes"].splitlines():
        kind, *paths = line.split("\t")
        if kind == "write":
            writes.append(paths[0])
        else:
            renames.append((paths[0], paths[1]))
    for name in ("space.yaml", "run.json"):
        assert written_atomically(run_dir / name, writes, renames), (name, writes, renames)
    assert yaml.safe_load((run_dir / "space.yaml").read_text())["experiment"]["name"] == "tiny"
