"""Cloud storage end to end, against a real S3-protocol server (moto's) on 127.0.0.1.

A run with ``--storage s3://...`` writes every file to the bucket, nothing to the working folder,
and ``results``, ``report``, ``export``, ``confirm`` and ``search.load_results`` read it back
from the URI. A missing bucket or an endpoint that does not answer is exit 2 before Ray starts.
"""

from __future__ import annotations

import os
import socket
import subprocess

import pytest
import yaml

# Set at import, before any test starts Ray: trial workers inherit these (moto takes any key;
# no instance-metadata lookups).
for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():  # fmt: skip
    os.environ.setdefault(key, value)

BUCKET = "peft-runs"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """An S3-protocol server on 127.0.0.1 with one bucket; yields the storage URI's suffix."""
    moto = pytest.importorskip("moto.server")
    port = _free_port()
    server = moto.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    options = f"?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    from pyarrow import fs

    filesystem, _ = fs.FileSystem.from_uri(f"s3://{BUCKET}{options}&allow_bucket_creation=true")
    filesystem.create_dir(BUCKET)
    yield options
    server.stop()


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(["peftsearch", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.slow
def test_a_run_lives_in_the_bucket_and_every_reader_takes_the_uri(
    s3, tmp_path, ray_local, tiny_bert, topics_tsv
):
    import search
    from search.rundir import CONFIRM_FILE, REPORT_FILE, TRIALS_FILE, RunDir
    from trainables.export import load_model

    storage = f"s3://{BUCKET}/runs{s3}"
    space = tiny_space_file(tmp_path, tiny_bert, topics_tsv, storage)
    work = tmp_path / "work"
    work.mkdir()
    cwd = os.getcwd()
    os.chdir(work)  # where a broken URI join would write "./s3:/..."
    try:
        res = search.run(space, quiet=True)
    finally:
        os.chdir(cwd)
    assert not any(work.iterdir()), "nothing of the run is written locally"
    run = RunDir.at(f"s3://{BUCKET}/runs/tiny{s3}")
    assert res.run_dir == run.uri and run.is_run() and run.exists(REPORT_FILE)
    assert len(run.checkpoint_dirs()) == len(res.trials)  # pruned to one per trial, in the bucket
    trials, curves = search.load_results(run.uri)
    assert len(trials) == 2 and len(curves) > 0 and trials["status"].eq("TERMINATED").all()

    shown = cli("results", run.uri)
    assert shown.returncode == 0 and "2 trials" in shown.stdout, shown.stderr
    again = cli("report", run.uri)
    assert again.returncode == 0, again.stderr
    out = tmp_path / "best"
    exported = cli("export", run.uri, "--best", str(out))
    assert exported.returncode == 0, exported.stderr
    assert load_model(out) is not None
    confirmed = cli("confirm", run.uri, "--seeds", "1", "--top", "1")
    assert confirmed.returncode == 0, confirmed.stderr
    assert run.exists(CONFIRM_FILE) and len(run.read_parquet(CONFIRM_FILE)) == 1
    assert run.read_parquet(TRIALS_FILE).equals(trials)


def test_a_missing_bucket_or_a_dead_endpoint_is_exit_2_before_ray(
    s3, tmp_path, tiny_bert, topics_tsv
):
    space = tiny_space_file(tmp_path, tiny_bert, topics_tsv, "./runs")
    missing = cli("run", str(space), "--storage", f"s3://no-such-bucket/runs{s3}")
    assert missing.returncode == 2
    assert "no-such-bucket" in missing.stderr and "does not exist" in missing.stderr
    dead = f"s3://{BUCKET}/runs?endpoint_override=127.0.0.1:{_free_port()}&scheme=http"
    unreachable = cli("run", str(space), "--storage", dead)
    assert unreachable.returncode == 2 and "cannot reach the storage" in unreachable.stderr
    assert "--storage" in unreachable.stderr  # the key to fix
    assert "RAY_STARTED" not in unreachable.stdout and not (tmp_path / "runs").exists()


def tiny_space_file(tmp_path, tiny_bert, topics_tsv, storage: str):
    from conftest import tiny_space

    space = tiny_space(
        tiny_bert,
        topics_tsv,
        storage,  # type: ignore[arg-type]
        methods={"lora": {"lora_rank": 2}, "linear_probe": {}},
        search={"searcher": "grid"},
        train={"epochs": 1, "evals_per_epoch": 2, "batch_size": 16, "precision": "fp32"},
    )
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


@pytest.mark.slow
def test_the_driver_killed_mid_search_resumes_from_the_bucket(s3, tmp_path, tiny_bert, topics_tsv):
    import signal

    from conftest import tiny_space
    from test_faults import finish, start, wait_for

    from search.rundir import TRIALS_FILE, RunDir

    storage = f"s3://{BUCKET}/resume{s3}"
    raw = tiny_space(
        tiny_bert,
        topics_tsv,
        storage,  # type: ignore[arg-type]
        train={"epochs": 3, "evals_per_epoch": 2, "batch_size": 16, "precision": "fp32"},
        search={"num_samples": 3, "max_concurrent": 1},
        scheduler={"type": "none"},
    )
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(raw))
    proc = start(space, tmp_path)
    wait_for(proc, "finished  |")  # one trial done, the next one running
    wait_for(proc, "round 2/")
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local Ray, as if the machine died
    proc.wait()
    run = RunDir.at(f"s3://{BUCKET}/resume/tiny{s3}")
    assert run.read_record()["status"] == "running"

    rc, out = finish(start(space, tmp_path))  # the same command again, from a fresh process
    assert rc == 0, out
    assert "resuming" in out
    t = run.read_parquet(TRIALS_FILE)
    assert len(t) == 3 and t["trial_id"].is_unique
    assert (t["status"] == "TERMINATED").all() and (t["iterations"] == 6).all()
    record = run.read_record()
    assert record["status"] == "finished" and record["sessions"] == 2
    assert not run.sibling("tiny-2").exists()
    assert not (tmp_path / "runs").exists() and not (tmp_path / "s3:").exists()


def test_a_uri_keeps_its_options_where_the_run_name_goes_in():
    from search.rundir import RunDir

    run = RunDir.at("s3://bucket/runs/quick/?endpoint_override=127.0.0.1:9000&scheme=http")
    assert run.name == "quick" and not run.is_local
    assert run.storage == "s3://bucket/runs?endpoint_override=127.0.0.1:9000&scheme=http"
    assert run.uri == "s3://bucket/runs/quick?endpoint_override=127.0.0.1:9000&scheme=http"
    assert run.name_of("trials.parquet") == (
        "s3://bucket/runs/quick/trials.parquet?endpoint_override=127.0.0.1:9000&scheme=http"
    )
    assert run.sibling("quick-2").uri.startswith("s3://bucket/runs/quick-2?")
    assert run.root == "bucket/runs/quick"
    assert (
        run.inside("bucket/runs/quick/t_1/checkpoint_000", "meta.json")
        == "t_1/checkpoint_000/meta.json"
    )
    with pytest.raises(ValueError):
        run.inside("bucket/elsewhere", "meta.json")
    local = RunDir.at("runs/quick/")
    assert local.is_local and local.name == "quick" and local.local.is_absolute()
