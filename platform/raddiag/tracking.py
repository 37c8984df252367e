"""MLflow helpers: one place that knows the tracking URI, run nesting and idempotent metric logging."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any

from raddiag.config import TrackingConfig

_MAX_PARAM_LEN = 6000


class Tags:
    """Every MLflow tag raddiag writes or reads, by name (the only place a tag name is spelled).

    Runs: a training run carries ``KIND`` (``train``/``trial``/``arm``), ``TRAIN_NAME`` (the Ray
    Train run it is; ``raddiag train`` resumes by it), ``DATASET_VERSION`` and, once trained,
    ``CHECKPOINT``; a sweep trial ``TRIAL_ID`` + ``SWEEP``, an ablation arm ``ABLATION`` + ``ARM`` +
    ``SEED``. A sweep or ablation parent run carries ``ROLE`` and ``SWEEP``/``ABLATION``.
    Model versions carry the promotion's ``DECISION`` and what it was based on."""

    KIND = "raddiag.kind"
    TRAIN_NAME = "raddiag.train_name"
    DATASET_VERSION = "raddiag.dataset_version"
    CHECKPOINT = "raddiag.checkpoint"
    ROLE = "raddiag.role"
    SWEEP = "raddiag.sweep"
    TRIAL_ID = "raddiag.trial_id"
    SKIPPED = "raddiag.skipped"
    ORPHAN = "raddiag.orphan"
    BEST_RUN_ID = "raddiag.best_run_id"
    ABLATION = "raddiag.ablation"
    ARM = "raddiag.arm"
    SEED = "raddiag.seed"
    FINETUNED_FROM = "raddiag.finetuned_from"
    STAGE = "raddiag.stage"
    KNOWLEDGE_VERSION = "raddiag.knowledge_version"
    GIT_DIRTY = "raddiag.git_dirty"
    # a run imported from a published reference model (``raddiag reference``)
    IMPORTED_FROM = "raddiag.imported_from"
    SOURCE_SHA256 = "raddiag.source_sha256"
    PRESET = "raddiag.preset"
    # model-version tags written by ``raddiag promote``
    GIT_COMMIT = "raddiag.git_commit"
    RUN_ID = "raddiag.run_id"
    DECISION = "raddiag.decision"
    DECISION_METRIC = "raddiag.decision_metric"
    COMPARED_TO = "raddiag.compared_to"
    MARGIN = "raddiag.margin"
    # MLflow's own
    PARENT_RUN_ID = "mlflow.parentRunId"
    RUN_NAME = "mlflow.runName"
    SOURCE_GIT_COMMIT = "mlflow.source.git.commit"
    DATA_CONTEXT = "mlflow.data.context"

    #: The tag naming a parent run of each role (``sweep``/``ablation``) by its name.
    ROLE_NAME = {"sweep": SWEEP, "ablation": ABLATION}


def tag_filter(tags: dict[str, str]) -> str:
    """An MLflow search filter matching runs that carry every one of ``tags`` (values quoted)."""
    return " and ".join(f"tags.`{key}` = {quoted(value)}" for key, value in tags.items())


def setup(cfg: TrackingConfig) -> str:
    """Point MLflow at the configured tracking/registry URI, create the experiment; return its id.

    For the embedded sqlite default, artifacts go to ``.raddiag/mlartifacts`` next to the database.
    """
    import mlflow

    uri = cfg.resolved_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    if experiment is not None:
        return experiment.experiment_id
    location = cfg.artifact_location or None
    if location is None and uri.startswith("sqlite:///"):
        location = Path(uri.removeprefix("sqlite:///")).parent.joinpath("mlartifacts").resolve().as_uri()
    try:
        return mlflow.create_experiment(cfg.experiment, artifact_location=location)
    except Exception:  # created concurrently by another process
        return mlflow.get_experiment_by_name(cfg.experiment).experiment_id


def client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def params_from(flat: dict[str, Any]) -> dict[str, str]:
    """MLflow params from a flat config: stringified, long values truncated (MLflow's limit)."""
    return {key: str(value)[:_MAX_PARAM_LEN] for key, value in flat.items()}


def log_params(uri: str, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params_from(params).items()]
    mlflow_client = client(uri)
    for start in range(0, len(items), 90):
        mlflow_client.log_batch(run_id, params=items[start : start + 90])


def log_epoch_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int, probe: str) -> bool:
    """Log ``metrics`` at ``step`` unless ``probe`` already has that step (idempotent on restart).

    Returns False when the step was already logged (a restarted worker re-reporting an epoch).
    """
    import math

    from mlflow.entities import Metric

    mlflow_client = client(uri)
    if any(m.step == step for m in mlflow_client.get_metric_history(run_id, probe)):
        return False
    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)]
    mlflow_client.log_batch(run_id, metrics=items)
    return True


@functools.lru_cache(maxsize=1)
def source_tags() -> dict[str, str]:
    """``mlflow.source.git.commit`` (and the dirty state) of the code this process runs, read from
    the git checkout holding the ``raddiag`` package; empty when it is not in one (a shipped copy)."""
    import subprocess

    repo = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {Tags.SOURCE_GIT_COMMIT: commit, Tags.GIT_DIRTY: "true" if dirty else "false"} if commit else {}


def start_child_run(uri: str, experiment_id: str, parent_run_id: str, name: str, tags: dict[str, str] | None = None) -> str:
    """A run nested under ``parent_run_id`` (the MLflow UI shows it under the parent)."""
    all_tags = {Tags.PARENT_RUN_ID: parent_run_id, Tags.RUN_NAME: name, **source_tags(), **(tags or {})}
    return client(uri).create_run(experiment_id, tags=all_tags, run_name=name).info.run_id


def parent_run(
    uri: str, experiment_id: str, role: str, name: str, version: str, params: dict[str, Any], resume: bool
) -> str:
    """The parent run of a sweep or ablation (``role``) named ``name``: with ``resume`` the latest
    such run, set RUNNING again; else a new one tagged with the role, name and dataset version,
    with ``params`` logged."""
    mlflow_client = client(uri)
    if resume:
        found = mlflow_client.search_runs(
            [experiment_id], filter_string=tag_filter({Tags.ROLE_NAME[role]: name, Tags.ROLE: role}),
            order_by=["attributes.start_time DESC"], max_results=1,
        )
        if found:
            mlflow_client.update_run(found[0].info.run_id, status="RUNNING")
            return found[0].info.run_id
    run = mlflow_client.create_run(
        experiment_id, run_name=name,
        tags={Tags.ROLE_NAME[role]: name, Tags.ROLE: role, Tags.DATASET_VERSION: version, **source_tags()},
    )
    log_params(uri, run.info.run_id, params)
    return run.info.run_id


def quoted(value: str) -> str:
    """``value`` as a string literal of an MLflow search filter (never build one from raw text)."""
    value = str(value)
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"{value[:80]!r}: contains both quote characters; cannot be searched for in MLflow")


def child_runs(uri: str, experiment_id: str, parent_run_id: str) -> list[Any]:
    return client(uri).search_runs(
        [experiment_id], filter_string=tag_filter({Tags.PARENT_RUN_ID: parent_run_id}), max_results=10000
    )


def log_dataset_input(uri: str, run_id: str, manifest: Any, store_url: str, context: str = "training") -> None:
    """Record the store version a run trained on as an MLflow dataset input (digest = version)."""
    import mlflow.data
    import mlflow.exceptions
    from mlflow.entities import DatasetInput, InputTag

    cases = manifest.cases[["case_id", "split", "anatomy", "source"]].copy()
    cases["n_disorders"] = manifest.cases["disorders"].map(len)
    source = store_url if "://" in store_url else Path(store_url).resolve().as_uri()
    dataset = mlflow.data.from_pandas(cases, source=source, name=f"raddiag-store@{manifest.version}", digest=manifest.version)
    entity = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(Tags.DATA_CONTEXT, context)])
    try:
        client(uri).log_inputs(run_id, datasets=[entity])
    except mlflow.exceptions.MlflowException as error:
        # Sweep trials starting together race to create the experiment's dataset row (a unique
        # key); the loser's retry finds the row and only links its run to it.
        if "UNIQUE constraint" not in str(error) and "Duplicate entry" not in str(error):
            raise
        client(uri).log_inputs(run_id, datasets=[entity])
