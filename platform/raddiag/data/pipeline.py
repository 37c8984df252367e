"""Ray Data pipeline: case records -> slices read from the Zarr store -> fixed-shape batches.

Each Ray Train worker builds its own per-epoch dataset over its share of the epoch's case order
(``order[rank::world]``), so sampling is re-drawn every epoch from ``(seed, epoch)``, a resumed run
restarts exactly at its checkpointed epoch, and evaluation covers every case exactly once across
workers. Reads run as Ray Data tasks; each task opens the store itself (no filesystem object
crosses a process boundary) and fetches only the sampled slices.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import numpy as np

from raddiag.config import RadDiagConfig
from raddiag.data.assemble import assemble_case, stack_cases
from raddiag.data.sampling import epoch_order

_STORES: dict[tuple[str, str | None], Any] = {}


def _store(url: str, endpoint_url: str | None) -> Any:
    """One Store per (url, endpoint) per process (Ray reuses worker processes across tasks)."""
    from raddiag.storage.store import Store

    key = (url, endpoint_url)
    if key not in _STORES:
        _STORES[key] = Store(url, endpoint_url)
    return _STORES[key]


def label_matrix(records: list[dict[str, Any]], label_names: list[str], level: str) -> np.ndarray:
    """(n_cases, C) 0/1 matrix of the records' labels at ``level``."""
    index = {name: i for i, name in enumerate(label_names)}
    matrix = np.zeros((len(records), len(label_names)), dtype=np.int8)
    field = "disorders" if level == "disorder" else "icd10"
    for row, record in enumerate(records):
        for name in record[field]:
            if name in index:
                matrix[row, index[name]] = 1
    return matrix


class CaseReader:
    """``map_batches`` function: {"order", "record"(json)} -> batch-schema numpy arrays (+ order)."""

    def __init__(self, cfg: dict[str, Any], label_names: list[str], train: bool, epoch: int) -> None:
        self.cfg = cfg
        self.label_names = label_names
        self.train = train
        self.epoch = epoch

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from raddiag.data.augment import build_augment
        from raddiag.observability import ReadMetrics

        cfg = RadDiagConfig.model_validate(self.cfg)
        store = _store(cfg.store.url, cfg.store.endpoint_url)
        read = ReadMetrics(store.read_slices, "train" if self.train else "eval")
        label_index = {name: i for i, name in enumerate(self.label_names)}
        cases = []
        for order, text in zip(batch["order"], batch["record"]):
            record = json.loads(str(text))
            rng = np.random.default_rng([cfg.train.seed, self.epoch, int(order)]) if self.train else None
            augment = build_augment(cfg.data.augment, seed=int(rng.integers(2**31))) if rng is not None else None
            case = assemble_case(
                record,
                read,
                label_index,
                n_image=cfg.data.n_image,
                depth=cfg.data.depth,
                image_size=cfg.data.image_size,
                label_level=cfg.data.label_level,
                rng=rng,
                augment=augment,
            )
            case["order"] = np.int64(order)
            cases.append(case)
        read.flush(len(cases))
        return stack_cases(cases)


def epoch_records(
    records: list[dict[str, Any]], cfg: RadDiagConfig, label_names: list[str], *, train: bool, epoch: int
) -> list[int]:
    """The epoch's case order: long-tail sampled for training, the identity for evaluation."""
    if not train:
        return list(range(len(records)))
    matrix = label_matrix(records, label_names, cfg.data.label_level)
    return epoch_order(matrix, cfg.data.sampler, cfg.data.sampler_power, cfg.train.seed, epoch).tolist()


def worker_dataset(
    records: list[dict[str, Any]],
    cfg: RadDiagConfig,
    label_names: list[str],
    *,
    train: bool,
    epoch: int,
    rank: int = 0,
    world: int = 1,
) -> Any:
    """A Ray Dataset of this worker's share of the epoch (``order[rank::world]``), read lazily."""
    import ray.data

    order = epoch_records(records, cfg, label_names, train=train, epoch=epoch)[rank::world]
    if not order:
        raise ValueError(f"worker {rank}/{world}: no cases in this {'training' if train else 'evaluation'} shard")
    items = [{"order": i, "record": json.dumps(records[i])} for i in order]
    blocks = max(1, min(len(items) // 4, cfg.data.read_parallelism * 2))
    dataset = ray.data.from_items(items, override_num_blocks=blocks)
    reader = CaseReader(cfg.model_dump(mode="json"), label_names, train, epoch)
    return dataset.map_batches(
        reader, batch_size=4, batch_format="numpy", num_cpus=cfg.data.data_cpus, concurrency=cfg.data.read_parallelism
    )


def iter_batches(dataset: Any, batch_size: int, device: Any = "cpu") -> Iterator[dict[str, Any]]:
    """Torch batches of the batch schema (+ ``order``) from a worker dataset."""
    yield from dataset.iter_torch_batches(batch_size=batch_size, device=device, drop_last=False)


def local_batches(
    records: list[dict[str, Any]], cfg: RadDiagConfig, label_names: list[str], batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
    """Evaluation batches assembled in-process (no Ray): for the driver, predict and tests."""
    reader = CaseReader(cfg.model_dump(mode="json"), label_names, train=False, epoch=0)
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        yield reader(
            {
                "order": np.arange(start, start + len(chunk)),
                "record": np.array([json.dumps(r) for r in chunk], dtype=object),
            }
        )
