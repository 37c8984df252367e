"""Ingest throughput: the thread pool on one machine vs Ray tasks with 1, 2 and 4 CPUs, local and S3.

Synthetic sources (``--cases`` cases of two ``.npy`` scans, CT-like volumes) are ingested into a
fresh store for every configuration; each Ray configuration runs in its own subprocess with a
private Ray: ``ray`` = one local node of k CPUs (``ray.init(num_cpus=k)``); ``nodes`` = a multi-node
cluster of k one-CPU worker nodes and a zero-CPU head (``ray.cluster_utils.Cluster``: separate
raylets and object stores, so tasks and their results cross nodes as on a real cluster). Start-up
is excluded: Ray is brought up and one task per CPU imports the ingest code (warm workers) before
``run_ingest`` is timed. Every run must publish the same dataset version (checked). S3 = a moto
server on 127.0.0.1 (``--s3``).

    PYTHONPATH=platform python bench/ingest_scaling.py [--cases 192] [--s3]

Prints JSON: scans/s per configuration and the ratio to 1 Ray CPU of the same kind. On a 2-core
machine nothing can scale past the cores (4 CPUs = 2 cores time-shared): the ratios at 2 CPUs are
the ones that say whether the Ray path adds throughput, and every version must agree.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def make_sources(root: Path, cases: int) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(cases):
        for j, (modality, depth) in enumerate((("CT", 48), ("X-ray", 1))):
            path = root / f"c{i:04d}_{j}.npy"
            np.save(path, rng.normal(0, 300, (192, 192, depth)).astype(np.float32))
            rows.append({"case_id": f"case-{i:04d}", "path": str(path), "modality": modality, "plane": "axial",
                         "labels": ["Pneumonia", "Fracture", "Normal"][i % 3], "split": ""})
    pd.DataFrame(rows).to_csv(root / "cases.csv", index=False)
    return root / "cases.csv"


def run_one(source: str, store_url: str, mode: str, cpus: int, endpoint: str | None) -> dict:
    """One ingest in this process: ``mode`` threads (``cpus`` threads) or ray (a local Ray of ``cpus``)."""
    from raddiag.storage.ingest import run_ingest
    from raddiag.storage.preprocess import Plan
    from raddiag.storage.store import Store

    store = Store(store_url, endpoint)
    kwargs = {"plan": Plan(128, 32), "workers": cpus}
    cluster = None
    if mode in ("ray", "nodes"):
        import ray

        if mode == "ray":
            ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        else:
            from ray.cluster_utils import Cluster

            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
            for _ in range(cpus):
                cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)

        @ray.remote(num_cpus=1)
        def warm() -> str:
            import raddiag.storage.ingest  # noqa: F401  (the import a fresh worker pays once)

            time.sleep(0.5)  # hold the CPU so the next warm-up task lands on another worker
            return ray.get_runtime_context().get_node_id()

        nodes = set(ray.get([warm.remote() for _ in range(cpus)]))
        kwargs |= {"on_ray": lambda: None, "task_cpus": 1.0}
    started = time.perf_counter()
    result = run_ingest([Path(source)], store, **kwargs)
    seconds = time.perf_counter() - started
    out = {"mode": mode, "cpus": cpus, "scans": result.n_scans, "seconds": round(seconds, 2),
           "scans_per_s": round(result.n_scans / seconds, 2), "version": result.manifest.version}
    if mode in ("ray", "nodes"):
        out["nodes_used_by_warmup"] = len(nodes)
        ray.shutdown()
    if cluster is not None:
        cluster.shutdown()
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=192)
    parser.add_argument("--s3", action="store_true", help="also ingest into S3 (a moto server on 127.0.0.1)")
    parser.add_argument("--one", nargs=5, metavar=("SOURCE", "STORE", "MODE", "CPUS", "ENDPOINT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        source, store, mode, cpus, endpoint = args.one
        print(json.dumps(run_one(source, store, mode, int(cpus), None if endpoint == "-" else endpoint)))
        return

    server = None
    with tempfile.TemporaryDirectory() as tmp:
        source = make_sources(Path(tmp), args.cases)
        targets = [("local", lambda name: str(Path(tmp) / name), "-")]
        if args.s3:
            from moto.server import ThreadedMotoServer

            os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
            port = _free_port()
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            server.start()
            endpoint = f"http://127.0.0.1:{port}"
            import boto3

            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
            targets.append(("s3", lambda name: f"s3://bench/{name}", endpoint))
        results = []
        for target, url, endpoint in targets:
            for mode, cpus in (("threads", 1), ("threads", 2), ("ray", 1), ("ray", 2), ("ray", 4), ("nodes", 1), ("nodes", 2), ("nodes", 4)):
                out = subprocess.run(
                    [sys.executable, __file__, "--one", str(source), url(f"{target}-{mode}-{cpus}"), mode, str(cpus), endpoint],
                    capture_output=True, text=True, check=True, env={**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"},
                )
                results.append({"target": target, **json.loads(out.stdout.strip().splitlines()[-1])})
        if server is not None:
            server.stop()
    versions = {r["version"] for r in results}
    for r in results:
        base = next(b for b in results if b["target"] == r["target"] and b["mode"] == r["mode"] and b["cpus"] == 1)["scans_per_s"]
        r["ratio_to_1cpu_same_kind"] = round(r["scans_per_s"] / base, 2)
    print(json.dumps({"cases": args.cases, "scans": results[0]["scans"], "machine": f"{os.cpu_count()} cpus",
                      "load_average": [round(x, 1) for x in os.getloadavg()],
                      "same_version_everywhere": len(versions) == 1, "results": results}, indent=2))


if __name__ == "__main__":
    main()
