"""The sweep report page (``raddiag report SWEEP``): HTML and its figures, from what
:mod:`raddiag.report` gathered from MLflow.

One self-contained page: a sortable leaderboard (validation), the registry's test figures,
parameter importance, a parallel-coordinates plot, long-tail learning curves and the best trial's
plots. Figures are matplotlib PNGs embedded as base64; the page fetches nothing from the network.
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from raddiag.metrics import METRIC_SPECS
from raddiag.report import GROUP_METRICS

if TYPE_CHECKING:
    from raddiag.report import SweepData

#: The metric of the group columns and the long-tail curves (:data:`raddiag.report.GROUP_METRICS`).
_HEADLINE = next(spec for spec in METRIC_SPECS if spec.headline)


def _group(metric: str) -> str:
    """``val_auc_tail`` -> ``tail``."""
    return metric.rsplit("_", 1)[1]


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
    """PNG of the validation headline metric (AUC) per epoch for the head / medium / tail groups, one
    line per trial."""
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
        ax.set_title(_group(metric) + " classes", fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"validation macro {_HEADLINE.label}")
    axes[-1].legend(fontsize=7, loc="lower right")
    return _png(fig)


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
    """The report page of ``data``: leaderboard, registry rows (test split), parameter importance,
    ``figures`` (``parallel``, ``longtail``: base64 PNGs or None) and the best trial's ``best_plots``."""
    keys, constant = _varying(data.trials)
    head = ["trial", "status", "epochs", f"best {data.metric}", "epoch", *(f"val {_group(m)}" for m in GROUP_METRICS), *keys]
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
<p class="note">Best validation value over epochs; val head / medium / tail are the group {_HEADLINE.label}s at that epoch. Click a column to sort.</p>
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


