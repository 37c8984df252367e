"""A DDP run on a multi-node Ray cluster (``ray.cluster_utils.Cluster``: head + 2 nodes) loses a
node mid-training, Ray Train restarts the worker group on the remaining capacity (plus the node an
autoscaler would add), and the run still finishes with every epoch logged once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from conftest import tiny_overrides

pytestmark = pytest.mark.slow


def test_losing_a_node_mid_training_still_finishes(tmp_path: Path, tiny_store) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from raddiag import tracking
    from raddiag.config import load_config
    from raddiag.train.trainer import run_train

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "resources": {"head": 1}})
    nodes = [cluster.add_node(num_cpus=1, resources={"train_slot": 1}) for _ in range(2)]
    cluster.wait_for_nodes()
    store_cfg, _ = tiny_store
    cfg = load_config(None, [
        *tiny_overrides(tmp_path), f"store.url={store_cfg.store.url}", "train.epochs=4", "train.max_failures=3",
        "train.name=multinode", "train.resources_per_worker={train_slot: 1}", f"ray.address={cluster.address}",
    ])
    uri = cfg.tracking.resolved_uri()
    removed: list[str] = []

    def lose_a_node() -> None:
        client = None
        deadline = time.time() + 600
        while time.time() < deadline:
            try:
                client = client or tracking.client(uri)
                runs = client.search_runs([e.experiment_id for e in client.search_experiments() if e.name == cfg.tracking.experiment] or ["0"])
                if runs and client.get_metric_history(runs[0].info.run_id, "epoch"):
                    victim = nodes[1]
                    cluster.remove_node(victim, allow_graceful=False)
                    removed.append(victim.unique_id)
                    cluster.add_node(num_cpus=1, resources={"train_slot": 1})  # what the autoscaler would do
                    return
            except Exception:
                pass
            time.sleep(0.5)

    thread = threading.Thread(target=lose_a_node, daemon=True)
    try:
        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
        thread.start()
        result = run_train(cfg)
        thread.join(timeout=5)
        assert removed, "no node was removed during training"
        steps = [m.step for m in tracking.client(uri).get_metric_history(result.run_id, "epoch")]
        assert sorted(steps) == [0, 1, 2, 3]
        assert result.metrics["epoch"] == 3
    finally:
        ray.shutdown()
        cluster.shutdown()
