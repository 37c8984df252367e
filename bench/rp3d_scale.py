"""Benchmark: per-epoch and per-run bookkeeping at RP3D scale, on synthetic metadata (no pixels).

Builds case records in the format of ``Manifest.case_records`` (case_id, anatomy, disorders,
icd10, scans [{scan_id, modality, plane, depth, height, width, key_slice}]) at the real size of
RP3D-DiagDS — 40,936 cases, 195,010 scans, 5,569 long-tailed disorder labels (a few on thousands of
cases, most on fewer than 30; ~2.5 per case), 930 ICD-10 codes, 7 anatomies — and times, in one
process, what a training worker and the driver do with them:

* ``epoch_items`` for rank 0 of ``--world`` workers (the order, the mixing partners, the items),
  and inside it ``mix_partners`` (p = 0.3) and ``epoch_order`` (class-aware, sqrt) per epoch;
* the bytes of the Ray Data read tasks that one worker's dataset pickles per epoch (built with
  ``CaseDatasource.get_read_tasks`` and pickled with cloudpickle, as Ray does; Ray is not started);
* validation ``evaluate_scores`` (val split × all labels), and the test split's
  ``evaluate_scores`` with and without bootstrap (``--bootstrap`` replicates, extrapolated to 1000);
* the final ROC-by-group plot (``plots.roc_by_group``, its default 100-resample band);
* memory: tracemalloc peak of each step (``--no-memory`` skips that second, slower pass) and the
  RSS of the records;
* ``--metadata``: what one training worker holds for metadata — the manifest tables read as
  ``Store.manifest`` reads them (Parquet written from these records with every store column; the
  worker reads only ``RECORD_COLUMNS``, ``worker_metadata_all_columns`` reads all), then
  ``case_records`` of train and val — each in a fresh process (times; then tracemalloc + Arrow's
  pool: held after each step, at peak, and once the tables are dropped), beside the pre-#16
  one-dict-per-case-and-scan records.

``legacy`` rows time the pre-#16 algorithms (kept here verbatim) on the same inputs, so before and
after sit side by side in one run. Prints one JSON object.

    .venv/bin/python bench/rp3d_scale.py [--scale 0.1] [--world 8] [--bootstrap 20] [--no-memory] [--metadata]
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import pickle
import platform
import resource
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

from raddiag.config import RadDiagConfig

ANATOMIES = ("head_and_neck", "chest", "breast", "abdomen_and_pelvis", "limb", "spine", "others")
MODALITIES = (("CT", "axial"), ("CT", "coronal"), ("CT", "sagittal"), ("MRI", "axial"), ("MRI", "sagittal"), ("X-ray", "frontal"), ("Ultrasound", "other"))


def long_tail(n_labels: int) -> np.ndarray:
    """Label probabilities ∝ (rank + 8)^-1.25: a few labels on thousands of cases, most on < 30."""
    weights = (np.arange(n_labels) + 8.0) ** -1.25
    return weights / weights.sum()


def make_records(n_cases: int, n_scans: int, n_labels: int, n_icd: int, seed: int = 0) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """Synthetic case records (the ``Manifest.case_records`` format) and the label vocabularies."""
    rng = np.random.default_rng(seed)
    names = [f"Disorder {i:04d} of the {ANATOMIES[i % 7].replace('_', ' ')} (synthetic long name)" for i in range(n_labels)]
    icd = [f"{chr(65 + i % 26)}{i // 26 % 100:02d}.{i % 10}" for i in range(n_icd)]
    probs = long_tail(n_labels)
    per_case = np.clip(rng.poisson(1.6, n_cases) + 1, 1, 8)  # 2.6 labels on average
    drawn = rng.choice(n_labels, size=int(per_case.sum()), p=probs)
    drawn[rng.permutation(drawn.size)[:n_labels]] = np.arange(n_labels)  # every label on >= 1 case
    ends = np.cumsum(per_case)
    label_icd = rng.integers(0, n_icd, n_labels)
    scans_per_case = np.ones(n_cases, dtype=np.int64) + np.bincount(rng.integers(0, n_cases, max(0, n_scans - n_cases)), minlength=n_cases)
    records = []
    scan_id = 0
    for case in range(n_cases):
        labels = sorted(set(drawn[ends[case] - per_case[case] : ends[case]].tolist()))
        anatomy = ANATOMIES[int(rng.integers(0, 7))]
        scans = []
        for _ in range(int(scans_per_case[case])):
            modality, plane = MODALITIES[int(rng.integers(0, len(MODALITIES)))]
            depth = 1 if modality == "X-ray" else int(rng.integers(16, 160))
            scans.append({"scan_id": f"s{scan_id:06d}", "modality": modality, "plane": plane, "depth": depth,
                          "height": 512, "width": 512, "key_slice": int(rng.integers(0, depth))})
            scan_id += 1
        records.append({
            "case_id": f"c{case:06d}", "anatomy": anatomy,
            "disorders": [names[j] for j in labels], "icd10": sorted({icd[label_icd[j]] for j in labels}), "scans": scans,
        })
    return records, names, icd


# ---- pre-#16 algorithms, verbatim (the "before" of each row) ---------------------------------


def legacy_mix_partners(records: list[dict[str, Any]], order: list[int], p: float, seed: int, epoch: int) -> list[int | None]:
    if p <= 0:
        return [None] * len(order)
    rng = np.random.default_rng([seed, epoch, 1])
    anatomies = np.array([str(r.get("anatomy", "")) for r in records])
    partners: list[int | None] = []
    for index in order:
        others = np.flatnonzero(anatomies != anatomies[index])
        draw, pick = rng.random(), rng.random()
        partners.append(int(others[int(pick * len(others))]) if draw < p and len(others) else None)
    return partners


def legacy_label_matrix(records: list[dict[str, Any]], label_names: list[str], level: str) -> np.ndarray:
    index = {name: i for i, name in enumerate(label_names)}
    matrix = np.zeros((len(records), len(label_names)), dtype=np.int8)
    field = "disorders" if level == "disorder" else "icd10"
    for row, record in enumerate(records):
        for name in record[field]:
            if name in index:
                matrix[row, index[name]] = 1
    return matrix


def legacy_epoch_order(records: list[dict[str, Any]], label_names: list[str], strategy: str, power: float, seed: int, epoch: int) -> np.ndarray:
    label_matrix = legacy_label_matrix(records, label_names, "disorder")
    n_cases = label_matrix.shape[0]
    rng = np.random.default_rng([seed, epoch])
    if strategy == "instance":
        return rng.permutation(n_cases)
    q = 0.0 if strategy == "class_aware" else power
    counts = label_matrix.sum(axis=0).astype(np.float64)
    weights = np.where(counts > 0, np.power(np.maximum(counts, 1.0), q), 0.0)
    probs = weights / weights.sum()
    members = [np.flatnonzero(label_matrix[:, j]) for j in range(label_matrix.shape[1])]
    classes = rng.choice(len(probs), size=n_cases, p=probs)
    picks = rng.random(n_cases)
    return np.array([members[c][int(u * len(members[c]))] for c, u in zip(classes, picks)], dtype=np.int64)


def legacy_case_records(manifest: Any, split: str) -> list[dict[str, Any]]:
    """``Manifest.case_records`` before #16's columnar form: one dict per case and per scan."""
    cases = manifest.cases[manifest.cases["split"] == split].sort_values("case_id")
    scans_by_case: dict[str, list[dict[str, Any]]] = {}
    for row in manifest.scans.sort_values(["case_id", "scan_id"]).itertuples(index=False):
        scans_by_case.setdefault(row.case_id, []).append(
            {"scan_id": row.scan_id, "modality": row.modality, "plane": row.plane, "depth": int(row.depth),
             "height": int(row.height), "width": int(row.width), "key_slice": int(row.key_slice)}
        )
    return [
        {"case_id": row.case_id, "anatomy": row.anatomy, "disorders": list(row.disorders), "icd10": list(row.icd10),
         "scans": scans_by_case.get(row.case_id, [])}
        for row in cases.itertuples(index=False)
    ]


# ---- measurement -------------------------------------------------------------------------------


def timed(fn: Callable[[], Any], memory: bool) -> tuple[Any, dict[str, float]]:
    """Run ``fn`` once for its time; with ``memory`` once more under tracemalloc for its peak."""
    gc.collect()
    started, cpu = time.perf_counter(), time.process_time()
    result = fn()
    row = {"seconds": round(time.perf_counter() - started, 4), "cpu_s": round(time.process_time() - cpu, 4)}
    if memory:
        del result
        gc.collect()
        tracemalloc.start()
        result = fn()
        row["peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
        tracemalloc.stop()
    return result, row


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def write_manifest(records: list[dict[str, Any]], splits: list[str], names: list[str], directory: str) -> None:
    """The store's manifest tables for ``records`` (all columns, content-hash-like scan ids and
    checksums) as Parquet files in ``directory``, as ``Store.manifest`` reads them."""
    import hashlib

    import pandas as pd

    cases = pd.DataFrame({"case_id": [r["case_id"] for r in records], "split": splits, "anatomy": [r["anatomy"] for r in records],
                          "disorders": [r["disorders"] for r in records], "icd10": [r["icd10"] for r in records], "source": "rp3d"})
    rows = []
    for record in records:
        for scan in record["scans"]:
            digest = hashlib.sha256(scan["scan_id"].encode()).hexdigest()
            rows.append({"scan_id": digest, "case_id": record["case_id"], "modality": scan["modality"], "plane": scan["plane"],
                         "aux_modality": "", "depth": scan["depth"], "height": scan["height"], "width": scan["width"],
                         "orig_shape": [scan["depth"], 512, 512], "spacing": [1.0, 0.7, 0.7], "key_slice": scan["key_slice"],
                         "checksum": digest[::-1], "dtype": "uint8", "flags": [], "patient_key": digest[:16], "study_key": digest[16:32],
                         "series_key": digest[32:48]})
    labels = pd.DataFrame({"name": names, "level": "disorder", "code": "", "train_count": 0, "group": "tail"})
    for name, frame in (("cases", cases), ("scans", pd.DataFrame(rows)), ("labels", labels)):
        frame.to_parquet(os.path.join(directory, f"{name}.parquet"), index=False)


def worker_metadata(directory: str, legacy: bool, trace: bool, columns: bool = True) -> dict[str, Any]:
    """In a fresh process: what a training worker holds for metadata — the manifest read as
    ``Store.manifest`` reads it (``columns``: only ``RECORD_COLUMNS``, as the worker reads it;
    otherwise every column), then the train and val records (``legacy``: one dict per case and
    scan). Without ``trace``: times. With it: memory held (tracemalloc: Python objects and numpy
    arrays; plus Arrow's pool, where pandas keeps string columns) after each step and at peak,
    and what stays once the manifest tables are dropped."""
    import pandas as pd
    import pyarrow as pa

    from raddiag.storage.store import RECORD_COLUMNS, Manifest

    def held() -> float:
        return (tracemalloc.get_traced_memory()[0] + pa.total_allocated_bytes()) / 2**20

    gc.collect()
    if trace:
        tracemalloc.start()
    base = held() if trace else 0.0
    started = time.perf_counter()
    frames = []
    for name in ("cases", "scans", "labels"):
        with open(os.path.join(directory, f"{name}.parquet"), "rb") as handle:
            frames.append(pd.read_parquet(io.BytesIO(handle.read()), columns=RECORD_COLUMNS.get(name) if columns else None))
    manifest = Manifest(frames[0], frames[1], frames[2], {"version": "bench"})
    del frames
    row: dict[str, Any] = {}
    if trace:
        row["manifest_mb"] = round(held() - base, 1)
    else:
        row["manifest_s"] = round(time.perf_counter() - started, 2)
    started, cpu = time.perf_counter(), time.process_time()
    if legacy:
        train, val = legacy_case_records(manifest, "train"), legacy_case_records(manifest, "val")
    else:
        train, val = manifest.case_records("train"), manifest.case_records("val")
    if trace:
        row["manifest_and_records_mb"] = round(held() - base, 1)
        del manifest
        gc.collect()
        row["records_only_mb"] = round(held() - base, 1)
        row["python_peak_mb"] = round((tracemalloc.get_traced_memory()[1]) / 2**20 - base, 1)
        tracemalloc.stop()
    else:
        row |= {"case_records_s": round(time.perf_counter() - started, 2), "case_records_cpu_s": round(time.process_time() - cpu, 2)}
    row["cases"] = len(train) + len(val)
    return row


def read_task_bytes(items: list[Any], cfg: RadDiagConfig, names: list[str], vocabularies: dict[str, list[str]], epoch: int, legacy: bool) -> dict[str, Any]:
    """Pickled bytes of one worker's read tasks for an epoch, as ``worker_dataset`` builds them
    (``legacy``: with the config and vocabularies in every task, as before #16)."""
    import cloudpickle

    from raddiag.data import pipeline

    shipped_once = 0
    if legacy or not hasattr(pipeline, "read_task_args"):
        args = (cfg.model_dump(mode="json"), names, vocabularies, True, epoch)
    else:  # the config and labels go to the object store once; each task carries a reference
        import ray

        args = pipeline.read_task_args(cfg, names, vocabularies, train=True, epoch=epoch, put=lambda value: ray.ObjectRef.from_random())
        shipped_once = len(pickle.dumps((cfg.model_dump(mode="json"), names, vocabularies)))
    tasks = pipeline.case_datasource(items, cfg, args).get_read_tasks(cfg.data.read_parallelism)
    sizes = [len(cloudpickle.dumps(task)) for task in tasks]
    return {
        "tasks": len(tasks), "mb_per_epoch": round((sum(sizes) + shipped_once) / 2**20, 2), "kb_per_task_mean": round(np.mean(sizes) / 1024, 1),
        "items_kb_per_task_mean": round(np.mean([len(pickle.dumps(task.read_fn.args[0])) for task in tasks]) / 1024, 1),
        "shipped_once_kb": round(shipped_once / 1024, 1),
    }


def eval_data(records: list[dict[str, Any]], names: list[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores) for ``records``: float32 sigmoid of a noisy label-dependent logit."""
    rng = np.random.default_rng(seed)
    index = {name: i for i, name in enumerate(names)}
    truth = np.zeros((len(records), len(names)), dtype=np.float32)
    for row, record in enumerate(records):
        truth[row, [index[n] for n in record["disorders"]]] = 1.0
    logits = rng.standard_normal(truth.shape, dtype=np.float32) - 3.0 + 2.5 * truth
    return truth, (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the real size (cases, scans, labels)")
    parser.add_argument("--world", type=int, default=8, help="training workers assumed")
    parser.add_argument("--bootstrap", type=int, default=20, help="replicates timed (extrapolated to 1000)")
    parser.add_argument("--no-memory", action="store_true", help="skip the tracemalloc pass")
    parser.add_argument("--no-legacy", action="store_true", help="skip the pre-#16 algorithms")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--metadata", action="store_true", help="also measure a worker's metadata memory (manifest + records, fresh processes)")
    args = parser.parse_args()
    if not 0 < args.scale <= 1:
        parser.error(f"--scale must be in (0, 1], got {args.scale}")
    memory = not args.no_memory

    from raddiag.data.pipeline import epoch_items, epoch_records, mix_partners
    from raddiag.metrics import evaluate_scores, group_of_counts

    s = args.scale
    n_cases, n_scans, n_labels, n_icd = round(40_936 * s), round(195_010 * s), max(50, round(5_569 * s)), max(20, round(930 * s))
    n_val, n_test = round(2_077 * s), round(6_000 * s)
    out: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "scale": s, "world": args.world,
        "cases": n_cases, "scans": n_scans, "labels": n_labels, "icd": n_icd,
    }
    out["load_average_start"] = [round(x, 1) for x in os.getloadavg()]
    before = rss_mb()
    started = time.perf_counter()
    records, names, icd = make_records(n_cases, n_scans, n_labels, n_icd)
    out["records"] = {"build_s": round(time.perf_counter() - started, 2), "rss_mb": round(rss_mb() - before, 1),
                      "json_mb": round(sum(len(json.dumps(r)) for r in records) / 2**20, 1)}
    val, test, train = records[:n_val], records[n_val : n_val + n_test], records[n_val + n_test :]
    counts = np.zeros(n_labels, dtype=np.int64)
    index = {name: i for i, name in enumerate(names)}
    for record in train:
        for name in record["disorders"]:
            counts[index[name]] += 1
    out["train_cases"], out["val_cases"], out["test_cases"] = len(train), len(val), len(test)
    out["label_counts"] = {"max": int(counts.max()), "median": float(np.median(counts)), "under_30": int((counts < 30).sum()),
                           "over_1000": int((counts >= 1000).sum()), "per_case": round(float(np.mean([len(r["disorders"]) for r in records])), 2)}

    cfg = RadDiagConfig.model_validate({"data": {"case_mix_p": 0.3, "sampler": "sqrt"}})
    order = np.random.default_rng(1).permutation(len(train)).tolist()
    ops: dict[str, Any] = {}
    _, ops["mix_partners_p0.3"] = timed(lambda: mix_partners(train, order, 0.3, 0, 1), False)
    if not args.no_legacy:
        _, ops["legacy_mix_partners_p0.3"] = timed(lambda: legacy_mix_partners(train, order, 0.3, 0, 1), False)
    for strategy in ("class_aware", "sqrt"):
        scfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"sampler": strategy})})
        _, ops[f"epoch_order_{strategy}"] = timed(lambda c=scfg: epoch_records(train, c, names, train=True, epoch=1), memory)
        if not args.no_legacy:
            _, ops[f"legacy_epoch_order_{strategy}"] = timed(lambda q=strategy: legacy_epoch_order(train, names, q, 0.5, 0, 1), memory)
    items, ops["epoch_items_rank0"] = timed(lambda: epoch_items(train, cfg, names, train=True, epoch=1, rank=0, world=args.world), memory)
    ops["epoch_items_rank0"]["items"] = len(items)
    from raddiag.storage.records import CaseRecords

    columnar = CaseRecords.from_records(train)  # what Manifest.case_records returns since #16
    columnar_items, ops["epoch_items_rank0_columnar"] = timed(
        lambda c=columnar: epoch_items(c, cfg, names, train=True, epoch=1, rank=0, world=args.world), memory)
    ops["epoch_items_rank0_columnar"]["same_items"] = columnar_items == items
    del columnar, columnar_items
    vocabularies = {"disorder": names, "icd": icd}
    ops["read_tasks_rank0"] = read_task_bytes(items, cfg, names, vocabularies, 1, legacy=False)
    if not args.no_legacy:
        ops["legacy_read_tasks_rank0"] = read_task_bytes(items, cfg, names, vocabularies, 1, legacy=True)
    del items

    val_true, val_score = eval_data(val, names, 2)
    groups = group_of_counts(counts)
    _, ops["validation_evaluate"] = timed(lambda: evaluate_scores(val_true, val_score, counts, groups=groups), memory)
    ops["validation_evaluate"]["shape"] = list(val_true.shape)
    test_true, test_score = eval_data(test, names, 3)
    report, ops["evaluate"] = timed(lambda: evaluate_scores(test_true, test_score, counts, groups=groups), False)
    ops["evaluate"]["shape"] = list(test_true.shape)
    ops["evaluate"]["evaluable_classes"] = int(report.per_class["evaluated"].sum())
    if args.bootstrap:
        _, row = timed(lambda: evaluate_scores(test_true, test_score, counts, groups=groups, n_bootstrap=args.bootstrap, seed=0), memory)
        per = max(0.0, row["seconds"] - ops["evaluate"]["seconds"]) / args.bootstrap
        per_cpu = max(0.0, row["cpu_s"] - ops["evaluate"]["cpu_s"]) / args.bootstrap
        row |= {"replicates": args.bootstrap, "per_replicate_s": round(per, 4), "per_replicate_cpu_s": round(per_cpu, 4),
                "extrapolated_1000_s": round(ops["evaluate"]["seconds"] + 1000 * per, 1),
                "extrapolated_1000_cpu_s": round(ops["evaluate"]["cpu_s"] + 1000 * per_cpu, 1)}
        ops["evaluate_bootstrap"] = row
    if not args.no_plot:
        from raddiag import plots

        with tempfile.TemporaryDirectory() as directory:
            _, ops["roc_by_group_plot"] = timed(
                lambda: plots.roc_by_group(val_true, val_score, counts, os.path.join(directory, "roc.png"), groups=groups), False
            )
    if args.metadata:
        import multiprocessing

        splits = ["val"] * n_val + ["test"] * n_test + ["train"] * len(train)
        with tempfile.TemporaryDirectory() as directory:
            write_manifest(records, splits, names, directory)
            context = multiprocessing.get_context("spawn")  # a fresh process each: RSS of nothing else
            variants = (("legacy_worker_metadata", True, False), ("worker_metadata_all_columns", False, False),
                        ("worker_metadata", False, True))  # pre-#16; columnar records; + record columns only
            for key, legacy, columns in variants:
                if legacy and args.no_legacy:
                    continue
                ops[key] = {}
                for trace in (False, True):
                    with context.Pool(1) as pool:
                        ops[key] |= pool.apply(worker_metadata, (directory, legacy, trace, columns))
    out["operations"] = ops
    out["load_average"] = [round(x, 1) for x in os.getloadavg()]  # a shared machine: wall times follow the load, CPU times less so
    out["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
