"""Data pipeline benchmark: cases/s per core and bytes read per case, all four loaders in one run.

    .venv/bin/python bench/data_pipeline.py [--cases 32] [--epochs 2] [--json out.json]

One synthetic store at paper shape (256×256, D = 32, up to 4 scans per case, 3D depth 16-64):
(a) ``raddiag.data`` (Ray Data ``CaseDatasource`` -> ``iter_batches``) from a local store;
(b) the same from S3 (a ``moto_server`` process on 127.0.0.1, reached through s3fs);
(c) ``bench/reference_loader.py``: what the reference implementation does — full float32 npy
    volumes (H×W×D, X-ray as RGB) from local disk, min-max, resample, pad;
(d) the raw decode limit: the exact chunks (a) fetches, decoded (Blosc) in a tight loop.

Cores: CPU seconds (user + system) of every process involved — the driver that consumes the
batches and all of Ray's processes (raylet, GCS, workers) for (a)/(b), sampled every 0.1 s with
psutil; the moto server is excluded — divided into cases: "cases/s per core" = cases per CPU
second. Wall-clock cases/s are reported too (2 shared cores here, so they are noisy). Bytes read
per case: bytes returned by the store (a/b: counted in ``SliceReader``, by running the same read
tasks in-process; c: npy file sizes). Every loader runs once untimed first (page cache warm).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


class CpuMeter:
    """CPU seconds of a process tree (minus ``exclude`` pids), sampled in a background thread so
    processes that exit mid-run still count up to their last sample."""

    def __init__(self, root_pid: int, exclude: set[int] | None = None, interval: float = 0.1) -> None:
        import psutil

        self.root = psutil.Process(root_pid)
        self.exclude = exclude or set()
        self.interval = interval
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil

        procs = [self.root]
        try:
            procs += self.root.children(recursive=True)
        except psutil.Error:
            pass
        for proc in procs:
            if proc.pid in self.exclude:
                continue
            try:
                times = proc.cpu_times()
            except psutil.Error:
                continue
            total = times.user + times.system
            self.first.setdefault(proc.pid, total if self._started else 0.0)
            self.last[proc.pid] = total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "CpuMeter":
        self._started = True
        self._sample()
        self._started = False  # processes first seen later started during the run: count from 0
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sample()
        self._stop.set()
        self._thread.join()

    @property
    def seconds(self) -> float:
        return sum(self.last[pid] - self.first[pid] for pid in self.last)


def start_moto() -> tuple[subprocess.Popen, str]:
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    for _ in range(100):
        try:
            client.create_bucket(Bucket="bench")
            break
        except Exception:
            time.sleep(0.1)
    return proc, endpoint


def build_inputs(n_cases: int, workdir: Path, endpoint: str) -> dict:
    """The store (local + S3 copy) and the reference loader's npy files for the same cases."""
    import fsspec

    from raddiag.config import SynthConfig
    from raddiag.storage.store import Store, scan_checksum, storage_options, to_uint8
    from raddiag.storage.synth import generate, iter_cases

    from reference_loader import write_npy

    synth = SynthConfig(n_cases=n_cases, n_labels=8, image_size=256, max_depth=32, max_scans=4, seed=1)
    started = time.perf_counter()
    manifest = generate(synth, Store(str(workdir / "store")))
    npy: dict[str, str] = {}
    for case in iter_cases(synth):  # the same cases, as the reference stores them
        for scan in case["scans"]:
            scan_id = scan_checksum(to_uint8(scan["volume"]))[:24]
            npy[scan_id] = write_npy(scan["volume"], scan["modality"], workdir / "npy" / f"{scan_id}.npy")
    fs = fsspec.filesystem("s3", **storage_options(endpoint))
    fs.put(str(workdir / "store") + "/", "bench/store/", recursive=True)
    return {"manifest": manifest, "npy": npy, "build_s": round(time.perf_counter() - started, 1)}


def all_records(manifest) -> list[dict]:  # noqa: ANN001
    return [r for split in ("train", "val", "test") for r in manifest.case_records(split)]


def pipeline_config(url: str, endpoint: str | None, augment: bool):  # noqa: ANN201
    from raddiag.config import load_config

    overrides = [
        f"store.url={url}", "data.image_size=256", "data.depth=32", "data.n_image=4", "data.read_parallelism=2",
        "data.data_cpus=1", "data.sampler=instance", "data.cases_per_task=8", "train.seed=0",
    ]
    if endpoint:
        overrides.append(f"store.endpoint_url={endpoint}")
    if not augment:
        overrides += ["data.augment.affine_p=0", "data.augment.noise_p=0", "data.augment.contrast_p=0"]
    return load_config(None, overrides)


def bench_pipeline(records: list[dict], cfg, names: list[str], epochs: int) -> dict:  # noqa: ANN001
    """Ray Data end to end: epoch 0 untimed (worker start-up), then ``epochs`` timed epochs."""
    from raddiag.data.pipeline import iter_batches, worker_dataset

    def run(epoch: int) -> int:
        n = 0
        for batch in iter_batches(worker_dataset(records, cfg, names, train=True, epoch=epoch), batch_size=4):
            assert batch["images"].dtype.is_floating_point
            n += int(batch["labels"].shape[0])
        return n

    run(0)
    cases = 0
    with CpuMeter(os.getpid(), exclude=EXCLUDE) as meter:
        started = time.perf_counter()
        for epoch in range(1, epochs + 1):
            cases += run(epoch)
        wall = time.perf_counter() - started
    return {"cases": cases, "wall_s": round(wall, 2), "cpu_s": round(meter.seconds, 2),
            "cases_per_s": round(cases / wall, 2), "cases_per_cpu_s": round(cases / meter.seconds, 2)}


def bytes_per_case(records: list[dict], cfg, names: list[str], epochs: int) -> dict:  # noqa: ANN001
    """Run the pipeline's own read tasks in-process (same split, same readers) and count bytes;
    also collects the fetched chunks for the decode-limit loop and times the in-process read path."""
    import raddiag.data.read as read_module
    from raddiag.data.pipeline import case_datasource, epoch_items

    counted = {"bytes": 0, "requests": 0}
    fetched_all: list = []
    base = read_module.SliceReader

    class Counting(base):  # type: ignore[misc, valid-type]
        def fetch(self, requests):  # noqa: ANN001, ANN201
            out = super().fetch(requests)
            fetched_all.extend(out)
            return out

        def close(self) -> None:
            counted["bytes"] += self.bytes_fetched
            counted["requests"] += self.requests
            super().close()

    read_module.SliceReader = Counting
    cases = 0
    try:
        started_cpu = time.process_time()
        for epoch in range(1, epochs + 1):
            items = epoch_items(records, cfg, names, train=True, epoch=epoch)
            args = (cfg.model_dump(mode="json"), names, None, True, epoch)
            for task in case_datasource(items, cfg, args).get_read_tasks(cfg.data.read_parallelism):
                for block in task():
                    cases += block.num_rows
        cpu = time.process_time() - started_cpu
    finally:
        read_module.SliceReader = base
    return {"cases": cases, "bytes_per_case": counted["bytes"] / cases, "requests_per_case": counted["requests"] / cases,
            "inprocess_cases_per_cpu_s": cases / cpu, "fetched": fetched_all}


def bench_decode(fetched: list, cases: int) -> dict:
    from raddiag.data.read import SliceReader

    for item in fetched[:8]:
        SliceReader.decode(item)
    started = time.process_time()
    decoded = sum(SliceReader.decode(item).nbytes for item in fetched)
    cpu = time.process_time() - started
    return {"cases": cases, "cpu_s": round(cpu, 3), "cases_per_cpu_s": round(cases / cpu, 2), "decoded_MB_per_case": round(decoded / cases / 1e6, 2)}


def bench_reference(records: list[dict], npy: dict[str, str], epochs: int) -> dict:
    import torch

    from reference_loader import load_case

    torch.set_num_threads(1)
    for record in records[:4]:
        load_case(record, npy)
    started, started_cpu = time.perf_counter(), time.process_time()
    total_bytes = cases = 0
    for _ in range(epochs):
        for record in records:
            _, n_bytes = load_case(record, npy)
            total_bytes += n_bytes
            cases += 1
    cpu, wall = time.process_time() - started_cpu, time.perf_counter() - started
    return {"cases": cases, "cpu_s": round(cpu, 2), "cases_per_cpu_s": round(cases / cpu, 2), "cases_per_s": round(cases / wall, 2),
            "bytes_per_case": total_bytes / cases}


EXCLUDE: set[int] = set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=32, help="synthetic cases in the store")
    parser.add_argument("--epochs", type=int, default=2, help="timed passes over all cases per loader")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    started = time.perf_counter()

    from raddiag.config import RayConfig
    from raddiag.runtime import init_ray

    moto, endpoint = start_moto()
    EXCLUDE.add(moto.pid)
    results: dict = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            inputs = build_inputs(args.cases, work, endpoint)
            manifest = inputs["manifest"]
            records, names = all_records(manifest), manifest.label_names("disorder")
            results["store"] = {"cases": len(records), "scans": int(len(manifest.scans)), "build_s": inputs["build_s"],
                                "depths": [int(d) for d in np.percentile(manifest.scans["depth"], [0, 50, 100])]}
            local = pipeline_config(str(work / "store"), None, augment=False)
            s3 = pipeline_config("s3://bench/store", endpoint, augment=False)
            results["c_reference"] = bench_reference(records, inputs["npy"], args.epochs)
            counted = bytes_per_case(records, local, names, args.epochs)
            fetched = counted.pop("fetched")
            results["d_decode"] = bench_decode(fetched, counted["cases"])
            results["a_bytes"] = counted
            results["b_bytes"] = bytes_per_case(records, s3, names, 1)
            results["b_bytes"].pop("fetched")
            init_ray(RayConfig(num_cpus=4))
            results["a_local"] = bench_pipeline(records, local, names, args.epochs)
            results["b_s3"] = bench_pipeline(records, s3, names, args.epochs)
            results["a_local_augmented"] = bench_pipeline(records, pipeline_config(str(work / "store"), None, augment=True), names, args.epochs)
    finally:
        import ray

        ray.shutdown()
        moto.terminate()
        moto.wait(timeout=10)
    a, c, d = results["a_local"], results["c_reference"], results["d_decode"]
    results["targets"] = {
        "bytes_per_case_a_over_c": round(results["a_bytes"]["bytes_per_case"] / c["bytes_per_case"], 4),
        "cases_per_core_a_over_c": round(a["cases_per_cpu_s"] / c["cases_per_cpu_s"], 2),
        "cases_per_core_a_over_d": round(a["cases_per_cpu_s"] / d["cases_per_cpu_s"], 2),
    }
    results["env"] = {"cpus": os.cpu_count(), "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
                      "python": platform.python_version(), "total_s": round(time.perf_counter() - started, 1)}
    text = json.dumps(results, indent=1, default=float)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
