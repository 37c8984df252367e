"""Ray cluster YAMLs: offline validation with Ray's own schema, and a capacity check against a config.

``validate_cluster_yaml`` runs the autoscaler's ``prepare_config`` (merges the provider's defaults)
and ``validate_config`` (the JSON schema ``ray up`` uses) without touching the cloud.
``capacity_problems`` answers "can this cluster, fully scaled out, run one trial of this sweep?":
a Train worker's bundle must fit one node type, a Ray Data task must fit some node type, and the
cluster's total CPUs/GPUs must hold one trial at its peak (driver + workers + read tasks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from raddiag.config import RadDiagConfig


def load_cluster_yaml(path: str | Path) -> dict[str, Any]:
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be a mapping")
    return data


def validate_cluster_yaml(path: str | Path) -> dict[str, Any]:
    """The prepared (defaults-merged) config of ``path``; raises ``jsonschema.ValidationError``."""
    import copy

    from ray.autoscaler._private.util import (
        fill_node_type_min_max_workers,
        merge_setup_commands,
        prepare_config,
        validate_config,
    )

    config = load_cluster_yaml(path)
    if config.get("provider", {}).get("type") == "fake_multinode":
        # The provider's defaults file is not shipped in the wheel: the config must be complete.
        prepared = copy.deepcopy(config)
        merge_setup_commands(prepared)
        fill_node_type_min_max_workers(prepared)
    else:
        prepared = prepare_config(config)
    validate_config(prepared)
    return prepared


def worker_bundle(cfg: RadDiagConfig) -> dict[str, float]:
    """Resources one Ray Train worker asks for (as ``raddiag.train.trainer`` builds its ScalingConfig)."""
    bundle = {"CPU": cfg.train.cpus_per_worker, **getattr(cfg.train, "resources_per_worker", {})}
    if cfg.train.use_gpu:
        bundle["GPU"] = bundle.get("GPU", 1.0)
    return bundle


def trial_peak(cfg: RadDiagConfig) -> dict[str, float]:
    """Resources one sweep trial holds at its peak: driver + Train workers + their Ray Data tasks."""
    from raddiag.tune.sweep import trial_cpus

    peak = {"CPU": trial_cpus(cfg)}
    gpus = worker_bundle(cfg).get("GPU", 0.0) * cfg.train.num_workers
    if gpus:
        peak["GPU"] = gpus
    return peak


def node_types(cluster: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{name: {"resources": {...}, "max": n}}``; the head counts once (max 1)."""
    head = cluster.get("head_node_type")
    out = {}
    for name, spec in cluster.get("available_node_types", {}).items():
        count = 1 if name == head else int(spec.get("max_workers", cluster.get("max_workers", 0)))
        out[name] = {"resources": dict(spec.get("resources", {})), "max": count}
    return out


def _fits(need: dict[str, float], have: dict[str, float]) -> bool:
    return all(have.get(key, 0.0) >= value for key, value in need.items() if value > 0)


def capacity_problems(cluster: dict[str, Any], cfg: RadDiagConfig) -> list[str]:
    """Why the cluster (scaled out to every type's max_workers, capped by max_workers) cannot run
    one trial of ``cfg``; empty when it can."""
    types = node_types(cluster)
    problems = []
    bundle = worker_bundle(cfg)
    if not any(_fits(bundle, t["resources"]) for t in types.values()):
        problems.append(f"no node type can host one Train worker {bundle}")
    data_task = {"CPU": cfg.data.data_cpus}
    if not any(_fits(data_task, t["resources"]) for t in types.values()):
        problems.append(f"no node type can host one Ray Data task {data_task}")
    head = cluster.get("head_node_type")
    worker_cap = int(cluster.get("max_workers", 10**6))
    totals: dict[str, float] = dict(types.get(head, {}).get("resources", {}))
    # Fill the worker slots with the largest nodes first (an upper bound on what the autoscaler can reach).
    workers = sorted(
        ((name, t) for name, t in types.items() if name != head),
        key=lambda item: -(item[1]["resources"].get("GPU", 0) * 1000 + item[1]["resources"].get("CPU", 0)),
    )
    slots = worker_cap
    for _, t in workers:
        count = min(t["max"], slots)
        slots -= count
        for key, value in t["resources"].items():
            totals[key] = totals.get(key, 0.0) + value * count
    train_slots = sum(
        t["max"] * int(min(t["resources"].get(key, 0.0) // value for key, value in bundle.items() if value > 0))
        for t in types.values()
    )
    if train_slots < cfg.train.num_workers:
        problems.append(f"at most {train_slots} Train workers {bundle} fit, train.num_workers is {cfg.train.num_workers}")
    peak = trial_peak(cfg)
    for key, value in peak.items():
        if totals.get(key, 0.0) < value:
            problems.append(f"one trial needs {key}={value:g} at its peak, the cluster has at most {totals.get(key, 0.0):g}")
    return problems


def max_concurrent_trials(cluster: dict[str, Any], cfg: RadDiagConfig) -> int:
    """How many trials of ``cfg`` the fully scaled-out cluster holds at once (by CPUs and GPUs)."""
    head = cluster.get("head_node_type")
    totals: dict[str, float] = {}
    for name, t in node_types(cluster).items():
        for key, value in t["resources"].items():
            totals[key] = totals.get(key, 0.0) + value * (1 if name == head else t["max"])
    peak = trial_peak(cfg)
    return int(min(totals.get(key, 0.0) // value for key, value in peak.items() if value > 0))
