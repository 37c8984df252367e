"""``raddiag verify``: recompute checksums and check manifest <-> array consistency of a store.

Every problem is listed (nothing stops at the first); ``problems`` empty means the store is sound.
Notes (e.g. arrays left by a killed ingest that no version references) are not problems.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from raddiag.storage.store import (
    CASE_COLUMNS,
    LABEL_COLUMNS,
    SCAN_COLUMNS,
    SPLITS,
    Store,
    StoreError,
    label_table,
    manifest_version,
    scan_checksum,
)


@dataclass
class VerifyReport:
    url: str
    version: str = ""
    n_cases: int = 0
    n_scans: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(store: Store, progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    """Check ``store``'s current version: tables, version hash, labels, every array and checksum."""
    report = VerifyReport(store.url)
    try:
        manifest = store.manifest()
    except StoreError as exc:
        report.problems.append(str(exc))
        return report
    except Exception as exc:  # unreadable parquet / json
        report.problems.append(f"manifest unreadable: {type(exc).__name__}: {exc}")
        return report
    cases, scans, labels, info = manifest.cases, manifest.scans, manifest.labels, manifest.info
    report.version, report.n_cases, report.n_scans = manifest.version, len(cases), len(scans)
    problems = report.problems
    for name, frame, columns in (("cases", cases, CASE_COLUMNS), ("scans", scans, SCAN_COLUMNS), ("labels", labels, LABEL_COLUMNS)):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            problems.append(f"{name}.parquet lacks column(s) {missing}")
    if problems:
        return report
    if manifest_version(cases, scans, labels) != manifest.version:
        problems.append(f"version {manifest.version} does not match the manifest's content hash {manifest_version(cases, scans, labels)}")
    for key, actual in (("n_cases", len(cases)), ("n_scans", len(scans))):
        if info.get(key) != actual:
            problems.append(f"dataset.json {key}={info.get(key)} but the manifest has {actual}")
    problems.extend(_table_problems(cases, scans, labels))
    arrays = set(store.array_names())
    scan_ids = list(dict.fromkeys(scans["scan_id"]))
    first = scans.drop_duplicates("scan_id").set_index("scan_id")
    for index, scan_id in enumerate(scan_ids):
        problems.extend(_array_problems(store, scan_id, first.loc[scan_id], scan_id in arrays))
        if progress:
            progress(index + 1, len(scan_ids))
    orphans = arrays - set(scan_ids)
    if orphans:
        incomplete = sum(1 for name in orphans if not store.has_complete_scan(name))
        report.notes.append(
            f"{len(orphans)} array(s) not in this version ({incomplete} incomplete, e.g. left by a killed ingest or older versions)"
        )
    return report


def _table_problems(cases, scans, labels) -> list[str]:  # noqa: ANN001 - DataFrames
    problems = []
    if not cases["case_id"].is_unique:
        problems.append(f"duplicate case ids: {sorted(cases.loc[cases['case_id'].duplicated(), 'case_id'])[:5]}")
    if scans.duplicated(["scan_id", "case_id"]).any():
        problems.append("duplicate (scan_id, case_id) rows in scans.parquet")
    bad_split = sorted(set(cases["split"]) - set(SPLITS))
    if bad_split:
        problems.append(f"unknown split(s) {bad_split}")
    known_cases = set(cases["case_id"])
    orphan_scans = sorted(set(scans["case_id"]) - known_cases)
    if orphan_scans:
        problems.append(f"{len(orphan_scans)} scan row(s) name unknown case(s), e.g. {orphan_scans[:3]}")
    scanless = sorted(known_cases - set(scans["case_id"]))
    if scanless:
        problems.append(f"{len(scanless)} case(s) without scans, e.g. {scanless[:3]}")
    bad_key = scans[(scans["key_slice"] < 0) | (scans["key_slice"] >= scans["depth"])]
    for row in bad_key.itertuples(index=False):
        problems.append(f"scan {row.scan_id}: key_slice {row.key_slice} outside depth {row.depth}")
    disorder = labels[labels["level"] == "disorder"]
    vocabulary = set(disorder["name"])
    unknown = sorted({name for names in cases["disorders"] for name in names} - vocabulary)
    if unknown:
        problems.append(f"case labels missing from labels.parquet: {unknown[:5]}")
    codes = dict(zip(disorder["name"], disorder["code"]))
    expected = label_table(cases, list(disorder["name"]), {n: (c or None) for n, c in codes.items()})
    merged = labels.merge(expected, on=["name", "level"], how="outer", suffixes=("", "_expected"), indicator=True)
    stale = merged[(merged["_merge"] != "both") | (merged["train_count"] != merged["train_count_expected"])]
    for row in stale.head(10).itertuples(index=False):
        problems.append(f"label {row.level}:{row.name}: train_count {row.train_count} but the train split has {row.train_count_expected}")
    return problems


def _array_problems(store: Store, scan_id: str, row, present: bool) -> list[str]:  # noqa: ANN001 - a Series
    if not present:
        return [f"scan {scan_id}: array missing from scans.zarr"]
    try:
        array = store.group()[scan_id]
        expected_shape = (int(row["depth"]), int(row["height"]), int(row["width"]))
        if tuple(array.shape) != expected_shape:
            return [f"scan {scan_id}: array shape {tuple(array.shape)} but the manifest says {expected_shape}"]
        dtype = row["dtype"] if "dtype" in row.index else "uint8"
        if str(array.dtype) != dtype:
            return [f"scan {scan_id}: array dtype {array.dtype} but the manifest says {dtype}"]
        attribute = array.attrs.get("checksum")
        if attribute is None:
            return [f"scan {scan_id}: incomplete array (no checksum attribute: the write never finished)"]
        volume = np.asarray(array[...])
    except Exception as exc:  # corrupt shard / metadata: zarr and blosc raise many types
        return [f"scan {scan_id}: unreadable ({type(exc).__name__}: {exc})"]
    actual = scan_checksum(volume)
    problems = []
    if actual != row["checksum"]:
        problems.append(f"scan {scan_id}: checksum of the stored data {actual[:16]}... != manifest {str(row['checksum'])[:16]}...")
    if attribute != row["checksum"]:
        problems.append(f"scan {scan_id}: checksum attribute differs from the manifest")
    if not str(row["checksum"]).startswith(scan_id):
        problems.append(f"scan {scan_id}: scan id is not the prefix of its checksum")
    return problems
