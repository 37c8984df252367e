"""``raddiag promote``: package the best trial as a pyfunc, register it, and move ``@champion``
only when it beats the current champion on the same test split by a configured margin.

A run is registered once: promoting it again reuses its version (re-evaluated, tags and alias
updated), and a version that already is ``@champion`` is left as it is. ``--dry-run`` decides the
same way and writes nothing to MLflow: the candidate is evaluated from its checkpoint in a scratch
folder (or read from its version's logged test metrics), the champion's test metric is read from
the tags logged when it was promoted."""

from __future__ import annotations

import math
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raddiag.config import RadDiagConfig
from raddiag.metrics import headline_keys
from raddiag.tracking import Tags


class PromotionError(RuntimeError):
    """Promotion refused; the message says why (e.g. different dataset versions)."""


@dataclass
class Promotion:
    model_name: str
    version: str | None  # the version promoted; None only for a dry run of a run not registered yet
    run_id: str
    decision: str  # "champion" | "challenger" | "dry-run:champion" | "dry-run:challenger"
    metric: str
    candidate_value: float
    champion_value: float | None
    champion_version: str | None
    evaluation: Any  # the candidate's test Evaluation; None when its logged metrics were used
    tags: dict[str, str] = field(default_factory=dict)
    reused: bool = False  # the run already had a registered version: no new version
    unchanged: bool = False  # that version already is @champion: nothing to decide, nothing written
    candidate_source: str = "evaluated now"
    champion_source: str = ""
    tracking_uri: str = ""

    @property
    def dry_run(self) -> bool:
        return self.decision.startswith("dry-run:")


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except Exception:
        return "unknown"


def find_sweep(cfg: RadDiagConfig, sweep_name: str) -> Any:
    """The latest MLflow parent run of sweep ``sweep_name`` (raises if there is none). Creates
    nothing: no database, no experiment."""
    from raddiag import tracking

    uri = cfg.tracking.resolved_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise PromotionError(
            f"no MLflow database at {uri.removeprefix('sqlite:///')} (run from the project folder, "
            "or set tracking.tracking_uri / MLFLOW_TRACKING_URI)"
        )
    experiment = tracking.client(uri).get_experiment_by_name(cfg.tracking.experiment)
    if experiment is None:
        raise PromotionError(f"sweep {sweep_name!r}: no experiment {cfg.tracking.experiment!r} at {uri} (run `raddiag sweep` first)")
    tracking.setup(cfg.tracking)  # points MLflow at ``uri``; the experiment exists, so nothing is created
    runs = tracking.client(uri).search_runs(
        [experiment.experiment_id],
        filter_string=tracking.tag_filter({Tags.SWEEP: sweep_name, Tags.ROLE: "sweep"}),
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
    """One assembled test case of ``cfg``'s store, as the checkpoint's model reads it (the input example)."""
    from raddiag.data.pipeline import local_batches
    from raddiag.serve.bundle import ModelBundle

    bundle = ModelBundle.from_checkpoint(checkpoint_dir).on_store(cfg.store.ref())
    records = cfg.store.ref().manifest().case_records("test")[:1]
    return next(iter(local_batches(records, bundle.config, bundle.label_names, 1)))


def registered_version(client: Any, name: str, run_id: str) -> Any:
    """The newest version of registered model ``name`` made from MLflow run ``run_id``, or None."""
    from mlflow.exceptions import MlflowException

    from raddiag import tracking

    try:
        versions = client.search_model_versions(f"name = {tracking.quoted(name)} and run_id = {tracking.quoted(run_id)}")
    except MlflowException:  # no such registered model yet
        return None
    versions = [v for v in versions if v.run_id == run_id]
    return max(versions, key=lambda v: int(v.version)) if versions else None


def model_id_of(version: Any) -> str | None:
    """The MLflow 3 logged model (``m-...``) behind a model version: its ``model_id``, else the id in
    its ``models:/m-...`` source (the sqlite registry leaves ``model_id`` empty)."""
    model_id = getattr(version, "model_id", None)
    if model_id:
        return str(model_id)
    source = str(getattr(version, "source", "") or "")
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None


def logged_test_metric(version: Any, metric: str, client: Any = None) -> float | None:
    """The test ``metric`` recorded when a model version was promoted: its tag (headline metrics), else
    the metric on the version's logged model (None if neither)."""
    try:
        return float(version.tags[f"test_{metric}"])
    except (KeyError, TypeError, ValueError):
        pass
    model_id = model_id_of(version)
    if client is None or not model_id:
        return None
    try:
        logged = client.get_logged_model(model_id)
    except Exception:  # noqa: BLE001 - an old server without logged models
        return None
    values = [m.value for m in (logged.metrics or []) if m.key == f"test_{metric}"]
    return float(values[-1]) if values else None


def evaluate_checkpoint(cfg: RadDiagConfig, checkpoint: str, split: str = "test") -> Any:
    """Evaluate a Train checkpoint (local or remote) on ``split`` exactly as its registered pyfunc
    would be (the pyfunc loads the same :class:`ModelBundle`): nothing is logged or registered."""
    from raddiag.evaluate import evaluate_model
    from raddiag.serve.bundle import ModelBundle

    return evaluate_model(ModelBundle.from_checkpoint(checkpoint), cfg, split)


def promote(cfg: RadDiagConfig, sweep_name: str, dry_run: bool = False) -> Promotion:
    """Register the best trial of ``sweep_name`` and decide champion vs challenger (see module doc)."""
    from raddiag import tracking
    from raddiag.evaluate import evaluate_model

    uri = cfg.tracking.resolved_uri()
    parent = find_sweep(cfg, sweep_name)
    client = tracking.client(uri)
    best_run_id = parent.data.tags.get(Tags.BEST_RUN_ID)
    if not best_run_id:
        raise PromotionError(f"sweep {sweep_name!r}: it has no best trial (did it finish?)")
    best_run = client.get_run(best_run_id)
    checkpoint = best_run.data.tags.get(Tags.CHECKPOINT)
    if not checkpoint:
        raise PromotionError(f"run {best_run_id}: no checkpoint tag; cannot package the model")
    name = cfg.tracking.registered_model
    metric = cfg.promote.metric
    current = _current_champion(client, name)
    dataset_version = cfg.store.ref().manifest().version
    if current is not None and current.tags.get(Tags.DATASET_VERSION) != dataset_version:
        raise PromotionError(
            f"model {name}@champion (v{current.version}) was evaluated on dataset version "
            f"{current.tags.get(Tags.DATASET_VERSION)}, the candidate would be on {dataset_version} "
            f"({cfg.store.url}): refusing to compare across dataset versions"
        )
    prefix = "dry-run:" if dry_run else ""
    champion_version = str(current.version) if current is not None else None
    existing = registered_version(client, name, best_run_id)
    version = str(existing.version) if existing is not None else None
    found = {"tracking_uri": uri, "reused": existing is not None}

    if version is not None and version == champion_version:  # promoted before and still the champion
        value = logged_test_metric(current, metric, client)
        value = math.nan if value is None else value
        return Promotion(name, version, best_run_id, f"{prefix}champion", metric, value, value, champion_version, None,
                         unchanged=True, candidate_source=f"logged on v{version}", champion_source=f"logged on v{version}", **found)

    candidate_source = "evaluated now"
    evaluation, candidate = None, math.nan
    if version is not None and dry_run and logged_test_metric(existing, metric, client) is not None:
        candidate, candidate_source = logged_test_metric(existing, metric, client), f"logged on v{version}"
    elif version is not None:  # registered before (as a challenger): re-evaluated, never registered again
        evaluation = evaluate_model(f"models:/{name}/{version}", cfg, "test")
    elif dry_run:
        evaluation = evaluate_checkpoint(cfg, checkpoint)
        candidate_source = "evaluated now, not logged"
    else:
        info = log_model_from_checkpoint(cfg, best_run_id, checkpoint, name)
        version = str(info.registered_model_version)
        evaluation = evaluate_model(f"models:/{name}/{version}", cfg, "test")
    if evaluation is not None:
        candidate = float(evaluation.report.flat().get(metric, math.nan))

    champion_value, champion_source = None, ""
    if current is not None:
        logged = logged_test_metric(current, metric, client) if dry_run else None
        if logged is not None:
            champion_value, champion_source = logged, f"logged when v{champion_version} was promoted"
        else:
            champion_eval = evaluate_model(f"models:/{name}/{champion_version}", cfg, "test")
            champion_value, champion_source = float(champion_eval.report.flat().get(metric, math.nan)), "evaluated now"
    better = champion_value is None or (
        math.isfinite(candidate) and (not math.isfinite(champion_value) or candidate > champion_value + cfg.promote.margin)
    )
    decision = "champion" if better else "challenger"
    tags = {
        Tags.DATASET_VERSION: dataset_version,
        Tags.GIT_COMMIT: git_commit(),
        Tags.SWEEP: sweep_name,
        Tags.RUN_ID: best_run_id,
        Tags.DECISION: decision,
        Tags.DECISION_METRIC: f"test_{metric}",
        Tags.COMPARED_TO: f"v{champion_version}={champion_value:.4f}" if champion_version else "none",
        Tags.MARGIN: str(cfg.promote.margin),
    }
    test_metrics = {} if evaluation is None else {
        f"test_{k}": float(v) for k, v in evaluation.report.flat().items() if isinstance(v, float) and math.isfinite(v)
    }
    # headline figures as tags (registry UI, `raddiag models`, the report); every test metric goes on the logged model
    tags.update({k: f"{v:.6g}" for k, v in test_metrics.items() if k in HEADLINE_TAGS or k == f"test_{metric}"})
    result = Promotion(name, version, best_run_id, f"{prefix}{decision}", metric, candidate, champion_value, champion_version, evaluation, tags,
                       candidate_source=candidate_source, champion_source=champion_source, **found)
    if dry_run:
        return result
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    _log_model_metrics(client, name, version, best_run_id, test_metrics, dataset_version)
    client.set_registered_model_alias(name, decision, version)
    return result


#: Test metrics tagged on a registered version (registry UI, ``raddiag models``, the report): the
#: headline metrics of :data:`raddiag.metrics.METRIC_SPECS` by group; every test metric goes on its logged model.
HEADLINE_TAGS = tuple(f"test_{key}" for key in headline_keys())


def _log_model_metrics(client: Any, name: str, version: str, run_id: str, metrics: dict[str, float], dataset_version: str) -> None:
    """The test metrics as MLflow 3 metrics of the version's logged model (``model_id``), linked to
    the dataset version, also visible on its run. Nothing when the version has no logged model."""
    import time

    from mlflow.entities import Metric

    model_id = model_id_of(client.get_model_version(name, version))
    if not metrics or not model_id:
        return
    now = int(time.time() * 1000)
    batch = [Metric(key, value, now, 0, model_id=model_id, dataset_name="test", dataset_digest=dataset_version, run_id=run_id)
             for key, value in sorted(metrics.items())]
    for start in range(0, len(batch), 900):
        client.log_batch(run_id, metrics=batch[start : start + 900])


def _current_champion(client: Any, name: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, "champion")
    except MlflowException:  # no such model or alias yet
        return None


def log_model_from_checkpoint(cfg: RadDiagConfig, run_id: str, checkpoint: str, registered_model: str | None = None) -> Any:
    """Package a Train checkpoint (local or remote) as the pyfunc of MLflow run ``run_id``, named
    :data:`~raddiag.serve.bundle.LOGGED_MODEL_NAME` (registering it when ``registered_model``);
    returns MLflow's ModelInfo."""
    import warnings

    import mlflow

    from raddiag import tracking
    from raddiag.serve.pyfunc import log_pyfunc

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
