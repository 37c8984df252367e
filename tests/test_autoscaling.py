"""Autoscaling for real on one machine: ray_cluster.local.yaml (Ray's fake_multinode provider) starts
with 0 workers and a head without CPUs; work needing 4 CPUs makes the autoscaler add 2 worker nodes,
which it removes again after the idle timeout."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import REPO
from raycluster import LocalRayCluster

pytestmark = pytest.mark.slow

PROBE = r"""
import json, os, time
import ray

ray.init(address=os.environ["RAY_ADDRESS"], logging_level="ERROR", log_to_driver=False)

def workers():
    return sorted(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0)

@ray.remote(num_cpus=2)
def work(seconds):
    time.sleep(seconds)
    return ray.get_runtime_context().get_node_id()

t0 = time.monotonic()
timeline = [(0.0, len(workers()))]
refs = [work.remote(6) for _ in range(2)]
pending = list(refs)
while pending:
    _, pending = ray.wait(pending, timeout=1.0)
    timeline.append((round(time.monotonic() - t0, 1), len(workers())))
used = sorted(set(ray.get(refs)))
done_at = time.monotonic() - t0
removed_at = None
while time.monotonic() - t0 < done_at + 90:
    count = len(workers())
    timeline.append((round(time.monotonic() - t0, 1), count))
    if count == 0:
        removed_at = time.monotonic() - t0
        break
    time.sleep(1)
print("RESULT " + json.dumps({"timeline": timeline, "used": used, "done_at": done_at, "removed_at": removed_at}))
"""


def test_fake_multinode_adds_workers_under_load_and_removes_them_when_idle(tmp_path) -> None:
    config = yaml.safe_load((REPO / "ray_cluster.local.yaml").read_text())
    cluster = LocalRayCluster(num_cpus=0, extra_env={"RAY_FAKE_CLUSTER": "1"})
    config["provider"]["gcs_address"] = cluster.gcs_address  # the head's port is not 6379 here
    path = tmp_path / "fake_cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    cluster.autoscaling_config = path
    with cluster:
        result = cluster.run_python(PROBE, timeout=240)
    line = next((l for l in result.stdout.splitlines() if l.startswith("RESULT ")), None)
    assert line, result.stdout[-2000:] + result.stderr[-3000:]
    data = json.loads(line.removeprefix("RESULT "))
    counts = [count for _, count in data["timeline"]]
    assert counts[0] == 0, "the cluster starts without workers"
    assert max(counts) == 2, f"2 x 2-CPU tasks on a 0-CPU head need 2 workers: {data['timeline']}"
    assert len(data["used"]) == 2, "the two tasks ran on two different added nodes"
    assert data["removed_at"] is not None, f"workers not removed after the idle timeout: {data['timeline']}"
    idle_s = config["idle_timeout_minutes"] * 60
    assert data["removed_at"] - data["done_at"] >= idle_s * 0.5, "removed only after being idle"
    print(f"\nautoscaling timeline (s, workers): {data['timeline']}")
