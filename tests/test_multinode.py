"""A DDP run on a multi-node Ray cluster (``ray.cluster_utils.Cluster``: head + 2 nodes) loses the
node of one of its training workers mid-training; Ray Train restarts the worker group from the last
checkpoint on the remaining nodes and the run still finishes with every epoch logged once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psutil
import pytest

from conftest import tiny_overrides

pytestmark = pytest.mark.slow


def _node_of_a_train_worker(nodes: list) -> object | None:
    """The cluster node whose raylet is the parent of a live RayTrainWorker process."""
    raylets = {node.all_processes["raylet"][0].process.pid: node for node in nodes if node.all_processes.get("raylet")}
    for proc in psutil.process_iter(["pid", "ppid", "cmdline"]):
        if "RayTrainWorker" in " ".join(proc.info.get("cmdline") or []) and proc.info["ppid"] in raylets:
            return raylets[proc.info["ppid"]]
    return None


def test_losing_a_node_mid_training_still_finishes(tmp_path: Path, tiny_store) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from raddiag import tracking
    from raddiag.config import load_config
    from raddiag.train.trainer import run_train

    ray.shutdown()
    # Every node can host one training worker; the head also runs drivers and data tasks.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "resources": {"train_slot": 1}})
    nodes = [cluster.add_node(num_cpus=1, resources={"train_slot": 1}) for _ in range(2)]
    cluster.wait_for_nodes()
    store_cfg, _ = tiny_store
    cfg = load_config(None, [
        # a ViT slice encoder: every restarted worker would otherwise import MONAI again (~8 s of CPU each)
        *tiny_overrides(tmp_path), f"store.url={store_cfg.store.url}", "train.epochs=4", "train.max_failures=3", "model.encoder=vit",
        "train.name=multinode", "train.resources_per_worker={train_slot: 1}", f"ray.address={cluster.address}",
    ])
    uri = cfg.tracking.resolved_uri()
    outcome: dict = {}

    def train() -> None:
        try:
            outcome["result"] = run_train(cfg)
        except BaseException as exc:  # surfaced by the assertions below
            outcome["error"] = exc

    try:
        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
        client = tracking.client(uri)  # import MLflow here, not concurrently in two threads
        thread = threading.Thread(target=train, daemon=True)
        thread.start()
        removed = None
        deadline = time.time() + 600
        while removed is None and time.time() < deadline and thread.is_alive():
            experiment = client.get_experiment_by_name(cfg.tracking.experiment)
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            if runs and client.get_metric_history(runs[0].info.run_id, "epoch"):
                victim = _node_of_a_train_worker(nodes)
                if victim is not None:
                    cluster.remove_node(victim, allow_graceful=False)
                    removed = victim
            time.sleep(0.5)
        thread.join(timeout=600)
        assert removed is not None, "no training worker's node was removed"
        assert "error" not in outcome, outcome.get("error")
        result = outcome["result"]
        steps = [m.step for m in client.get_metric_history(result.run_id, "epoch")]
        assert sorted(steps) == [0, 1, 2, 3]
        assert result.metrics["epoch"] == 3
    finally:
        ray.shutdown()
        cluster.shutdown()
