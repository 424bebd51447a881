"""Real multi-node Ray clusters on one machine, for the cluster tests.

``ray stop`` would stop every Ray of this user, the test session's own
included, so each cluster here is torn down by its own processes: those
whose command line names its GCS port, and their children.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def node_ip() -> str:
    from ray._private.services import get_node_ip_address

    return get_node_ip_address()


def fake_gpu_config(gcs_address: str, head_cpus: int = 1, max_gpu_nodes: int = 2) -> dict:
    """An autoscaling config whose GPU workers are fake nodes added on demand (no docker)."""
    return {
        "cluster_name": "fake-gpu",
        "max_workers": max_gpu_nodes,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,
        },
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            "ray.head.default": {
                "resources": {"CPU": head_cpus},
                "node_config": {},
                "max_workers": 0,
            },
            # A g5.xlarge-like node: 1 GPU, and CPUs for two half-GPU trials.
            "gpu_worker": {
                "resources": {"CPU": 2, "GPU": 1},
                "node_config": {},
                "min_workers": 0,
                "max_workers": max_gpu_nodes,
            },
        },
        "head_node_type": "ray.head.default",
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def start_fake_gpu_cluster(tmp: Path) -> tuple[str, int]:
    """``RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=...``; returns (address, port)."""
    port = free_port()
    address = f"{node_ip()}:{port}"
    config = tmp / "fake-gpu.yaml"
    config.write_text(yaml.safe_dump(fake_gpu_config(address)))
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    subprocess.run(
        [RAY, "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
         f"--autoscaling-config={config}", "--disable-usage-stats"],
        env=env, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return address, port


def kill_cluster(port: int) -> None:
    """Kill every process of the cluster whose GCS listens on ``port`` (and their children)."""
    import psutil

    mine = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if p.pid == os.getpid():
            continue
        if str(port) in " ".join(p.info["cmdline"] or []):
            with contextlib.suppress(psutil.NoSuchProcess):
                mine += [p, *p.children(recursive=True)]
    for p in mine:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(mine, timeout=10)
    time.sleep(0.5)
