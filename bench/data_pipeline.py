"""Data pipeline benchmark: cases/s per core and bytes read per case, all four loaders in one run.

    .venv/bin/python bench/data_pipeline.py [--cases 32] [--epochs 2] [--warmup 3] [--batch-size 4] [--json out.json]

One synthetic store at paper shape (256×256, D = 32, up to 4 scans per case, 3D depth 16-64):
(a) ``raddiag.data`` (Ray Data ``CaseDatasource`` -> ``iter_batches``) from a local store, uint8
    batches handed to the consumer (a GPU trainer converts to float on the device); also with the
    float conversion on this CPU, and with MONAI augmentation in the read tasks;
(b) the same from S3 (a ``moto_server`` process on 127.0.0.1, reached through s3fs);
(c) ``bench/reference_loader.py``: what the reference implementation does — full float32 npy
    volumes (H×W×D, X-ray as RGB) from local disk, min-max, resample, pad;
(d) the raw decode limit: the exact chunks (a) fetches, decoded (Blosc) in a tight loop.

Cores: CPU seconds (user + system) of every process involved — the driver that consumes the
batches (minus the meter's own sampling thread) and all of Ray's processes (raylet, GCS, agents,
Ray Data's actors, read workers) for (a)/(b), sampled every 0.1 s with psutil and reported per
kind; the moto server is excluded — divided into cases: "cases/s per core" = cases per CPU
second. Wall-clock cases/s are reported too (2 shared cores here, so they are noisy). Bytes read
per case: bytes returned by the store (a/b: counted in ``SliceReader``, by running the same read
tasks in-process; c: npy file sizes). Every loader runs untimed first (page cache and Ray's worker
processes warm).
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


SYSTEM = ("raylet", "gcs_server", "log_monitor", "dashboard", "_StatsActor", "AutoscalingCoordinator", "RuntimeEnvAgent", "monitor.py")


class CpuMeter:
    """CPU seconds of a process tree (minus ``exclude`` pids and the meter's own sampling thread),
    sampled in a background thread so processes that exit mid-run still count up to their last
    sample; :meth:`breakdown` splits them into the driver, the Ray Data read workers and Ray's
    system processes (raylet, GCS, agents, Ray Data's stats/autoscaling actors)."""

    def __init__(self, root_pid: int, exclude: set[int] | None = None, interval: float = 0.1) -> None:
        import psutil

        self.root = psutil.Process(root_pid)
        self.exclude = exclude or set()
        self.interval = interval
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.kind: dict[int, str] = {}
        self._own = [0.0, 0.0]  # the sampling thread's CPU at start / at the last sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _classify(self, proc) -> str:  # noqa: ANN001
        if proc.pid == self.root.pid:
            return "driver"
        try:
            line = " ".join(proc.cmdline()) or proc.name()
        except Exception:
            return self.kind.get(proc.pid, "ray_system")
        if any(token in line for token in SYSTEM):
            return "ray_system"
        return "read_workers" if line.startswith("ray::") else "other"

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
            self.kind[proc.pid] = self._classify(proc)
        if self._thread.native_id is not None:
            for thread in self.root.threads():
                if thread.id == self._thread.native_id:
                    self._own[1] = thread.user_time + thread.system_time

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
        self._stop.set()
        self._thread.join()
        self._sample()

    def _seconds(self, pid: int) -> float:
        own = self._own[1] if pid == self.root.pid else 0.0  # the meter thread started inside the window
        return self.last[pid] - self.first[pid] - own

    @property
    def seconds(self) -> float:
        return sum(self._seconds(pid) for pid in self.last)

    def breakdown(self, cases: int) -> dict[str, float]:
        """CPU milliseconds per case by process kind."""
        out: dict[str, float] = {}
        for pid in self.last:
            out[self.kind[pid]] = out.get(self.kind[pid], 0.0) + self._seconds(pid)
        return {kind: round(1000 * seconds / cases, 2) for kind, seconds in sorted(out.items())}


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
    else:
        overrides.append("data.augment.on=workers")  # MONAI in the read tasks: what this arm measures
    return load_config(None, overrides)


def bench_pipeline(records: list[dict], cfg, names: list[str], epochs: int, warmup: int, batch_size: int, to_float: bool = False) -> dict:  # noqa: ANN001
    """Ray Data end to end: ``warmup`` untimed epochs (Ray starts and warms its worker processes:
    a read task landing on a fresh worker first imports zarr/raddiag), then ``epochs`` timed ones.
    The consumer takes uint8 batches (on a GPU the float conversion happens on the device);
    ``to_float`` adds the conversion on this CPU."""
    from raddiag.data.pipeline import iter_batches, worker_dataset

    def run(epoch: int) -> int:
        n = 0
        dataset = worker_dataset(records, cfg, names, train=True, epoch=epoch, batch_size=batch_size)
        for batch in iter_batches(dataset, batch_size, to_float=to_float):
            assert batch["images"].dtype.is_floating_point == to_float
            n += int(batch["labels"].shape[0])
        return n

    for epoch in range(warmup):
        run(1000 + epoch)
    cases = 0
    with CpuMeter(os.getpid(), exclude=EXCLUDE) as meter:
        started = time.perf_counter()
        for epoch in range(1, epochs + 1):
            cases += run(epoch)
        wall = time.perf_counter() - started
    return {"cases": cases, "wall_s": round(wall, 2), "cpu_s": round(meter.seconds, 2),
            "cases_per_s": round(cases / wall, 2), "cases_per_cpu_s": round(cases / meter.seconds, 2),
            "cpu_ms_per_case": meter.breakdown(cases)}


def bytes_per_case(records: list[dict], cfg, names: list[str], epochs: int, batch_size: int) -> dict:  # noqa: ANN001
    """Run the pipeline's own read tasks in-process (same split, same readers) and count bytes;
    also collects the fetched chunks for the decode-limit loop and times the in-process read path
    (``inprocess_cases_per_cpu_s``: fetch + decode + assembly + Arrow block, no Ray around it)."""
    import raddiag.data.read as read_module
    from raddiag.data.pipeline import case_datasource, epoch_items

    def read_epoch(epoch: int) -> int:
        items = epoch_items(records, cfg, names, train=True, epoch=epoch)
        args = (cfg.model_dump(mode="json"), names, None, True, epoch)
        tasks = case_datasource(items, cfg, args, batch_size).get_read_tasks(cfg.data.read_parallelism)
        from ray.data.block import BlockAccessor

        # a block is one row holding a packed batch: count its cases
        return sum(BlockAccessor.for_block(block).to_numpy("order").size for task in tasks for block in task())

    read_epoch(1000)  # imports and first-open costs stay out of the timing and the counts

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
            cases += read_epoch(epoch)
        cpu = time.process_time() - started_cpu
    finally:
        read_module.SliceReader = base
    return {"cases": cases, "bytes_per_case": counted["bytes"] / cases, "requests_per_case": counted["requests"] / cases,
            "inprocess_cases_per_cpu_s": round(cases / cpu, 2), "fetched": fetched_all}


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
    parser.add_argument("--warmup", type=int, default=3, help="untimed Ray passes first (warms every worker process)")
    parser.add_argument("--batch-size", type=int, default=4, help="cases per batch (= per Ray block)")
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
            counted = bytes_per_case(records, local, names, args.epochs, args.batch_size)
            fetched = counted.pop("fetched")
            results["d_decode"] = bench_decode(fetched, counted["cases"])
            results["a_bytes"] = counted
            results["b_bytes"] = bytes_per_case(records, s3, names, 1, args.batch_size)
            results["b_bytes"].pop("fetched")
            init_ray(RayConfig(num_cpus=4))
            timed = {"epochs": args.epochs, "warmup": args.warmup, "batch_size": args.batch_size}
            results["a_local"] = bench_pipeline(records, local, names, **timed)
            results["a_local_float_on_cpu"] = bench_pipeline(records, local, names, **timed, to_float=True)
            results["b_s3"] = bench_pipeline(records, s3, names, **timed)
            augmented = pipeline_config(str(work / "store"), None, augment=True)
            results["a_local_augmented"] = bench_pipeline(records, augmented, names, **timed)
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
        "cases_per_core_a_float_over_c": round(results["a_local_float_on_cpu"]["cases_per_cpu_s"] / c["cases_per_cpu_s"], 2),
        "read_path_inprocess_over_d": round(results["a_bytes"]["inprocess_cases_per_cpu_s"] / d["cases_per_cpu_s"], 2),
    }
    results["env"] = {"cpus": os.cpu_count(), "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
                      "python": platform.python_version(), "total_s": round(time.perf_counter() - started, 1)}
    text = json.dumps(results, indent=1, default=float)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
