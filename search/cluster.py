"""Offline checks of a Ray cluster-launcher file (``cluster.yaml``), with Ray's own code.

Ray's ``prepare_config`` + ``validate_config`` check the schema (a misspelt
key fails) and that the head node type exists; what they let through and
``ray up`` would only find out at launch is checked here too: a node type
whose ``min_workers`` exceeds its ``max_workers``, and a security group that
opens more than SSH to the world.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml


def check_cluster_config(config: dict[str, Any]) -> dict[str, Any]:
    """Validate a cluster config mapping; return Ray's prepared config or raise ValueError."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        prepared = prepare_config(copy.deepcopy(config))
        validate_config(prepared)
    except Exception as e:  # jsonschema's ValidationError, ValueError, KeyError...
        raise ValueError(f"{type(e).__name__}: {str(e).splitlines()[0]}") from None
    for name, node in prepared["available_node_types"].items():
        lo, hi = node.get("min_workers", 0), node.get("max_workers", 0)
        if lo > hi:
            raise ValueError(f"available_node_types.{name}: min_workers {lo} > max_workers {hi}")
    for rule in prepared.get("provider", {}).get("security_group", {}).get("IpPermissions", []):
        world = any(r.get("CidrIp") == "0.0.0.0/0" for r in rule.get("IpRanges", []))
        if world and (rule.get("FromPort"), rule.get("ToPort")) != (22, 22):
            raise ValueError(
                f"provider.security_group: ports {rule.get('FromPort')}-{rule.get('ToPort')} "
                "open to the world; open only SSH (22) and tunnel the rest"
            )
    return prepared


def check_cluster_file(path: str | Path) -> dict[str, Any]:
    """:func:`check_cluster_config` on a YAML file."""
    return check_cluster_config(yaml.safe_load(Path(path).read_text()))
