"""TorchTrainer factory and the ``raddiag train`` driver."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from raddiag.config import RadDiagConfig


def label_embeddings(cfg: RadDiagConfig, names: list[str], codes: list[str | None]) -> list[list[float]] | None:
    """Label-text embeddings for the KE head (None for the MLP head), computed once per run. With
    ``model.ke.permute_table`` (a control arm) the rows are permuted across labels (a derangement
    seeded by ``train.seed``): every label gets another label's text."""
    if cfg.model.head != "ke":
        return None
    from raddiag.knowledge import embed_labels

    table = np.asarray(embed_labels(names, cfg.model.ke, codes=codes), dtype=np.float32)
    if cfg.model.ke.permute_table:
        table = table[derangement(len(table), cfg.train.seed)]
    return table.tolist()


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of ``range(n)`` with no fixed point (n >= 2)."""
    rng = np.random.default_rng([seed, 7])
    while True:
        order = rng.permutation(n)
        if n < 2 or not np.any(order == np.arange(n)):
            return order


def build_trainer(
    cfg: RadDiagConfig,
    *,
    name: str,
    mlflow_uri: str | None,
    mlflow_run_id: str | None,
    embeddings: list[list[float]] | None,
    callbacks: list[Any] | None = None,
    budget: dict[str, str] | None = None,
) -> Any:
    """A ``TorchTrainer`` (DDP; gloo on CPU, nccl on GPU) for ``cfg``; resumes if ``name`` exists.
    ``budget``: ``{"ledger", "trial_id"}`` of a sweep's trial-epoch ledger
    (:mod:`raddiag.tune.budget`) that every epoch must be claimed from."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    storage = cfg.train.storage_path
    if "://" not in storage:
        storage = os.path.abspath(storage)
        os.makedirs(storage, exist_ok=True)
    return TorchTrainer(
        train_loop_per_worker=_loop,
        train_loop_config={
            "config": cfg.model_dump(mode="json"),
            "mlflow_uri": mlflow_uri,
            "mlflow_run_id": mlflow_run_id,
            "label_embeddings": embeddings,
            "budget": budget,
        },
        torch_config=TorchConfig(backend="nccl" if cfg.train.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker, **cfg.train.resources_per_worker},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks or None,
        ),
    )


def _loop(loop_config: dict[str, Any]) -> None:
    from raddiag.train.loop import train_loop_per_worker

    train_loop_per_worker(loop_config)


@dataclass
class TrainResult:
    run_id: str
    checkpoint_path: str | None
    metrics: dict[str, Any]


def run_train(cfg: RadDiagConfig, verbose: bool = False) -> TrainResult:
    """``raddiag train``: one TorchTrainer run tracked as an MLflow run named ``cfg.train.name``."""

    from raddiag import tracking
    from raddiag.runtime import init_ray
    from raddiag.storage.store import Store

    init_ray(cfg.ray, verbose)
    experiment_id = tracking.setup(cfg.tracking)
    uri = cfg.tracking.resolved_uri()
    manifest = Store(cfg.store.url, cfg.store.endpoint_url).manifest()
    level = cfg.data.label_level
    embeddings = label_embeddings(cfg, manifest.label_names(level), manifest.label_codes(level))
    existing = tracking.client(uri).search_runs(
        [experiment_id], filter_string=f"tags.`raddiag.train_name` = {tracking.quoted(cfg.train.name)}", max_results=1
    )
    if existing:  # re-running the same name resumes the same run
        run_id = existing[0].info.run_id
    else:
        run = tracking.client(uri).create_run(experiment_id, run_name=cfg.train.name, tags={"raddiag.train_name": cfg.train.name})
        run_id = run.info.run_id
        tracking.log_params(uri, run_id, cfg.flat())
        tracking.client(uri).set_tag(run_id, "raddiag.dataset_version", manifest.version)
        tracking.log_dataset_input(uri, run_id, manifest, cfg.store.url)
    trainer = build_trainer(cfg, name=cfg.train.name, mlflow_uri=uri, mlflow_run_id=run_id, embeddings=embeddings)
    result = trainer.fit()
    checkpoint = result.checkpoint.path if result.checkpoint else None
    client = tracking.client(uri)
    if checkpoint:
        client.set_tag(run_id, "raddiag.checkpoint", checkpoint)
        from raddiag.registry import log_model_from_checkpoint

        log_model_from_checkpoint(cfg, run_id, checkpoint)  # runs:/<run_id>/model
    client.set_terminated(run_id, "FINISHED" if result.error is None else "FAILED")
    return TrainResult(run_id=run_id, checkpoint_path=checkpoint, metrics=dict(result.metrics or {}))
