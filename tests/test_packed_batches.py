"""Packed batches: only the real slices cross the Ray object store, and the padded (B, N, D, H, W)
batch is rebuilt on the device exactly as the padded assembly would have made it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raddiag.data.pipeline import BlockAssembler, epoch_items, unpack_batch
from raddiag.model.nets.raddiag import real_index


@pytest.mark.parametrize("on", ["device", "workers"])  # workers: augmented in the read task, then packed
def test_packed_batch_unpacks_to_the_padded_batch(tiny_store, on: str) -> None:
    from raddiag.data.read import SliceReader

    cfg, manifest = tiny_store
    data = cfg.data.model_copy(update={"case_mix_p": 0.5, "augment": cfg.data.augment.model_copy(update={"on": on})})
    cfg = cfg.model_copy(update={"data": data})
    names, records = manifest.label_names(), manifest.case_records("train")
    items = epoch_items(records, cfg, names, train=True, epoch=0)[:6]
    assembler = BlockAssembler(cfg.model_dump(mode="json"), names, None, train=True, epoch=0)
    reader = SliceReader(cfg.store.url)
    try:
        padded, packed = assembler(items, reader), assembler(items, reader, packed=True)
    finally:
        reader.close()
    real = int(padded["slice_mask"].sum())
    size = cfg.data.image_size
    assert "images" not in packed and packed["slices"].shape == (real, size, size)
    assert padded["images"].nbytes == 6 * cfg.data.n_image * cfg.data.depth * size * size
    assert packed["slices"].nbytes == real * size * size < padded["images"].nbytes  # only real slices travel
    assert {1, cfg.data.depth} <= set(padded["slice_mask"].sum(-1)[padded["scan_mask"]].tolist())  # 2D and 3D

    batch = unpack_batch(packed)
    assert torch.equal(batch["images"], torch.from_numpy(padded["images"]))  # padding rebuilt as zeros
    for key, value in padded.items():
        if key != "images":
            assert torch.equal(batch[key], torch.from_numpy(np.asarray(value))), key
    slice_index, scan_index = real_index(batch["scan_mask"], batch["slice_mask"])
    assert torch.equal(batch["slice_index"], slice_index) and torch.equal(batch["scan_index"], scan_index)


def test_a_packed_batch_that_disagrees_with_its_mask_is_refused(tiny_store) -> None:
    from raddiag.data.read import SliceReader

    cfg, manifest = tiny_store
    names, records = manifest.label_names(), manifest.case_records("val")
    assembler = BlockAssembler(cfg.model_dump(mode="json"), names, None, train=False, epoch=0)
    reader = SliceReader(cfg.store.url)
    try:
        packed = assembler(epoch_items(records, cfg, names, train=False, epoch=0)[:3], reader, packed=True)
    finally:
        reader.close()
    packed["slices"] = packed["slices"][1:]
    with pytest.raises(ValueError, match="slices but slice_mask marks"):
        unpack_batch(packed)


@pytest.mark.slow
def test_ray_batches_recut_to_another_size_keep_every_case(tiny_store, ray_local) -> None:
    """A dataset built for batches of 5, read in batches of 3: the packed rows are re-cut on the host
    (case boundaries found from the masks) and give the same cases, images and indices."""
    from raddiag.data.pipeline import iter_batches, worker_dataset

    cfg, manifest = tiny_store
    names, records = manifest.label_names(), manifest.case_records("val")
    dataset = worker_dataset(records, cfg, names, train=False, epoch=0, batch_size=5)
    fives, threes = list(iter_batches(dataset, 5, to_float=False)), list(iter_batches(dataset, 3, to_float=False))
    assert [len(b["order"]) for b in threes][:-1] == [3] * (len(threes) - 1)
    for key in ("order", "images", "slice_mask", "labels"):
        assert torch.equal(torch.cat([b[key] for b in fives]), torch.cat([b[key] for b in threes])), key
    for batch in threes:
        slice_index, scan_index = real_index(batch["scan_mask"], batch["slice_mask"])
        assert torch.equal(batch["slice_index"], slice_index) and torch.equal(batch["scan_index"], scan_index)
