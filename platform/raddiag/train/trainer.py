"""TorchTrainer factory and the ``raddiag train`` driver."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from raddiag.config import RadDiagConfig
from raddiag.train.run import BudgetClaim, CheckpointMeta, LoopConfig, TrainingRun


def label_embeddings(cfg: RadDiagConfig, names: list[str], codes: list[str | None]) -> list[list[float]] | None:
    """Label-text embeddings for the KE head (None for the MLP head), computed once per run. With
    ``model.ke.permute_table`` (a control arm) the rows are permuted across labels (a derangement
    seeded by ``train.seed``): every label gets another label's text."""
    if cfg.model.head != "ke":
        return None
    from raddiag.knowledge.cache import cached_label_embeddings

    table = cached_label_embeddings(names, cfg.model.ke, codes)[0]
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
    run: TrainingRun,
    embeddings: list[list[float]] | None,
    callbacks: list[Any] | None = None,
    budget: BudgetClaim | None = None,
) -> Any:
    """A ``TorchTrainer`` (DDP; gloo on CPU, nccl on GPU) for ``cfg``, named after ``run`` (whose
    MLflow run rank 0 logs every epoch to); resumes from the last checkpoint if that name exists.
    ``budget``: a sweep trial's claim on the trial-epoch ledger (:mod:`raddiag.tune.ledger`) that
    every epoch must be claimed from."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    storage = cfg.train.storage_path
    if "://" not in storage:
        storage = os.path.abspath(storage)
        os.makedirs(storage, exist_ok=True)
    return TorchTrainer(
        train_loop_per_worker=_loop,
        train_loop_config=LoopConfig(cfg.model_dump(mode="json"), run, embeddings, budget).to_dict(),
        torch_config=TorchConfig(backend="nccl" if cfg.train.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker, **cfg.train.resources_per_worker},
        ),
        run_config=RunConfig(
            name=run.name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks or None,
        ),
    )


def _loop(loop_config: dict[str, Any]) -> None:
    from raddiag.train.loop import train_loop_per_worker

    train_loop_per_worker(loop_config)


class TrainRefused(ValueError):
    """``raddiag train`` refused before Ray started: no readable store, or ``train.name`` names a run
    trained with other settings. The message names the input and the fix (CLI exit code 2)."""


#: Prefixes of the config keys a resumed run must share with the run it resumes.
RESUME_CHECKED = ("model.", "data.", "loss.", "train.")
#: Keys under those prefixes that may change on resume: how long it trains and how it is executed.
#: Every other key fixes the checkpoint's tensor shapes or what its weights, optimiser state and
#: best-so-far value mean (architecture, label level, inputs, loss, schedule, seed, metric).
RESUME_FREE = frozenset({
    "train.name", "train.epochs", "train.num_workers", "train.cpus_per_worker", "train.resources_per_worker",
    "train.use_gpu", "train.prefetch_batches", "train.amp", "train.max_failures", "train.early_stop_patience",
    "train.storage_path",
    "data.read_parallelism", "data.cases_per_task", "data.max_gap_kb", "data.data_cpus", "data.eval_cache_mb",
    "data.augment.on",
    "model.compile", "model.channels_last", "model.activation_checkpointing", "model.ke.cache_dir",
})


def resume_conflicts(previous: dict[str, str], cfg: RadDiagConfig) -> list[tuple[str, str, str]]:
    """``(key, before, now)`` for every resume-checked key whose value in ``cfg`` differs from the
    ``previous`` run's (flat config as logged to MLflow; keys the run did not record are skipped)."""
    from raddiag.tracking import params_from

    now = params_from(cfg.flat())
    return [
        (key, previous[key], value)
        for key, value in sorted(now.items())
        if key.startswith(RESUME_CHECKED) and key not in RESUME_FREE and key in previous and previous[key] != value
    ]


def read_store(cfg: RadDiagConfig) -> Any:
    """The store's manifest, or :class:`TrainRefused` naming ``store.url`` and the fix."""
    from raddiag.storage.store import StoreError

    url = cfg.store.url
    create = "create one with `raddiag synth` or `raddiag ingest`"
    if "://" not in url and not Path(url).is_dir():
        problem = "is a file, not a store folder" if Path(url).exists() else "no such folder"
        raise TrainRefused(f"store.url {url}: {problem} (set store.url to a raddiag store, or {create})")
    try:
        return cfg.store.ref().manifest()
    except StoreError as exc:
        raise TrainRefused(f"store.url {exc}") from None
    except (OSError, ValueError, KeyError) as exc:
        raise TrainRefused(
            f"store.url {url}: cannot read the store ({type(exc).__name__}: {str(exc)[:120]}); "
            f"set store.url to a raddiag store, or {create}"
        ) from None


@dataclass
class PriorRun:
    """What an earlier run of the same ``train.name`` left: its MLflow run (``run``) and/or the
    newest checkpoint's ``meta.json`` under ``train.storage_path`` (``checkpoint``, local storage)."""

    run: Any = None
    checkpoint: CheckpointMeta | None = None
    checkpoint_dir: str | None = None

    def params(self) -> dict[str, str]:
        """The run's flat config: the checkpoint's (what would be loaded), else MLflow's params."""
        from raddiag.config import flatten
        from raddiag.tracking import params_from

        if self.checkpoint is not None:
            return params_from(flatten(self.checkpoint.config))
        return dict(self.run.data.params) if self.run is not None else {}

    def epochs_done(self) -> int:
        if self.run is not None and "epoch" in self.run.data.metrics:
            return int(self.run.data.metrics["epoch"]) + 1
        return self.checkpoint.epoch + 1 if self.checkpoint is not None else 0

    def dataset_version(self) -> str | None:
        from raddiag.tracking import Tags

        if self.checkpoint is not None:
            return self.checkpoint.dataset_version
        return self.run.data.tags.get(Tags.DATASET_VERSION) if self.run is not None else None

    def where(self) -> str:
        parts = [f"MLflow run {self.run.info.run_id}"] if self.run is not None else []
        if self.checkpoint_dir:
            parts.append(f"checkpoint {self.checkpoint_dir}")
        return ", ".join(parts)


def latest_local_checkpoint(cfg: RadDiagConfig) -> tuple[CheckpointMeta | None, str | None]:
    """``(meta, folder)`` of the newest checkpoint Ray Train would resume ``train.name`` from,
    for a local ``train.storage_path`` (``(None, None)`` when there is none, or storage is remote)."""
    if "://" in cfg.train.storage_path:
        return None, None
    newest: tuple[CheckpointMeta | None, str | None] = (None, None)
    for meta_path in Path(cfg.train.storage_path, cfg.train.name).glob(f"checkpoint_*/{CheckpointMeta.FILE}"):
        try:
            meta = CheckpointMeta.read(str(meta_path.parent))
        except (OSError, ValueError, TypeError):
            continue  # a checkpoint being written or removed right now
        if isinstance(meta.config, dict) and (newest[0] is None or meta.epoch > newest[0].epoch):
            newest = (meta, str(meta_path.parent))
    return newest


def find_prior_run(cfg: RadDiagConfig, experiment_id: str) -> PriorRun:
    """The MLflow run ``raddiag train`` would resume for ``train.name`` and its newest checkpoint."""
    found = TrainingRun.find(cfg.tracking.resolved_uri(), experiment_id, TrainingRun.resume_tags("train", cfg.train.name))
    meta, folder = latest_local_checkpoint(cfg)
    return PriorRun(found, meta, folder)


def _shown(value: str) -> str:
    return value if len(value) <= 40 else value[:37] + "..."


def check_resume(cfg: RadDiagConfig, prior: PriorRun, dataset_version: str) -> None:
    """Refuse (:class:`TrainRefused`, one line) to resume ``prior`` with settings that change what
    its checkpoint means: differing resume-checked keys, or another dataset version."""
    if prior.run is None and prior.checkpoint is None:
        return
    differences = [f"{key} {_shown(before)} -> {_shown(now)}" for key, before, now in resume_conflicts(prior.params(), cfg)]
    previous_version = prior.dataset_version()
    if previous_version and previous_version != dataset_version:
        differences.append(f"dataset version {previous_version} -> {dataset_version} ({cfg.store.url})")
    if not differences:
        return
    shown = "; ".join(differences[:6]) + (f" (+{len(differences) - 6} more)" if len(differences) > 6 else "")
    raise TrainRefused(
        f"train.name {cfg.train.name!r} names an earlier run ({prior.where()}) with other settings: {shown}; "
        f"to start a new run choose another train.name (--set train.name={cfg.train.name}-2), "
        "or resume it with the same settings"
    )


def check_checkpoints_present(cfg: RadDiagConfig, prior: PriorRun) -> None:
    """Refuse to continue an MLflow run that logged epochs when its checkpoints are not under a
    local ``train.storage_path``: Ray would start again at epoch 0 and the epochs MLflow already
    holds would be skipped when logged, so the run would mix two trainings."""
    if prior.run is None or prior.checkpoint is not None or "://" in cfg.train.storage_path:
        return
    done = prior.epochs_done()
    if done:
        raise TrainRefused(
            f"train.name {cfg.train.name!r}: MLflow run {prior.run.info.run_id} logged {done} epoch(s), but no checkpoint of it is under "
            f"{Path(cfg.train.storage_path, cfg.train.name)}; set train.storage_path to where it trained, or choose another train.name"
        )


def completion(cfg: RadDiagConfig, prior: PriorRun) -> str | None:
    """Why ``prior`` has nothing left to train under ``cfg`` (all epochs done, or stopped early with
    the same patience), or None. Only an MLflow run that FINISHED counts (a run whose driver died
    stays RUNNING, a failed one FAILED: both resume)."""
    if prior.run is None or prior.run.info.status != "FINISHED":
        return None
    done = prior.epochs_done()
    if done >= cfg.train.epochs:
        return f"{done}/{cfg.train.epochs} epochs done"
    params = prior.run.data.params
    patience = cfg.train.early_stop_patience
    if patience and done < int(params.get("train.epochs", done)) and str(patience) == params.get("train.early_stop_patience"):
        return f"stopped early after {done} epochs (train.early_stop_patience={patience})"
    return None


@dataclass
class TrainResult:
    run_id: str
    checkpoint_path: str | None
    metrics: dict[str, Any]
    #: Set when nothing was trained: the run named ``train.name`` had already finished (why).
    already_complete: str | None = None


def run_train(cfg: RadDiagConfig, verbose: bool = False) -> TrainResult:
    """``raddiag train``: one TorchTrainer run tracked as an MLflow run named ``cfg.train.name``.

    Re-running a name resumes its run from the last checkpoint. Before Ray starts, the store is
    read, and a resume is refused (:class:`TrainRefused`) when the settings differ from the run's in
    a key that changes what its checkpoint means (see :data:`RESUME_FREE`); a run with nothing left
    to train is reported (``already_complete``) without starting Ray."""

    from raddiag import tracking
    from raddiag.runtime import init_ray

    manifest = read_store(cfg)
    experiment_id = tracking.setup(cfg.tracking)
    uri = cfg.tracking.resolved_uri()
    prior = find_prior_run(cfg, experiment_id)
    check_resume(cfg, prior, manifest.version)
    done = completion(cfg, prior)
    if done:
        run = prior.run
        metrics = {k: v for k, v in run.data.metrics.items() if not k.startswith("system/")}
        return TrainResult(run.info.run_id, run.data.tags.get(tracking.Tags.CHECKPOINT), metrics, already_complete=done)
    check_checkpoints_present(cfg, prior)

    init_ray(cfg.ray, verbose)
    level = cfg.data.label_level
    embeddings = label_embeddings(cfg, manifest.label_names(level), manifest.label_codes(level))
    run = TrainingRun.open(cfg, manifest, kind="train", experiment_id=experiment_id, uri=uri)  # the same name resumes the same run
    with run.failed_on_error():
        result = build_trainer(cfg, run=run, embeddings=embeddings).fit()
        checkpoint = result.checkpoint.path if result.checkpoint else None
        if checkpoint:
            run.set_checkpoint(checkpoint)
            from raddiag.registry import log_model_from_checkpoint

            log_model_from_checkpoint(cfg, run.run_id, checkpoint)  # runs:/<run_id>/raddiag-classifier
    run.finish("FINISHED" if result.error is None else "FAILED")
    return TrainResult(run_id=run.run_id, checkpoint_path=checkpoint, metrics=dict(result.metrics or {}))
