"""``raddiag report SWEEP``: one self-contained HTML page about a sweep, read from MLflow.

This module gathers what the page shows: the trials (child runs of the sweep's parent run) with
their per-epoch histories, parameter importance (Optuna's fANOVA over the sampled parameters), the
registered versions made from the sweep with their test figures, and the best trial's ROC by group
and per-class AUC against training frequency (its logged PNGs, else computed from its checkpoint).
:mod:`raddiag.views.html` renders the page: leaderboard, parallel coordinates, long-tail learning
curves (validation AUC of the head / medium / tail groups per epoch, every trial).
"""

from __future__ import annotations

import ast
import base64
import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raddiag.config import RadDiagConfig
from raddiag.metrics import GROUPS, headline_keys
from raddiag.tracking import Tags

#: Per-epoch validation metrics of each class-frequency group: the headline metric (AUC) of
#: :data:`raddiag.metrics.METRIC_SPECS` by group (``val_auc_head`` ...), the leaderboard's group columns.
GROUP_METRICS = tuple(f"val_{key}" for key in headline_keys() if key.rsplit("_", 1)[1] in GROUPS)


@dataclass
class Trial:
    run_id: str
    name: str
    status: str
    params: dict[str, str]
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def best(self, metric: str, mode: str = "max") -> tuple[float, int | None]:
        """(best value of ``metric`` over epochs, its epoch)."""
        points = [(v, s) for s, v in self.history.get(metric, []) if math.isfinite(v)]
        if not points:
            return math.nan, None
        value, step = (max if mode == "max" else min)(points)
        return value, step

    def at(self, metric: str, step: int | None) -> float:
        for s, v in self.history.get(metric, []):
            if s == step:
                return v
        return math.nan


@dataclass
class SweepData:
    name: str
    parent_run_id: str
    metric: str
    mode: str
    best_run_id: str
    search_space: dict[str, dict[str, Any]]
    trials: list[Trial]
    dataset_version: str


def collect(cfg: RadDiagConfig, sweep_name: str) -> SweepData:
    """The sweep's parent run, its child runs and their per-epoch metric histories."""
    from raddiag import tracking
    from raddiag.registry import find_sweep

    parent = find_sweep(cfg, sweep_name)
    uri = cfg.tracking.resolved_uri()
    client = tracking.client(uri)
    params = parent.data.params
    metric = params.get("sweep.metric", cfg.sweep.metric)
    mode = params.get("sweep.mode", cfg.sweep.mode)
    try:
        space = ast.literal_eval(params.get("sweep.search_space", "{}"))
    except (ValueError, SyntaxError):
        space = {}
    trials = []
    for run in tracking.child_runs(uri, parent.info.experiment_id, parent.info.run_id):
        history = {
            key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            for key in (metric, *GROUP_METRICS, "train_loss")
        }
        trials.append(
            Trial(
                run_id=run.info.run_id,
                name=run.data.tags.get(Tags.RUN_NAME, run.info.run_id[:8]),
                status=run.info.status,
                params={k.removeprefix("sampled."): v for k, v in run.data.params.items() if k.startswith("sampled.")},
                history=history,
            )
        )
    sign = 1 if mode == "max" else -1
    trials.sort(key=lambda t: -sign * (t.best(metric, mode)[0] if math.isfinite(t.best(metric, mode)[0]) else -sign * 1e9))
    return SweepData(
        name=sweep_name, parent_run_id=parent.info.run_id, metric=metric, mode=mode,
        best_run_id=parent.data.tags.get(Tags.BEST_RUN_ID, trials[0].run_id if trials else ""),
        search_space=space, trials=trials, dataset_version=parent.data.tags.get(Tags.DATASET_VERSION, "?"),
    )


def _distribution(spec: dict[str, Any]) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if "choice" in spec:
        return CategoricalDistribution(spec["choice"])
    if "int" in spec:
        return IntDistribution(*spec["int"])
    low, high = spec.get("uniform") or spec.get("loguniform")
    return FloatDistribution(low, high, log="loguniform" in spec)


def _typed(value: str, spec: dict[str, Any]) -> Any:
    if "choice" in spec:
        for choice in spec["choice"]:
            if str(choice) == value:
                return choice
        raise ValueError(value)
    return int(float(value)) if "int" in spec else float(value)


def param_importance(data: SweepData) -> tuple[dict[str, float], str]:
    """fANOVA importance of the sampled parameters for the sweep metric; (importances, note)."""
    import optuna

    scored = [(t, t.best(data.metric, data.mode)[0]) for t in data.trials]
    scored = [(t, v) for t, v in scored if math.isfinite(v)]
    if len(scored) < 2:
        return {}, f"needs at least 2 trials with {data.metric}; this sweep has {len(scored)}"
    study = optuna.create_study(direction="maximize" if data.mode == "max" else "minimize")
    for trial, value in scored:
        params, dists = {}, {}
        for key, raw in trial.params.items():
            spec = data.search_space.get(key)
            if spec is None:
                continue
            try:
                params[key] = _typed(raw, spec)
            except ValueError:
                continue
            dists[key] = _distribution(spec)
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value))
    try:
        importances = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
        )
    except (ValueError, RuntimeError) as exc:
        return {}, f"not computable for these trials ({exc})"
    note = "Optuna fANOVA over the parameters sampled in every trial"
    if len(scored) < 8:
        note += f"; with {len(scored)} trials this is indicative only"
    return dict(importances), note


def best_trial_plots(cfg: RadDiagConfig, data: SweepData) -> tuple[dict[str, str], str]:
    """ROC by group and AUC vs frequency of the best trial: the PNGs its last epoch logged to MLflow,
    else computed from its checkpoint on the validation split. ({name: base64}, provenance)."""
    from raddiag import tracking

    if not data.best_run_id:
        return {}, "no best trial"
    client = tracking.client(cfg.tracking.resolved_uri())
    wanted = ("roc_by_group.png", "auc_vs_frequency.png")
    with tempfile.TemporaryDirectory() as directory:
        try:
            names = {Path(a.path).name for a in client.list_artifacts(data.best_run_id, "plots")}
        except Exception:
            names = set()
        if all(name in names for name in wanted):
            out = {}
            for name in wanted:
                local = client.download_artifacts(data.best_run_id, f"plots/{name}", directory)
                out[name] = base64.b64encode(Path(local).read_bytes()).decode("ascii")
            return out, f"logged by run {data.best_run_id} at its last epoch (validation split)"
        checkpoint = client.get_run(data.best_run_id).data.tags.get(Tags.CHECKPOINT)
        if not checkpoint:
            return {}, f"run {data.best_run_id} logged no plots and has no checkpoint"
        return _plots_from_checkpoint(cfg, checkpoint, directory), f"computed from checkpoint {checkpoint} (validation split)"


def _plots_from_checkpoint(cfg: RadDiagConfig, checkpoint: str, scratch: str) -> dict[str, str]:
    from raddiag import plots
    from raddiag.data.pipeline import local_batches
    from raddiag.metrics import evaluate_scores
    from raddiag.serve.bundle import ModelBundle
    from raddiag.storage.store import RECORD_COLUMNS
    from raddiag.train.loop import predict

    bundle = ModelBundle.from_checkpoint(checkpoint).on_store(cfg.store.ref())
    model_cfg = bundle.config
    records = cfg.store.ref().manifest(RECORD_COLUMNS).case_records("val")
    _, scores, labels = predict(bundle.network, local_batches(records, model_cfg, bundle.label_names, 8))
    counts = np.asarray(bundle.train_counts)
    groups, rule = model_cfg.eval.groups(counts, model_cfg.data.label_level)
    report = evaluate_scores(labels, scores, counts, label_names=bundle.label_names, groups=groups, grouping=rule)
    out = {}
    out["roc_by_group.png"] = plots.roc_by_group(labels, scores, counts, Path(scratch, "roc.png"), n_bootstrap=50, groups=groups)
    out["auc_vs_frequency.png"] = plots.auc_vs_frequency(report, Path(scratch, "auc.png"))
    return {name: base64.b64encode(Path(path).read_bytes()).decode("ascii") for name, path in out.items()}


def registry_rows(cfg: RadDiagConfig, data: "SweepData") -> list[dict[str, Any]]:
    """Registered versions made from this sweep's trials: version, aliases, decision, test metrics."""
    from raddiag import tracking

    client = tracking.client(cfg.tracking.resolved_uri())
    run_ids = {t.run_id for t in data.trials}
    rows = []
    try:
        versions = client.search_model_versions(f"name = {tracking.quoted(cfg.tracking.registered_model)}")
        aliases = client.get_registered_model(cfg.tracking.registered_model).aliases if versions else {}
    except Exception:  # no registered model yet
        return []
    for version in sorted(versions, key=lambda v: int(v.version)):
        if version.run_id not in run_ids:
            continue
        tags = version.tags or {}
        rows.append({
            "version": version.version, "aliases": ", ".join(a for a, v in (aliases or {}).items() if str(v) == str(version.version)),
            "run": version.run_id, "decision": tags.get(Tags.DECISION, ""),
            **{f"test {key.rsplit('_', 1)[1]}": tags.get(f"test_{key}", "") for key in headline_keys()},
        })
    return rows


def build_report(cfg: RadDiagConfig, sweep_name: str, output: Path) -> dict[str, Any]:
    """Write the report of ``sweep_name`` to ``output``; returns a small summary."""
    from raddiag import tracking
    from raddiag.views.html import longtail_curves, parallel_coordinates, render_html

    tracking.setup(cfg.tracking)
    data = collect(cfg, sweep_name)
    importances, note = param_importance(data)
    figures = {"parallel": parallel_coordinates(data), "longtail": longtail_curves(data)}
    best_plots, best_note = best_trial_plots(cfg, data)
    page = render_html(data, importances, note, figures, best_plots, best_note, registry_rows(cfg, data))
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(page)
    return {
        "n_trials": len(data.trials), "best_run_id": data.best_run_id, "importances": importances,
        "figures": sorted(k for k, v in {**figures, **best_plots}.items() if v), "bytes": len(page),
        "summary": json.dumps({t.name: t.best(data.metric, data.mode)[0] for t in data.trials}),
    }
