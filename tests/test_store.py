"""The Zarr/Parquet store: round trips, partial reads, idempotent versions, atomic publish, S3."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from raddiag.config import SynthConfig
from raddiag.storage.splits import stratified_split
from raddiag.storage.store import Store, StoreError, scan_checksum, to_uint8
from raddiag.storage.synth import generate, synth_labels

SMALL = SynthConfig(n_cases=30, n_labels=8, image_size=16, max_depth=4, seed=3)


def test_scan_round_trip_and_partial_reads(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s"))
    volume = np.random.default_rng(0).integers(0, 255, size=(6, 16, 16), dtype=np.uint8)
    scan_id, checksum = store.write_scan(volume)
    assert checksum == scan_checksum(volume)
    assert np.array_equal(store.read_slices(scan_id), volume)
    assert np.array_equal(store.read_slices(scan_id, [1, 2, 3]), volume[1:4])
    assert np.array_equal(store.read_slices(scan_id, [0, 5]), volume[[0, 5]])
    assert store.write_scan(volume) == (scan_id, checksum)  # idempotent by content


def test_write_scan_rejects_wrong_dtype(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="uint8"):
        Store(str(tmp_path)).write_scan(np.zeros((1, 4, 4), dtype=np.float32))


def test_a_scan_without_its_checksum_is_rewritten_and_a_complete_one_is_kept(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s"))
    volume, other = (np.full((2, 4, 4), v, dtype=np.uint8) for v in (7, 9))
    checksum = scan_checksum(volume)
    scan_id = checksum[:24]
    half = store.group().create_array(name=scan_id, shape=(2, 4, 4), dtype="uint8", chunks=(1, 4, 4))
    half[0] = 1  # a write killed before its data was complete and before its checksum
    assert not store.has_complete_scan(scan_id)
    kept_id, _ = store.write_scan(other)
    kept = tmp_path / "s" / "scans.zarr" / kept_id / "zarr.json"
    before = kept.stat().st_mtime_ns
    assert store.write_scan(volume) == (scan_id, checksum) and store.write_scan(other)[0] == kept_id
    assert np.array_equal(store.read_slices(scan_id), volume) and store.has_complete_scan(scan_id)
    assert kept.stat().st_mtime_ns == before  # a complete scan is not written again


def test_to_uint8_min_max_and_constant() -> None:
    out = to_uint8(np.array([[[-1.0, 0.0, 1.0]]]))
    assert out.tolist() == [[[0, 128, 255]]]
    assert to_uint8(np.full((1, 2, 2), 7.0)).max() == 0


def test_synth_is_deterministic_and_idempotent(tmp_path: Path) -> None:
    first = generate(SMALL, Store(str(tmp_path / "a")))
    again = generate(SMALL, Store(str(tmp_path / "a")))
    other = generate(SMALL, Store(str(tmp_path / "b")))
    assert first.version == again.version == other.version
    assert len(again.scans) == len(first.scans) and again.scans["scan_id"].is_unique
    assert again.info["created"] == first.info["created"]


def test_synth_has_long_tail_groups_2d_and_3d(tiny_store) -> None:
    _, manifest = tiny_store
    groups = set(manifest.labels.loc[manifest.labels.level == "disorder", "group"])
    assert "tail" in groups
    assert (manifest.scans["depth"] == 1).any() and (manifest.scans["depth"] > 1).any()
    assert set(manifest.cases["split"]) == {"train", "val", "test"}
    names = manifest.label_names()
    assert names[0] == "Normal" and len(set(names)) == len(names)
    for record in manifest.case_records("train"):
        assert record["scans"], record["case_id"]
        assert all(0 <= s["key_slice"] < s["depth"] for s in record["scans"])


def test_default_synth_populates_head_medium_and_tail() -> None:
    """The demo's default store (1,800 cases) has a head, a medium and a tail: counted from the case plan
    that generate() renders (the labels need no pixels; rendering 1,800 cases took ~30-60 s)."""
    import pandas as pd

    from raddiag.config import SynthConfig as Default
    from raddiag.storage.benchmark import plan_cases
    from raddiag.storage.store import label_table
    from raddiag.storage.synth import label_vocabulary

    cfg = Default()
    assert cfg.profile == "benchmark"  # plan_cases is the benchmark profile's plan
    vocabulary, codes = label_vocabulary(cfg)  # "Normal", then label i of the plan at i + 1
    cases = pd.DataFrame([{"split": split, "disorders": [vocabulary[i + 1] for i in hits] or ["Normal"], "icd10": []}
                          for split, hits in plan_cases(cfg)])
    table = label_table(cases, vocabulary, codes)
    assert set(table.loc[table.level == "disorder", "group"]) == {"head", "medium", "tail"}
    assert len(table.loc[table.level == "disorder"]) >= 20


def test_synth_cases_follow_the_case_plan() -> None:
    from raddiag.config import SynthConfig
    from raddiag.storage.benchmark import plan_cases
    from raddiag.storage.synth import iter_cases, label_vocabulary

    cfg = SynthConfig(n_cases=60, n_labels=8, image_size=8, max_depth=2)
    vocabulary, _ = label_vocabulary(cfg)
    planned = [(split, sorted(vocabulary[i + 1] for i in hits) or ["Normal"]) for split, hits in plan_cases(cfg)]
    assert [(case["split"], sorted(case["disorders"])) for case in iter_cases(cfg)] == planned


def test_synth_labels_share_icd_blocks() -> None:
    labels = synth_labels(12, seed=0)
    blocks = [label.block for label in labels]
    assert len(set(blocks)) < len(blocks)
    assert all(label.code.startswith(label.category) for label in labels)


def test_dataset_json_names_a_complete_version(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s"))
    manifest = generate(SMALL, store)
    info = json.loads((tmp_path / "s" / "dataset.json").read_text())
    assert info["version"] == manifest.version
    for name in ("cases", "scans", "labels"):
        assert (tmp_path / "s" / "versions" / manifest.version / f"{name}.parquet").exists()
    assert not list((tmp_path / "s").glob("*.tmp-*"))


def test_missing_store_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no dataset.json"):
        Store(str(tmp_path / "nothing")).manifest()


def test_stratified_split_keeps_every_label_in_train() -> None:
    rng = np.random.default_rng(0)
    labels = [[f"l{int(x)}"] for x in rng.zipf(1.6, size=300) if x < 60]
    splits = stratified_split(labels, 0.15, 0.25, seed=1)
    assert stratified_split(labels, 0.15, 0.25, seed=1) == splits
    train_labels = {l for case, split in zip(labels, splits) if split == "train" for l in case}
    assert train_labels == {l for case in labels for l in case}
    share = splits.count("test") / len(splits)
    assert 0.15 < share < 0.35


@pytest.mark.slow
def test_store_on_s3_via_moto(s3_endpoint: str) -> None:
    url = "s3://raddiag-test/stores/tiny"
    store = Store(url, endpoint_url=s3_endpoint)
    manifest = generate(SMALL, store)
    reopened = Store(url, endpoint_url=s3_endpoint)
    assert reopened.manifest().version == manifest.version
    row = manifest.scans.iloc[0]
    slices = reopened.read_slices(row.scan_id, [0])
    assert slices.shape == (1, row.height, row.width) and slices.dtype == np.uint8
    assert "endpoint" not in json.dumps(reopened.manifest().info)  # no connection details in the store
