"""``raddiag promote``: package the best trial as a pyfunc, register it, and move ``@champion``
only when it beats the current champion on the same test split by a configured margin."""

from __future__ import annotations

import math
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Any

from raddiag.config import RadDiagConfig


class PromotionError(RuntimeError):
    """Promotion refused; the message says why (e.g. different dataset versions)."""


@dataclass
class Promotion:
    model_name: str
    version: str | None
    run_id: str
    decision: str  # "champion" | "challenger" | "dry-run:champion" | "dry-run:challenger"
    metric: str
    candidate_value: float
    champion_value: float | None
    champion_version: str | None
    evaluation: Any
    tags: dict[str, str] = field(default_factory=dict)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except Exception:
        return "unknown"


def find_sweep(cfg: RadDiagConfig, sweep_name: str) -> Any:
    """The latest MLflow parent run of sweep ``sweep_name`` (raises if there is none)."""
    from raddiag import tracking

    experiment_id = tracking.setup(cfg.tracking)
    runs = tracking.client(cfg.tracking.resolved_uri()).search_runs(
        [experiment_id],
        filter_string=f"tags.`raddiag.sweep` = {tracking.quoted(sweep_name)} and tags.`raddiag.role` = 'sweep'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise PromotionError(f"sweep {sweep_name!r}: no such sweep in experiment {cfg.tracking.experiment!r}")
    return runs[0]


def _local_checkpoint(path: str, into: str) -> str:
    if "://" not in path:
        return path
    from ray.train import Checkpoint

    return Checkpoint(path).to_directory(into)


def _example(cfg: RadDiagConfig, checkpoint_dir: str) -> dict[str, Any]:
    import json
    from pathlib import Path

    from raddiag.data.pipeline import local_batches
    from raddiag.storage.store import Store

    meta = json.loads(Path(checkpoint_dir, "meta.json").read_text())
    model_cfg = RadDiagConfig.model_validate(meta["config"]).model_copy(update={"store": cfg.store})
    records = Store(cfg.store.url, cfg.store.endpoint_url).manifest().case_records("test")[:1]
    return next(iter(local_batches(records, model_cfg, meta["label_names"], 1)))


def promote(cfg: RadDiagConfig, sweep_name: str, dry_run: bool = False) -> Promotion:
    """Register the best trial of ``sweep_name`` and decide champion vs challenger (see module doc)."""
    from raddiag import tracking
    from raddiag.evaluate import evaluate_model
    from raddiag.storage.store import Store

    uri = cfg.tracking.resolved_uri()
    client = tracking.client(uri)
    parent = find_sweep(cfg, sweep_name)
    best_run_id = parent.data.tags.get("raddiag.best_run_id")
    if not best_run_id:
        raise PromotionError(f"sweep {sweep_name!r}: it has no best trial (did it finish?)")
    best_run = client.get_run(best_run_id)
    checkpoint = best_run.data.tags.get("raddiag.checkpoint")
    if not checkpoint:
        raise PromotionError(f"run {best_run_id}: no checkpoint tag; cannot package the model")
    name = cfg.tracking.registered_model
    metric = cfg.promote.metric
    current = _current_champion(client, name)
    dataset_version = Store(cfg.store.url, cfg.store.endpoint_url).manifest().version
    if current is not None and current.tags.get("raddiag.dataset_version") != dataset_version:
        raise PromotionError(
            f"model {name}@champion (v{current.version}) was evaluated on dataset version "
            f"{current.tags.get('raddiag.dataset_version')}, the candidate would be on {dataset_version} "
            f"({cfg.store.url}): refusing to compare across dataset versions"
        )
    info = log_model_from_checkpoint(cfg, best_run_id, checkpoint, None if dry_run else name)
    version = None if dry_run else str(info.registered_model_version)
    candidate_uri = info.model_uri if dry_run else f"models:/{name}/{version}"
    evaluation = evaluate_model(candidate_uri, cfg, "test")
    candidate = float(evaluation.report.flat().get(metric, math.nan))

    champion_value, champion_version = None, None
    if current is not None:
        champion_version = str(current.version)
        champion_eval = evaluate_model(f"models:/{name}/{champion_version}", cfg, "test")
        champion_value = float(champion_eval.report.flat().get(metric, math.nan))
    better = champion_value is None or (
        math.isfinite(candidate) and (not math.isfinite(champion_value) or candidate > champion_value + cfg.promote.margin)
    )
    decision = "champion" if better else "challenger"
    tags = {
        "raddiag.dataset_version": evaluation.dataset_version,
        "raddiag.git_commit": git_commit(),
        "raddiag.sweep": sweep_name,
        "raddiag.run_id": best_run_id,
        "raddiag.decision": decision,
        "raddiag.decision_metric": f"test_{metric}",
        "raddiag.compared_to": f"v{champion_version}={champion_value:.4f}" if champion_version else "none",
        "raddiag.margin": str(cfg.promote.margin),
        **{f"test_{k}": f"{v:.6g}" for k, v in evaluation.report.flat().items() if isinstance(v, float) and math.isfinite(v)},
    }
    if dry_run:
        return Promotion(name, None, best_run_id, f"dry-run:{decision}", metric, candidate, champion_value, champion_version, evaluation, tags)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, decision, version)
    return Promotion(name, version, best_run_id, decision, metric, candidate, champion_value, champion_version, evaluation, tags)


def _current_champion(client: Any, name: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, "champion")
    except MlflowException:  # no such model or alias yet
        return None


def log_model_from_checkpoint(cfg: RadDiagConfig, run_id: str, checkpoint: str, registered_model: str | None = None) -> Any:
    """Package a Train checkpoint (local or remote) as the pyfunc ``model`` of MLflow run ``run_id``
    (registering it when ``registered_model``); returns MLflow's ModelInfo."""
    import warnings

    import mlflow

    from raddiag.serve.pyfunc import log_pyfunc

    from raddiag import tracking

    client = tracking.client(cfg.tracking.resolved_uri())
    status = client.get_run(run_id).info.status
    with tempfile.TemporaryDirectory() as scratch:
        local = _local_checkpoint(checkpoint, scratch)
        with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MLflow nags about type hints we deliberately leave out
            info = log_pyfunc(local, _example(cfg, local), registered_model)
    if status != "RUNNING":
        client.set_terminated(run_id, status)  # logging a model does not change how the run ended
    return info
