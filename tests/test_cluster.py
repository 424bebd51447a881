"""The cluster: cluster.yaml checked with Ray's own code; searches across real Ray nodes.

Nodes are real Ray processes on this machine (``ray.cluster_utils.Cluster``,
or ``ray start`` with the fake multi-node provider for autoscaled GPU nodes);
the driver is a real ``peftsearch run --address`` process. The run folder is
shared by every node, as an NFS path or a bucket would be.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from clusters import kill_cluster, start_fake_gpu_cluster
from conftest import tiny_space

from search.cluster import check_cluster_config, check_cluster_file

CLUSTER_YAML = Path(__file__).resolve().parent.parent / "cluster.yaml"


def test_cluster_yaml_is_valid_for_rays_own_launcher_code():
    prepared = check_cluster_file(CLUSTER_YAML)
    types = prepared["available_node_types"]
    assert prepared["head_node_type"] == "head" and types["head"]["resources"] == {"CPU": 0}
    gpus = {n: t for n, t in types.items() if t["resources"].get("GPU")}
    assert {t["node_config"]["InstanceType"] for t in gpus.values()} == {"g5.xlarge", "g6.xlarge"}
    text = CLUSTER_YAML.read_text()
    assert "RAY_AUTH_MODE=token ray start --head" in text and "--dashboard-host=127.0.0.1" in text


def _broken(change) -> dict:
    config = copy.deepcopy(yaml.safe_load(CLUSTER_YAML.read_text()))
    change(config)
    return config


BROKEN = [
    ("misspelt key", lambda c: c.update(max_worker=c.pop("max_workers")), "max_worker"),
    ("head type missing", lambda c: c.update(head_node_type="cpu_head"), "head_node_type"),
    (
        "min above max",
        lambda c: c["available_node_types"]["gpu_g5"].update(min_workers=3, max_workers=2),
        "min_workers 3 > max_workers 2",
    ),
    (
        "dashboard open to the world",
        lambda c: c["provider"]["security_group"]["IpPermissions"].append(
            {"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
        ),
        "open only SSH",
    ),
]  # fmt: skip


@pytest.mark.parametrize("case,change,expect", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_copies_of_cluster_yaml_fail(case, change, expect):
    with pytest.raises(ValueError, match=expect):
        check_cluster_config(_broken(change))


def run_on(address: str, space: Path, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "search.cli", "run", str(space), "--address", address],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def write_space(tmp_path: Path, model, data, **sections) -> Path:
    space = tiny_space(model, data, tmp_path / "shared" / "runs", **sections)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


@pytest.fixture
def two_nodes():
    """A head and a worker node, one CPU each: real raylets, one machine."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster, worker
    cluster.shutdown()


@pytest.mark.slow
def test_trials_run_on_both_nodes_and_record_theirs(two_nodes, tmp_path, tiny_bert, topics_tsv):
    cluster, worker = two_nodes
    space = write_space(
        tmp_path, tiny_bert, topics_tsv,
        search={"num_samples": 4, "max_concurrent": 2}, scheduler={"type": "none"},
    )  # fmt: skip
    out, _ = run_on(cluster.address, space, tmp_path).communicate(timeout=400)
    t = pd.read_parquet(tmp_path / "shared" / "runs" / "tiny" / "trials.parquet")
    assert len(t) == 4 and (t["status"] == "TERMINATED").all(), out[-3000:]
    assert t["node_id"].nunique() == 2, t[["trial_id", "node_id"]]
    assert worker.node_id in set(t["node_id"])


def trial_running_on(node) -> bool:
    """Whether a Tune trial's actor process (``ray::ImplicitFunc``) runs under ``node``'s raylet."""
    import psutil

    def title(p) -> str:
        try:
            return " ".join(p.cmdline())
        except psutil.Error:  # a worker that just exited
            return ""

    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    return any("ImplicitFunc" in title(p) for p in raylet.children(recursive=True))


@pytest.mark.slow
def test_a_lost_node_s_trials_resume_on_what_remains(two_nodes, tmp_path, tiny_bert, topics_tsv):
    cluster, worker = two_nodes
    space = write_space(
        tmp_path, tiny_bert, topics_tsv,
        train={"epochs": 4, "evals_per_epoch": 2, "batch_size": 16},
        search={"num_samples": 4, "max_concurrent": 2, "max_failures": 3},
        scheduler={"type": "none"},
    )  # fmt: skip
    proc = run_on(cluster.address, space, tmp_path)
    seen = []
    deadline = time.time() + 300
    while time.time() < deadline:  # a trial on the worker node, past a checkpoint
        line = proc.stdout.readline()
        seen.append(line)
        if sum("round 2/" in s for s in seen) >= 2 and trial_running_on(worker):
            break
    cluster.remove_node(worker, allow_graceful=False)  # the worker node dies mid-trial
    rest, _ = proc.communicate(timeout=400)
    out = "".join(seen) + rest
    assert proc.returncode == 0, out[-3000:]
    t = pd.read_parquet(tmp_path / "shared" / "runs" / "tiny" / "trials.parquet")
    assert len(t) == 4 and t["trial_id"].is_unique
    assert (t["status"] == "TERMINATED").all(), t[["status", "error"]]
    assert (t["iterations"] == t["planned_iterations"]).all()
    assert t["num_failures"].sum() >= 1  # the lost node's trial, retried from its checkpoint
    assert "retrying from its last checkpoint" in out
    curves = pd.read_parquet(tmp_path / "shared" / "runs" / "tiny" / "curves.parquet")
    assert not curves.duplicated(["trial_id", "iteration"]).any()


@pytest.mark.slow
def test_half_a_gpu_per_trial_packs_two_trials_on_each_autoscaled_gpu_node(
    tmp_path, tiny_bert, topics_tsv
):
    address, port = start_fake_gpu_cluster(tmp_path)
    try:
        space = write_space(
            tmp_path, tiny_bert, topics_tsv,
            train={"epochs": 3, "evals_per_epoch": 2, "batch_size": 16},
            search={"num_samples": 4, "max_concurrent": 4},
            scheduler={"type": "none"},
            resources={"cpu": 1, "gpu": 0.5},
        )  # fmt: skip
        # Ray 2.60's token authentication: a process joining a `ray start` cluster needs it.
        proc = run_on(address, space, tmp_path, {"RAY_AUTH_MODE": "token"})
        out, _ = proc.communicate(timeout=500)
        assert proc.returncode == 0, out[-3000:]
        t = pd.read_parquet(tmp_path / "shared" / "runs" / "tiny" / "trials.parquet")
        assert len(t) == 4 and (t["status"] == "TERMINATED").all(), t[["status", "error"]]
        # Each trial saw the GPU Ray assigned it; the head has no GPU, so every trial ran on an
        # autoscaled GPU node, and half a GPU each puts two trials on one node.
        assert (t["gpu_ids"] == "0").all(), t["gpu_ids"]
        per_node = t.groupby("node_id").size()
        assert per_node.max() == 2 and len(per_node) <= 2, per_node
    finally:
        kill_cluster(port)


@pytest.mark.slow
def test_a_worker_without_peftsearch_installed_runs_trials_shipped_with_the_job(
    tmp_path, tiny_bert, topics_tsv
):
    """The worker node's Python cannot import peftsearch; the driver ships ``trainables``."""
    from ray.cluster_utils import Cluster

    shim = tmp_path / "shim"
    shim.mkdir()
    # Every Python process of the worker node starts with this: peftsearch's packages are
    # hidden unless they come from a Ray runtime environment (py_modules / working_dir).
    (shim / "sitecustomize.py").write_text(HIDE)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    worker = cluster.add_node(num_cpus=2, env_vars={"PYTHONPATH": str(shim)})
    cluster.wait_for_nodes()
    try:
        probe = subprocess.run(
            [sys.executable, "-c", PROBE.format(address=cluster.address)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert "NO_PACKAGE" in probe.stdout, probe.stdout + probe.stderr[-2000:]
        space = write_space(
            tmp_path, tiny_bert, topics_tsv,
            search={"num_samples": 2, "max_concurrent": 2}, scheduler={"type": "none"},
        )  # fmt: skip
        out, _ = run_on(cluster.address, space, tmp_path).communicate(timeout=400)
        t = pd.read_parquet(tmp_path / "shared" / "runs" / "tiny" / "trials.parquet")
        assert (t["status"] == "TERMINATED").all(), out[-3000:]
        assert (t["node_id"] == worker.node_id).all()
    finally:
        cluster.shutdown()


HIDE = """
import importlib.abc, os, sys

class HidePeftsearch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top not in ("trainables", "search", "reports"):
            return None
        for entry in sys.path:  # a runtime environment's copy is fine
            if "runtime_resources" in entry and os.path.isdir(os.path.join(entry, top)):
                return None
        raise ModuleNotFoundError(f"No module named {name!r} (not installed on this node)")

sys.meta_path.insert(0, HidePeftsearch())
"""

PROBE = """
import ray
ray.init(address="{address}", log_to_driver=False)

@ray.remote(num_cpus=1)
def can_import():
    try:
        import trainables  # noqa: F401
        return "HAS_PACKAGE"
    except ModuleNotFoundError:
        return "NO_PACKAGE"

print(ray.get(can_import.remote()))
"""
