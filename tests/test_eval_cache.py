"""Validation batches are read through Ray Data once and replayed from worker memory when they fit
(``data.eval_cache_mb``): the replayed batches equal a fresh read, and a share too large streams."""

from __future__ import annotations

import torch


def _collect(batches) -> dict[str, torch.Tensor]:
    batches = list(batches)
    return {key: torch.cat([b[key] for b in batches]) for key in batches[0]}


def test_cached_validation_batches_equal_a_fresh_read(tiny_store, ray_local) -> None:
    from raddiag.data.pipeline import iter_batches, worker_dataset
    from raddiag.storage.store import Store
    from raddiag.train.loop import EvalBatches

    cfg, _ = tiny_store
    manifest = Store(cfg.store.url).manifest()
    records, names = manifest.case_records("val"), manifest.label_names("disorder")
    fresh = _collect(iter_batches(worker_dataset(records, cfg, names, train=False, epoch=5), cfg.train.batch_size))

    cached = EvalBatches(records, cfg, names, "cpu", rank=0, world=1)
    assert cached.cacheable
    first, second = _collect(cached.batches(0)), _collect(cached.batches(1))
    assert cached.cached is not None and cached.cached[0]["images"].dtype == torch.uint8  # kept compact
    for key in fresh:
        assert torch.equal(first[key], fresh[key]) and torch.equal(second[key], fresh[key]), key
    assert first["images"].dtype == torch.float32 and float(first["images"].max()) <= 1.0
    assert cached.cached[0]["images"].dtype == torch.uint8  # replaying did not convert the cache in place

    off = EvalBatches(records, cfg.model_copy(update={"data": cfg.data.model_copy(update={"eval_cache_mb": 0})}), names, "cpu", rank=0, world=1)
    assert not off.cacheable
    streamed = _collect(off.batches(0))
    assert off.cached is None and torch.equal(streamed["images"], fresh["images"])
