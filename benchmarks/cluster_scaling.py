"""Trials finished per hour: 1 local Ray node vs 2 local Ray nodes, all on one host.

    python benchmarks/cluster_scaling.py [--quick]

Each node is a Ray node with one CPU (``ray.cluster_utils.Cluster``), and
both nodes run on this one machine (2 local nodes, one host): one node runs
one trial at a time, two nodes run two. This measures Ray's scheduling of
trials across nodes, not a network or a second machine. The same space
(MiniLM on BBC News, scheduler none, so every trial does the same work) runs
on each. Goal (issue 6): two nodes finish at least 1.8x the trials per hour
of one.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parser, save, table  # noqa: E402

SETUP = {1: "1 local node", 2: "2 local nodes, one host"}  # 1 CPU per node


def space(storage: str, quick: bool) -> dict:
    return {
        "experiment": {"model": "minilm", "dataset": {"name": "bbc_news"}, "max_length": 64,
                       "max_train_samples": 96 if quick else 240, "max_eval_samples": 60,
                       "feature_cache": False},
        "train": {"epochs": 1, "evals_per_epoch": 1, "batch_size": 16},
        "methods": {"lora": {"lora_rank": {"choice": [4, 8]}, "learning_rate": 3e-3},
                    "full": {"learning_rate": 1e-4}},
        "search": {"searcher": "random", "num_samples": 4 if quick else 8, "max_concurrent": 4},
        "scheduler": {"type": "none"},
        "storage": storage,
    }  # fmt: skip


def one(nodes: int, quick: bool) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    import search
    from search.space import validate

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        with tempfile.TemporaryDirectory() as d:
            s = validate(space(d, quick), f"cluster-{nodes}")
            started = time.perf_counter()
            res = search.run(s, name=f"n{nodes}", address=cluster.address, quiet=True)
            wall = time.perf_counter() - started
            t = res.trials
            done = int((t["status"] == "TERMINATED").sum())
            return {"nodes": nodes, "setup": SETUP[nodes], "trials": done, "wall_s": round(wall, 1),
                    "trials_per_hour": round(3600 * done / wall, 1),
                    "distinct_nodes_used": int(t["node_id"].nunique()),
                    "trial_time_s": round(float(t["wall_time_s"].sum()), 1)}  # fmt: skip
    finally:
        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    load_start = os.getloadavg()
    rows = [one(1, args.quick), one(2, args.quick)]
    ratio = rows[1]["trials_per_hour"] / rows[0]["trials_per_hour"]
    print(table(rows))
    print(f"\n2 local nodes, one host / 1 node: {ratio:.2f}x trials per hour (goal >= 1.8x)")
    load_end = os.getloadavg()
    path = save("cluster_scaling", {"setup": "2 local Ray nodes (1 CPU each) on one host vs 1",
                                    "rows": rows, "ratio": round(ratio, 3), "goal": 1.8,
                                    "met": ratio >= 1.8,
                                    "loadavg_start": [round(x, 2) for x in load_start],
                                    "loadavg_end": [round(x, 2) for x in load_end],
                                    "note": "both nodes share this host's 2 cores with other "
                                            "processes (see loadavg)"}, args.quick)  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
