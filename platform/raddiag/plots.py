"""Matplotlib figures of an evaluation, written as PNG files (logged to MLflow by training).

* :func:`roc_by_group` -- mean ROC curve of the head / medium / tail classes, with a 95% band
  from case bootstrap resamples.
* :func:`auc_vs_frequency` -- per-class AUC against training frequency (the long-tail plot).
* :func:`calibration` -- reliability diagram pooled over all (case, class) pairs, with ECE.

All functions take plain arrays or a :class:`~raddiag.metrics.MetricReport`, use the ``Agg``
backend (no display needed), close their figure, and return the written path.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from raddiag.metrics import (  # noqa: E402
    GROUPS,
    MetricReport,
    calibration_bins,
    group_of_counts,
    interpolated_roc,
    interpolated_roc_replicates,
)

__all__ = ["auc_vs_frequency", "calibration", "roc_by_group"]

GROUP_COLOURS = {"head": "tab:blue", "medium": "tab:orange", "tail": "tab:red"}
_FPR_GRID = np.linspace(0.0, 1.0, 101)


def _save(fig: plt.Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return out


def _group_means(tpr: np.ndarray, groups: np.ndarray) -> dict[str, np.ndarray]:
    """Mean over classes of each group of per-class TPR curves (C, G) -> group -> (G,) (NaN if none)."""
    means = {}
    for group in GROUPS:
        rows = tpr[groups == group]
        rows = rows[~np.isnan(rows[:, 0])] if rows.size else rows
        means[group] = rows.mean(axis=0) if len(rows) else np.full(tpr.shape[1], np.nan)
    return means


def roc_by_group(
    y_true: np.ndarray,
    y_score: np.ndarray,
    train_counts: np.ndarray,
    path: str | Path,
    n_bootstrap: int = 100,
    seed: int = 0,
    *,
    head_min: int = 100,
    medium_min: int = 30,
    groups: np.ndarray | None = None,
) -> Path:
    """Macro-averaged ROC curve per group (mean TPR of the group's classes on a common FPR grid),
    with a 95% percentile band over ``n_bootstrap`` case resamples (0 = no band).

    ``y_true``/``y_score`` (n, C), ``train_counts`` (C,). Classes without both labels are left out.
    """
    truth = np.asarray(y_true)
    groups = group_of_counts(train_counts, head_min=head_min, medium_min=medium_min) if groups is None else np.asarray(groups)
    if groups.shape[0] != truth.shape[1]:
        raise ValueError(f"train_counts has {groups.shape[0]} classes, y_true {truth.shape[1]}")
    score = np.asarray(y_score)
    tpr = interpolated_roc(truth, score, _FPR_GRID)
    curves = _group_means(tpr, groups)
    bands: dict[str, list[np.ndarray]] = {group: [] for group in GROUPS}
    rng = np.random.default_rng(seed)
    n_cases = truth.shape[0]
    resamples = [np.bincount(rng.integers(0, n_cases, n_cases), minlength=n_cases) for _ in range(n_bootstrap)]
    # A class without both labels on the split has none in any resample: the band needs only the
    # others, each sorted once for all resamples.
    scored = ~np.isnan(tpr[:, 0])
    if resamples and scored.any():
        for replicate in interpolated_roc_replicates(truth[:, scored], score[:, scored], _FPR_GRID, resamples):
            for group, curve in _group_means(replicate, groups[scored]).items():
                if not np.isnan(curve).any():
                    bands[group].append(curve)

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for group in GROUPS:
        curve = curves[group]
        n_classes = int((groups == group).sum())
        if np.isnan(curve).any():
            continue
        auc = float(np.sum(np.diff(_FPR_GRID) * (curve[1:] + curve[:-1]) / 2))
        colour = GROUP_COLOURS[group]
        ax.plot(_FPR_GRID, curve, color=colour, label=f"{group} ({n_classes} classes, mean-curve AUC {auc:.3f})")
        if len(bands[group]) >= 2:
            lo, hi = np.percentile(np.stack(bands[group]), [2.5, 97.5], axis=0)
            ax.fill_between(_FPR_GRID, lo, hi, color=colour, alpha=0.2, linewidth=0)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False positive rate", ylabel="True positive rate")
    band = f", 95% band from {n_bootstrap} case resamples" if n_bootstrap else ""
    ax.set_title(f"ROC by class frequency group{band}", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def auc_vs_frequency(report: MetricReport, path: str | Path, split: str = "validation") -> Path:
    """Scatter of per-class AUC on ``split`` against training cases (log scale), coloured by group,
    with the group boundaries (count grouping) and each group's macro AUC; skipped classes are
    counted in the legend."""
    frame = report.per_class
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for group in GROUPS:
        rows = frame[(frame["group"] == group) & frame["evaluated"]]
        skipped = report.counts[group]["n_skipped"]
        mean = report.summary[group]["auc"]
        label = f"{group}: {len(rows)} classes" + (f" ({skipped} skipped)" if skipped else "")
        if np.isfinite(mean):
            label += f", macro AUC {mean:.3f}"
        ax.scatter(
            np.maximum(rows["train_count"], 1), rows["auc"], s=10, alpha=0.6, color=GROUP_COLOURS[group], label=label
        )
        if len(rows) and np.isfinite(mean):
            ax.hlines(
                mean,
                max(float(rows["train_count"].min()), 1.0),
                max(float(rows["train_count"].max()), 1.0),
                color=GROUP_COLOURS[group],
                linewidth=2,
            )
    if not report.grouping or "training cases" in report.grouping:  # count thresholds (rank groups have none)
        for boundary in (report.medium_min, report.head_min):
            ax.axvline(boundary, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set(xlabel="Training cases per class (log)", ylabel=f"AUC ({split} split)", ylim=(0, 1.02))
    ax.set_title("Per-class AUC against training frequency", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def calibration(y_true: np.ndarray, y_score: np.ndarray, path: str | Path, n_bins: int = 10) -> Path:
    """Reliability diagram (fraction positive against mean score per bin, all (case, class) pairs
    pooled; ``y_score`` are probabilities) with a log-scale histogram of bin counts below."""
    bins = calibration_bins(y_true, y_score, n_bins=n_bins)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfectly calibrated")
    top.plot(bins["mean_score"], bins["frac_pos"], marker="o", color="tab:blue", label="model")
    top.set(ylabel="Fraction of positives", xlim=(0, 1), ylim=(0, 1))
    pairs = int(bins["count"].sum())
    top.set_title(f"Calibration (ECE {bins.attrs['ece']:.4f}, {pairs} case-class pairs)", fontsize=10)
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    widths = bins["upper"] - bins["lower"]
    bottom.bar(bins["lower"], bins["count"], width=widths, align="edge", color="tab:blue", alpha=0.6)
    bottom.set_yscale("log")
    bottom.set(xlabel="Predicted probability", ylabel="Count")
    return _save(fig, path)
