"""``raddiag report SWEEP``: one self-contained HTML page about a sweep, read from MLflow.

Sections: a sortable leaderboard of the trials (child runs of the sweep's parent run), parameter
importance (Optuna's fANOVA over the sampled parameters), a parallel-coordinates plot, long-tail
learning curves (validation AUC of the head / medium / tail groups per epoch, every trial), and the
best trial's ROC by group and per-class AUC against training frequency. Figures are matplotlib PNGs
embedded as base64; the page fetches nothing from the network.
"""

from __future__ import annotations

import ast
import base64
import html
import io
import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raddiag.config import RadDiagConfig

GROUP_METRICS = ("val_auc_head", "val_auc_medium", "val_auc_tail")


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
                name=run.data.tags.get("mlflow.runName", run.info.run_id[:8]),
                status=run.info.status,
                params={k.removeprefix("sampled."): v for k, v in run.data.params.items() if k.startswith("sampled.")},
                history=history,
            )
        )
    sign = 1 if mode == "max" else -1
    trials.sort(key=lambda t: -sign * (t.best(metric, mode)[0] if math.isfinite(t.best(metric, mode)[0]) else -sign * 1e9))
    return SweepData(
        name=sweep_name, parent_run_id=parent.info.run_id, metric=metric, mode=mode,
        best_run_id=parent.data.tags.get("raddiag.best_run_id", trials[0].run_id if trials else ""),
        search_space=space, trials=trials, dataset_version=parent.data.tags.get("raddiag.dataset_version", "?"),
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


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _numeric_axis(values: list[str], spec: dict[str, Any] | None) -> tuple[np.ndarray, list[str] | None]:
    """Values in [0, 1] for a parallel-coordinates axis (+ tick labels for categorical axes)."""
    if spec and "choice" in spec:
        choices = [str(c) for c in spec["choice"]]
        index = np.array([choices.index(v) if v in choices else np.nan for v in values], dtype=float)
        return index / max(len(choices) - 1, 1), choices
    numbers = np.array([float(v) if v not in ("", None) else np.nan for v in values], dtype=float)
    low, high = (spec.get("uniform") or spec.get("loguniform") or spec.get("int")) if spec else (np.nanmin(numbers), np.nanmax(numbers))
    if spec and "loguniform" in spec:
        numbers, low, high = np.log10(numbers), math.log10(low), math.log10(high)
    return (numbers - low) / ((high - low) or 1.0), None


def parallel_coordinates(data: SweepData) -> str | None:
    """PNG (base64) of the trials over the sampled parameters and the metric, coloured by the metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = [t for t in data.trials if math.isfinite(t.best(data.metric, data.mode)[0])]
    keys = sorted({k for t in trials for k in t.params})
    if not trials or not keys:
        return None
    values = np.array([t.best(data.metric, data.mode)[0] for t in trials])
    columns = []
    for key in keys:
        column, ticks = _numeric_axis([t.params.get(key, "") for t in trials], data.search_space.get(key))
        columns.append((key, column, ticks))
    span = (values.max() - values.min()) or 1.0
    columns.append((data.metric, (values - values.min()) / span, None))
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(columns)), 4.2))
    cmap = plt.get_cmap("viridis")
    xs = np.arange(len(columns))
    for row, value in enumerate(values):
        ys = np.array([column[row] for _, column, _ in columns])
        ax.plot(xs, ys, color=cmap((value - values.min()) / span), alpha=0.8, marker="o", markersize=3)
    for x, (_key, _, ticks) in enumerate(columns):
        ax.axvline(x, color="grey", linewidth=0.8)
        if ticks:
            for position, label in enumerate(ticks):
                ax.annotate(label, (x, position / max(len(ticks) - 1, 1)), fontsize=7, xytext=(3, 0), textcoords="offset points")
    ax.set_xticks(xs, [key for key, _, _ in columns], rotation=30, ha="right", fontsize=8)
    ax.set_yticks([0, 1], ["low", "high"])
    ax.set_title(f"Parallel coordinates ({len(trials)} trials; colour = best {data.metric}, "
                 f"{values.min():.3f}–{values.max():.3f})", fontsize=9)
    return _png(fig)


def longtail_curves(data: SweepData) -> str | None:
    """PNG of validation AUC per epoch for the head / medium / tail groups, one line per trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(t.history.get(m) for t in data.trials for m in GROUP_METRICS):
        return None
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
    for ax, metric in zip(axes, GROUP_METRICS):
        for trial in data.trials:
            points = trial.history.get(metric, [])
            if points:
                style = "-" if trial.run_id == data.best_run_id else "--"
                ax.plot([s for s, _ in points], [v for _, v in points], style, marker="o", markersize=3,
                        label=trial.name + (" (best)" if trial.run_id == data.best_run_id else ""))
        ax.set_title(metric.removeprefix("val_auc_") + " classes", fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation macro AUC")
    axes[-1].legend(fontsize=7, loc="lower right")
    return _png(fig)


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
        checkpoint = client.get_run(data.best_run_id).data.tags.get("raddiag.checkpoint")
        if not checkpoint:
            return {}, f"run {data.best_run_id} logged no plots and has no checkpoint"
        return _plots_from_checkpoint(cfg, checkpoint, directory), f"computed from checkpoint {checkpoint} (validation split)"


def _plots_from_checkpoint(cfg: RadDiagConfig, checkpoint: str, scratch: str) -> dict[str, str]:
    from raddiag import plots
    from raddiag.data.pipeline import local_batches
    from raddiag.metrics import evaluate_scores
    from raddiag.registry import _local_checkpoint
    from raddiag.serve.pyfunc import load_network
    from raddiag.train.loop import predict

    local = _local_checkpoint(checkpoint, scratch)
    model, meta = load_network(local)
    model_cfg = RadDiagConfig.model_validate(meta["config"]).model_copy(update={"store": cfg.store})
    records = cfg.store.ref().manifest().case_records("val")
    _, scores, labels = predict(model, local_batches(records, model_cfg, meta["label_names"], 8))
    counts = np.asarray(meta["train_counts"])
    groups, rule = model_cfg.eval.groups(counts, model_cfg.data.label_level)
    report = evaluate_scores(labels, scores, counts, label_names=meta["label_names"], groups=groups, grouping=rule)
    out = {}
    out["roc_by_group.png"] = plots.roc_by_group(labels, scores, counts, Path(scratch, "roc.png"), n_bootstrap=50, groups=groups)
    out["auc_vs_frequency.png"] = plots.auc_vs_frequency(report, Path(scratch, "auc.png"))
    return {name: base64.b64encode(Path(path).read_bytes()).decode("ascii") for name, path in out.items()}


def _fmt(value: Any) -> str:
    """Floats (and numeric parameter strings such as '0.17367144413306937') at 4 significant digits."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return html.escape(value)
        if value.strip().lower() in ("nan", "inf", "-inf", "true", "false") or value.isdigit():
            return html.escape(value)
        value = number
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        return f"{value:.4g}" if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4) else f"{value:.4f}"
    return html.escape(str(value))


def _varying(trials: list[Any]) -> tuple[list[str], dict[str, str]]:
    """Parameter keys whose value differs between trials, and the constant ones with their value."""
    keys = sorted({k for t in trials for k in t.params})
    varying = [k for k in keys if len({t.params.get(k, "") for t in trials}) > 1]
    constant = {k: trials[0].params.get(k, "") for k in keys if k not in varying} if trials else {}
    return varying, constant


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
            "run": version.run_id, "decision": tags.get("raddiag.decision", ""),
            **{f"test {g}": tags.get(f"test_auc_{g}", "") for g in ("head", "medium", "tail", "macro")},
        })
    return rows


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1280px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ddd;padding:4px 8px;text-align:left}
th{background:#f3f5f7;cursor:pointer;user-select:none}tr.best{background:#eef7ee;font-weight:600}
.bar{background:#4c78a8;height:12px;display:inline-block}.note{color:#666;font-size:12px}
img{max-width:100%;border:1px solid #eee}.meta{color:#555;font-size:13px}
.scroll{overflow-x:auto;max-width:100%}
"""

# Click a header to sort the leaderboard (numbers numerically, missing values last).
_JS = """
document.querySelectorAll('table.sortable th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var asc = th.dataset.order !== 'asc'; th.dataset.order = asc ? 'asc' : 'desc';
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.v || a.cells[col].textContent, y = b.cells[col].dataset.v || b.cells[col].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      if (!isNaN(nx) && !isNaN(ny)) { return asc ? nx - ny : ny - nx; }
      if (isNaN(nx) !== isNaN(ny)) { return isNaN(nx) ? 1 : -1; }
      return asc ? x.localeCompare(y) : y.localeCompare(x);
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
document.body.dataset.ready = '1';
"""


def render_html(data: SweepData, importances: dict[str, float], importance_note: str,
                figures: dict[str, str | None], best_plots: dict[str, str], best_note: str,
                registry: list[dict[str, Any]] | None = None) -> str:
    keys, constant = _varying(data.trials)
    head = ["trial", "status", "epochs", f"best {data.metric}", "epoch", "val head", "val medium", "val tail", *keys]
    rows = []
    for trial in data.trials:
        value, step = trial.best(data.metric, data.mode)
        cells = [trial.name, trial.status, len(trial.history.get(data.metric, [])), value, step if step is not None else "–",
                 *(trial.at(m, step) for m in GROUP_METRICS), *(trial.params.get(k, "") for k in keys)]
        css = ' class="best"' if trial.run_id == data.best_run_id else ""
        tds = "".join(f'<td data-v="{_fmt(c)}">{_fmt(c)}</td>' for c in cells)
        rows.append(f"<tr{css}>{tds}</tr>")
    imp_rows = "".join(
        f'<tr><td>{html.escape(k)}</td><td>{v:.3f}</td><td><span class="bar" style="width:{max(1, int(300 * v))}px"></span></td></tr>'
        for k, v in sorted(importances.items(), key=lambda kv: -kv[1])
    )

    constant_note = ("Same in every trial (not shown as columns): " + ", ".join(f"{k}={_fmt(v)}" for k, v in constant.items())
                     if constant else "")
    registry = registry or []
    if registry:
        columns = list(registry[0])
        registry_html = ('<div class="scroll"><table id="registry"><thead><tr>' + "".join(f"<th>{html.escape(c)}</th>" for c in columns)
                         + "</tr></thead><tbody>" + "".join("<tr>" + "".join(f"<td>{_fmt(r[c])}</td>" for c in columns) + "</tr>" for r in registry)
                         + "</tbody></table></div>")
    else:
        registry_html = '<p class="note">No trial of this sweep is registered yet (raddiag promote --sweep NAME evaluates the best trial on the test split and registers it).</p>'

    def image(b64: str | None, alt: str) -> str:
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">' if b64 else f'<p class="note">{html.escape(alt)}: no data</p>'

    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>raddiag sweep {html.escape(data.name)}</title>
<style>{_CSS}</style></head><body>
<h1>Sweep <code>{html.escape(data.name)}</code></h1>
<p class="meta">parent run {html.escape(data.parent_run_id)} · dataset version {html.escape(data.dataset_version)} ·
{len(data.trials)} trials · metric {html.escape(data.metric)} ({html.escape(data.mode)}) · best run {html.escape(data.best_run_id)}</p>
<h2>Leaderboard (validation split)</h2>
<p class="note">Best validation value over epochs; val head / medium / tail are the group AUCs at that epoch. Click a column to sort.</p>
<div class="scroll"><table class="sortable" id="leaderboard"><thead><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr></thead>
<tbody>{''.join(rows)}</tbody></table></div>
<p class="note">{html.escape(constant_note)}</p>
<h2>Registry: test split</h2>
{registry_html}
<h2>Parameter importance</h2>
<p class="note">{html.escape(importance_note)}</p>
<table id="importance"><tbody>{imp_rows}</tbody></table>
<h2>Parallel coordinates</h2>
{image(figures.get('parallel'), 'parallel coordinates')}
<h2>Long tail: validation AUC by class-frequency group</h2>
{image(figures.get('longtail'), 'long-tail learning curves')}
<h2>Best trial (validation split)</h2>
<p class="note">{html.escape(best_note)}</p>
{image(best_plots.get('roc_by_group.png'), 'ROC by group')}
{image(best_plots.get('auc_vs_frequency.png'), 'per-class AUC against training frequency')}
<script>{_JS}</script>
</body></html>
"""


def build_report(cfg: RadDiagConfig, sweep_name: str, output: Path) -> dict[str, Any]:
    """Write the report of ``sweep_name`` to ``output``; returns a small summary."""
    from raddiag import tracking

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
