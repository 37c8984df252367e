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


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [3, 5])
def test_ray_blocks_are_exactly_the_batches(tiny_store, ray_local, batch_size: int) -> None:
    """Each produced batch is its own Ray block, one row (Ray neither coalesces nor slices them), so
    batches are zero-copy; only a read task's last batch may be short. Only real slices travel.
    Both label levels ride along."""
    import torch

    from raddiag.data.pipeline import case_row_bytes, iter_batches, manifest_vocabularies, worker_dataset

    cfg, manifest = tiny_store
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"cases_per_task": 7, "read_parallelism": 2})})
    names, records = manifest.label_names(), manifest.case_records("train")
    vocab = manifest_vocabularies(manifest)
    dataset = worker_dataset(records, cfg, names, train=True, epoch=0, vocabularies=vocab, batch_size=batch_size)
    rows = list(dataset.iter_batches(batch_size=None))
    assert all(len(row["order"]) == 1 for row in rows)  # a block is one row: the packed batch
    blocks = [row["order"].shape[-1] for row in rows]
    real_bytes = sum(int(row["slice_mask"].sum()) for row in rows) * cfg.data.image_size**2
    assert sum(row["slices"].nbytes for row in rows) == real_bytes  # no padded slot in the object store
    assert sum(blocks) == len(records)
    n_tasks = max(cfg.data.read_parallelism, -(-len(records) // cfg.data.cases_per_task))
    assert sum(size != batch_size for size in blocks) <= 1 and blocks[-1] <= batch_size  # tasks hold whole batches
    assert len(blocks) == -(-len(records) // batch_size) and n_tasks > 1
    batch = next(iter(iter_batches(dataset, batch_size, to_float=False)))
    assert batch["images"].dtype == torch.uint8 and set(vocab) <= {k.removesuffix("_labels") for k in batch}
    row = case_row_bytes(cfg, names, vocab)
    image_bytes = cfg.data.n_image * cfg.data.depth * cfg.data.image_size**2
    assert row > image_bytes and real_bytes < len(records) * image_bytes


# ---- reading only what a sample needs ---------------------------------------------------------


def _write_scans(url: str, layout=None) -> list[tuple[str, np.ndarray]]:
    from raddiag.storage.store import Layout, Store

    rng = np.random.default_rng(3)
    store = Store(url, layout=layout or Layout(chunk_depth=1, shard_bytes=7 * 24 * 24))  # several shards per scan
    scans = []
    for depth in (1, 6, 29):
        volume = rng.integers(0, 255, (depth, 24, 24), dtype=np.uint8)
        volume[min(2, depth - 1)] = 0  # an all-zero slice is never written (fill value)
        scans.append((store.write_scan(volume)[0], volume))
    return scans


@pytest.mark.parametrize("chunk_depth", [1, 3])
def test_slice_reader_matches_the_stored_volumes(tmp_path, chunk_depth: int) -> None:
    from raddiag.data.read import SliceReader
    from raddiag.storage.store import Layout

    scans = _write_scans(str(tmp_path), Layout(chunk_depth=chunk_depth, shard_bytes=7 * 24 * 24))
    rng = np.random.default_rng(0)
    requests, expected = [], []
    for scan_id, volume in scans:
        depth = volume.shape[0]
        for idx in (np.arange(depth), np.array([depth - 1]), np.sort(rng.choice(depth, min(4, depth), replace=False))):
            requests.append((scan_id, idx))
            expected.append(volume[idx])
    reader = SliceReader(str(tmp_path))
    try:
        outs = reader.read(requests)
        into = [np.full(e.shape, 7, dtype=np.uint8) for e in expected]
        reader.read_into(requests, into)
    finally:
        reader.close()
    for out, buffer, want in zip(outs, into, expected):
        assert np.array_equal(out, want) and np.array_equal(buffer, want)


def test_slice_reader_fetches_only_the_sampled_chunks(tmp_path) -> None:
    from raddiag.data.read import SliceReader
    from raddiag.storage.store import Store

    rng = np.random.default_rng(1)
    volume = rng.integers(0, 255, (64, 32, 32), dtype=np.uint8)
    scan_id, _ = Store(str(tmp_path)).write_scan(volume)
    object_bytes = (tmp_path / "scans.zarr" / scan_id / "c" / "0" / "0" / "0").stat().st_size
    reader = SliceReader(str(tmp_path))
    meta = reader.read([(scan_id, np.array([0]))]) and reader.bytes_fetched  # metadata + index + 1 chunk
    before = reader.bytes_fetched
    out = reader.read([(scan_id, np.array([3, 4, 40]))])[0]
    sampled = reader.bytes_fetched - before
    reader.close()
    assert np.array_equal(out, volume[[3, 4, 40]])
    assert sampled < object_bytes / 10 and meta < object_bytes / 5, (sampled, meta, object_bytes)
    assert reader.requests == 1 + 2 + 1 + 2  # zarr.json once; per read: index + one GET per run of adjacent chunks


# ---- assembly: both label levels, case mixing, equal-channel RGB, augmentation ------------------


def test_plan_case_mixing_appends_partner_scans_and_unions_labels() -> None:
    from raddiag.data.assemble import build_case, plan_case

    own = {"scans": [{"scan_id": f"ct{i}", "modality": "CT", "plane": "axial", "depth": 9, "key_slice": 4} for i in range(3)],
           "disorders": ["Normal"], "icd10": []}
    partner = {"scans": [{"scan_id": "xr", "modality": "X-ray", "plane": "frontal", "depth": 1, "key_slice": 0}],
               "disorders": ["b"], "icd10": ["B1"]}
    plan = plan_case(own, n_image=3, depth=4, rng=np.random.default_rng(0), partner=partner)
    assert [s["scan_id"][:2] for s in plan.scans] == ["ct", "ct", "xr"]
    assert plan.disorders == ["b"] and plan.icd10 == ["B1"]  # "Normal" dropped from a union with a disorder
    volumes = [np.full((len(i), 8, 8), 9, dtype=np.uint8) for i in plan.indices]
    case = build_case(plan, volumes, {"Normal": 0, "b": 1}, n_image=3, depth=4, image_size=8,
                      vocabularies={"disorder": {"Normal": 0, "b": 1}, "icd": {"B1": 0, "C2": 1}}, image_dtype="uint8")
    assert case["images"].dtype == np.uint8 and case["images"].shape == (3, 4, 8, 8)
    assert case["labels"].tolist() == [0.0, 1.0] and case["disorder_labels"].tolist() == [0.0, 1.0]
    assert case["icd_labels"].tolist() == [1.0, 0.0]
    assert case["modality_ids"].tolist() == [1, 1, 7] and case["slice_mask"].sum(axis=1).tolist() == [4, 4, 1]


def test_mix_partners_pick_another_anatomy_at_rate_p() -> None:
    from raddiag.data.pipeline import mix_partners

    records = [{"anatomy": "Chest" if i % 3 else "Abdomen"} for i in range(300)]
    partners = mix_partners(records, list(range(300)) * 4, p=0.3, seed=0, epoch=2)
    mixed = [(i % 300, j) for i, j in zip(range(1200), partners) if j is not None]
    assert all(records[i]["anatomy"] != records[j]["anatomy"] for i, j in mixed)
    assert stats.binomtest(len(mixed), 1200, 0.3).pvalue > 0.001
    assert partners == mix_partners(records, list(range(300)) * 4, p=0.3, seed=0, epoch=2)


def test_equal_channel_rgb_becomes_one_grey_slice(tmp_path) -> None:
    from raddiag.data.read import SliceReader
    from raddiag.storage.readers import as_dhw
    from raddiag.storage.store import Store, to_uint8

    grey = np.random.default_rng(2).random((20, 20)).astype(np.float32)
    volume = to_uint8(as_dhw(np.repeat(grey[..., None], 3, axis=-1)))
    assert volume.shape == (1, 20, 20)
    scan_id, _ = Store(str(tmp_path)).write_scan(volume)
    record = {"scans": [{"scan_id": scan_id, "modality": "X-ray", "plane": "frontal", "depth": 1, "key_slice": 0}],
              "disorders": ["a"], "icd10": []}
    from raddiag.data.assemble import assemble_case

    reader = SliceReader(str(tmp_path))
    case = assemble_case(record, lambda s, i: reader.read([(s, i)])[0], {"a": 0}, n_image=2, depth=3, image_size=20)
    reader.close()
    assert case["slice_mask"].tolist() == [[True, False, False], [False, False, False]]
    assert np.allclose(case["images"][0, 0], to_uint8(grey) / 255.0)


def test_augment_2d_and_3d_in_plane_and_padding_untouched() -> None:
    import torch

    from raddiag.config import AugmentConfig
    from raddiag.data.augment import augment_batch, build_augment

    only_affine = AugmentConfig(affine_p=1.0, noise_p=0.0, contrast_p=0.0)
    image = np.zeros((16, 16), dtype=np.float32)
    image[4:12, 6:9] = 1.0
    flat = build_augment(only_affine, seed=0)(image[None])
    assert flat.shape == (1, 16, 16)
    volume = build_augment(only_affine, seed=0)(np.repeat(image[None], 5, axis=0))
    assert volume.shape == (5, 16, 16)
    assert all(np.allclose(volume[k], volume[0]) for k in range(5))  # one in-plane transform for all slices
    assert not np.allclose(volume[0], image)
    everything = AugmentConfig(affine_p=1.0, noise_p=1.0, contrast_p=1.0, elastic_p=1.0)
    images = torch.rand(2, 3, 4, 16, 16)
    slice_mask = torch.zeros(2, 3, 4, dtype=torch.bool)
    slice_mask[0, 0, :4] = True  # a 3D scan
    slice_mask[0, 1, :1] = True  # a 2D image
    slice_mask[1, 0, :2] = True
    images[~slice_mask] = 0.0
    before = images.clone()
    out = augment_batch(images, slice_mask, everything, seed=1)
    assert out.shape == (2, 3, 4, 16, 16) and torch.all(out[~slice_mask] == 0)
    assert not torch.allclose(out[slice_mask], before[slice_mask]) and 0 <= out.min() and out.max() <= 1


def test_local_batches_carry_both_label_levels(tiny_store) -> None:
    from raddiag.data.pipeline import manifest_vocabularies

    cfg, manifest = tiny_store
    records = manifest.case_records("test")
    vocab = manifest_vocabularies(manifest)
    batch = next(iter(local_batches(records[:6], cfg, vocab["disorder"], 6, vocabularies=vocab)))
    assert np.array_equal(batch["labels"], batch["disorder_labels"])
    assert np.array_equal(batch["icd_labels"], label_matrix(records[:6], vocab["icd"], "icd").astype(np.float32))
    assert batch["images"].dtype == np.float32


# ---- Ray Data: determinism per (seed, epoch), 2D + 3D mixed, S3 --------------------------------


@pytest.mark.slow
def test_ray_training_stream_is_deterministic_and_redrawn_per_epoch(tiny_store, ray_local) -> None:
    from raddiag.data.pipeline import iter_batches, worker_dataset

    cfg, manifest = tiny_store
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"sampler": "sqrt", "case_mix_p": 0.3})})
    names, records = manifest.label_names(), manifest.case_records("train")

    def stream(epoch: int) -> tuple[list[int], np.ndarray, list]:
        batches = list(iter_batches(worker_dataset(records, cfg, names, train=True, epoch=epoch, rank=1, world=2), batch_size=8))
        orders = [int(o) for b in batches for o in b["order"]]
        images = np.concatenate([b["images"].numpy() for b in batches])
        return orders, images, batches

    orders, images, batches = stream(0)
    again_orders, again_images, _ = stream(0)
    assert orders == again_orders and np.array_equal(images, again_images)
    assert stream(1)[0] != orders
    assert len(orders) == len(records) // 2
    def ids(batch: dict) -> set[int]:
        return set(batch["modality_ids"].flatten().tolist())

    # an X-ray (7) beside CT/MRI volumes (coronal 2/5, sagittal 3/6: the benchmark's planes)
    mixed_batch = next(b for b in batches if 7 in ids(b) and ids(b) & {2, 3, 5, 6})
    depths = mixed_batch["slice_mask"].sum(-1)
    assert {1, cfg.data.depth} <= set(depths.flatten().tolist())  # 2D and 3D scans side by side in one batch
    assert mixed_batch["images"].dtype.is_floating_point and float(mixed_batch["images"].max()) <= 1.0


@pytest.mark.slow
def test_s3_store_reads_match_local_store(tmp_path, s3_endpoint, ray_local) -> None:
    from conftest import tiny_overrides
    from raddiag.config import load_config
    from raddiag.data.pipeline import iter_batches, worker_dataset
    from raddiag.storage.store import Store
    from raddiag.storage.synth import generate

    overrides = [*tiny_overrides(tmp_path), "synth.n_cases=12"]
    local_cfg = load_config(None, overrides)
    s3_cfg = load_config(None, [*overrides, "store.url=s3://raddiag-test/data-test", f"store.endpoint_url={s3_endpoint}"])
    manifest = generate(local_cfg.synth, Store(local_cfg.store.url))
    generate(s3_cfg.synth, Store(s3_cfg.store.url, s3_endpoint))
    records, names = manifest.case_records("train"), manifest.label_names()
    local = list(local_batches(records, local_cfg, names, 4))
    remote = list(local_batches(records, s3_cfg, names, 4))
    for a, b in zip(local, remote):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    import ray

    from raddiag.config import RayConfig
    from raddiag.runtime import init_ray

    ray.shutdown()  # Ray workers read credentials from the AWS chain: restart them with the moto env set
    init_ray(RayConfig(num_cpus=8), verbose=False)
    ray_batches = list(iter_batches(worker_dataset(records, s3_cfg, names, train=False, epoch=0), batch_size=4))
    assert np.allclose(np.concatenate([b["images"].numpy() for b in ray_batches]), np.concatenate([b["images"] for b in local]))


# ---- read-ahead of the next epoch --------------------------------------------------------------


def test_prefetch_keeps_order_raises_errors_and_closes() -> None:
    import threading
    import time

    from raddiag.data.pipeline import Prefetch

    assert list(Prefetch(lambda: iter(range(10)), depth=2)) == list(range(10))

    def broken():
        yield 1
        raise ValueError("store unreadable")

    stream = iter(Prefetch(broken))
    assert next(stream) == 1
    with pytest.raises(ValueError, match="store unreadable"):
        next(stream)

    produced = []

    def endless():
        for i in range(10**9):
            produced.append(i)
            yield i

    ahead = Prefetch(endless, depth=3)
    deadline = time.time() + 5
    while len(produced) < 4 and time.time() < deadline:  # depth 3 queued + 1 waiting to be put
        time.sleep(0.01)
    time.sleep(0.2)
    assert len(produced) <= 5  # bounded read-ahead, not a runaway producer
    ahead.close()
    assert not any(t.name == "raddiag-prefetch" and t.is_alive() for t in threading.enumerate() if t is ahead._thread)
