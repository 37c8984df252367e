"""Ray Data pipeline: case records -> sampled slices read from the Zarr store -> fixed-shape batches.

Streaming design. Each Ray Train worker builds its own per-epoch dataset over its share of the
epoch's case order (``order[rank::world]``): the long-tail sampling is re-drawn every epoch from
``(seed, epoch)``, a resumed run restarts exactly at its checkpointed epoch, evaluation covers every
case exactly once across workers, and equal-length training shards keep DDP steps in lockstep.
The dataset is read by :class:`CaseDatasource`, which parallelises by case: each read task takes a
contiguous run of the worker's cases, opens its own store (one filesystem per task, nothing
pickled with a client in it), plans every case of a block (scans, sampled slices), fetches all of
the block's slices concurrently with :class:`~raddiag.data.read.SliceReader` and assembles them.

Batches cross processes packed: one Ray row per batch holds only the real slices, uint8
(``slices`` (R, H, W), in the row-major order of ``slice_mask``), beside the masks and the other
fields — no padded slot goes through the object store or to the device (4x fewer bytes than
float32, and at a typical fill ~3x fewer again than padded uint8). :func:`iter_batches` rebuilds
the fixed-shape padded view on the device and hands out the batch schema of ``raddiag.schema``
(float32 images in [0, 1]) plus ``order`` (index of the case in ``records``), ``slice_index``/
``scan_index`` (:func:`raddiag.model.nets.raddiag.real_index`, computed on the host: no device sync)
and, when ``vocabularies`` are given, ``disorder_labels``/``icd_labels``; :func:`local_batches`
(in-process, no Ray) hands out the same schema without the indices.

Why not ``TorchTrainer(datasets=...)`` + ``ray.train.get_dataset_shard(name).iter_torch_batches()``
(the issue's wording; these worker datasets use the same Ray Data streaming executor and batch
iterator, giving up only Ray Train's driver-side split coordinator):
(1) Ray Train plans those datasets once on the driver and ``streaming_split`` re-executes the same
plan every epoch — no epoch number reaches the read, so an order sampled with replacement, the depth
jitter and the augmentation seeds would repeat every epoch (it would need an out-of-band epoch
channel, e.g. an actor that ``get_read_tasks`` polls); (2) the coordinator hands blocks to whichever
worker asks first, so which rank sees which case is not a function of the seed; (3) ``equal=True``
(needed for DDP lockstep) evens shards by dropping rows, so validation would not cover every case,
while ``equal=False`` lets training shards differ and DDP would hang on the longer rank's last step;
(4) a resumed run's coordinator counts epochs from 0 again, so a restart would not resume the
checkpointed epoch's draw.

Determinism: a case's scan choice, depth jitter, augmentation and mixing partner come from
``(train.seed, epoch, position in the epoch order)``; blocks are produced in order
(``preserve_order``), so a worker's batches are a function of (seed, epoch, rank, world).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from functools import partial
from typing import Any, Iterator

import numpy as np

from raddiag.config import AugmentConfig, RadDiagConfig
from raddiag.data.assemble import build_case, case_fields, plan_case, resize_slices, stack_cases, to_uint8
from raddiag.data.sampling import ClassIndex, epoch_order
from raddiag.storage.records import CaseRecords
from raddiag.storage.ref import StoreRef

LEVELS = ("disorder", "icd")


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


def epoch_records(
    records: list[dict[str, Any]], cfg: RadDiagConfig, label_names: list[str], *, train: bool, epoch: int
) -> list[int]:
    """The epoch's case order: long-tail sampled for training, the identity for evaluation."""
    if not train:
        return list(range(len(records)))
    if cfg.data.sampler == "instance":  # a permutation: no labels needed
        return np.random.default_rng([cfg.train.seed, epoch]).permutation(len(records)).tolist()
    index = class_index(records, label_names, cfg.data.label_level)
    return epoch_order(index, cfg.data.sampler, cfg.data.sampler_power, cfg.train.seed, epoch).tolist()


def class_index(records: list[dict[str, Any]], label_names: list[str], level: str) -> ClassIndex:
    """Each class's cases among ``records`` at ``level`` (sparse: O(labels on the cases), no dense
    (n_cases, C) matrix); labels outside ``label_names`` are ignored, as in :func:`label_matrix`."""
    field = "disorders" if level == "disorder" else "icd10"
    if isinstance(records, CaseRecords):  # the label columns directly, no dicts
        return ClassIndex.from_pairs(*records.label_pairs(field, label_names), len(records), len(label_names))
    index = {name: i for i, name in enumerate(label_names)}
    rows: list[int] = []
    cols: list[int] = []
    for row, record in enumerate(records):
        for name in record[field]:
            j = index.get(name)
            if j is not None:
                rows.append(row)
                cols.append(j)
    return ClassIndex.from_pairs(np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64), len(records), len(label_names))


def mix_partners(records: list[dict[str, Any]], order: list[int], p: float, seed: int, epoch: int) -> list[int | None]:
    """Case mixing: for each position of the epoch order, with probability ``p`` the index of a case
    of another anatomy (uniform), else None. Deterministic given (seed, epoch).

    Each position consumes two uniforms of ``default_rng([seed, epoch, 1])``, ``draw`` and
    ``pick``; a mixed position (``draw < p``) takes the ``int(pick * m)``-th (ascending) of the
    ``m`` cases of another anatomy. That k-th case is found from the sorted cases of the position's
    own anatomy without listing the others (``k + #own cases at or before it``, a binary search):
    O(n log n) in all, with the same partners as scanning all cases for every position.
    """
    if p <= 0:
        return [None] * len(order)
    rng = np.random.default_rng([seed, epoch, 1])
    uniforms = rng.random(2 * len(order)).reshape(len(order), 2)  # (draw, pick) per position, in stream order
    anatomies = records.anatomy_names() if isinstance(records, CaseRecords) else [r.get("anatomy", "") for r in records]
    _, codes = np.unique(np.array([str(a) for a in anatomies]), return_inverse=True)
    by_anatomy = np.argsort(codes, kind="stable")  # case indices grouped by anatomy, ascending within
    bounds = np.searchsorted(codes[by_anatomy], np.arange(int(codes.max(initial=-1)) + 2))
    positions = np.flatnonzero(uniforms[:, 0] < p)
    own = codes[np.asarray(order, dtype=np.int64)[positions]]
    partners = np.full(len(order), -1, dtype=np.int64)
    for anatomy in np.unique(own):
        members = by_anatomy[bounds[anatomy] : bounds[anatomy + 1]]
        n_others = len(records) - len(members)
        if n_others == 0:
            continue
        at = positions[own == anatomy]
        k = (uniforms[at, 1] * n_others).astype(np.int64)  # int(pick * len(others))
        # the k-th index not in ``members``: k plus the members at or below it
        partners[at] = k + np.searchsorted(members - np.arange(len(members)), k, side="right")
    return [int(partner) if partner >= 0 else None for partner in partners.tolist()]


@dataclass
class Item:
    """One case to produce: its index in ``records`` (``order``), position in the epoch order
    (seeds its randomness), the record and, when mixed, the partner record (JSON text)."""

    order: int
    position: int
    record: str
    partner: str | None = None


class BlockAssembler:
    """Plans, reads (one concurrent fetch per block) and assembles cases into batch arrays."""

    def __init__(self, cfg: dict[str, Any], label_names: list[str], vocabularies: dict[str, list[str]] | None, train: bool, epoch: int) -> None:
        self.cfg = RadDiagConfig.model_validate(cfg)
        self.label_index = {name: i for i, name in enumerate(label_names)}
        self.vocabularies = {level: {n: i for i, n in enumerate(names)} for level, names in (vocabularies or {}).items()}
        self.train = train
        self.epoch = epoch

    def __call__(self, items: list[Item], reader: Any, image_dtype: str = "uint8", packed: bool = False) -> dict[str, np.ndarray]:
        """Batch arrays of ``items``: padded ``images`` (B, N, D, H, W), or with ``packed`` (uint8
        only) ``slices`` (R, H, W): the real slices alone, in the row-major order of ``slice_mask``."""
        from raddiag.data.augment import build_augment

        data = self.cfg.data
        augment_here = self.train and data.augment.on == "workers" and data.augment.enabled
        plans, rngs = [], []
        for item in items:
            rng = np.random.default_rng([self.cfg.train.seed, self.epoch, item.position]) if self.train else None
            partner = json.loads(item.partner) if item.partner else None
            plans.append(plan_case(json.loads(item.record), n_image=data.n_image, depth=data.depth, rng=rng, partner=partner))
            rngs.append(rng)
        requests = [request for plan in plans for request in plan.requests()]
        if packed and image_dtype != "uint8":
            raise ValueError(f"packed batches are uint8; got image_dtype={image_dtype!r}")
        if image_dtype == "uint8" and not augment_here:
            return self._direct(items, plans, requests, reader, packed)
        volumes = iter(reader.read(requests))
        cases = []
        for item, plan, rng in zip(items, plans, rngs):
            augment = build_augment(data.augment, seed=int(rng.integers(2**31))) if augment_here and rng is not None else None
            case = build_case(
                plan, [next(volumes) for _ in plan.scans], self.label_index,
                n_image=data.n_image, depth=data.depth, image_size=data.image_size, label_level=data.label_level,
                augment=augment, vocabularies=self.vocabularies, image_dtype=image_dtype,
            )
            case["order"] = np.int64(item.order)
            cases.append(case)
        batch = stack_cases(cases)
        if packed:
            batch["slices"] = batch.pop("images")[batch["slice_mask"]]
        return batch

    def _direct(
        self, items: list[Item], plans: list[Any], requests: list[tuple[str, np.ndarray]], reader: Any, packed: bool
    ) -> dict[str, np.ndarray]:
        """uint8 batch without augmentation: slices are decoded straight into the batch buffer (the
        padded images, or with ``packed`` one (R, H, W) buffer of the real slices)."""
        data = self.cfg.data
        size = data.image_size
        counts = [len(idx) for plan in plans for idx in plan.indices]
        if packed:
            images = np.zeros((sum(counts), size, size), dtype=np.uint8)
            ends = np.cumsum(counts)
            outs = [images[end - count : end] for count, end in zip(counts, ends)]
        else:
            images = np.zeros((len(items), data.n_image, data.depth, size, size), dtype=np.uint8)
            outs = [images[b, slot, : len(idx)] for b, plan in enumerate(plans) for slot, idx in enumerate(plan.indices)]
        volumes = reader.read_into(requests, outs)
        cases = []
        for item, plan in zip(items, plans):
            case = case_fields(
                plan, self.label_index, n_image=data.n_image, depth=data.depth,
                label_level=data.label_level, vocabularies=self.vocabularies,
            )
            case["order"] = np.int64(item.order)
            cases.append(case)
        batch = stack_cases(cases)
        for volume, out in zip(volumes, outs):
            if volume is not out:  # another size (or dtype) than the batch: resize into place
                out[...] = to_uint8(resize_slices(volume.astype(np.float32) / 255.0, size))
        batch["slices" if packed else "images"] = images
        return batch


class _Bytes:
    """Adapter so ``ReadMetrics`` (which counts ``.nbytes`` of what a read returns) counts fetched bytes."""

    def __init__(self, n: int) -> None:
        self.nbytes = n


@dataclass(frozen=True)
class Shared:
    """A value every read task of a dataset needs, put in the object store once: the tasks carry
    this reference (~100 bytes), not the value (the config and the label vocabularies: 5,569
    disorder names at RP3D scale, ~0.2 MB, were pickled into every task)."""

    ref: Any


def read_task_args(
    cfg: RadDiagConfig, label_names: list[str], vocabularies: dict[str, list[str]] | None, *, train: bool, epoch: int, put: Any = None
) -> tuple:
    """The :class:`BlockAssembler` arguments a read task carries: the config and the vocabularies as
    one :class:`Shared` reference (``put``, default ``ray.put``, stores them once per dataset),
    then ``train`` and ``epoch``. :func:`resolve_task_args` turns them back into the arguments."""
    if put is None:
        import ray

        put = ray.put
    return (Shared(put((cfg.model_dump(mode="json"), label_names, vocabularies))), train, epoch)


def resolve_task_args(args: tuple, get: Any = None) -> tuple:
    """``(cfg, label_names, vocabularies, train, epoch)`` from :func:`read_task_args`' form (or as
    given), reading the shared part with ``get`` (default ``ray.get``)."""
    if args and isinstance(args[0], Shared):
        if get is None:
            import ray

            get = ray.get
        return (*get(args[0].ref), *args[1:])
    return args


def read_items(items: list[Item], assembler_args: tuple, store: tuple[StoreRef, int], block_cases: int) -> Iterator[Any]:
    """A read task: one :class:`SliceReader` (its own filesystem) for the task, one block (one
    concurrent fetch, one packed batch) per ``block_cases`` cases. A block is one row: each field of
    the batch (``slices`` (R, H, W), ``slice_mask`` (B, N, D), ...) is that row's value."""
    from ray.data.block import BlockAccessor

    from raddiag.data.read import SliceReader
    from raddiag.observability import ReadMetrics

    assembler = BlockAssembler(*resolve_task_args(assembler_args))
    ref, max_gap = store
    reader = SliceReader(ref, max_gap_bytes=max_gap)
    metrics = ReadMetrics(_Bytes, "train" if assembler.train else "eval")
    try:
        for start in range(0, len(items), block_cases):
            before = reader.bytes_fetched
            batch = assembler(items[start : start + block_cases], reader, packed=True)
            metrics(reader.bytes_fetched - before)
            metrics.flush(len(batch["order"]))
            yield BlockAccessor.batch_to_block({key: value[None] for key, value in batch.items()})
    finally:
        reader.close()


def _datasource_class() -> type:
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    class CaseDatasource(Datasource):
        """A Ray Data source over a list of :class:`Item` (a worker's share of an epoch).

        A task yields one block per ``block_cases`` consecutive items (the batch size), a single
        row holding the packed batch (:func:`read_items`); its size follows the batch's fill, so
        :func:`worker_dataset` sets ``target_max_block_size`` to 1 byte: Ray emits every block as it
        is (a one-row block cannot be sliced, and none is coalesced with the next, which would copy
        every image); ``get_read_tasks(n)`` deals whole blocks into ``n`` contiguous runs (at least
        ``data.cases_per_task`` cases each); a task's rows come out in item order.
        """

        def __init__(self, items: list[Item], cfg: RadDiagConfig, assembler_args: tuple, block_cases: int) -> None:
            self.items = items
            self.cfg = cfg
            self.assembler_args = assembler_args
            self.block_cases = block_cases
            data = cfg.data
            self.case_bytes = data.n_image * data.depth * data.image_size**2  # uint8 images dominate (an upper bound)

        def estimate_inmemory_data_size(self) -> int:
            return len(self.items) * self.case_bytes

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None) -> list[Any]:
            n_blocks = -(-len(self.items) // self.block_cases)
            by_size = -(-len(self.items) // self.cfg.data.cases_per_task)
            n_tasks = max(1, min(n_blocks, max(parallelism, by_size)))
            store = (self.cfg.store.ref(), self.cfg.data.max_gap_kb * 1024)
            tasks = []
            for blocks in np.array_split(np.arange(n_blocks), n_tasks):
                chunk = self.items[int(blocks[0]) * self.block_cases : (int(blocks[-1]) + 1) * self.block_cases]
                metadata = BlockMetadata(num_rows=len(blocks), size_bytes=len(chunk) * self.case_bytes, exec_stats=None, input_files=None)
                task = partial(read_items, chunk, self.assembler_args, store, self.block_cases)
                tasks.append(ReadTask(task, metadata, per_task_row_limit=per_task_row_limit))
            return tasks

    return CaseDatasource


def case_datasource(items: list[Item], cfg: RadDiagConfig, assembler_args: tuple, block_cases: int | None = None) -> Any:
    """A ``CaseDatasource`` (the class is built lazily so importing this module does not import Ray)."""
    return _datasource_class()(items, cfg, assembler_args, block_cases or cfg.train.batch_size)


def epoch_items(
    records: list[dict[str, Any]], cfg: RadDiagConfig, label_names: list[str], *, train: bool, epoch: int, rank: int = 0, world: int = 1
) -> list[Item]:
    """This worker's cases for the epoch: ``order[rank::world]`` of the epoch's (sampled) order."""
    order = epoch_records(records, cfg, label_names, train=train, epoch=epoch)
    partners = mix_partners(records, order, cfg.data.case_mix_p if train else 0.0, cfg.train.seed, epoch)
    return [
        Item(index, position, json.dumps(records[index]), json.dumps(records[partner]) if partner is not None else None)
        for position, (index, partner) in enumerate(zip(order, partners))
        if position % world == rank
    ]


def worker_dataset(
    records: list[dict[str, Any]],
    cfg: RadDiagConfig,
    label_names: list[str],
    *,
    train: bool,
    epoch: int,
    rank: int = 0,
    world: int = 1,
    vocabularies: dict[str, list[str]] | None = None,
    batch_size: int | None = None,
) -> Any:
    """A Ray Dataset of this worker's share of the epoch (``order[rank::world]``), read lazily.

    One row per batch of ``batch_size`` (default ``train.batch_size``) cases, packed (see
    :func:`read_items`): ``slices`` (R, H, W) uint8, the real slices only, and the batch schema's
    other fields, ``order`` and, per level in ``vocabularies`` (``{"disorder": names, "icd":
    names}``), ``<level>_labels``. Iterate with :func:`iter_batches` (same batch size: zero-copy).
    """
    import ray.data

    items = epoch_items(records, cfg, label_names, train=train, epoch=epoch, rank=rank, world=world)
    if not items:
        raise ValueError(f"worker {rank}/{world}: no cases in this {'training' if train else 'evaluation'} shard")
    batch_size = batch_size or cfg.train.batch_size
    args = read_task_args(cfg, label_names, vocabularies, train=train, epoch=epoch)
    # The dataset keeps a copy of the context it was created with; the process-wide one is restored
    # (under a lock: a training worker may build datasets from two threads).
    with _CONTEXT_LOCK:
        return _read_with_context(ray.data, items, cfg, args, batch_size)


_CONTEXT_LOCK = threading.Lock()


def _read_with_context(ray_data: Any, items: list[Item], cfg: RadDiagConfig, args: tuple, batch_size: int) -> Any:
    context = ray_data.DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.target_max_block_size)
    try:
        context.execution_options.preserve_order = True  # batches = f(seed, epoch, rank)
        # One Ray block per produced batch, a single row: emitted as soon as it is complete (any
        # block exceeds 1 byte) and never sliced (one row), so it reaches the consumer without a copy.
        context.target_max_block_size = 1
        return ray_data.read_datasource(
            case_datasource(items, cfg, args, batch_size),
            override_num_blocks=cfg.data.read_parallelism,
            num_cpus=cfg.data.data_cpus,
            concurrency=cfg.data.read_parallelism,
        )
    finally:
        context.execution_options.preserve_order, context.target_max_block_size = saved


def case_row_bytes(cfg: RadDiagConfig, label_names: list[str], vocabularies: dict[str, list[str]] | None = None) -> int:
    """Bytes of one case with padded uint8 images + every other field + order: what a case takes in a
    batch on the device (the read tasks ship less: the real slices only)."""
    from raddiag.data.assemble import CasePlan

    data = cfg.data
    fields = case_fields(
        CasePlan([], [], [], [], []), {name: i for i, name in enumerate(label_names)}, n_image=data.n_image, depth=data.depth,
        label_level=data.label_level, vocabularies={level: dict.fromkeys(names, 0) for level, names in (vocabularies or {}).items()},
    )
    return data.n_image * data.depth * data.image_size**2 + sum(v.nbytes for v in fields.values()) + np.dtype(np.int64).itemsize


def images_to_float(batch: dict[str, Any]) -> dict[str, Any]:
    """uint8 ``images`` -> float32 in [0, 1] (numpy or torch, on the batch's device)."""
    images = batch["images"]
    if images.dtype in (np.uint8,) or str(images.dtype) == "torch.uint8":
        batch["images"] = images.float().div_(255.0) if hasattr(images, "float") else images.astype(np.float32) / 255.0
    return batch


def packed_batches(dataset: Any, batch_size: int, prefetch_batches: int = 2) -> Iterator[dict[str, np.ndarray]]:
    """The dataset's packed batches (numpy, host memory), re-cut to ``batch_size`` cases when that
    differs from the size the dataset was built with (which copies; the same size does not)."""
    pending: list[dict[str, np.ndarray]] = []
    held = 0
    for block in dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=prefetch_batches):
        for row in range(len(block["order"])):
            batch = {key: value[row] for key, value in block.items()}
            pending.append(batch)
            held += len(batch["order"])
            while held >= batch_size:
                merged = _concat_packed(pending)
                yield _cases(merged, 0, batch_size)
                held -= batch_size
                pending = [_cases(merged, batch_size, batch_size + held)] if held else []
    if held:
        yield _concat_packed(pending)


def _cases(batch: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    """Cases ``start:stop`` of a packed batch (views)."""
    if (start, stop) == (0, len(batch["order"])):
        return batch
    ends = np.concatenate([[0], np.cumsum(batch["slice_mask"].reshape(len(batch["order"]), -1).sum(1))])
    out = {key: value[start:stop] for key, value in batch.items() if key != "slices"}
    out["slices"] = batch["slices"][ends[start] : ends[stop]]
    return out


def _concat_packed(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return batches[0] if len(batches) == 1 else {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}


def unpack_batch(packed: dict[str, np.ndarray], device: Any = "cpu") -> dict[str, Any]:
    """A packed batch -> the batch schema on ``device`` (uint8 images): only the real slices and the
    small fields travel; the zero-padded (B, N, D, H, W) view is rebuilt there. ``slice_index``/
    ``scan_index`` (:func:`~raddiag.model.nets.raddiag.real_index`) are computed from the host masks,
    so neither this nor the network's forward needs a device sync."""
    import warnings

    import torch

    from raddiag.model.nets.raddiag import real_index

    with warnings.catch_warnings():  # arrays from the object store are read-only; nothing writes to them
        warnings.simplefilter("ignore")
        host = {key: torch.as_tensor(value) for key, value in packed.items()}
    slices = host.pop("slices")
    host["slice_index"], host["scan_index"] = real_index(host["scan_mask"], host["slice_mask"])
    if len(host["slice_index"]) != len(slices):
        raise ValueError(f"packed batch: {len(slices)} slices but slice_mask marks {len(host['slice_index'])} real slices")
    batch = {key: value.to(device, non_blocking=True) for key, value in host.items()}
    b, n, d = batch["slice_mask"].shape
    images = torch.zeros((b * n * d, *slices.shape[1:]), dtype=slices.dtype, device=batch["slice_mask"].device)
    batch["images"] = images.index_copy_(0, batch["slice_index"], slices.to(images.device, non_blocking=True)).view(b, n, d, *slices.shape[1:])
    for key in ("slice_index", "scan_index"):  # lengths vary by batch: keep them symbolic for torch.compile
        torch._dynamo.maybe_mark_dynamic(batch[key], 0)
    return batch


def iter_batches(
    dataset: Any,
    batch_size: int,
    device: Any = "cpu",
    *,
    augment: AugmentConfig | None = None,
    seed: int | list[int] = 0,
    prefetch_batches: int = 2,
    to_float: bool = True,
) -> Iterator[dict[str, Any]]:
    """Torch batches of the batch schema (+ ``order``, ``slice_index``, ``scan_index``) from a worker
    dataset, on ``device``.

    Use the ``batch_size`` the dataset was built with (zero-copy batches, see
    :func:`worker_dataset`); another size works but copies the slices. Only the real slices travel
    (uint8) and the padded images are rebuilt on ``device`` (:func:`unpack_batch`), then become
    float32 there (``to_float=False`` keeps uint8, e.g. to measure the pipeline alone). With
    ``augment`` (training with ``data.augment.on=device``) the batched augmentation
    (:func:`raddiag.data.augment.augment_batch`, one call per batch) runs there, seeded by ``seed``
    (pass ``[train.seed, epoch, rank]`` for a per-epoch, per-worker stream).
    """
    from raddiag.data.augment import augment_batch

    rng = np.random.default_rng(seed)
    for packed in packed_batches(dataset, batch_size, prefetch_batches):
        batch = unpack_batch(packed, device)
        if to_float or augment is not None:
            batch = images_to_float(batch)
        if augment is not None:
            batch["images"] = augment_batch(batch["images"], batch["slice_mask"], augment, seed=int(rng.integers(2**31)))
        yield batch


def device_augment(cfg: RadDiagConfig, train: bool) -> AugmentConfig | None:
    """The augmentation to run in :func:`iter_batches` (on the training device), or None."""
    return cfg.data.augment if train and cfg.data.augment.on == "device" and cfg.data.augment.enabled else None


def local_batches(
    records: list[dict[str, Any]],
    cfg: RadDiagConfig,
    label_names: list[str],
    batch_size: int,
    vocabularies: dict[str, list[str]] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Evaluation batches assembled in-process (no Ray), float32 images: for the driver, predict, tests."""
    from raddiag.data.read import SliceReader

    assembler = BlockAssembler(cfg.model_dump(mode="json"), label_names, vocabularies, train=False, epoch=0)
    reader = SliceReader(cfg.store.ref(), max_gap_bytes=cfg.data.max_gap_kb * 1024)
    try:
        for start in range(0, len(records), batch_size):
            items = [Item(i, i, json.dumps(records[i])) for i in range(start, min(start + batch_size, len(records)))]
            yield assembler(items, reader, image_dtype="float32")
    finally:
        reader.close()


def manifest_vocabularies(manifest: Any) -> dict[str, list[str]]:
    """``{"disorder": names, "icd": names}`` of a store manifest (for both-level labels)."""
    return {level: manifest.label_names(level) for level in LEVELS}



class Prefetch:
    """Iterate ``make()`` in a background thread, ``depth`` batches ahead.

    The training loop starts the *next* epoch's stream before validating the current one, so Ray
    Data's per-epoch start-up (planning, launching read tasks, the first blocks) overlaps
    validation and checkpointing instead of stalling the first step. The stream is a function of
    (seed, epoch, rank) only, so reading it early changes nothing. Errors surface in the consumer;
    :meth:`close` stops the thread (e.g. when early stopping skips the prefetched epoch).
    """

    _END = object()

    def __init__(self, make: Any, depth: int = 2) -> None:
        import queue
        import threading

        self._queue: Any = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(make,), daemon=True, name="raddiag-prefetch")
        self._thread.start()

    def _put(self, item: Any) -> bool:
        import queue

        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self, make: Any) -> None:
        try:
            for batch in make():
                if not self._put(batch):
                    return
        except BaseException as error:  # handed to the consumer, raised there
            self._put(error)
            return
        self._put(self._END)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
