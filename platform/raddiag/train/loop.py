"""Training and evaluation steps (plain functions) and the Ray Train loop that wires them.

``train_step``/``predict_batch`` know nothing of Ray; ``train_loop_per_worker`` builds the model,
optimizer, schedule and data for one worker, resumes from ``ray.train.get_checkpoint()``, reports
per-epoch metrics with a checkpoint, and (rank 0 only) logs them to MLflow exactly once per epoch.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch

from raddiag.config import RadDiagConfig
from raddiag.schema import MODEL_INPUTS
from raddiag.train.run import CheckpointMeta, EpochReport, LoopConfig


def lr_lambda(total_steps: int, warmup_fraction: float):
    """Linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to 0."""
    warmup = max(1, int(round(total_steps * warmup_fraction)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def forward(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The network on a batch. The real-slice/scan indices come with the batch (:func:`iter_batches`
    computes them on the host) or are computed here, outside the network, so a compiled forward
    (``model.compile``) has no data-dependent shape and no graph break."""
    from raddiag.model.nets.raddiag import real_index

    if "slice_index" in batch:
        index = (batch["slice_index"], batch["scan_index"])
        for tensor in index:  # lengths vary by batch (a cached batch is a clone, without the mark)
            torch._dynamo.maybe_mark_dynamic(tensor, 0)
    else:
        index = real_index(batch["scan_mask"], batch["slice_mask"])
    return model(*(batch[key] for key in MODEL_INPUTS), *index)


def compute_losses(
    out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], loss_fn: torch.nn.Module, key_slice_weight: float,
    key_slice_form: str = "raddiag", max_depth: int | None = None,
) -> dict[str, torch.Tensor]:
    """``{"loss", "cls_loss", "key_slice_loss"}`` for one batch (loss = cls + w * key-slice)."""
    from raddiag.losses import key_slice_loss

    cls_loss = loss_fn(out["logits"].float(), batch["labels"].float())
    ks_loss = key_slice_loss(
        out["slice_attention"].float(), batch["key_slice"], batch["slice_mask"], batch["scan_mask"],
        form=key_slice_form, max_depth=max_depth,
    )
    return {"loss": cls_loss + key_slice_weight * ks_loss, "cls_loss": cls_loss, "key_slice_loss": ks_loss}


def train_step(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    loss_fn: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    key_slice_weight: float,
    amp_dtype: torch.dtype | None = None,
    *,
    accumulate: int = 1,
    step: bool = True,
    key_slice_form: str = "raddiag",
    max_depth: int | None = None,
) -> dict[str, float]:
    """One micro-batch: forward, loss / ``accumulate``, backward; when ``step``, clip, optimiser and
    scheduler step and zero the gradients. Returns the (unscaled) loss terms as floats."""
    model.train()
    device_type = batch["images"].device.type
    with torch.autocast(device_type=device_type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        out = forward(model, batch)
        losses = compute_losses(out, batch, loss_fn, key_slice_weight, key_slice_form, max_depth)
    (losses["loss"] / accumulate).backward()
    if step:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=5.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()
    return {key: float(value.detach()) for key, value in losses.items()}


@torch.no_grad()
def predict_batch(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> np.ndarray:
    """Sigmoid probabilities (B, C) for a batch."""
    model.eval()
    return torch.sigmoid(forward(model, batch)["logits"].float()).cpu().numpy()


def to_tensors(batch: dict[str, Any], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    return {key: torch.as_tensor(value).to(device) for key, value in batch.items()}


def predict(model: torch.nn.Module, batches: Iterable[dict[str, Any]], device: Any = "cpu") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, scores, labels) over all batches, sorted by case order."""
    orders, scores, labels = [], [], []
    for batch in batches:
        tensors = to_tensors(batch, device)
        scores.append(predict_batch(model, tensors))
        labels.append(tensors["labels"].cpu().numpy())
        orders.append(tensors["order"].cpu().numpy())
    order = np.concatenate(orders)
    sort = np.argsort(order, kind="stable")
    return order[sort], np.concatenate(scores)[sort], np.concatenate(labels)[sort]


def _gather(obj: Any) -> list[Any]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _broadcast(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (itself when not distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def validation_metrics(labels: np.ndarray, scores: np.ndarray, counts: np.ndarray, names: list[str], groups: Any, rule: str, rank: int) -> tuple[dict[str, float], Any]:
    """``({"val_<metric>": value}, report)``: the validation split scored once, on rank 0, and its
    numbers broadcast, so every rank takes the same early-stopping and checkpoint decisions from
    the same values (ranks that disagreed would leave DDP waiting). ``report`` is None off rank 0."""
    from raddiag.metrics import evaluate_scores

    report = evaluate_scores(labels, scores, counts, label_names=names, groups=groups, grouping=rule) if rank == 0 else None
    flat = {f"val_{key}": value for key, value in report.flat().items()} if report is not None else None
    return _broadcast(flat), report


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in _unwrap(model).state_dict().items()}


@dataclass
class Progress:
    """What a checkpoint restores besides the network/optimiser: the next epoch and early-stopping state."""

    start_epoch: int = 0
    best_value: float = math.nan
    best_state: dict[str, torch.Tensor] | None = None
    stale: int = 0


def restore(checkpoint: Any, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> Progress:
    """Load ``state.pt`` (model, optimiser, scheduler, RNG, epoch) and ``best.pt`` (weights_only)."""
    if checkpoint is None:
        return Progress()
    with checkpoint.as_directory() as directory:
        saved = torch.load(os.path.join(directory, "state.pt"), map_location="cpu", weights_only=True)
        best_state = torch.load(os.path.join(directory, "best.pt"), map_location="cpu", weights_only=True)
    _unwrap(model).load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    return Progress(int(saved["epoch"]) + 1, float(saved["best_value"]), best_state, int(saved["stale"]))


def save_checkpoint(directory: str, model: torch.nn.Module, optimizer: Any, scheduler: Any, epoch: int, progress: Progress, meta: CheckpointMeta) -> None:
    """Write ``state.pt`` (resume), ``best.pt`` (best weights so far) and ``meta.json`` (rebuild;
    ``meta`` with this checkpoint's epoch and best value)."""
    state = {
        "model": _state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "epoch": epoch,
        "best_value": progress.best_value,
        "stale": progress.stale,
    }
    torch.save(state, os.path.join(directory, "state.pt"))
    torch.save(progress.best_state, os.path.join(directory, "best.pt"))
    dataclasses.replace(meta, epoch=epoch, best_value=progress.best_value).write(directory)


def train_epoch(model, batches, loss_fn, optimizer, scheduler, cfg: RadDiagConfig, amp_dtype) -> dict[str, float]:
    """One epoch over ``batches``; returns mean loss terms, cases/s and data-wait seconds."""
    sums: dict[str, float] = {}
    n_steps = n_cases = 0
    data_wait = 0.0
    started = fetch = time.perf_counter()
    accumulate = cfg.train.grad_accum_steps
    pending = 0
    for batch in batches:
        data_wait += time.perf_counter() - fetch
        pending += 1
        terms = train_step(
            model, batch, loss_fn, optimizer, scheduler, cfg.loss.key_slice.weight, amp_dtype,
            accumulate=accumulate, step=pending == accumulate, key_slice_form=cfg.loss.key_slice.form,
            max_depth=cfg.model.max_depth,
        )
        pending %= accumulate
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + value
        n_steps += 1
        n_cases += int(batch["labels"].shape[0])
        fetch = time.perf_counter()
    if pending:  # a last partial accumulation still updates the weights
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=5.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
    elapsed = time.perf_counter() - started
    out = {f"train_{key}": value / max(n_steps, 1) for key, value in sums.items()}
    out.update({"train_cases_per_s": n_cases / max(elapsed, 1e-9), "train_data_wait_s": data_wait})
    return out


def validate(model, dataset_batches, device) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores) of the whole validation split, gathered from every worker in case order."""
    order, scores, labels = predict(model, dataset_batches, device)
    gathered = _gather((order, scores, labels))
    order = np.concatenate([g[0] for g in gathered])
    sort = np.argsort(order, kind="stable")
    return np.concatenate([g[2] for g in gathered])[sort], np.concatenate([g[1] for g in gathered])[sort]


class EvalBatches:
    """A worker's validation batches, epoch after epoch.

    Validation batches do not depend on the epoch (no sampling, mixing or augmentation), so when a
    worker's share fits in ``data.eval_cache_mb`` they are read through Ray Data once, kept as uint8
    tensors, and replayed on later epochs: the same batches, without a Ray Data start-up and a
    store read per epoch. Larger shares are streamed every epoch.
    """

    def __init__(self, records: list[dict[str, Any]], cfg: RadDiagConfig, names: list[str], device: Any, *, rank: int, world: int) -> None:
        from raddiag.data.pipeline import case_row_bytes

        self.records, self.cfg, self.names, self.device, self.rank, self.world = records, cfg, names, device, rank, world
        shard_cases = -(-len(records) // max(world, 1))
        self.cacheable = shard_cases * case_row_bytes(cfg, names) <= cfg.data.eval_cache_mb * 2**20
        self.cached: list[dict[str, torch.Tensor]] | None = None

    def batches(self, epoch: int) -> Iterable[dict[str, Any]]:
        from raddiag.data.pipeline import images_to_float, iter_batches, worker_dataset

        if self.cached is not None:
            return (images_to_float(dict(batch)) for batch in self.cached)
        shard = worker_dataset(self.records, self.cfg, self.names, train=False, epoch=epoch, rank=self.rank, world=self.world)
        if not self.cacheable:
            return iter_batches(shard, self.cfg.train.batch_size, self.device)
        self.cached = [
            {key: value.clone() for key, value in batch.items()}  # own memory, not Ray's object store
            for batch in iter_batches(shard, self.cfg.train.batch_size, self.device, to_float=False)
        ]
        return (images_to_float(dict(batch)) for batch in self.cached)


def log_final_artifacts(uri: str, run_id: str, labels: np.ndarray, scores: np.ndarray, counts: np.ndarray, names: list[str], report: Any) -> None:
    """Long-tail plots (ROC by group, AUC vs frequency, calibration) and the label vocabulary."""
    import pandas as pd

    from raddiag import plots, tracking

    client = tracking.client(uri)
    with tempfile.TemporaryDirectory() as directory:
        groups = report.per_class["group"].to_numpy()
        plots.roc_by_group(labels, scores, counts, os.path.join(directory, "roc_by_group.png"), groups=groups)
        plots.auc_vs_frequency(report, os.path.join(directory, "auc_vs_frequency.png"))
        plots.calibration(labels, scores, os.path.join(directory, "calibration.png"))
        client.log_artifacts(run_id, directory, artifact_path="plots")
    with tempfile.TemporaryDirectory() as directory:
        vocab = pd.DataFrame({"label": names, "train_count": counts, "group": groups})
        vocab.to_csv(os.path.join(directory, "label_vocabulary.csv"), index=False)
        report.per_class.to_csv(os.path.join(directory, "val_per_class.csv"), index=False)
        client.log_artifacts(run_id, directory, artifact_path="labels")


def _system_monitor(cfg: RadDiagConfig, uri: str | None, run_id: str | None) -> Any:
    if not (cfg.tracking.system_metrics and uri and run_id):
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=5, samples_before_logging=1, resume_logging=True, tracking_uri=uri)
    monitor.start()
    return monitor


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train worker entry point. ``loop_config``: a :class:`~raddiag.train.run.LoopConfig` as a
    dict — the config, the MLflow run rank 0 logs to, the label embeddings and a sweep trial's
    budget claim (each epoch is claimed from it first, and the run ends when it is denied). Imports
    nothing of Ray Tune (tests/test_run_lifecycle.py checks)."""
    import ray.train
    import ray.train.torch

    from raddiag.data.pipeline import Prefetch, device_augment, iter_batches, worker_dataset
    from raddiag.data.sampling import label_counts, stratified_fraction
    from raddiag.losses import build_loss
    from raddiag.metrics import higher_is_better
    from raddiag.model import build_model
    from raddiag.model.nets.raddiag import compile_model
    from raddiag.observability import TrainMetrics

    payload = LoopConfig.from_dict(loop_config)
    cfg = RadDiagConfig.model_validate(payload.config)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    torch.manual_seed(cfg.train.seed)
    device = ray.train.torch.get_device()

    from raddiag.storage.store import RECORD_COLUMNS

    manifest = cfg.store.ref().manifest(RECORD_COLUMNS)  # only what case records need (not checksums, paths, keys)
    level = cfg.data.label_level
    names, counts = manifest.label_names(level), manifest.train_counts(level)
    groups, rule = cfg.eval.groups(counts, level)  # head/medium/tail of the validation metrics
    train_records, val_records = manifest.case_records("train"), manifest.case_records("val")
    train_records = stratified_fraction(train_records, cfg.train.fraction, cfg.train.fraction_seed, level)
    fit_counts = counts if cfg.train.fraction >= 1 else label_counts(train_records, names, level)  # prior, loss weights
    n_train = len(train_records)

    embeddings = payload.label_embeddings
    table = torch.tensor(np.asarray(embeddings, dtype=np.float32)) if embeddings is not None else None
    prior = torch.tensor(np.maximum(fit_counts, 1) / max(n_train, 1), dtype=torch.float32)
    model = build_model(cfg.model, len(names), label_embeddings=table, label_prior=prior)
    if cfg.model.compile:
        compile_model(model)  # the whole forward, one graph; compiled at the first step
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    per_rank = n_train // world  # equal shards: every rank runs the same number of DDP steps
    micro_batches = max(1, math.ceil(per_rank / cfg.train.batch_size))
    steps_per_epoch = math.ceil(micro_batches / cfg.train.grad_accum_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(steps_per_epoch * cfg.train.epochs, cfg.train.warmup_fraction))
    loss_fn = build_loss(cfg.loss, fit_counts, n_train).to(device)
    amp_dtype = torch.bfloat16 if (cfg.train.amp and device.type == "cuda") else None
    progress = restore(ray.train.get_checkpoint(), model, optimizer, scheduler)
    sign = 1.0 if higher_is_better(cfg.train.metric) else -1.0  # the metric table's direction (losses are minimised)

    run = payload.run
    monitor = _system_monitor(cfg, run.uri, run.run_id) if rank == 0 and run is not None else None
    observe = TrainMetrics(context.get_experiment_name(), rank, device)  # Ray metrics for Grafana
    meta = CheckpointMeta(
        config=cfg.model_dump(mode="json"), label_names=names, train_counts=counts.tolist(), label_embeddings=embeddings,
        dataset_version=manifest.version, metric=cfg.train.metric,
        plan=manifest.info.get("plan"),  # the store's preprocessing: predict applies it to files
    )
    del manifest  # its tables are not needed past here: the columnar records hold the splits

    def train_stream(epoch: int) -> Prefetch:
        """The epoch's training batches, planned and read ahead in a background thread (see
        :class:`Prefetch`): the epoch's order, mixing partners and read tasks are built on that
        thread too, so the training thread never waits on the next epoch's planning."""

        def make() -> Any:
            shard = worker_dataset(train_records[: per_rank * world], cfg, names, train=True, epoch=epoch, rank=rank, world=world)
            return iter_batches(
                shard, cfg.train.batch_size, device, augment=device_augment(cfg, train=True), seed=[cfg.train.seed, epoch, rank],
                prefetch_batches=cfg.train.prefetch_batches,
            )

        return Prefetch(make, depth=cfg.train.prefetch_batches)

    val_batches = EvalBatches(val_records, cfg, names, device, rank=rank, world=world)
    upcoming = train_stream(progress.start_epoch) if progress.start_epoch < cfg.train.epochs else None
    batches = None
    try:
        for epoch in range(progress.start_epoch, cfg.train.epochs):
            if payload.budget is not None and not payload.budget.claim(epoch + 1):
                break  # the sweep's trial-epoch budget is spent (every rank gets the same answer)
            started = time.perf_counter()
            batches, upcoming = upcoming, None
            train_metrics = train_epoch(model, observe.batches(batches), loss_fn, optimizer, scheduler, cfg, amp_dtype)
            if epoch + 1 < cfg.train.epochs:  # its Ray Data start-up overlaps this epoch's validation
                upcoming = train_stream(epoch + 1)
            labels, scores = validate(model, val_batches.batches(epoch), device)
            val_metrics, report = validation_metrics(labels, scores, counts, names, groups, rule, rank)  # once, on rank 0
            epoch_report = EpochReport(epoch, scheduler.get_last_lr()[0], time.perf_counter() - started, train_metrics, val_metrics)
            observe.epoch(epoch_report.to_dict())

            value = epoch_report.value(cfg.train.metric)
            improved = math.isfinite(value) and (not math.isfinite(progress.best_value) or sign * value > sign * progress.best_value)
            if improved or progress.best_state is None:
                progress.best_value = value if improved else progress.best_value
                progress.best_state = _state(model)
                progress.stale = 0
            else:
                progress.stale += 1
            epoch_report.best = (cfg.train.metric, progress.best_value)
            last = epoch == cfg.train.epochs - 1 or bool(cfg.train.early_stop_patience and progress.stale >= cfg.train.early_stop_patience)

            with tempfile.TemporaryDirectory() as directory:
                report_checkpoint = None
                if rank == 0:
                    save_checkpoint(directory, model, optimizer, scheduler, epoch, progress, meta)
                    report_checkpoint = ray.train.Checkpoint.from_directory(directory)
                    if run is not None:  # before report: an ASHA stop may end the trial inside report
                        run.log_epoch(epoch_report)
                        if last:
                            log_final_artifacts(run.uri, run.run_id, labels, scores, counts, names, report)
                ray.train.report(epoch_report.to_dict(), checkpoint=report_checkpoint)
            if last:
                break
    finally:
        for stream in (batches, upcoming):  # an error mid-epoch, or early stop: no reader left behind
            if stream is not None:
                stream.close()
        if monitor is not None:
            monitor.finish()
