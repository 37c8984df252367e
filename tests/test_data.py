"""Case assembly, depth sampling, long-tail sampling and the Ray Data pipeline."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from raddiag.data.assemble import assemble_case, sample_depth, select_scans
from raddiag.data.pipeline import label_matrix, local_batches
from raddiag.data.sampling import class_probabilities, epoch_order


@given(n=st.integers(1, 200), depth=st.integers(1, 40), key=st.integers(0, 199), seed=st.integers(0, 1000), train=st.booleans())
@settings(max_examples=200, deadline=None)
def test_sample_depth_keeps_key_slice(n: int, depth: int, key: int, seed: int, train: bool) -> None:
    key = key % n
    rng = np.random.default_rng(seed) if train else None
    indices, position = sample_depth(n, depth, key, rng)
    assert len(indices) == min(n, depth)
    assert np.all(np.diff(indices) >= 0) and indices.min() >= 0 and indices.max() < n
    assert indices[position] == key


def test_select_scans_caps_per_modality() -> None:
    scans = [{"scan_id": f"ct{i}", "modality": "CT"} for i in range(5)]
    scans += [{"scan_id": f"xr{i}", "modality": "X-ray"} for i in range(4)]
    scans += [{"scan_id": f"us{i}", "modality": "Ultrasound"} for i in range(3)]
    chosen = select_scans(scans, n_image=8, rng=None)
    modalities = [s["modality"] for s in chosen]
    assert modalities.count("CT") == 3 and modalities.count("X-ray") == 2 and modalities.count("Ultrasound") == 1
    assert len(select_scans(scans, n_image=4, rng=np.random.default_rng(0))) == 4


def _volumes(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "xray": rng.integers(0, 255, (1, 20, 20), dtype=np.uint8),
        "ct": rng.integers(0, 255, (13, 20, 20), dtype=np.uint8),
    }


def test_assemble_mixes_2d_and_3d_with_masks() -> None:
    rng = np.random.default_rng(0)
    vols = _volumes(rng)
    record = {
        "case_id": "c",
        "disorders": ["b", "unknown"],
        "icd10": [],
        "scans": [
            {"scan_id": "ct", "modality": "CT", "plane": "axial", "depth": 13, "key_slice": 7},
            {"scan_id": "xray", "modality": "X-ray", "plane": "frontal", "depth": 1, "key_slice": 0},
        ],
    }
    case = assemble_case(record, lambda s, i: vols[s][np.asarray(i)], {"a": 0, "b": 1}, n_image=3, depth=4, image_size=16)
    assert case["images"].shape == (3, 4, 16, 16) and case["images"].dtype == np.float32
    assert case["scan_mask"].tolist() == [True, True, False]
    assert case["slice_mask"].sum(axis=1).tolist() == [4, 1, 0]
    assert case["modality_ids"].tolist() == [1, 7, 0]
    assert case["labels"].tolist() == [0.0, 1.0]
    assert 0.0 <= case["images"].min() and case["images"].max() <= 1.0
    assert np.all(case["images"][2] == 0) and np.all(case["images"][1, 1:] == 0)
    ct_slot = 0
    assert case["slice_mask"][ct_slot, case["key_slice"][ct_slot]]


def test_class_aware_sampling_matches_target_frequencies() -> None:
    rng = np.random.default_rng(1)
    counts = [200, 60, 20, 5]
    rows = []
    for label, count in enumerate(counts):
        for _ in range(count):
            row = np.zeros(len(counts), dtype=np.int8)
            row[label] = 1
            rows.append(row)
    matrix = np.array(rows)
    for strategy, power in (("class_aware", 0.0), ("sqrt", 0.5)):
        drawn = np.concatenate([epoch_order(matrix, strategy, power, seed=7, epoch=e) for e in range(20)])
        observed = matrix[drawn].sum(axis=0)
        expected = class_probabilities(matrix, 0.0 if strategy == "class_aware" else power) * len(drawn)
        _, p_value = stats.chisquare(observed, expected)
        assert p_value > 0.001, (strategy, observed, expected)
    permutation = epoch_order(matrix, "instance", 1.0, seed=7, epoch=0)
    assert sorted(permutation.tolist()) == list(range(len(matrix)))
    assert not np.array_equal(permutation, epoch_order(matrix, "instance", 1.0, seed=7, epoch=1))
    assert np.array_equal(permutation, epoch_order(matrix, "instance", 1.0, seed=7, epoch=0))


def test_local_batches_cover_split_once(tiny_store) -> None:
    cfg, manifest = tiny_store
    names = manifest.label_names()
    records = manifest.case_records("val")
    batches = list(local_batches(records, cfg, names, batch_size=4))
    orders = np.concatenate([b["order"] for b in batches])
    assert sorted(orders.tolist()) == list(range(len(records)))
    labels = np.concatenate([b["labels"] for b in batches])
    assert np.array_equal(labels, label_matrix(records, names, "disorder").astype(np.float32))


@pytest.mark.slow
def test_ray_worker_datasets_cover_every_val_case_once_across_two_workers(tiny_store, ray_local) -> None:
    from raddiag.data.pipeline import iter_batches, worker_dataset

    cfg, manifest = tiny_store
    names = manifest.label_names()
    records = manifest.case_records("val")
    seen = []
    for rank in range(2):
        dataset = worker_dataset(records, cfg, names, train=False, epoch=0, rank=rank, world=2)
        for batch in iter_batches(dataset, batch_size=4):
            assert tuple(batch["images"].shape[1:]) == (cfg.data.n_image, cfg.data.depth, cfg.data.image_size, cfg.data.image_size)
            seen.extend(batch["order"].tolist())
    assert sorted(seen) == list(range(len(records)))
    train = manifest.case_records("train")
    epoch0 = [b["order"].tolist() for b in iter_batches(worker_dataset(train, cfg, names, train=True, epoch=0), 64)]
    again = [b["order"].tolist() for b in iter_batches(worker_dataset(train, cfg, names, train=True, epoch=0), 64)]
    assert sorted(sum(epoch0, [])) == sorted(sum(again, []))
