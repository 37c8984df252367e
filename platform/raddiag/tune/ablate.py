"""``raddiag ablate``: named arms × seeds as one Ray Tune grid, and the paper-shaped table.

Every (arm, seed) is a Tune trial: a ``TorchTrainer`` run of the arm's config (``ablation.arms``
overlays on the rest of the config, ``train.seed`` = the seed) tracked as a child MLflow run of the
ablation's parent run. The trial keeps the best epoch by ``train.metric`` on *validation*, then
scores that checkpoint on the validation and test splits in-process and writes the scores beside the
Tune experiment (``<storage_path>/<name>-scores/<arm>-s<seed>.npz``). The driver then builds the
table with paired bootstrap CIs over seeds and test cases (:mod:`raddiag.stats`) and logs it to the
parent run as ``ablation.json`` + ``ablation.md``. The test split is never used to select anything.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from raddiag.config import ConfigError, RadDiagConfig, with_overrides
from raddiag.train.run import TrialContext


class AblationError(RuntimeError):
    """An ablation could not run or produced incomplete results; the message says which and why."""


@dataclass
class ArmScores:
    """What one (arm, seed) trial hands the ablation driver, saved as ``<scores_dir>/<arm>-s<seed>.npz``
    (plain arrays, read back with ``allow_pickle=False``): its MLflow ``run_id``, training seconds,
    the store's per-label training counts ``(C,)``, and for the validation and test splits the
    labels ``(N, C)`` uint8, scores ``(N, C)`` float32 of the best checkpoint and case ids ``(N,)``."""

    run_id: str
    train_seconds: float
    train_counts: np.ndarray
    val_labels: np.ndarray
    val_scores: np.ndarray
    val_case_ids: np.ndarray
    test_labels: np.ndarray
    test_scores: np.ndarray
    test_case_ids: np.ndarray

    def save(self, path: str) -> None:
        np.savez_compressed(path, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    @classmethod
    def load(cls, path: str) -> ArmScores:
        """The scores saved at ``path`` (AblationError naming the file when a field is missing)."""
        with np.load(path, allow_pickle=False) as data:
            missing = [f.name for f in dataclasses.fields(cls) if f.name not in data.files]
            if missing:
                raise AblationError(f"{path}: not an arm's scores file (missing {', '.join(missing)}); delete it and rerun with --resume")
            values = {f.name: data[f.name] for f in dataclasses.fields(cls)}
        return cls(**{**values, "run_id": str(values["run_id"]), "train_seconds": float(values["train_seconds"])})


@dataclass
class AblationResult:
    name: str
    parent_run_id: str
    table: Any  # raddiag.stats.AblationTable
    markdown: str
    runs: list[dict[str, Any]]
    seconds_per_arm: dict[str, float]


def arm_configs(cfg: RadDiagConfig) -> dict[str, RadDiagConfig]:
    """Each arm's full config (validated now, before anything slow starts)."""
    if not cfg.ablation.arms:
        raise ConfigError("ablation.arms is empty: name at least one arm (see jobs/ablation.yaml)")
    try:
        cfg.ablation.pairs()
    except ValueError as error:
        raise ConfigError(str(error)) from None
    out = {}
    for arm, overrides in cfg.ablation.arms.items():
        try:
            out[arm] = with_overrides(cfg, overrides)
        except ConfigError as error:
            raise ConfigError(f"ablation.arms.{arm}: {error}") from None
    return out


def scores_dir(cfg: RadDiagConfig) -> str:
    return os.path.join(cfg.train.storage_path, f"{cfg.ablation.name}-scores")


def ensure_store(cfg: RadDiagConfig, progress: Any = None) -> Any:
    """The store's manifest; a missing store is synthesised from ``cfg.synth`` (a fresh clone
    reproduces the benchmark). A benchmark store made with other settings is refused."""
    from raddiag.storage.synth import generate

    store = cfg.store.ref().open()
    info = store.info_or_none()
    if info is None:
        return generate(cfg.synth, store, progress)
    manifest = store.manifest()
    stored = info.get("benchmark")
    if stored is not None and cfg.synth.profile == "benchmark":
        from raddiag.storage.benchmark import spec

        if stored != json.loads(json.dumps(spec(cfg.synth))):
            raise AblationError(
                f"store {cfg.store.url} holds benchmark {stored.get('version')} made with other synth settings "
                f"(seed {stored.get('seed')}, splits {stored.get('splits')}) than this config: point store.url at a new "
                "folder, or make the synth keys match the store"
            )
    return manifest


def _score_checkpoint(cfg: RadDiagConfig, checkpoint_dir: str, manifest: Any) -> dict[str, np.ndarray]:
    """Validation and test (labels, scores) of the checkpoint's best weights, in-process."""
    import torch

    from raddiag.data.pipeline import local_batches
    from raddiag.serve.bundle import ModelBundle
    from raddiag.train.loop import predict_batch, to_tensors

    bundle = ModelBundle.from_checkpoint(checkpoint_dir)
    model, names = bundle.network, bundle.label_names
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    out: dict[str, np.ndarray] = {}
    for split in ("val", "test"):
        records = manifest.case_records(split)
        labels, scores = [], []
        for batch in local_batches(records, cfg, names, cfg.train.batch_size):
            tensors = to_tensors(batch)
            scores.append(predict_batch(model, tensors))
            labels.append(batch["labels"])
        out[f"{split}_labels"] = np.concatenate(labels).astype(np.uint8)
        out[f"{split}_scores"] = np.concatenate(scores).astype(np.float32)
        out[f"{split}_case_ids"] = np.array([r["case_id"] for r in records])
    return out


def _trial(params: dict[str, Any], *, base: dict[str, Any], ctx: TrialContext) -> None:
    """Tune function trainable: train one (arm, seed) as a child run of the ablation's parent run
    (ended FAILED if anything raises), score its best checkpoint, save the scores."""
    from raddiag.tracking import Tags
    from raddiag.train.run import TrainingRun

    arm, seed = params["run"]["arm"], int(params["run"]["seed"])
    root = RadDiagConfig.model_validate(base)
    name = f"{root.ablation.name}-{arm}-s{seed}"
    overrides = {**root.ablation.arms[arm], "train.seed": seed, "train.name": name}
    cfg = with_overrides(root, overrides)
    manifest = cfg.store.ref().manifest()
    run = TrainingRun.open(
        cfg, manifest, kind="arm", experiment_id=ctx.experiment_id, uri=ctx.uri, parent=ctx.parent_run_id,
        tags={Tags.ABLATION: root.ablation.name, Tags.ARM: arm, Tags.SEED: str(seed)},
        params={"ablation.arm": arm, **{f"arm.{k}": v for k, v in root.ablation.arms[arm].items()}},
    )
    with run.failed_on_error():
        _train_and_score(cfg, run, manifest, arm, seed, ctx.scores_dir)


def _train_and_score(cfg: RadDiagConfig, run: Any, manifest: Any, arm: str, seed: int, scores_to: str) -> None:
    """Train the arm's run, score its best checkpoint on validation and test, log the test metrics
    to the run and save the scores as ``<scores_to>/<arm>-s<seed>.npz``."""
    import time

    from ray.tune.integration.ray_train import TuneReportCallback

    from raddiag import tracking
    from raddiag.metrics import evaluate_scores
    from raddiag.train.trainer import build_trainer, label_embeddings

    level = cfg.data.label_level
    embeddings = label_embeddings(cfg, manifest.label_names(level), manifest.label_codes(level))
    started = time.perf_counter()
    trainer = build_trainer(cfg, run=run, embeddings=embeddings, callbacks=[TuneReportCallback()])
    result = trainer.fit()
    train_seconds = time.perf_counter() - started
    if result.error is not None or result.checkpoint is None:
        raise AblationError(f"{run.name}: training failed: {result.error}")
    run.set_checkpoint(result.checkpoint.path)
    with result.checkpoint.as_directory() as directory:
        scores = _score_checkpoint(cfg, directory, manifest)
    counts = manifest.train_counts(level)
    groups, rule = cfg.eval.groups(counts, level)
    report = evaluate_scores(
        scores["test_labels"], scores["test_scores"], counts, label_names=manifest.label_names(level), groups=groups, grouping=rule
    )
    tracking.log_epoch_metrics(
        run.uri, run.run_id, {**{f"test_{k}": v for k, v in report.flat().items()}, "train_seconds": train_seconds}, step=0, probe="train_seconds"
    )
    os.makedirs(scores_to, exist_ok=True)
    ArmScores(run.run_id, train_seconds, counts, **scores).save(os.path.join(scores_to, f"{arm}-s{seed}.npz"))
    run.finish("FINISHED")


def _scores_file(cfg: RadDiagConfig, arm: str, seed: int) -> str:
    return os.path.join(scores_dir(cfg), f"{arm}-s{seed}.npz")


def metric_key(arm: str, metric: str, group: str) -> str:
    """MLflow metric name of an arm's test metric (characters MLflow refuses, such as '+', become '_')."""
    return re.sub(r"[^\w\-. :/]", "_", f"{arm}.test_{metric}_{group}")


def _train_pending(cfg: RadDiagConfig, pending: list[dict[str, Any]], ctx: TrialContext, verbose: bool) -> list[str]:
    """Train the pending (arm, seed) runs as one Tune grid; returns the trials' error lines."""
    import time

    from ray import tune

    name = cfg.ablation.name  # a resumed ablation trains its missing runs in an experiment of its own
    if os.path.isdir(os.path.join(cfg.train.storage_path, name)):
        name = f"{name}-resumed-{time.strftime('%Y%m%d-%H%M%S')}"
    trainable = tune.with_resources(tune.with_parameters(_trial, base=cfg.model_dump(mode="json"), ctx=ctx), {"CPU": cfg.sweep.trial_cpus})
    tuner = tune.Tuner(
        trainable,
        param_space={"run": tune.grid_search(pending)},
        tune_config=tune.TuneConfig(max_concurrent_trials=cfg.ablation.max_concurrent_trials),
        run_config=tune.RunConfig(name=name, storage_path=cfg.train.storage_path, verbose=1 if verbose else 0),
    )
    return [str(r.error).strip().splitlines()[-1] for r in tuner.fit() if r.error is not None]


def run_ablation(cfg: RadDiagConfig, verbose: bool = False, progress: Any = None, resume: bool = False) -> AblationResult:
    """Train every arm × seed (one Tune grid), then tabulate and log the comparison. With ``resume``
    the runs whose scores exist are kept and only the others are trained (into the same parent run)."""
    from raddiag import tracking
    from raddiag.runtime import init_ray
    from raddiag.stats import paired_bootstrap

    arms = arm_configs(cfg)  # config errors surface before Ray starts
    exists = os.path.isdir(os.path.join(cfg.train.storage_path, cfg.ablation.name)) or os.path.isdir(scores_dir(cfg))
    if exists and not resume:
        raise AblationError(
            f"ablation {cfg.ablation.name} already exists under {cfg.train.storage_path}: pass --resume to finish it, or set ablation.name"
        )
    if resume and not exists:
        raise AblationError(f"ablation {cfg.ablation.name}: nothing to resume under {cfg.train.storage_path}")
    manifest = ensure_store(cfg, progress)
    experiment_id = tracking.setup(cfg.tracking)
    uri = cfg.tracking.resolved_uri()
    parent_run_id = tracking.parent_run(uri, experiment_id, "ablation", cfg.ablation.name, manifest.version, cfg.run_params("ablation"), resume)
    ctx = TrialContext(uri, experiment_id, parent_run_id, scores_dir=scores_dir(cfg))
    pending = [{"arm": arm, "seed": seed} for arm in arms for seed in cfg.ablation.seeds if not os.path.exists(_scores_file(cfg, arm, seed))]
    errors: list[str] = []
    if pending:
        init_ray(cfg.ray, verbose)
        errors = _train_pending(cfg, pending, ctx, verbose)
    client = tracking.client(uri)
    runs: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {arm: {} for arm in arms}
    rows, missing, seconds = [], [], {arm: 0.0 for arm in arms}
    counts = None
    for arm in arms:
        for seed in cfg.ablation.seeds:
            file = _scores_file(cfg, arm, seed)
            if not os.path.exists(file):
                missing.append(f"{arm}/seed {seed}")
                continue
            saved = ArmScores.load(file)
            runs[arm][seed] = (saved.test_labels, saved.test_scores)
            counts = saved.train_counts
            seconds[arm] += saved.train_seconds
            rows.append({"arm": arm, "seed": seed, "run_id": saved.run_id, "train_seconds": round(saved.train_seconds, 1)})
    if missing:
        client.set_terminated(parent_run_id, "FAILED")
        cause = f"; first error: {errors[0]}" if errors else ""
        raise AblationError(f"ablation {cfg.ablation.name}: no scores for {', '.join(missing)}{cause} (rerun with --resume)")
    groups, _ = cfg.eval.groups(counts, cfg.data.label_level)
    table = paired_bootstrap(runs, counts, cfg.ablation.pairs(), cfg.ablation.n_bootstrap, seed=0, groups=groups)
    markdown = table.markdown()
    seconds_per_arm = {arm: round(total / len(cfg.ablation.seeds), 1) for arm, total in seconds.items()}
    document = {
        "ablation": cfg.ablation.name, "dataset_version": manifest.version, "arms": cfg.ablation.arms,
        "train_seconds_per_run": seconds_per_arm, "runs": rows, **table.to_json(),
    }
    with tempfile.TemporaryDirectory() as directory:
        with open(os.path.join(directory, "ablation.json"), "w") as handle:
            json.dump(document, handle, indent=2)
        with open(os.path.join(directory, "ablation.md"), "w") as handle:
            handle.write(f"# Ablation {cfg.ablation.name} (dataset {manifest.version})\n\n{markdown}\n")
        client.log_artifacts(parent_run_id, directory)
    metrics = {
        metric_key(arm, metric, group): estimate.mean
        for arm, groups in table.estimates.items() for group, values in groups.items() for metric, estimate in values.items()
    }
    tracking.log_epoch_metrics(uri, parent_run_id, metrics, step=0, probe=metric_key(table.arms[0], "auc", "all"))
    client.set_terminated(parent_run_id, "FINISHED")
    return AblationResult(cfg.ablation.name, parent_run_id, table, markdown, rows, seconds_per_arm)
