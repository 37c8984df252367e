"""Columnar case records (#16): the same records as the per-row dict construction they replace,
through indexing, slicing, take, pickling and the label/anatomy columns the sampler reads."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pandas as pd
import pytest

from raddiag.data.pipeline import class_index, mix_partners
from raddiag.data.sampling import label_counts, stratified_fraction
from raddiag.storage.records import CaseRecords
from raddiag.storage.store import Manifest


def reference_records(manifest: Manifest, split: str) -> list[dict[str, Any]]:
    """``Manifest.case_records`` as it was before the columnar form (one dict per row)."""
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


def messy_manifest() -> Manifest:
    """Cases without scans or labels, unsorted rows, a scan of an unknown case, repeated strings."""
    rng = np.random.default_rng(5)
    ids = [f"case-{i:03d}" for i in rng.permutation(40)]
    names = [f"label {j}" for j in range(12)]
    cases = pd.DataFrame({
        "case_id": ids, "split": rng.choice(["train", "val", "test"], 40), "anatomy": rng.choice(["chest", "head", "limb"], 40),
        "disorders": [list(rng.choice(names, rng.integers(0, 4), replace=False)) for _ in ids],
        "icd10": [list(rng.choice(["A01", "B02", "C03"], rng.integers(0, 3), replace=False)) for _ in ids], "source": "t",
    })
    owners = [ids[i] for i in rng.integers(0, 36, 120)] + ["case-unknown"]  # cases 36..39 have no scans
    scans = pd.DataFrame({
        "scan_id": [f"{h:064x}" for h in rng.integers(0, 2**62, len(owners))], "case_id": owners,
        "modality": rng.choice(["CT", "MRI", "X-ray"], len(owners)), "plane": rng.choice(["axial", "coronal"], len(owners)),
        "depth": rng.integers(1, 300, len(owners)), "height": rng.integers(16, 600, len(owners)), "width": rng.integers(16, 600, len(owners)),
    })
    scans["key_slice"] = (scans["depth"] // 2).astype(np.int64)
    return Manifest(cases, scans, pd.DataFrame(), {"version": "x"})


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_columnar_records_equal_the_per_row_records(split: str, tiny_store) -> None:
    for manifest in (tiny_store[1], messy_manifest()):
        expected = reference_records(manifest, split)
        records = manifest.case_records(split)
        assert isinstance(records, CaseRecords) and len(records) == len(expected)
        assert list(records) == expected and records == expected
        assert [records[i] for i in range(-len(records), 0)] == expected
        assert all(type(v) is int for r in records for s in r["scans"] for k, v in s.items() if k not in ("scan_id", "modality", "plane"))
        assert list(records[3:17:2]) == expected[3:17:2] and list(records[: len(expected) // 2]) == expected[: len(expected) // 2]
        picks = [5, 0, 5, len(expected) - 1] if expected else []
        assert list(records.take(picks)) == [expected[i] for i in picks]
        assert list(pickle.loads(pickle.dumps(records))) == expected
        assert CaseRecords.from_records(expected) == expected
        with pytest.raises(IndexError):
            records[len(expected)]


def test_a_manifest_read_with_the_record_columns_gives_the_same_records(tiny_store) -> None:
    """Workers, score and evaluate read only ``RECORD_COLUMNS``: the records must not change, and
    the columns left out (checksums, paths, keys) must really stay on storage."""
    from raddiag.storage.store import RECORD_COLUMNS

    cfg, full = tiny_store
    slim = cfg.store.ref().manifest(RECORD_COLUMNS)
    assert slim.version == full.version and slim.label_names() == full.label_names()
    assert list(slim.cases.columns) == RECORD_COLUMNS["cases"] and list(slim.scans.columns) == RECORD_COLUMNS["scans"]
    assert {"checksum", "source", "patient_key"} & (set(full.scans.columns) | set(full.cases.columns))
    for split in ("train", "val", "test"):
        assert list(slim.case_records(split)) == list(full.case_records(split)) == reference_records(full, split)


def test_the_sampler_reads_the_columns_and_gets_what_the_dicts_give() -> None:
    manifest = messy_manifest()
    records = manifest.case_records("train")
    plain = list(records)
    names = [f"label {j}" for j in range(10)]  # two labels outside the vocabulary: ignored
    for level in ("disorder", "icd"):
        vocab = names if level == "disorder" else ["A01", "C03"]
        fast, slow = class_index(records, vocab, level), class_index(plain, vocab, level)
        assert all(np.array_equal(getattr(fast, f), getattr(slow, f)) for f in fast.__dataclass_fields__)
        assert np.array_equal(label_counts(records, vocab, level), label_counts(plain, vocab, level))
    subset = stratified_fraction(records, 0.5, 3)
    assert isinstance(subset, CaseRecords) and list(subset) == stratified_fraction(plain, 0.5, 3)
    for epoch in range(3):
        order = np.random.default_rng(epoch).integers(0, len(plain), 2 * len(plain)).tolist()
        assert mix_partners(records, order, 0.5, 1, epoch) == mix_partners(plain, order, 0.5, 1, epoch)
