"""Storage benchmark: codec candidates, ingest throughput, stored bytes, slice read latency (local vs S3).

    .venv/bin/python bench/store_speed.py [--cases 24] [--reads 40] [--json out.json]

1. Codecs: Blosc candidates on 256×256 uint8 slices (one chunk each, as stored) of three kinds of
   data: the synthetic CT/MRI-like volumes, pydicom's bundled CT/MR (real scanner noise) and the
   RP3D demo X-rays when ../shared/rp3d-demo is present. Ratio, encode and decode MB/s.
2. Ingest: synthetic cases written in RP3D format (float32 H×W×D npy, 256×256), ingested with the
   default plan into a local store and into S3 (moto server on 127.0.0.1 through s3fs).
3. Reads: one slice and a 32-slice sample of 64-slice scans, median/p90 over ``--reads`` reads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = [
    ("zstd", 3, "bitshuffle"), ("zstd", 3, "shuffle"), ("zstd", 1, "bitshuffle"), ("zstd", 5, "bitshuffle"),
    ("lz4", 5, "shuffle"), ("lz4", 5, "bitshuffle"), ("lz4hc", 5, "bitshuffle"), ("zstd", 3, "noshuffle"),
]


def codec_slices() -> dict[str, list[np.ndarray]]:
    """uint8 256×256 slices per data kind, preprocessed exactly as ingest stores them."""
    import pydicom

    from raddiag.storage.preprocess import normalise, resize_slices
    from raddiag.storage.readers import read_npy
    from raddiag.storage.synth import render_scan, synth_labels

    kinds: dict[str, list[np.ndarray]] = {}
    labels = synth_labels(8, seed=0)
    rng = np.random.default_rng(0)
    synth = []
    for index in range(4):
        volume, _ = render_scan(rng, labels[index : index + 2], "CT", 16, 256, index % 4)
        synth.extend(normalise(volume))
    kinds["synthetic CT/MRI-like"] = synth
    files = Path(pydicom.__file__).parent / "data" / "test_files"
    real = []
    for name in ("CT_small.dcm", "MR_small.dcm"):
        pixels = pydicom.dcmread(files / name).pixel_array.astype(np.float32)[None]
        real.extend(normalise(resize_slices(pixels, 256)))
    kinds["pydicom CT/MR samples"] = real
    demo = REPO.parent / "shared" / "rp3d-demo" / "data"
    if demo.is_dir():
        kinds["RP3D demo X-ray/MRI (2D)"] = [normalise(resize_slices(read_npy(p).data, 256))[0] for p in sorted(demo.glob("*.npy"))]
    return kinds


def bench_codecs(kinds: dict[str, list[np.ndarray]], repeats: int = 3) -> list[dict]:
    from numcodecs import Blosc

    shuffles = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}
    rows = []
    for cname, clevel, shuffle in CANDIDATES:
        codec = Blosc(cname=cname, clevel=clevel, shuffle=shuffles[shuffle])
        row = {"codec": f"blosc {cname}-{clevel} {shuffle}"}
        for kind, slices in kinds.items():
            raw = sum(s.nbytes for s in slices)
            encoded = [codec.encode(s) for s in slices]
            t0 = time.perf_counter()
            for _ in range(repeats):
                for s in slices:
                    codec.encode(s)
            encode_s = (time.perf_counter() - t0) / repeats
            t0 = time.perf_counter()
            for _ in range(repeats):
                for e in encoded:
                    codec.decode(e)
            decode_s = (time.perf_counter() - t0) / repeats
            row[kind] = {
                "ratio": round(raw / sum(len(e) for e in encoded), 2),
                "encode_MBps": round(raw / encode_s / 1e6),
                "decode_MBps": round(raw / decode_s / 1e6),
            }
        rows.append(row)
    return rows


def start_moto() -> tuple[object, str]:
    from moto.server import ThreadedMotoServer

    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
    return server, endpoint


def object_sizes(store) -> list[int]:  # noqa: ANN001
    sizes = []
    for _path, _, files in store.fs.walk(store.root + "/scans.zarr", detail=True):
        sizes.extend(info["size"] for name, info in files.items() if name != "zarr.json")
    return sizes


def bench_ingest(n_cases: int, workdir: Path, endpoint: str) -> dict:
    from raddiag.config import SynthConfig
    from raddiag.storage.ingest import load_vocabulary, run_ingest
    from raddiag.storage.store import Store
    from raddiag.storage.synth import write_rp3d_source

    src = workdir / "src"
    paths = write_rp3d_source(SynthConfig(n_cases=n_cases, n_labels=8, image_size=256, max_depth=24, max_scans=4, seed=1), src)
    source_bytes = sum(p.stat().st_size for p in (src / "data").glob("*.npy"))
    n_files = len(list((src / "data").glob("*.npy")))
    vocab = load_vocabulary(src / "disorder_label_dict.json")
    out = {"cases": n_cases, "source_scans": n_files, "source_npy_MB": round(source_bytes / 1e6, 1)}
    for backend, store in (("local", Store(str(workdir / "store"))), ("s3", Store("s3://bench/store", endpoint_url=endpoint))):
        result = run_ingest(paths, store, data_root=src, vocabulary=vocab, workers=2)
        stored = object_sizes(Store(store.url, store.endpoint_url))
        out[backend] = {
            "scans": result.n_scans,
            "seconds": round(result.seconds, 2),
            "scans_per_s": round(result.scans_per_second, 1),
            "stored_MB": round(sum(stored) / 1e6, 2),
            "stored_KB_per_scan": round(sum(stored) / result.n_scans / 1e3, 1),
            "source_KB_per_scan": round(source_bytes / n_files / 1e3, 1),
            "reduction_x": round(source_bytes / max(sum(stored), 1), 1),
            "object_MB_min_median_max": [round(min(stored) / 1e6, 3), round(statistics.median(stored) / 1e6, 3), round(max(stored) / 1e6, 3)],
        }
    return out


def bench_reads(workdir: Path, endpoint: str, reads: int) -> dict:
    from raddiag.storage.preprocess import normalise
    from raddiag.storage.store import Store
    from raddiag.storage.synth import render_scan, synth_labels

    labels = synth_labels(8, seed=0)
    rng = np.random.default_rng(1)
    volumes = [normalise(render_scan(rng, labels[i : i + 2], "MRI", 64, 256, i)[0]) for i in range(4)]
    out = {}
    for backend, url, endpoint_url in (("local", str(workdir / "reads"), None), ("s3", "s3://bench/reads", endpoint)):
        writer = Store(url, endpoint_url)
        ids = [writer.write_scan(v)[0] for v in volumes]
        reader = Store(url, endpoint_url)
        pick = np.random.default_rng(2)
        reader.read_slices(ids[0], [0])  # open the group once (as a training worker does)
        one, sample = [], []
        for index in range(reads):
            scan_id = ids[index % len(ids)]
            t0 = time.perf_counter()
            reader.read_slices(scan_id, [int(pick.integers(64))])
            one.append(time.perf_counter() - t0)
            indices = np.sort(pick.choice(64, size=32, replace=False))
            t0 = time.perf_counter()
            reader.read_slices(scan_id, indices)
            sample.append(time.perf_counter() - t0)
        out[backend] = {
            "one_slice_ms_median": round(1e3 * statistics.median(one), 2),
            "one_slice_ms_p90": round(1e3 * float(np.percentile(one, 90)), 2),
            "slices32_ms_median": round(1e3 * statistics.median(sample), 2),
            "slices32_ms_p90": round(1e3 * float(np.percentile(sample, 90)), 2),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=24, help="synthetic cases to ingest (1-4 scans each)")
    parser.add_argument("--reads", type=int, default=40, help="timed reads per backend")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    started = time.perf_counter()
    server, endpoint = start_moto()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            results = {
                "codecs": bench_codecs(codec_slices()),
                "ingest": bench_ingest(args.cases, Path(tmp), endpoint),
                "reads": bench_reads(Path(tmp), endpoint, args.reads),
            }
    finally:
        server.stop()
    results["env"] = {
        "cpus": os.cpu_count(), "load_avg_1m_at_end": round(os.getloadavg()[0], 2), "python": platform.python_version(),
        "numpy": np.__version__, "total_s": round(time.perf_counter() - started, 1),
    }
    text = json.dumps(results, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
