"""Scan write throughput: the former writer (four hand-offs to Zarr's event loop per scan) against
``Store.write_scan`` (one) and ``Store.write_scans`` (one per batch, the batch's scans concurrent),
side by side in one run, on a local store and on S3 (moto server on 127.0.0.1 through s3fs).

    PYTHONPATH=platform .venv/bin/python bench/store_write.py [--repeats 2] [--json bench/data/store_write.json]

Two shapes: 4×32×32 uint8 (the synthetic stores of the demo and the tests) and 24×256×256 uint8 (ingest's
default plan). Each measurement writes into a fresh store; the arms alternate within each repeat.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from store_speed import start_moto  # noqa: E402

SHAPES = {"4x32x32": ((4, 32, 32), 1000), "24x256x256": ((24, 256, 256), 80)}  # shape, scans per measurement
BATCH = 64


def former_write_scan(store, volume: np.ndarray) -> tuple[str, str]:  # noqa: ANN001
    """The writer before ``write_scans`` (kept verbatim here to measure against): four synchronous Zarr calls."""
    from zarr.codecs import BloscCodec

    from raddiag.storage.store import Layout, scan_checksum

    checksum = scan_checksum(volume)
    scan_id = checksum[:24]
    if store.has_complete_scan(scan_id):
        return scan_id, checksum
    depth, height, width = volume.shape
    layout = store.layout
    chunk_depth = min(layout.chunk_depth, depth)
    shard_depth = Layout(chunk_depth, layout.shard_bytes).shard_depth(depth, height, width, volume.dtype.itemsize)
    array = store.group().create_array(
        name=scan_id, shape=volume.shape, dtype=volume.dtype.name, chunks=(chunk_depth, height, width),
        shards=(shard_depth, height, width),
        compressors=BloscCodec(cname=layout.codec, clevel=layout.clevel, shuffle=layout.shuffle), overwrite=True,
    )
    array[...] = volume
    array.attrs["checksum"] = checksum
    return scan_id, checksum


def arms(store):  # noqa: ANN001, ANN201
    def former(volumes):  # noqa: ANN001, ANN202
        return [former_write_scan(store, v) for v in volumes]

    def one_by_one(volumes):  # noqa: ANN001, ANN202
        return [store.write_scan(v) for v in volumes]

    def batched(volumes):  # noqa: ANN001, ANN202
        return [ids for start in range(0, len(volumes), BATCH) for ids in store.write_scans(volumes[start : start + BATCH])]

    return {"former (4 hand-offs/scan)": former, "write_scan (1 hand-off/scan)": one_by_one, f"write_scans (batches of {BATCH})": batched}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from raddiag.storage.store import Store

    server, endpoint = start_moto()
    results: dict = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}", "batch": BATCH, "runs": {}}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run = 0
            for shape_name, (shape, count) in SHAPES.items():
                rng = np.random.default_rng(0)
                volumes = [rng.integers(0, 255, size=shape, dtype=np.uint8) for _ in range(count)]
                for backend in ("local", "s3"):
                    n = count if backend == "local" else max(count // 4, 20)  # moto is slow; fewer scans
                    for _ in range(args.repeats):
                        reference = None
                        for arm, _ in arms(None).items():
                            run += 1
                            url = f"{tmp}/s{run}" if backend == "local" else f"s3://bench/s{run}"
                            store = Store(url, endpoint if backend == "s3" else None)
                            write = arms(store)[arm]
                            started = time.perf_counter()
                            ids = write(volumes[:n])
                            seconds = time.perf_counter() - started
                            reference = reference or ids
                            assert ids == reference, "the arms must store the same scans"
                            key = f"{shape_name} {backend}"
                            results["runs"].setdefault(key, {}).setdefault(arm, []).append(round(n / seconds, 1))
                            print(f"{key:22s} {arm:32s} {n:5d} scans {seconds:6.2f} s {n / seconds:8.1f} scans/s", flush=True)
    finally:
        server.stop()
    summary = {}
    for key, by_arm in results["runs"].items():
        former = max(by_arm["former (4 hand-offs/scan)"])
        summary[key] = {arm: {"scans_per_s_best": max(v), "x_former": round(max(v) / former, 2)} for arm, v in by_arm.items()}
    results["summary"] = summary
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
