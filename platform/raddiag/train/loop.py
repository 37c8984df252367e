"""Training and evaluation steps (plain functions) and the Ray Train loop that wires them.

``train_step``/``predict_batch`` know nothing of Ray; ``train_loop_per_worker`` builds the model,
optimizer, schedule and data for one worker, resumes from ``ray.train.get_checkpoint()``, reports
per-epoch metrics with a checkpoint, and (rank 0 only) logs them to MLflow exactly once per epoch.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from typing import Any, Iterable

import numpy as np
import torch

from raddiag.config import RadDiagConfig

MODEL_INPUTS = ("images", "scan_mask", "slice_mask", "modality_ids")


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
    return model(*(batch[key] for key in MODEL_INPUTS))


def compute_losses(
    out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], loss_fn: torch.nn.Module, key_slice_weight: float
) -> dict[str, torch.Tensor]:
    """``{"loss", "cls_loss", "key_slice_loss"}`` for one batch (loss = cls + w * key-slice)."""
    from raddiag.model import key_slice_loss

    cls_loss = loss_fn(out["logits"].float(), batch["labels"].float())
    ks_loss = key_slice_loss(out["slice_attention"].float(), batch["key_slice"], batch["slice_mask"], batch["scan_mask"])
    return {"loss": cls_loss + key_slice_weight * ks_loss, "cls_loss": cls_loss, "key_slice_loss": ks_loss}


def train_step(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    loss_fn: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    key_slice_weight: float,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """One optimisation step; returns the loss terms as floats."""
    model.train()
    device_type = batch["images"].device.type
    with torch.autocast(device_type=device_type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        out = forward(model, batch)
        losses = compute_losses(out, batch, loss_fn, key_slice_weight)
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=5.0)
    optimizer.step()
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


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    module = model.module if hasattr(model, "module") else model
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train worker entry point. ``loop_config``: config (dict), mlflow_uri, mlflow_run_id,
    label_embeddings (list or None)."""
    import ray.train
    import ray.train.torch

    from raddiag.losses import build_loss
    from raddiag.metrics import evaluate_scores
    from raddiag.model import build_model
    from raddiag.storage.store import Store
    from raddiag.data.pipeline import iter_batches, worker_dataset
    from raddiag import tracking

    cfg = RadDiagConfig.model_validate(loop_config["config"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    torch.manual_seed(cfg.train.seed)
    device = ray.train.torch.get_device()

    manifest = Store(cfg.store.url, cfg.store.endpoint_url).manifest()
    level = cfg.data.label_level
    names = manifest.label_names(level)
    counts = manifest.train_counts(level)
    train_records = manifest.case_records("train")
    val_records = manifest.case_records("val")
    n_train = len(train_records)

    embeddings = loop_config.get("label_embeddings")
    table = torch.tensor(np.asarray(embeddings, dtype=np.float32)) if embeddings is not None else None
    prior = torch.tensor(np.maximum(counts, 1) / max(n_train, 1), dtype=torch.float32)
    model = build_model(cfg.model, len(names), label_embeddings=table, label_prior=prior)
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    per_rank = n_train // world
    steps_per_epoch = max(1, math.ceil(per_rank / cfg.train.batch_size))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(steps_per_epoch * cfg.train.epochs, cfg.train.warmup_fraction)
    )
    loss_fn = build_loss(cfg.loss, counts, n_train).to(device)
    amp_dtype = torch.bfloat16 if (cfg.train.amp and device.type == "cuda") else None

    start_epoch, best_value, best_state, stale = 0, math.nan, None, 0
    sign = -1.0 if "loss" in cfg.train.metric else 1.0  # losses are minimised, scores maximised
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            saved = torch.load(os.path.join(directory, "state.pt"), map_location="cpu", weights_only=True)
            best_state = torch.load(os.path.join(directory, "best.pt"), map_location="cpu", weights_only=True)
        (model.module if hasattr(model, "module") else model).load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng"])
        start_epoch = int(saved["epoch"]) + 1
        best_value, stale = float(saved["best_value"]), int(saved["stale"])

    uri, run_id = loop_config.get("mlflow_uri"), loop_config.get("mlflow_run_id")
    for epoch in range(start_epoch, cfg.train.epochs):
        started = time.perf_counter()
        sums: dict[str, float] = {}
        n_steps, data_wait, n_cases = 0, 0.0, 0
        dataset = worker_dataset(train_records[: per_rank * world], cfg, names, train=True, epoch=epoch, rank=rank, world=world)
        fetch = time.perf_counter()
        for batch in iter_batches(dataset, cfg.train.batch_size, device):
            data_wait += time.perf_counter() - fetch
            terms = train_step(model, batch, loss_fn, optimizer, scheduler, cfg.loss.key_slice_weight, amp_dtype)
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + value
            n_steps += 1
            n_cases += int(batch["labels"].shape[0])
            fetch = time.perf_counter()
        train_time = time.perf_counter() - started

        val_dataset = worker_dataset(val_records, cfg, names, train=False, epoch=epoch, rank=rank, world=world)
        order, scores, labels = predict(model, iter_batches(val_dataset, cfg.train.batch_size, device))
        gathered = _gather((order, scores, labels))
        order = np.concatenate([g[0] for g in gathered])
        sort = np.argsort(order)
        scores = np.concatenate([g[1] for g in gathered])[sort]
        labels = np.concatenate([g[2] for g in gathered])[sort]
        report = evaluate_scores(labels, scores, counts, label_names=names)

        metrics = {f"train_{key}": value / max(n_steps, 1) for key, value in sums.items()}
        metrics.update({f"val_{key}": value for key, value in report.flat().items()})
        metrics.update(
            {
                "epoch": epoch,
                "lr": scheduler.get_last_lr()[0],
                "train_cases_per_s": n_cases / max(train_time, 1e-9),
                "train_data_wait_s": data_wait,
                "epoch_time_s": time.perf_counter() - started,
            }
        )
        value = float(metrics.get(cfg.train.metric, float("nan")))
        improved = math.isfinite(value) and (not math.isfinite(best_value) or sign * value > sign * best_value)
        if improved or best_state is None:
            best_value = value if improved else best_value
            best_state = _state(model)
            stale = 0
        else:
            stale += 1
        metrics["best_" + cfg.train.metric] = best_value

        with tempfile.TemporaryDirectory() as directory:
            report_checkpoint = None
            if rank == 0:
                state = {
                    "model": _state(model),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "epoch": epoch,
                    "best_value": best_value,
                    "stale": stale,
                }
                torch.save(state, os.path.join(directory, "state.pt"))
                torch.save(best_state, os.path.join(directory, "best.pt"))
                with open(os.path.join(directory, "meta.json"), "w") as handle:
                    json.dump(
                        {
                            "config": cfg.model_dump(mode="json"),
                            "label_names": names,
                            "train_counts": counts.tolist(),
                            "label_embeddings": embeddings,
                            "dataset_version": manifest.version,
                            "epoch": epoch,
                            "best_value": best_value,
                            "metric": cfg.train.metric,
                        },
                        handle,
                    )
                report_checkpoint = ray.train.Checkpoint.from_directory(directory)
                if uri and run_id:  # before report: an ASHA stop may end the trial inside report
                    tracking.log_epoch_metrics(uri, run_id, metrics, step=epoch, probe="epoch")
            ray.train.report(metrics, checkpoint=report_checkpoint)
        if cfg.train.early_stop_patience and stale >= cfg.train.early_stop_patience:
            break
