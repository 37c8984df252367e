"""Paired comparisons of models trained with several seeds and scored on the same test cases.

The unit of an ablation is an *arm* (a config overlay) trained with seeds ``s_1..s_S``; every run
scores the same test cases. A group metric (macro AUC/AP/F1 over the head, medium or tail classes)
of an arm is the mean over its seeds. Its 95% CI comes from a two-level bootstrap: each replicate
draws S seeds with replacement *and* the test cases with replacement; the same draw is used for
every arm, so the difference between two arms is paired (seed i of arm A against seed i of arm B,
on the same cases). Intervals are bias-corrected percentile intervals of the replicates.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raddiag.metrics import GROUPS, ReplicateCurves, curve_stats, group_of_counts, sort_block

TABLE_METRICS = ("auc", "ap", "f1")
TABLE_GROUPS = GROUPS + ("all",)


@dataclass
class Estimate:
    """A point estimate with its 95% percentile interval."""

    mean: float
    low: float
    high: float

    def as_list(self) -> list[float]:
        return [round(self.mean, 4), round(self.low, 4), round(self.high, 4)]

    def text(self, scale: float = 100.0, signed: bool = False) -> str:
        sign = "+" if signed else ""
        return f"{self.mean * scale:{sign}.2f} [{self.low * scale:{sign}.2f}, {self.high * scale:{sign}.2f}]"


@dataclass
class AblationTable:
    """Arms × groups × metrics with CIs, per-seed values, and paired differences."""

    arms: list[str]
    seeds: list[int]
    estimates: dict[str, dict[str, dict[str, Estimate]]]  # arm -> group -> metric
    per_seed: dict[str, dict[int, dict[str, dict[str, float]]]]  # arm -> seed -> group -> metric
    differences: dict[str, dict[str, dict[str, Estimate]]]  # "A - B" -> group -> metric
    n_cases: int
    n_bootstrap: int
    counts: dict[str, int] = field(default_factory=dict)  # classes per group

    def to_json(self) -> dict[str, Any]:
        def tree(values: dict[str, dict[str, dict[str, Estimate]]]) -> dict[str, Any]:
            return {k: {g: {m: e.as_list() for m, e in row.items()} for g, row in v.items()} for k, v in values.items()}

        return {
            "arms": self.arms, "seeds": self.seeds, "n_test_cases": self.n_cases, "n_bootstrap": self.n_bootstrap,
            "classes_per_group": self.counts, "format": "[mean, ci_low, ci_high]",
            "estimates": tree(self.estimates), "differences": tree(self.differences),
            "per_seed": {a: {str(s): v for s, v in seeds.items()} for a, seeds in self.per_seed.items()},
        }

    def markdown(self, metrics: tuple[str, ...] = TABLE_METRICS) -> str:
        """The paper-shaped table (x100, mean over seeds [95% CI]) and the paired differences."""
        groups = [g for g in TABLE_GROUPS if self.counts.get(g)]
        lines = []
        for metric in metrics:
            lines += [f"**{metric.upper()}** (x100, mean of {len(self.seeds)} seeds [95% CI])", ""]
            lines += ["| arm | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
            for arm in self.arms:
                lines.append(f"| {arm} | " + " | ".join(self.estimates[arm][g][metric].text() for g in groups) + " |")
            lines.append("")
        if self.differences:
            lines += ["**Paired differences** (x100 [95% CI]; * = CI excludes 0)", ""]
            columns = [(g, m) for m in metrics for g in groups]
            lines += ["| difference | " + " | ".join(f"{m.upper()} {g}" for g, m in columns) + " |"]
            lines.append("|---|" + "---|" * len(columns))
            for name, rows in self.differences.items():
                cells = []
                for g, m in columns:
                    est = rows[g][m]
                    star = "*" if est.low > 0 or est.high < 0 else ""
                    cells.append(est.text(signed=True) + star)
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            lines.append("")
        lines.append(
            f"Test cases: {self.n_cases}; seeds: {', '.join(map(str, self.seeds))}; bootstrap: {self.n_bootstrap} "
            "replicates over seeds and test cases (paired across arms)."
        )
        return "\n".join(lines)


class _Sorted:
    """One run's test scores sorted per class once (rows = classes): its metrics, and its bootstrap
    replicates through :class:`~raddiag.metrics.ReplicateCurves` (the curve of the drawn cases)."""

    def __init__(self, truth: np.ndarray, scores: np.ndarray) -> None:
        order, s, y = sort_block(np.ascontiguousarray(scores.T, dtype=np.float64), np.ascontiguousarray(truth.T.astype(bool)))
        self.point = curve_stats(s, y)
        self.rows = np.flatnonzero(self.point["valid"])  # classes with both labels: the others stay NaN
        self.curves = ReplicateCurves(order[self.rows], s[self.rows], y[self.rows], None) if self.rows.size else None

    def metrics(self, weights: np.ndarray | None, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Per-class ``names`` (C,) on the test cases, or on the resample with case multiplicities ``weights``."""
        if weights is None:
            return {name: self.point[name] for name in names}
        out = {name: np.full(self.point["valid"].shape, np.nan) for name in names}
        if self.curves is not None:
            values = self.curves.values(weights, names)
            for j, name in enumerate(names):
                out[name][self.rows] = values[:, j]
        return out


def _group_means(stats: dict[str, np.ndarray], groups: np.ndarray, metrics: tuple[str, ...]) -> np.ndarray:
    """(len(TABLE_GROUPS), len(metrics)) macro means over each group's evaluable classes."""
    out = np.full((len(TABLE_GROUPS), len(metrics)), np.nan)
    for gi, group in enumerate(TABLE_GROUPS):
        members = np.ones(groups.shape, bool) if group == "all" else groups == group
        for mi, metric in enumerate(metrics):
            values = stats[metric][members]
            values = values[np.isfinite(values)]
            if values.size:
                out[gi, mi] = values.mean()
    return out


def paired_bootstrap(
    runs: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]],
    train_counts: np.ndarray,
    comparisons: list[tuple[str, str]],
    n_bootstrap: int = 1000,
    seed: int = 0,
    metrics: tuple[str, ...] = TABLE_METRICS,
    groups: np.ndarray | None = None,
) -> AblationTable:
    """The ablation table of ``runs`` (arm -> seed -> (truth (n, C) 0/1, scores (n, C))), every run
    scored on the same n test cases with the same labels. ``comparisons``: (A, B) pairs whose
    difference A - B is reported. Groups come from ``train_counts`` (C,) (head >= 100, tail < 30)
    unless ``groups`` (C,) names each class's group (e.g. ``cfg.eval.groups``)."""
    arms = list(runs)
    if not arms:
        raise ValueError("paired_bootstrap needs at least one arm")
    seeds = sorted(runs[arms[0]])
    for arm in arms:
        if sorted(runs[arm]) != seeds:
            raise ValueError(f"arm {arm!r} has seeds {sorted(runs[arm])}, expected {seeds} (every arm needs every seed)")
    for a, b in comparisons:
        if a not in runs or b not in runs:
            raise ValueError(f"comparison {a} - {b}: unknown arm (arms: {', '.join(arms)})")
    truth = runs[arms[0]][seeds[0]][0]
    for arm in arms:
        for s in seeds:
            if runs[arm][s][0].shape != truth.shape or not np.array_equal(runs[arm][s][0], truth):
                raise ValueError(f"arm {arm!r} seed {s}: test labels differ from the first run's (not the same test cases)")
    groups = group_of_counts(np.asarray(train_counts)) if groups is None else np.asarray(groups)
    n_cases = truth.shape[0]
    sorted_runs = {arm: {s: _Sorted(*runs[arm][s]) for s in seeds} for arm in arms}

    point = {arm: {s: _group_means(sorted_runs[arm][s].metrics(None, metrics), groups, metrics) for s in seeds} for arm in arms}
    rng = np.random.default_rng(seed)
    draws = np.full((n_bootstrap, len(arms), len(TABLE_GROUPS), len(metrics)), np.nan)
    for b in range(n_bootstrap):
        seed_draw = rng.integers(0, len(seeds), len(seeds))
        weights = np.bincount(rng.integers(0, n_cases, n_cases), minlength=n_cases)
        for ai, arm in enumerate(arms):
            cache: dict[int, np.ndarray] = {}
            values = []
            for index in seed_draw:
                if index not in cache:
                    cache[index] = _group_means(sorted_runs[arm][seeds[index]].metrics(weights, metrics), groups, metrics)
                values.append(cache[index])
            with warnings.catch_warnings():  # a group with no evaluable class in a replicate stays NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                draws[b, ai] = np.nanmean(np.stack(values), axis=0)

    def estimate(mean: float, samples: np.ndarray) -> Estimate:
        """Bias-corrected percentile interval [q2.5 - b, q97.5 - b], b = mean(replicates) - m: it
        removes the shift of statistics that resampling biases (max-F1 over thresholds rises on
        resamples with duplicated cases, which puts plain percentile intervals above the estimate
        itself); for AUC b is about 0 and this is the plain percentile interval."""
        samples = samples[np.isfinite(samples)]
        if not samples.size or not math.isfinite(mean):
            return Estimate(mean, math.nan, math.nan)
        bias = float(samples.mean()) - mean
        low, high = np.percentile(samples, [2.5, 97.5])
        return Estimate(float(mean), float(low - bias), float(high - bias))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        means = {arm: np.nanmean(np.stack([point[arm][s] for s in seeds]), axis=0) for arm in arms}
    estimates = {
        arm: {
            g: {m: estimate(means[arm][gi, mi], draws[:, ai, gi, mi]) for mi, m in enumerate(metrics)}
            for gi, g in enumerate(TABLE_GROUPS)
        }
        for ai, arm in enumerate(arms)
    }
    differences = {}
    for a, b in comparisons:
        ia, ib = arms.index(a), arms.index(b)
        differences[f"{a} - {b}"] = {
            g: {
                m: estimate(means[a][gi, mi] - means[b][gi, mi], draws[:, ia, gi, mi] - draws[:, ib, gi, mi])
                for mi, m in enumerate(metrics)
            }
            for gi, g in enumerate(TABLE_GROUPS)
        }
    per_seed = {
        arm: {
            s: {g: {m: round(float(point[arm][s][gi, mi]), 4) for mi, m in enumerate(metrics)} for gi, g in enumerate(TABLE_GROUPS)}
            for s in seeds
        }
        for arm in arms
    }
    counts = {g: int((groups == g).sum()) for g in GROUPS} | {"all": int(len(groups))}
    return AblationTable(arms, seeds, estimates, per_seed, differences, n_cases, n_bootstrap, counts)
