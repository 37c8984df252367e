"""What is there: ``raddiag runs`` / ``sweeps`` / ``models`` (MLflow) and ``raddiag config show``.

Read-only: nothing here creates a database, an experiment or a run. Each listing returns plain rows
(dicts) that the CLI prints as a table or JSON.
"""

from __future__ import annotations

import json
import types
import typing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from raddiag.config import RadDiagConfig
from raddiag.metrics import headline_keys
from raddiag.tracking import Tags

#: Metrics shown beside each run (the last logged value), when the run has them: the headline metrics
#: of :data:`raddiag.metrics.METRIC_SPECS` on validation (macro first, then by group), and the test tail
#: group's (ablation arms are scored on test).
KEY_METRICS = (
    *sorted((f"val_{key}" for key in headline_keys()), key=lambda key: not key.endswith("_macro")),
    *(f"test_{key}" for key in headline_keys() if key.endswith("_tail")),
)


class NothingThere(ValueError):
    """No tracking database / experiment to list from (a one-line message naming where it looked)."""


def _client(cfg: RadDiagConfig) -> tuple[Any, str]:
    from raddiag import tracking

    uri = cfg.tracking.resolved_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise NothingThere(
            f"no MLflow database at {uri.removeprefix('sqlite:///')} (run from the project folder, or set "
            "tracking.tracking_uri / MLFLOW_TRACKING_URI)"
        )
    return tracking.client(uri), uri


def _experiment_id(client: Any, cfg: RadDiagConfig, uri: str) -> str:
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is None:
        raise NothingThere(f"no experiment {cfg.tracking.experiment!r} at {uri} (tracking.experiment)")
    return experiment.experiment_id


def _when(millis: int | None) -> str:
    if not millis:
        return ""
    return datetime.fromtimestamp(millis / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")


def _kind(tags: dict[str, str]) -> str:
    if tags.get(Tags.ROLE) == "sweep":
        return "sweep"
    if Tags.TRIAL_ID in tags:
        return "trial"
    if Tags.ABLATION in tags:
        return "ablation arm"
    if Tags.IMPORTED_FROM in tags:
        return "import"
    if Tags.FINETUNED_FROM in tags:
        return "finetune"
    if tags.get(Tags.STAGE) == "knowledge":
        return "knowledge"
    return "train"


def list_runs(cfg: RadDiagConfig, limit: int = 20, sweeps_only: bool = False) -> list[dict[str, Any]]:
    """The newest runs of ``tracking.experiment`` (or its sweeps), newest first."""
    from raddiag import tracking

    client, uri = _client(cfg)
    experiment_id = _experiment_id(client, cfg, uri)
    runs = client.search_runs(
        [experiment_id], filter_string=tracking.tag_filter({Tags.ROLE: "sweep"}) if sweeps_only else "",
        order_by=["attributes.start_time DESC"], max_results=limit,
    )
    rows = []
    for run in runs:
        tags = run.data.tags
        row = {
            "run_id": run.info.run_id, "name": run.info.run_name, "kind": _kind(tags), "status": run.info.status,
            "started": _when(run.info.start_time), "dataset_version": tags.get(Tags.DATASET_VERSION, ""),
            "metrics": {k: round(float(run.data.metrics[k]), 4) for k in KEY_METRICS if k in run.data.metrics},
        }
        if sweeps_only:
            row["sweep"] = tags.get(Tags.SWEEP, run.info.run_name)
            row["trials"] = len(tracking.child_runs(uri, experiment_id, run.info.run_id))
            row["best_run_id"] = tags.get(Tags.BEST_RUN_ID, "")
        rows.append(row)
    return rows


def list_models(cfg: RadDiagConfig) -> list[dict[str, Any]]:
    """Every registered model version with its aliases, run and origin, newest version first."""
    client, _ = _client(cfg)
    rows = []
    for model in client.search_registered_models():
        aliases: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        versions = client.search_model_versions(f"name = '{model.name}'")
        for version in sorted(versions, key=lambda v: int(v.version), reverse=True):
            tags = version.tags or {}
            origin = (
                f"imported {tags[Tags.IMPORTED_FROM]}" if Tags.IMPORTED_FROM in tags
                else tags.get(Tags.DECISION, "")
            )
            rows.append({
                "name": model.name, "version": int(version.version), "aliases": sorted(aliases.get(str(version.version), [])),
                "run_id": version.run_id or "", "created": _when(version.creation_timestamp), "origin": origin,
                "uri": f"models:/{model.name}/{version.version}",
            })
    return rows


# ---------------------------------------------------------------------------------- config show
def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " | ".join(str(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(annotation, "__name__", str(annotation))


def config_keys(model: type[BaseModel] = RadDiagConfig, prefix: str = "") -> list[dict[str, str]]:
    """Every leaf key of the config: dotted name, type, default and help text."""
    rows: list[dict[str, str]] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(config_keys(annotation, f"{key}."))
            continue
        default = field.get_default(call_default_factory=True)
        rows.append({
            "key": key, "type": _type_name(annotation), "default": json.dumps(default, default=str),
            "help": field.description or "",
        })
    return rows


def resolved_yaml(cfg: RadDiagConfig) -> str:
    """The resolved config as YAML (loads back to the same config)."""
    import yaml

    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, default_flow_style=False)


# ---------------------------------------------------------------------------------- --dry-run
def plan_summary(cfg: RadDiagConfig, verb: str) -> dict[str, Any]:
    """What ``train`` / ``sweep`` would do with ``cfg``, read from the config and the store's
    manifest only: no Ray, no MLflow write, no model built. A missing store is reported, not raised."""
    from raddiag.storage.store import StoreError

    store: dict[str, Any] = {"url": cfg.store.url}
    try:
        manifest = cfg.store.ref().manifest()
        level = cfg.data.label_level
        store |= {
            "version": manifest.version, "cases": {s: len(manifest.case_records(s)) for s in ("train", "val", "test")},
            "labels": len(manifest.label_names(level)), "plan": manifest.info.get("plan"),
        }
    except StoreError as exc:
        store["problem"] = str(exc)
    m, t = cfg.model, cfg.train
    summary: dict[str, Any] = {
        "verb": verb,
        "store": store,
        "data": {"scans_per_case": cfg.data.n_image, "slices": cfg.data.depth, "image_size": cfg.data.image_size,
                 "label_level": cfg.data.label_level, "augment": cfg.data.augment.on if cfg.data.augment.enabled else "off",
                 "train_fraction": t.fraction},
        "model": {"encoder": f"{m.encoder}-{m.backbone_depth} width {m.width}", "embed_dim": m.embed_dim,
                  "transformer": m.transformer, "fusion": m.fusion, "head": m.head, "compile": m.compile},
        "loss": cfg.loss.type,
        "train": {"name": t.name, "epochs": t.epochs, "workers": t.num_workers, "gpu": t.use_gpu,
                  "batch_per_worker": t.batch_size, "lr": t.lr, "metric": t.metric},
        "tracking": {"uri": cfg.tracking.resolved_uri(), "experiment": cfg.tracking.experiment},
        "evaluation_groups": cfg.eval.grouping,
    }
    if verb == "sweep":
        s = cfg.sweep
        summary["sweep"] = {
            "name": s.name, "trials": s.num_samples, "trial_epoch_budget": s.max_trial_epochs or "unlimited",
            "searcher": s.searcher, "scheduler": s.scheduler, "metric": f"{s.metric} ({s.mode})",
            "search_space": sorted(s.search_space),
        }
    return summary
