"""Storage building blocks: readers' guards, de-identification allow-list, layout, preprocessing,
synthetic key slices and the bucket policies in storage/iam."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from raddiag.storage import deid
from raddiag.storage.preprocess import normalise, select_slices
from raddiag.storage.readers import BadInput, Limits, read_dicom_series, read_npy, read_volume
from raddiag.storage.store import Layout, Store, scan_checksum
from storage_samples import PHI_STRINGS, write_bad_files, write_ct_series


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("bad")
    return folder, write_bad_files(folder)


def test_every_bad_file_raises_bad_input_with_its_reason(bad_files) -> None:
    folder, expected = bad_files
    for name, reason in expected.items():
        with pytest.raises(BadInput, match=None) as info:
            read_volume(folder / name)
        assert reason in str(info.value), (name, str(info.value))


def test_pickled_npy_is_never_unpickled(tmp_path: Path, monkeypatch) -> None:
    import pickle

    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("unpickled"))
    np.save(tmp_path / "o.npy", np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(BadInput, match="object dtype"):
        read_npy(tmp_path / "o.npy")


def test_bomb_guard_checks_headers_before_allocating(tmp_path: Path) -> None:
    np.save(tmp_path / "big.npy", np.zeros((64, 64, 8), dtype=np.float32))
    with pytest.raises(BadInput, match="absurd"):
        read_npy(tmp_path / "big.npy", Limits(max_side=32))
    with pytest.raises(BadInput, match="voxels"):
        read_npy(tmp_path / "big.npy", Limits(max_voxels=10_000))


def test_fortran_order_and_equal_rgb(tmp_path: Path) -> None:
    volume = np.asfortranarray(np.random.default_rng(0).random((5, 6, 3), dtype=np.float32))
    np.save(tmp_path / "f.npy", volume)
    assert np.array_equal(read_npy(tmp_path / "f.npy").data, np.moveaxis(volume, -1, 0))
    grey = np.repeat(volume[..., :1], 3, axis=-1)
    np.save(tmp_path / "g.npy", grey)
    assert read_npy(tmp_path / "g.npy").data.shape == (1, 5, 6)


def test_dicom_series_sorted_by_position_and_rescaled(tmp_path: Path) -> None:
    expected = write_ct_series(tmp_path / "ct", n_slices=3, slope=0.5, intercept=-20)
    volume, headers = read_dicom_series(sorted((tmp_path / "ct").iterdir()))
    assert np.allclose(volume, expected)
    assert [float(h.ImagePositionPatient[2]) for h in headers] == [0.0, 5.0, 10.0]


def test_deid_keeps_only_the_allow_list_and_links_by_keyed_hash(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "ct", n_slices=2)
    _, headers = read_dicom_series(sorted((tmp_path / "ct").iterdir()))
    key = b"k" * 16
    meta = deid.deidentify(headers, key, depth=2).stored()
    assert set(meta) == set(deid.STORED_FIELDS) | {"patient_key", "study_key", "series_key", "flags"}
    assert meta["modality"] == "CT" and meta["plane"] == "axial" and meta["spacing"][0] == pytest.approx(5.0)
    text = json.dumps(meta)
    for phi in PHI_STRINGS + [str(headers[0].StudyInstanceUID), str(headers[0].PatientID)]:
        assert phi not in text
    other = deid.deidentify(headers, b"x" * 16, depth=2)
    assert other.study_key != meta["study_key"] and len(meta["study_key"]) == 16
    assert deid.keyed_hash("A", key, "patient") == deid.keyed_hash("A", key, "patient") != deid.keyed_hash("A", key, "study")


def test_deid_key_is_required(monkeypatch) -> None:
    monkeypatch.delenv("RADDIAG_DEID_KEY", raising=False)
    with pytest.raises(deid.DeidKeyMissing, match="RADDIAG_DEID_KEY"):
        deid.deid_key()
    monkeypatch.setenv("RADDIAG_DEID_KEY", "short")
    with pytest.raises(deid.DeidKeyMissing):
        deid.deid_key()


def test_plane_from_orientation() -> None:
    assert deid.plane_from_orientation([1, 0, 0, 0, 1, 0]) == "axial"
    assert deid.plane_from_orientation([1, 0, 0, 0, 0, -1]) == "coronal"
    assert deid.plane_from_orientation([0, 1, 0, 0, 0, -1]) == "sagittal"


def test_select_slices_keeps_the_key_slice() -> None:
    for depth, key in [(100, 0), (100, 99), (100, 37), (65, 1), (10, 4)]:
        indices, position = select_slices(depth, 8, key)
        assert indices[position] == key and len(indices) == min(depth, 8) and np.all(np.diff(indices) > 0)


def test_uint16_round_trip_and_uint8_view(tmp_path: Path) -> None:
    volume = normalise(np.random.default_rng(0).random((3, 8, 8)), "uint16")
    store = Store(str(tmp_path / "s"))
    scan_id, checksum = store.write_scan(volume)
    assert checksum == scan_checksum(volume) != scan_checksum(volume.astype(np.uint8))
    assert np.array_equal(store.read_slices(scan_id, [0, 2], native=True), volume[[0, 2]])
    assert np.array_equal(store.read_slices(scan_id, [1]), (volume[[1]] >> 8).astype(np.uint8))


def test_shards_hold_at_most_8_mib_raw() -> None:
    layout = Layout()
    assert layout.shard_depth(64, 256, 256, 1) == 64  # 4 MiB: one shard per scan
    assert layout.shard_depth(64, 256, 256, 2) == 64  # 8 MiB
    assert layout.shard_depth(300, 512, 512, 2) == 16  # 8 MiB shards of a large volume
    assert Layout(chunk_depth=4).shard_depth(6, 16, 16, 1) == 8  # whole chunks


def test_synth_key_slice_is_where_the_lesion_is_largest() -> None:
    from raddiag.storage.synth import render_scan, synth_labels

    labels = [label for label in synth_labels(6, seed=0) if "CT" in label.visible_in][:1]
    rng = np.random.default_rng(0)
    lesion, key = render_scan(rng, labels, "CT", 12, 32, 0)
    plain, _ = render_scan(np.random.default_rng(0), [], "CT", 12, 32, 0)
    area = (np.abs(lesion - plain) > 0.05).sum(axis=(1, 2))
    assert int(np.argmax(area)) == key and area[key] > area.min()


def test_iam_policies_are_least_privilege() -> None:
    read = json.loads((REPO / "storage" / "iam" / "training-read.json").read_text())
    write = json.loads((REPO / "storage" / "iam" / "ingest-write.json").read_text())
    read_actions = {a for s in read["Statement"] for a in s["Action"]}
    write_actions = {a for s in write["Statement"] for a in s["Action"]}
    assert read_actions == {"s3:GetObject", "s3:ListBucket"}
    assert "s3:PutObject" in write_actions and not any("*" in a for a in read_actions | write_actions)
    for policy in (read, write):
        for statement in policy["Statement"]:
            assert statement["Effect"] == "Allow" and "*" != statement["Resource"]
            assert "RADDIAG_BUCKET" in statement["Resource"]
