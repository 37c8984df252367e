"""Per-class diagnostic metrics, macro-averaged over head / medium / tail classes (design §1).

Inputs are ``y_true`` (n cases, C classes) in {0, 1} and ``y_score`` (n, C) sigmoid scores (any real
scores work: only their order and the chosen thresholds matter). Per class:

============ ===================================================================================
column       definition
============ ===================================================================================
auc          area under the ROC curve (ties handled as in scikit-learn)
ap           average precision, ``Σ (R_k - R_{k-1}) P_k`` (scikit-learn's definition)
f1           max F1 over all thresholds; ties go to the lowest threshold (as the paper's code)
mcc          Matthews correlation at that F1-max ``threshold`` (predict ``score >= threshold``)
r01 ... r50  TPR at the ROC point whose FPR is nearest 0.01 / 0.05 / 0.1 / 0.2 / 0.5 (the official evaluation), on scikit-learn's
             ``roc_curve`` (``drop_intermediate=True``), first point on ties -- exactly the paper.
             Beware: when the nearest FPR is a vertical run (e.g. FPR 0 with few negatives) the
             first point is its bottom, so a perfect ranking can score 0; see ``r*_interp``
r*_interp    TPR of the ROC curve linearly interpolated at FPR = x (top of a vertical segment)
f1_val ...   honest variant: thresholds chosen on the validation split, applied to this split:
             ``f1_val``/``mcc_val`` at the validation F1-max threshold, ``r*_val`` the TPR at the
             lowest validation threshold whose validation FPR is <= x
============ ===================================================================================

A class is evaluated only if the split holds at least one positive and one negative case (the
paper's rule); others are skipped and counted per group. Groups come from *training* counts:
head >= 100, medium 30-99, tail < 30. Group values are macro means over evaluated classes.
Bootstrap CIs resample cases with replacement (seeded), recompute every per-class metric and
group mean, and report the 2.5 / 97.5 percentiles.

Everything is vectorised over classes: each block of classes is sorted once (one ``argsort``),
all curves come from cumulative sums, and bootstrap replicates reuse that order through case
multiplicities (a case drawn k times weighs k), which gives exactly the metrics of the resample.
Replicates re-score only the classes evaluated on the split, ``BOOTSTRAP_THREADS`` at once (the
draws do not depend on it), each in time proportional to the class's cases for one gather and one
integer running sum of its negatives' weights, the rest at its positives and around each FPR
crossing (:class:`ReplicateCurves`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd  # imported where used: config validation needs the metric table, not pandas

__all__ = [
    "FPR_POINTS",
    "GROUPS",
    "GROUP_KEYS",
    "METRICS",
    "METRIC_SPECS",
    "PAPER_METRICS",
    "ReplicateCurves",
    "TABLE_VARIANTS",
    "TRAINING_LOSS",
    "VAL_METRICS",
    "MetricReport",
    "MetricSpec",
    "calibration_bins",
    "check_metric",
    "curve_stats",
    "evaluate_scores",
    "flat_key",
    "group_of_counts",
    "group_of_rank",
    "groups_for",
    "headline_keys",
    "higher_is_better",
    "interpolated_roc",
    "interpolated_roc_replicates",
    "metric_keys",
    "sort_block",
    "specs_for",
]

GROUPS = ("head", "medium", "tail")
#: The groups as flat metric keys name them (``auc_head`` ... ``auc_macro``, the macro mean over all classes).
GROUP_KEYS = GROUPS + ("macro",)
#: FPR operating points for recall, and the column suffix used for each.
FPR_POINTS: tuple[tuple[str, float], ...] = (("01", 0.01), ("05", 0.05), ("10", 0.1), ("20", 0.2), ("50", 0.5))
#: Table variants a metric can be shown in (:func:`raddiag.views.console.metric_table`): the paper's
#: (nearest-point R@x, in-split F1 threshold), interpolated R@x, honest (validation thresholds).
TABLE_VARIANTS = ("paper", "interp", "honest")
#: The training loop's mean loss per epoch (minimised), the one non-kernel metric a run may select on.
TRAINING_LOSS = "train_loss"


@dataclass(frozen=True)
class MetricSpec:
    """One per-class metric of :func:`evaluate_scores` (macro-averaged per group in its summary).

    ``name``: the per-class column and summary key (flat keys are ``<name>_<group>``, logged with a
    ``val_``/``test_`` prefix); ``label``: its column header; ``variants``: the tables of
    :data:`TABLE_VARIANTS` that show it, in table order; ``validation``: computed only when
    validation scores are given (thresholds chosen there); ``headline``: shown beside runs and
    tagged on registered model versions, per group; values are shown ``scale``-times, with
    ``decimals`` decimals.
    """

    name: str
    label: str
    description: str
    variants: tuple[str, ...]
    validation: bool = False
    headline: bool = False
    higher_is_better: bool = True
    scale: float = 100.0
    decimals: int = 2

    def format(self, value: float) -> str:
        """``value`` as shown in a table (percent, 2 decimals)."""
        return f"{self.scale * value:.{self.decimals}f}"


def _recall_label(fpr: float) -> str:
    return "R@" + f"{fpr:g}".removeprefix("0")  # R@.01 ... R@.5


#: Every metric the kernel computes, once, in table order: the CLI/evaluate/promote tables, the
#: report, registry tags and logged-model metrics, and the validation of ``train.metric`` /
#: ``sweep.metric`` / ``promote.metric`` iterate this table.
METRIC_SPECS: tuple[MetricSpec, ...] = (
    MetricSpec("auc", "AUC", "area under the ROC curve", TABLE_VARIANTS, headline=True),
    MetricSpec("ap", "AP", "average precision", TABLE_VARIANTS),
    MetricSpec("f1", "F1", "max F1 over the thresholds of the split", ("paper", "interp")),
    MetricSpec("mcc", "MCC", "Matthews correlation at the F1-max threshold", ("paper", "interp")),
    *(MetricSpec(f"r{suffix}", _recall_label(fpr), f"TPR at the kept ROC point nearest FPR {fpr:g}", ("paper",))
      for suffix, fpr in FPR_POINTS),
    *(MetricSpec(f"r{suffix}_interp", _recall_label(fpr), f"TPR of the interpolated ROC curve at FPR {fpr:g}", ("interp",))
      for suffix, fpr in FPR_POINTS),
    MetricSpec("f1_val", "F1", "F1 at the validation F1-max threshold", ("honest",), validation=True),
    MetricSpec("mcc_val", "MCC", "Matthews correlation at the validation F1-max threshold", ("honest",), validation=True),
    *(MetricSpec(f"r{suffix}_val", _recall_label(fpr), f"TPR at the validation threshold of FPR <= {fpr:g}", ("honest",), validation=True)
      for suffix, fpr in FPR_POINTS),
)
#: Columns of the paper's table, in order.
PAPER_METRICS = tuple(spec.name for spec in METRIC_SPECS if "paper" in spec.variants)
#: Metrics of every evaluation.
METRICS = tuple(spec.name for spec in METRIC_SPECS if not spec.validation)
#: Honest (validation-threshold) metrics, present when validation scores are given.
VAL_METRICS = tuple(spec.name for spec in METRIC_SPECS if spec.validation)


def specs_for(variant: str) -> tuple[MetricSpec, ...]:
    """The metrics a table ``variant`` shows (see :data:`TABLE_VARIANTS`), in column order."""
    return tuple(spec for spec in METRIC_SPECS if variant in spec.variants)


def flat_key(metric: str, group: str) -> str:
    """``auc_head`` ... ``auc_macro``: the flat key of ``metric`` in ``group`` (``all`` -> ``macro``)."""
    return f"{metric}_{'macro' if group == 'all' else group}"


def metric_keys(validation: bool = True) -> tuple[str, ...]:
    """Every flat summary key ``<metric>_<group>`` (validation-threshold metrics when ``validation``)."""
    return tuple(flat_key(spec.name, group) for spec in METRIC_SPECS if validation or not spec.validation for group in GROUP_KEYS)


def headline_keys() -> tuple[str, ...]:
    """Flat keys of the headline metrics, per group (``auc_head``, ..., ``auc_macro``)."""
    return tuple(flat_key(spec.name, group) for spec in METRIC_SPECS if spec.headline for group in GROUP_KEYS)


def check_metric(value: str, prefix: str = "", validation: bool = True, extra: tuple[str, ...] = ()) -> str:
    """``value`` if it names a metric that is logged as ``<prefix><metric>_<group>`` (or is one of
    ``extra``), else a one-line ``ValueError`` naming the closest known name and the form expected."""
    known = tuple(prefix + key for key in metric_keys(validation)) + extra
    if value in known:
        return value
    import difflib

    close = difflib.get_close_matches(value, known, n=1)
    names = [spec.name for spec in METRIC_SPECS if validation or not spec.validation]
    forms = sorted({name.partition("_")[2] for name in names if "_" in name})
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    alternatives = f" or {' / '.join(extra)}" if extra else ""
    raise ValueError(f"unknown metric{hint}; expected {prefix}<metric>_<group>{alternatives}; groups {', '.join(GROUP_KEYS)}; "
                     f"metrics {', '.join(n for n in names if '_' not in n)}" + (f" (some with _{' / _'.join(forms)})" if forms else ""))


def higher_is_better(key: str) -> bool:
    """Whether a larger value of the logged metric ``key`` (``[val_|test_]<metric>_<group>`` of the
    table, or :data:`TRAINING_LOSS`) is better: early stopping, checkpointing and sweep modes follow it."""
    if key == TRAINING_LOSS:
        return False
    name = key.removeprefix("val_").removeprefix("test_")
    for spec in METRIC_SPECS:
        if any(name == flat_key(spec.name, group) for group in GROUP_KEYS):
            return spec.higher_is_better
    raise ValueError(f"{key!r}: not a metric of the table (raddiag.metrics.METRIC_SPECS)")


#: Elements (classes × cases) processed per block; bounds memory at a few hundred MB.
_BLOCK_ELEMENTS = 1 << 21
#: Classes per bootstrap chunk (their (classes × cases) temporaries fit in cache).
_BOOT_ROWS = 32
#: Bootstrap replicates computed at once (threads; each holds one block's temporaries).
BOOTSTRAP_THREADS = min(4, os.cpu_count() or 1)


def group_of_rank(train_counts: np.ndarray, cuts: tuple[int, int]) -> np.ndarray:
    """Group name per class from its rank in the frequency-sorted label list (the official RadDiag
    evaluation: disorders ``[:85]`` head, ``[85:555]`` medium, ``[555:]`` tail; ICD ``165``/``395``).

    Classes are ranked by training count, most frequent first (ties: label order, as in a label
    dictionary sorted by frequency). Returns an object array of strings (C,)."""
    counts = np.asarray(train_counts)
    head, medium = cuts
    if not 0 <= head <= medium:
        raise ValueError(f"rank cuts must satisfy 0 <= head <= medium, got {cuts}")
    rank = np.empty(counts.shape[0], dtype=np.int64)
    rank[np.argsort(-counts, kind="stable")] = np.arange(counts.shape[0])
    groups = np.full(counts.shape, "tail", dtype=object)
    groups[rank < medium] = "medium"
    groups[rank < head] = "head"
    return groups


def groups_for(train_counts: np.ndarray, grouping: str = "counts", *, head_min: int = 100, medium_min: int = 30,
               cuts: tuple[int, int] = (85, 555)) -> tuple[np.ndarray, str]:
    """(group per class, a one-line description for reports) by training-count thresholds or by rank."""
    if grouping == "rank":
        return group_of_rank(train_counts, cuts), (
            f"head = the {cuts[0]} most frequent labels, medium ranks {cuts[0] + 1}-{cuts[1]}, tail the rest (official grouping)"
        )
    if grouping != "counts":
        raise ValueError(f"grouping must be counts or rank, got {grouping!r}")
    return group_of_counts(train_counts, head_min=head_min, medium_min=medium_min), (
        f"head >= {head_min}, medium {medium_min}-{head_min - 1}, tail < {medium_min} training cases"
    )


def group_of_counts(train_counts: np.ndarray, *, head_min: int = 100, medium_min: int = 30) -> np.ndarray:
    """Group name per class from training counts (C,): ``head`` >= head_min, ``medium`` in
    [medium_min, head_min), ``tail`` < medium_min. Returns an object array of strings (C,)."""
    counts = np.asarray(train_counts)
    if counts.ndim != 1:
        raise ValueError(f"train_counts must be 1-D (C,), got shape {counts.shape}")
    if not 0 < medium_min <= head_min:
        raise ValueError(f"need 0 < medium_min <= head_min, got medium_min={medium_min}, head_min={head_min}")
    groups = np.full(counts.shape, "tail", dtype=object)
    groups[counts >= medium_min] = "medium"
    groups[counts >= head_min] = "head"
    return groups


# ---------------------------------------------------------------------------------------------
# Vectorised curve statistics
# ---------------------------------------------------------------------------------------------


def _row_offsets(k: int, m: int) -> np.ndarray:
    """Flat index of the first element of each row of a C-contiguous (k, m) array, as (k, 1)."""
    return (np.arange(k, dtype=np.intp) * m)[:, None]


def sort_block(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows are classes: C-contiguous ``scores``/``labels`` (k, n) -> order (column indices), scores
    and bool labels, each row sorted by decreasing score."""
    k, n = scores.shape
    order = np.argsort(scores, axis=1)[:, ::-1]
    flat = order + _row_offsets(k, n)  # np.take on flat indices is ~3x faster than take_along_axis
    return order, scores.ravel().take(flat), labels.ravel().take(flat)


def _compact_points(s: np.ndarray, tps: np.ndarray, fps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep one ROC point per distinct score (the end of each tie run), left-aligned per row and
    padded with copies of the row's last point. All inputs/outputs C-contiguous (k, m)."""
    k, m = s.shape
    is_end = np.empty((k, m), dtype=bool)
    np.not_equal(s[:, 1:], s[:, :-1], out=is_end[:, :-1])
    is_end[:, -1] = True
    if is_end.all():  # no ties anywhere in the block
        return tps, fps, s
    per_row = np.count_nonzero(is_end, axis=1)
    tied = np.flatnonzero(per_row < m)
    if tied.size * 4 < k:  # ties in a few rows only (rare equal float32 scores): compact just those
        tp, fp, thr = _compact_points(s[tied], tps[tied], fps[tied])
        tps, fps, s = tps.copy(), fps.copy(), s.copy()  # rows are independent: the others stay as they are
        tps[tied], fps[tied], s[tied] = tp, fp, thr
        return tps, fps, s
    ends = np.flatnonzero(is_end)  # flat positions, row by row
    first = np.concatenate([[0], np.cumsum(per_row)[:-1]])
    rank = np.arange(ends.size) - np.repeat(first, per_row)  # index of each end within its row
    gather = np.repeat(_row_offsets(k, m)[:, 0] + (m - 1), m)  # default: the row's last point
    gather[ends - ends % m + rank] = ends
    gather = gather.reshape(k, m)
    return tps.ravel().take(gather), fps.ravel().take(gather), s.ravel().take(gather)


def _cumulative_counts(y: np.ndarray, w: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative TP and FP counts (float64, (k, m)) of rows of bool labels ``y`` with optional case
    weights ``w``. Integer weights (bootstrap multiplicities) are summed in integers — exactly the
    same values as a float64 sum (all below 2**53), and an integer running sum is several times
    faster than a float one, whose every addition waits for the previous."""
    if w is None:
        tps = np.cumsum(y, axis=1, dtype=np.int64)
        fps = np.arange(1, y.shape[1] + 1, dtype=np.int64) - tps
    elif np.issubdtype(w.dtype, np.integer):
        tps = np.cumsum(np.where(y, w, 0), axis=1, dtype=np.int64)
        fps = np.cumsum(w, axis=1, dtype=np.int64) - tps
    else:
        tps = np.cumsum(np.where(y, w, 0.0), axis=1)
        return tps, np.cumsum(w, axis=1, dtype=np.float64) - tps
    return tps.astype(np.float64), fps.astype(np.float64)


def curve_stats(
    s: np.ndarray,
    y: np.ndarray,
    w: np.ndarray | None = None,
    apply_thresholds: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Per-row metrics for rows of scores ``s`` (k, m) sorted decreasingly, bool labels ``y`` in the
    same order and optional positive case weights ``w`` (k, m). ``apply_thresholds`` maps a name
    to per-row thresholds (k,) at which TP/FP counts are returned as ``tp_<name>``/``fp_<name>``.
    Rows without both classes get NaN metrics."""
    k, m = s.shape
    tps, fps = _cumulative_counts(y, w)
    n_pos = tps[:, -1].copy()
    n_neg = fps[:, -1].copy()
    valid = (n_pos > 0) & (n_neg > 0)
    out: dict[str, np.ndarray] = {"n_pos": n_pos, "n_neg": n_neg, "valid": valid}
    rows = np.arange(k)

    if apply_thresholds:
        for name, thr in apply_thresholds.items():
            count = np.count_nonzero(s >= thr[:, None], axis=1)
            last = np.maximum(count - 1, 0)
            known = ~np.isnan(thr)  # NaN: no threshold (the class was not evaluable on validation)
            out[f"tp_{name}"] = np.where(known, np.where(count > 0, tps[rows, last], 0.0), np.nan)
            out[f"fp_{name}"] = np.where(known, np.where(count > 0, fps[rows, last], 0.0), np.nan)

    tp, fp, thr = _compact_points(s, tps, fps)
    del tps, fps
    with np.errstate(divide="ignore", invalid="ignore"):
        pos = n_pos[:, None]
        neg = n_neg[:, None]
        # ROC curve with the (0, 0) point in front: (k, m + 1).
        tpz = np.concatenate([np.zeros((k, 1)), tp], axis=1)
        fpz = np.concatenate([np.zeros((k, 1)), fp], axis=1)
        d_fp = fp - fpz[:, :-1]  # step into each point, (k, m)
        d_tp = tp - tpz[:, :-1]
        out["auc"] = np.einsum("ij,ij->i", d_fp, tpz[:, 1:] + tpz[:, :-1]) / (2.0 * n_pos * n_neg)

        precision = tp / (tp + fp)
        out["ap"] = np.einsum("ij,ij->i", d_tp, precision) / n_pos

        recall = tp / pos
        f1 = 2 * (precision * recall) / (precision + recall)
        f1[np.isnan(f1)] = 0.0
        best = m - 1 - np.argmax(f1[:, ::-1], axis=1)  # lowest threshold among equal maxima
        out["f1"] = f1[rows, best]
        out["threshold"] = thr[rows, best]
        out["mcc"] = _mcc(tp[rows, best], fp[rows, best], n_pos, n_neg)

        # scikit-learn's drop_intermediate keeps a point only where the step in fps or tps changes
        # (second difference != 0); the origin, first and last points are always kept.
        keep = np.ones((k, m + 1), dtype=bool)
        if m > 2:
            keep[:, 2:m] = (d_fp[:, 2:] != d_fp[:, 1:-1]) | (d_tp[:, 2:] != d_tp[:, 1:-1])
        # Only a prefix of each curve can matter for R@x: up to the first kept point beyond max(x)
        # (every valid row's last point, FPR 1, is one). +2 covers rounding at the boundary.
        x_max = max(x for _, x in FPR_POINTS)
        cut = min(m + 1, int(np.argmax(keep & (fpz > x_max * neg), axis=1).max()) + 2)
        fpr = fpz[:, :cut] / neg
        tpr = tpz[:, :cut] / pos
        # Nearest kept point to x (first one on ties), without a pass per x: the last kept point at
        # or before the last point with fpr <= x, against the first kept point after it; if the
        # former wins, the first kept point of its fpr (where a vertical run starts). This is
        # argmin(|fpr - x| over kept points) exactly: fpr is non-decreasing along a row.
        kept = keep[:, :cut]
        kept_upto = np.cumsum(kept, axis=1, dtype=np.intp)  # kept points at or before each index
        kept_at = np.flatnonzero(kept)  # flat positions of the kept points, row by row
        first_kept = np.concatenate([[0], np.cumsum(kept_upto[:, -1])[:-1]])  # each row's first in kept_at
        row_base = rows * cut
        # FP counts as one non-decreasing key (rows apart): the first point of a given FP count is
        # a binary search. Counts are integers, exact in float64.
        span = float(fpz[:, :cut].max()) + 1.0
        fp_keys = (fpz[:, :cut] + (rows * span)[:, None]).ravel()
        for suffix, x in FPR_POINTS:
            lo = np.count_nonzero(fpr <= x, axis=1) - 1  # last point with fpr <= x (the origin at worst)
            n_kept = kept_upto[rows, lo]
            below = kept_at[first_kept + n_kept - 1] - row_base  # last kept point at or before lo
            has_above = n_kept < kept_upto[:, -1]
            above = np.where(has_above, kept_at[np.minimum(first_kept + n_kept, kept_at.size - 1)] - row_base, cut - 1)
            take_above = has_above & (np.abs(fpr[rows, above] - x) < np.abs(fpr[rows, below] - x))
            # Else the first point with below's FP count: where that vertical run starts, always a
            # kept point (entered by a horizontal step, left by a vertical one) or below itself.
            run_start = np.searchsorted(fp_keys, fpz[rows, below] + rows * span, side="left") - row_base
            nearest = np.where(take_above, above, run_start)
            out[f"r{suffix}"] = tpr[rows, nearest]
            # Interpolated: last point with fpr <= x (top of a vertical run), then linear to the next.
            hi = np.minimum(lo + 1, cut - 1)
            f_lo, f_hi, t_lo, t_hi = fpr[rows, lo], fpr[rows, hi], tpr[rows, lo], tpr[rows, hi]
            slope = np.where(f_hi > f_lo, (t_hi - t_lo) / (f_hi - f_lo), 0.0)
            out[f"r{suffix}_interp"] = np.where(f_lo >= x, t_lo, t_lo + (x - f_lo) * slope)
            # Operating threshold for the honest variant: score of that last point (inf = none).
            out[f"threshold_r{suffix}"] = np.where(lo > 0, thr[rows, np.maximum(lo - 1, 0)], np.inf)
    for key, value in out.items():
        if key not in ("n_pos", "n_neg", "valid") and not key.startswith(("tp_", "fp_")):
            out[key] = np.where(valid, value, np.nan)
    return out


def _chunked_curve_stats(s: np.ndarray, y: np.ndarray, apply_thresholds: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """:func:`curve_stats` of unweighted rows, ``_BOOT_ROWS`` rows at a time (each row's values
    are independent of the others'; a chunk's temporaries stay in cache)."""
    parts = [
        curve_stats(s[i : i + _BOOT_ROWS], y[i : i + _BOOT_ROWS], None,
                     None if apply_thresholds is None else {name: thr[i : i + _BOOT_ROWS] for name, thr in apply_thresholds.items()})
        for i in range(0, s.shape[0], _BOOT_ROWS)
    ]
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def _mcc(tp: np.ndarray, fp: np.ndarray, n_pos: np.ndarray, n_neg: np.ndarray) -> np.ndarray:
    """Matthews correlation from TP/FP and class totals; 0 where undefined (scikit-learn)."""
    fn = n_pos - tp
    tn = n_neg - fp
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        return np.where(denom > 0, (tp * tn - fp * fn) / denom, 0.0)


def _honest(stats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Metrics at validation thresholds from the ``tp_*``/``fp_*`` counts of :func:`curve_stats`.
    NaN where the class is not evaluable here or had no validation threshold (NaN counts)."""
    pos, neg, valid = stats["n_pos"], stats["n_neg"], stats["valid"]
    out: dict[str, np.ndarray] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        tp, fp = stats["tp_f1"], stats["fp_f1"]
        usable = valid & ~np.isnan(tp)
        out["f1_val"] = np.where(usable, 2 * tp / (tp + fp + pos), np.nan)
        out["mcc_val"] = np.where(usable, _mcc(tp, fp, pos, neg), np.nan)
        for suffix, _ in FPR_POINTS:
            tp = stats[f"tp_r{suffix}"]
            out[f"r{suffix}_val"] = np.where(valid & ~np.isnan(tp), tp / pos, np.nan)
    return out


def _macro(values: np.ndarray) -> float:
    """Mean of the finite values (NaN if none)."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def _accumulate(sums: np.ndarray, counts: np.ndarray, values: np.ndarray, group_index: np.ndarray) -> None:
    """Add per-class ``values`` (k, M) to per-group running ``sums``/``counts`` (len(GROUPS) + 1, M);
    the last row is all classes. NaN values (classes not evaluable in this resample) are left out."""
    present = np.isfinite(values)
    clean = np.where(present, values, 0.0)
    for g in range(len(GROUPS)):
        members = group_index == g
        sums[g] += clean[members].sum(axis=0)
        counts[g] += present[members].sum(axis=0)
    sums[-1] += clean.sum(axis=0)
    counts[-1] += present.sum(axis=0)


#: Score runs looked at first on each side of an FPR crossing by a bootstrap replicate; the rare
#: longer straight stretch of the ROC curve there (equal multiplicities in a row) is followed over
#: the whole row.
_RUN_WINDOW = 16
#: Running-weight keys of a block fit int32 (half the memory traffic) below this; int64 above.
_INT32_KEYS = 2**31 - 1


class ReplicateCurves:
    """A block's classes prepared once for all bootstrap replicates, so that a replicate costs one
    gather and one integer running sum over each class's negatives plus work on its positives.

    A replicate's ROC points are the runs of equal scores (in each class's fixed sorted order) that
    hold a drawn case; run r steps by (negative weight, positive weight) of its drawn cases. The
    running negative weight comes from the cumulative sum; everything else is read at the
    positives' runs (AUC, AP, F1, MCC, validation-threshold counts) or at the runs around each FPR
    crossing (R@x: ``drop_intermediate`` keeps a point where the step changes, so the nearest kept
    point is the end of the straight stretch through the crossing). Values equal
    :func:`curve_stats` of the drawn cases (AP up to summation order, ~1e-16; the rest bit for bit).
    """

    def __init__(self, order: np.ndarray, s: np.ndarray, y: np.ndarray, thresholds: dict[str, np.ndarray] | None) -> None:
        k, n = s.shape
        self.n_rows, self.n = k, n
        # Runs of equal scores: run index of every sorted position.
        new_run = np.ones((k, n), dtype=bool)
        np.not_equal(s[:, 1:], s[:, :-1], out=new_run[:, 1:])
        run_of = np.cumsum(new_run, axis=1, dtype=np.int32) - 1
        n_runs = run_of[:, -1] + 1
        n_pos = np.count_nonzero(y, axis=1)
        self.n_neg_cases, self.n_runs = n - n_pos, n_runs
        self.width = width = n - int(n_pos.min(initial=n)) + 1  # negatives per row (padded)
        self.run_width = run_width = int(n_runs.max(initial=1)) + _RUN_WINDOW + 1
        rows = np.arange(k)
        # Negatives in sorted order, left-aligned; padding points at case n (weight 0).
        neg_rows, neg_at = np.nonzero(~y)
        neg_rank = (np.cumsum(~y, axis=1, dtype=np.int32) - 1)[neg_rows, neg_at]
        self.neg_case = np.full((k, width), n, dtype=np.int32)
        self.neg_case[neg_rows, neg_rank] = order[neg_rows, neg_at]
        self.neg_run = np.zeros((k, width), dtype=np.int32)
        self.neg_run[neg_rows, neg_rank] = run_of[neg_rows, neg_at]
        # Per run (padded past the last with the row's totals): negatives / positives through it.
        pos_rows, pos_at = np.nonzero(y)
        pos_run = run_of[pos_rows, pos_at]
        cells = k * run_width
        neg_in = np.bincount(neg_rows * run_width + run_of[neg_rows, neg_at], minlength=cells).reshape(k, run_width)
        self.neg_through = np.cumsum(neg_in, axis=1, dtype=np.int32)
        pos_in = np.bincount(pos_rows * run_width + pos_run, minlength=cells).reshape(k, run_width)
        self.pos_through = np.cumsum(pos_in, axis=1, dtype=np.int32)
        # Positives, row by row in sorted order, with their run's bounds.
        self.start = np.concatenate([[0], np.cumsum(n_pos)]).astype(np.intp)  # row r: [start[r], start[r + 1])
        self.pos_rows, self.pos_case, self.pos_score = pos_rows, order[pos_rows, pos_at], s[pos_rows, pos_at]
        prev = np.maximum(pos_run - 1, 0)
        has_prev = pos_run > 0
        self.pos_neg_before = np.where(has_prev, self.neg_through[pos_rows, prev], 0)  # negatives in earlier runs
        self.pos_neg_end = self.neg_through[pos_rows, pos_run]  # negatives through its run
        self.pos_pos_before = np.where(has_prev, self.pos_through[pos_rows, prev], 0)
        self.pos_pos_end = self.pos_through[pos_rows, pos_run]
        self.row_flat = (rows * width).astype(np.int64)
        self.row_run = (rows * run_width).astype(np.int64)
        # Validation thresholds: positives and negatives at or above each class's threshold (fixed).
        self.thresholds: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        if thresholds:
            cum_pos = np.concatenate([np.zeros((k, 1), np.int64), np.cumsum(y, axis=1)], axis=1)
            for name, thr in thresholds.items():
                known = ~np.isnan(thr)
                above = np.count_nonzero(s >= np.where(known, thr, np.inf)[:, None], axis=1)  # a prefix of each row
                k_pos = cum_pos[rows, above]
                self.thresholds[name] = (known, k_pos, above - k_pos)

    def _replicate(self, weights: np.ndarray) -> tuple[Any, ...]:
        """One replicate's running weights: (keys, row_key, key_dtype, neg_weight, pos_weight,
        through, n_pos, n_neg) — the functions read counts of negatives / positives / runs."""
        k, n = self.n_rows, self.n
        weights = np.asarray(weights)
        span = int(weights.sum()) + 1  # a row's running weight stays below: rows apart as one sorted key array
        key_dtype = np.int32 if k * span < _INT32_KEYS else np.int64
        w_ext = np.zeros(n + 1, dtype=key_dtype)
        w_ext[:n] = weights
        nw = w_ext.take(self.neg_case)  # negatives' multiplicities in sorted order, (k, width)
        row_key = np.arange(k, dtype=np.int64) * span
        nw[:, 0] += row_key.astype(key_dtype)
        keys = np.cumsum(nw, axis=1, dtype=key_dtype).ravel()  # running negative weight + row * span
        del nw
        start = self.start

        def neg_weight(r: np.ndarray, count: np.ndarray) -> np.ndarray:
            """Weight of the first ``count`` negatives of rows ``r``."""
            at = self.row_flat[r] + np.maximum(count - 1, 0)
            return np.where(count > 0, keys.take(at) - row_key[r], 0)

        tpw = weights.take(self.pos_case).astype(np.int64)
        tp0 = np.concatenate([[0], np.cumsum(tpw)])  # running positive weight over the flat positives

        def pos_weight(r: np.ndarray, count: np.ndarray) -> np.ndarray:
            """Weight of the first ``count`` positives of rows ``r``."""
            return tp0[start[r] + count] - tp0[start[r]]

        def through(r: np.ndarray, run: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """(FP, TP) after run ``run`` of rows ``r`` (broadcast); (0, 0) before the first run."""
            at = self.row_run[r] + np.maximum(run, 0)
            first = run >= 0
            fp = neg_weight(r, np.where(first, self.neg_through.ravel().take(at), 0))
            tp = pos_weight(r, np.where(first, self.pos_through.ravel().take(at), 0))
            return fp, tp

        n_pos = tp0[start[1:]] - tp0[start[:-1]]
        n_neg = neg_weight(np.arange(k), self.n_neg_cases)
        return keys, row_key, key_dtype, tpw, tp0, neg_weight, pos_weight, through, n_pos, n_neg

    def tpr_at(self, weights: np.ndarray, grid: np.ndarray) -> np.ndarray:
        """TPR (rows, G) of the replicate's ROC curves linearly interpolated at FPR ``grid`` (top of
        vertical runs), as :func:`interpolated_roc` of the drawn cases; NaN rows lack a label."""
        keys, row_key, key_dtype, _, _, _, _, through, n_pos, n_neg = self._replicate(weights)
        pos_f, neg_f = n_pos.astype(np.float64)[:, None], n_neg.astype(np.float64)[:, None]
        rows = np.arange(self.n_rows)[:, None]
        x = np.asarray(grid, dtype=np.float64)[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            limit = np.floor(x * neg_f)  # largest FP weight F with F / N <= x, as above
            limit = np.where((limit + 1) / neg_f <= x, limit + 1, limit)
            limit = np.maximum(np.where(limit / neg_f > x, limit - 1, limit), 0).astype(np.int64)
            past = limit >= n_neg[:, None]  # every point has FPR <= x: the curve's end
            q = np.searchsorted(keys, (row_key[:, None] + limit).astype(key_dtype), side="right") - self.row_flat[:, None]
            q = np.clip(q, 0, (self.n_neg_cases - 1)[:, None])
            rq = self.neg_run.ravel().take(self.row_flat[:, None] + q)
            fp_lo, tp_lo = through(rows, rq - 1)
            fp_q, tp_q = through(rows, rq)
            f_lo, f_hi, t_lo, t_hi = fp_lo / neg_f, fp_q / neg_f, tp_lo / pos_f, tp_q / pos_f
            slope = (t_hi - t_lo) / (f_hi - f_lo)
            out = np.where(past, n_pos[:, None] / pos_f, np.where(f_lo >= x, t_lo, slope * (x - f_lo) + t_lo))
        return np.where(((n_pos > 0) & (n_neg > 0))[:, None], out, np.nan)

    def values(self, weights: np.ndarray, metrics: tuple[str, ...]) -> np.ndarray:
        """Values (rows, metrics) of the replicate with case multiplicities ``weights``."""
        k, width = self.n_rows, self.width
        keys, row_key, key_dtype, tpw, tp0, neg_weight, pos_weight, through, n_pos, n_neg = self._replicate(weights)
        start, rows = self.start, np.arange(k)
        pos_f, neg_f = n_pos.astype(np.float64), n_neg.astype(np.float64)
        valid = (n_pos > 0) & (n_neg > 0)
        pr, seg = self.pos_rows, start[:-1]
        fp_end = neg_weight(pr, self.pos_neg_end)  # FP after each positive's run
        fp_before = neg_weight(pr, self.pos_neg_before)
        tp_end = pos_weight(pr, self.pos_pos_end)
        run_drawn = tp_end > pos_weight(pr, self.pos_pos_before)  # the run's point moves up
        out: dict[str, np.ndarray] = {}
        tpf, fpf = tp_end.astype(np.float64), fp_end.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            # 2 x the area: each positive's weight times the negative weight below it, ties half (integers).
            out["auc"] = np.add.reduceat(tpw * (2 * (n_neg[pr] - fp_end) + (fp_end - fp_before)), seg) / (2.0 * pos_f * neg_f)
            precision = tpf / (tpf + fpf)
            out["ap"] = np.add.reduceat(np.where(tpw > 0, tpw * precision, 0.0), seg) / pos_f
            recall = tpf / pos_f[pr]
            f1 = np.where(run_drawn, 2 * (precision * recall) / (precision + recall), -1.0)
        best_f1 = np.maximum.reduceat(f1, seg)
        best = np.maximum.reduceat(np.where(f1 == best_f1[pr], np.arange(f1.size), -1), seg)  # last maximum: lowest threshold
        out["f1"] = f1[best]
        out["mcc"] = _mcc(tpf[best], fpf[best], pos_f, neg_f)

        for name, (known, k_pos, k_neg) in self.thresholds.items():
            out[f"tp_{name}"] = np.where(known, pos_weight(rows, k_pos), np.nan)
            out[f"fp_{name}"] = np.where(known, neg_weight(rows, k_neg), np.nan)

        def stretch(r: np.ndarray, rq: np.ndarray, nw_q: np.ndarray, pw_q: np.ndarray, window: int) -> tuple[np.ndarray, ...]:
            """(steps equal to run rq's from rq on, equal steps ending just before rq, whether
            ``window`` runs each way held both ends) for rows ``r``: empty runs are no points."""
            offsets = np.arange(-window - 1, window + 1)
            fp_w, tp_w = through(r[:, None], np.minimum(rq[:, None] + offsets, self.run_width - 1))  # runs rq - W - 1 .. rq + W
            d_fp, d_tp = np.diff(fp_w, axis=1), np.diff(tp_w, axis=1)  # steps of runs rq - W .. rq + W
            nonempty = (d_fp + d_tp) > 0
            other = nonempty & ((d_fp != nw_q[:, None]) | (d_tp != pw_q[:, None]))
            brk = other[:, window + 1 :]  # runs rq + 1 .. rq + W
            ended = brk.any(axis=1)
            first = np.where(ended, brk.argmax(axis=1), window)
            steps = np.arange(window)
            n_fwd = 1 + np.count_nonzero(nonempty[:, window + 1 :] & (steps < first[:, None]), axis=1)
            done = ended | (rq + window >= self.n_runs[r] - 1)
            brk = other[:, window - 1 :: -1] | (rq[:, None] - 1 - steps < 0)  # runs rq - 1, rq - 2, ..., then the origin
            ended = brk.any(axis=1)
            first = np.where(ended, brk.argmax(axis=1), window)
            n_back = np.count_nonzero(nonempty[:, window - 1 :: -1] & (steps < first[:, None]), axis=1)
            return n_fwd, n_back, done & ended

        with np.errstate(divide="ignore", invalid="ignore"):
            for suffix, x in FPR_POINTS:
                # Largest FP weight F with F / N <= x (the dense path's float comparison).
                limit = np.floor(x * neg_f)
                limit = np.where((limit + 1) / neg_f <= x, limit + 1, limit)
                limit = np.maximum(np.where(limit / neg_f > x, limit - 1, limit), 0).astype(np.int64)
                # The first negative past F lies in run rq: the points before it have FPR <= x, the
                # last of them is "lo", and run rq is the step out of lo.
                q = np.searchsorted(keys, (row_key + limit).astype(key_dtype), side="right") - self.row_flat
                q = np.clip(q, 0, self.n_neg_cases - 1)
                rq = self.neg_run.ravel().take(self.row_flat + q)
                fp_lo, tp_lo = through(rows, rq - 1)
                fp_q, tp_q = through(rows, rq)
                nw_q, pw_q = fp_q - fp_lo, tp_q - tp_lo
                at_origin = (fp_lo == 0) & (tp_lo == 0)
                # The straight stretch through the crossing: its ends are the kept points around it
                # (drop_intermediate keeps a point where the step changes). A short window first;
                # the rare longer stretches (runs of equal multiplicities) with the whole row.
                n_fwd, n_back, done = stretch(rows, rq, nw_q, pw_q, _RUN_WINDOW)
                if not done.all():
                    again = np.flatnonzero(~done)
                    n_fwd[again], n_back[again], _ = stretch(again, rq[again], nw_q[again], pw_q[again], self.run_width)
                fp_above = np.where(at_origin, nw_q, fp_lo + n_fwd * nw_q)
                tp_above = np.where(at_origin, pw_q, tp_lo + n_fwd * pw_q)
                # The last kept point at or before lo starts the stretch, but the first point is
                # always kept: a stretch back to the origin stops there.
                reached_origin = ~at_origin & (fp_lo == n_back * nw_q) & (tp_lo == n_back * pw_q)
                fp_below = np.where(at_origin, 0, np.where(reached_origin, nw_q, fp_lo - n_back * nw_q))
                take_above = np.abs(fp_above / neg_f - x) < np.abs(fp_below / neg_f - x)
                # Else the first point with below's FP (the foot of a vertical run): the run of the
                # first negative that reaches it.
                g = np.clip(np.searchsorted(keys, (row_key + fp_below).astype(key_dtype), side="left") - self.row_flat, 0, width - 1)
                _, tp_first = through(rows, self.neg_run.ravel().take(self.row_flat + g))
                tp_first = np.where(fp_below > 0, tp_first, 0)
                out[f"r{suffix}"] = np.where(take_above, tp_above, tp_first) / pos_f
                # Interpolated: from lo to the next point, linearly (as curve_stats computes it).
                f_lo, f_hi, t_lo, t_hi = fp_lo / neg_f, fp_q / neg_f, tp_lo / pos_f, tp_q / pos_f
                slope = np.where(f_hi > f_lo, (t_hi - t_lo) / (f_hi - f_lo), 0.0)
                out[f"r{suffix}_interp"] = np.where(f_lo >= x, t_lo, t_lo + (x - f_lo) * slope)
        stats = {"n_pos": pos_f, "n_neg": neg_f, "valid": valid} | out
        for key, value in out.items():
            if not key.startswith(("tp_", "fp_")):
                stats[key] = np.where(valid, value, np.nan)
        if self.thresholds:
            stats |= _honest(stats)
        return np.stack([stats[name] for name in metrics], axis=1)


def _replicate(b: int, block: tuple, groups: np.ndarray, metrics: tuple[str, ...], boot: tuple) -> None:
    """Bootstrap replicate ``b`` of one block of (evaluated) classes: their curves re-scored with
    the replicate's case multiplicities through the block's sorted order (no re-sort, see
    :class:`ReplicateCurves`), added to the replicate's own row of the group accumulators."""
    sparse = block
    weights_all, sums, counts = boot
    _accumulate(sums[b], counts[b], sparse.values(weights_all[b], metrics), groups)


def _blocks(n_classes: int, n_cases: int) -> list[slice]:
    size = max(1, _BLOCK_ELEMENTS // max(n_cases, 1))
    return [slice(i, min(i + size, n_classes)) for i in range(0, n_classes, size)]


def _as_inputs(y_true: Any, y_score: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(y_true)
    score = np.asarray(y_score)
    if truth.ndim != 2 or truth.shape != score.shape:
        raise ValueError(
            f"{name}: y_true and y_score must both be (n_cases, n_classes); got {truth.shape} and {score.shape}"
        )
    if truth.shape[0] == 0 or truth.shape[1] == 0:
        raise ValueError(f"{name}: empty input of shape {truth.shape}")
    if truth.dtype != bool and not np.isin(truth, (0, 1)).all():
        raise ValueError(f"{name}: y_true must contain only 0/1 (or bool) labels")
    if not np.issubdtype(score.dtype, np.floating):
        score = score.astype(np.float64)
    bad = ~np.isfinite(score)
    if bad.any():
        column = int(np.nonzero(bad.any(axis=0))[0][0])
        raise ValueError(
            f"{name}: y_score has NaN/inf values (first in class column {column}); check the model outputs"
        )
    return truth.astype(bool), score


def _block_T(array: np.ndarray, cols: slice) -> np.ndarray:
    return np.ascontiguousarray(array[:, cols].T)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_json_safe(v) for v in value.tolist()]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


@dataclass
class MetricReport:
    """Result of :func:`evaluate_scores`.

    ``per_class``: one row per class (label, group, train_count, n_pos, n_neg, evaluated, metrics).
    ``summary``: group (head/medium/tail/all) -> metric -> macro mean (NaN if no evaluated class).
    ``counts``: group -> {n_classes, n_evaluated, n_skipped}.
    ``ci``: group -> metric -> (lo, hi) 95% bootstrap interval; empty without bootstrap (see
    :func:`pivotal_interval`). ``draws``: group -> metric -> the bootstrap replicates' macro means.
    """

    per_class: pd.DataFrame
    summary: dict[str, dict[str, float]]
    counts: dict[str, dict[str, int]]
    ci: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    metrics: tuple[str, ...] = METRICS
    n_cases: int = 0
    n_bootstrap: int = 0
    seed: int = 0
    head_min: int = 100
    medium_min: int = 30
    draws: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)
    grouping: str = ""  # how classes were grouped, for captions ("" = the head_min/medium_min thresholds)

    def flat(self) -> dict[str, float]:
        """``{f"{metric}_{group}": value}`` with the all-classes group spelled ``macro``
        (``auc_head``, ``auc_macro``, ...), counts as ``n_skipped_tail`` etc., and CI bounds as
        ``auc_head_lo`` / ``auc_head_hi`` when bootstrapped. Values are floats (NaN kept)."""
        out: dict[str, float] = {}
        for group, values in self.summary.items():
            for metric, value in values.items():
                out[flat_key(metric, group)] = float(value)
        for group, values in self.counts.items():
            for name, value in values.items():
                out[flat_key(name, group)] = float(value)
        for group, values in self.ci.items():
            for metric, (lo, hi) in values.items():
                out[flat_key(metric, group) + "_lo"] = float(lo)
                out[flat_key(metric, group) + "_hi"] = float(hi)
        return out

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable dict (NaN/inf -> None) with settings, summary, counts, CIs and per-class rows."""
        return _json_safe(
            {
                "n_cases": self.n_cases,
                "n_classes": int(len(self.per_class)),
                "groups": {"head_min": self.head_min, "medium_min": self.medium_min, "rule": self.grouping or "counts"},
                "fpr_points": [x for _, x in FPR_POINTS],
                "n_bootstrap": self.n_bootstrap,
                "seed": self.seed,
                "metrics": list(self.metrics),
                "summary": self.summary,
                "counts": self.counts,
                "ci": {g: {m: list(v) for m, v in values.items()} for g, values in self.ci.items()},
                "per_class": self.per_class.to_dict(orient="records"),
            }
        )


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def evaluate_scores(
    y_true: np.ndarray,
    y_score: np.ndarray,
    train_counts: np.ndarray,
    *,
    val_true: np.ndarray | None = None,
    val_score: np.ndarray | None = None,
    n_bootstrap: int = 0,
    seed: int = 0,
    label_names: list[str] | None = None,
    head_min: int = 100,
    medium_min: int = 30,
    groups: np.ndarray | None = None,
    grouping: str = "",
) -> MetricReport:
    """Per-class metrics and head/medium/tail/all macro means for one split.

    ``y_true`` (n, C) 0/1, ``y_score`` (n, C) scores, ``train_counts`` (C,) training cases per class.
    ``val_true``/``val_score`` (n_val, C): validation split for the honest threshold variant.
    ``n_bootstrap`` > 0 adds 95% percentile CIs of the group means; resample b draws case indices
    ``rng.integers(0, n, n)`` from ``rng = np.random.default_rng(seed)`` (validation thresholds
    stay fixed). ``head_min``/``medium_min`` set the group boundaries on ``train_counts``, unless
    ``groups`` (C,) gives each class's group (e.g. :func:`groups_for` by rank) with ``grouping``
    describing the rule for the report.
    """
    import pandas as pd

    truth, score = _as_inputs(y_true, y_score, "evaluate_scores")
    n_cases, n_classes = truth.shape
    counts = np.asarray(train_counts)
    if counts.shape != (n_classes,):
        raise ValueError(f"train_counts must have shape ({n_classes},) to match y_true; got {counts.shape}")
    if label_names is not None and len(label_names) != n_classes:
        raise ValueError(f"label_names has {len(label_names)} names for {n_classes} classes")
    if (val_true is None) != (val_score is None):
        raise ValueError("give both val_true and val_score, or neither")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    if groups is None:
        groups = group_of_counts(counts, head_min=head_min, medium_min=medium_min)
    elif len(groups := np.asarray(groups, dtype=object)) != n_classes or not set(groups) <= set(GROUPS):
        raise ValueError(f"groups must name one of {GROUPS} for each of the {n_classes} classes")
    group_index = np.array([GROUPS.index(g) for g in groups], dtype=np.intp)

    val = None
    if val_true is not None:
        val = _as_inputs(val_true, val_score, "validation")
        if val[0].shape[1] != n_classes:
            raise ValueError(f"validation has {val[0].shape[1]} classes, the evaluated split {n_classes}")
    metrics = METRICS + (VAL_METRICS if val is not None else ())

    columns: dict[str, np.ndarray] = {
        name: np.full(n_classes, np.nan) for name in ("n_pos", "n_neg", "threshold") + metrics
    }
    valid = np.zeros(n_classes, dtype=bool)
    rng = np.random.default_rng(seed)
    boot_weights = [np.bincount(rng.integers(0, n_cases, n_cases), minlength=n_cases) for _ in range(n_bootstrap)]
    # Bootstrap accumulators: replicate × (head, medium, tail, all) × metric.
    boot_sum = np.zeros((n_bootstrap, len(GROUPS) + 1, len(metrics)))
    boot_n = np.zeros_like(boot_sum)

    # Replicates run in threads (numpy releases the GIL in its loops); each writes only its own row
    # of the accumulators, so the result does not depend on the schedule.
    threads = min(BOOTSTRAP_THREADS, n_bootstrap)
    with ThreadPoolExecutor(threads, thread_name_prefix="bootstrap") if threads > 1 else nullcontext() as pool:
        for cols in _blocks(n_classes, max(n_cases, val[0].shape[0] if val else 0)):
            thresholds = None
            if val is not None:
                _, vs, vy = sort_block(_block_T(val[1], cols), _block_T(val[0], cols))
                vstats = _chunked_curve_stats(vs, vy)
                thresholds = {"f1": vstats["threshold"]} | {
                    f"r{sfx}": vstats[f"threshold_r{sfx}"] for sfx, _ in FPR_POINTS
                }
            order, s, y = sort_block(_block_T(score, cols), _block_T(truth, cols))
            stats = _chunked_curve_stats(s, y, thresholds)
            if thresholds is not None:
                stats |= _honest(stats)
            valid[cols] = stats["valid"]
            for name in columns:
                columns[name][cols] = stats[name]

            # Replicates score only the classes evaluated on the split (the class set stays fixed; the
            # others would be NaN anyway): at RP3D scale 2,150 of 5,569 classes.
            evaluated = np.flatnonzero(stats["valid"])
            if boot_weights and evaluated.size:
                block = ReplicateCurves(order[evaluated], s[evaluated], y[evaluated],
                                    None if thresholds is None else {name: thr[evaluated] for name, thr in thresholds.items()})
                one = partial(_replicate, block=block, groups=group_index[cols][evaluated], metrics=metrics,
                              boot=(boot_weights, boot_sum, boot_n))
                list(pool.map(one, range(n_bootstrap)) if pool else map(one, range(n_bootstrap)))

    frame = pd.DataFrame(
        {
            "label": list(label_names) if label_names is not None else [str(i) for i in range(n_classes)],
            "group": groups.astype(str),
            "train_count": counts,
            "n_pos": columns["n_pos"].astype(np.int64),
            "n_neg": columns["n_neg"].astype(np.int64),
            "evaluated": valid,
            "threshold": columns["threshold"],
        }
        | {name: columns[name] for name in metrics}
    )

    summary: dict[str, dict[str, float]] = {}
    group_counts: dict[str, dict[str, int]] = {}
    for group in GROUPS + ("all",):
        members = np.ones(n_classes, bool) if group == "all" else groups == group
        evaluated = members & valid
        summary[group] = {name: _macro(columns[name][evaluated]) for name in metrics}
        group_counts[group] = {
            "n_classes": int(members.sum()),
            "n_evaluated": int(evaluated.sum()),
            "n_skipped": int(members.sum() - evaluated.sum()),
        }

    ci: dict[str, dict[str, tuple[float, float]]] = {}
    all_draws: dict[str, dict[str, np.ndarray]] = {}
    if n_bootstrap:
        with np.errstate(divide="ignore", invalid="ignore"):
            means = np.where(boot_n > 0, boot_sum / boot_n, np.nan)
        for gi, group in enumerate(GROUPS + ("all",)):
            ci[group], all_draws[group] = {}, {}
            for mi, name in enumerate(metrics):
                draws = means[:, gi, mi]
                all_draws[group][name] = draws
                ci[group][name] = pivotal_interval(summary[group][name], draws[np.isfinite(draws)])

    return MetricReport(
        per_class=frame,
        summary=summary,
        counts=group_counts,
        ci=ci,
        metrics=metrics,
        n_cases=n_cases,
        n_bootstrap=n_bootstrap,
        draws=all_draws,
        seed=seed,
        head_min=head_min,
        medium_min=medium_min,
        grouping=grouping,
    )


def pivotal_interval(estimate: float, draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """95% interval for a macro mean from its bootstrap replicates, centred on the estimate.

    Resampling cases with replacement biases threshold-maximised metrics (F1-max, MCC at it, AP)
    upwards — duplicated cases make the best threshold look better — so for them the replicates
    can lie wholly above the estimate and a percentile interval excludes it (seen: AP 23.68
    [24.27, 33.67]). The spread of the replicates around their own median is a fair picture of the
    sampling spread, their location is not: the interval is the basic (pivotal) bootstrap
    interval with the bootstrap world's centre at the replicates' median,
    ``[est - (q_hi - med), est + (med - q_lo)]``, which contains the estimate by construction
    (``q_lo <= med <= q_hi``) and has the percentile interval's width. The class set is fixed to
    the classes evaluable on the whole split (a resample that loses a class's positives skips it).
    """
    if not math.isfinite(estimate) or draws.size == 0:
        return (math.nan, math.nan)
    alpha = 100 * (1 - level) / 2
    lo, med, hi = np.percentile(draws, [alpha, 50, 100 - alpha])
    return (float(estimate - (hi - med)), float(estimate + (med - lo)))


# ---------------------------------------------------------------------------------------------
# Curves for plots
# ---------------------------------------------------------------------------------------------


def interpolated_roc(
    y_true: np.ndarray,
    y_score: np.ndarray,
    fpr_grid: np.ndarray,
    case_weights: np.ndarray | None = None,
) -> np.ndarray:
    """TPR of every class's ROC curve at ``fpr_grid`` (G,), linearly interpolated (top of vertical
    runs): returns (C, G); rows of classes without both labels are NaN. ``case_weights`` (n,)
    non-negative integers (bootstrap multiplicities); zero-weight cases are left out."""
    truth, score = _as_inputs(y_true, y_score, "interpolated_roc")
    grid = np.asarray(fpr_grid, dtype=np.float64)
    if case_weights is not None:
        weights = np.asarray(case_weights)
        drawn = weights > 0
        truth, score, weights = truth[drawn], score[drawn], weights[drawn]  # integer multiplicities stay integers (exact, faster sums)
    n_cases, n_classes = truth.shape
    out = np.full((n_classes, grid.size), np.nan)
    for cols in _blocks(n_classes, n_cases):
        order, s, y = sort_block(_block_T(score, cols), _block_T(truth, cols))
        out[cols] = _interpolate_rows(s, y, None if case_weights is None else weights[order], grid)
    return out


def interpolated_roc_replicates(
    y_true: np.ndarray, y_score: np.ndarray, fpr_grid: np.ndarray, case_weights: list[np.ndarray], threads: int | None = None
) -> Iterator[np.ndarray]:
    """:func:`interpolated_roc` for each of ``case_weights`` (bootstrap multiplicities), yielding (C,
    G) per replicate in order, with every class sorted once for all replicates and each replicate
    read through :class:`ReplicateCurves` (a running sum of its negatives' weights, no re-scoring of
    the drawn cases); ``threads`` replicates at once (default :data:`BOOTSTRAP_THREADS`). Equal to
    calling :func:`interpolated_roc` per replicate up to float rounding of the interpolation (~1e-15)."""
    truth, score = _as_inputs(y_true, y_score, "interpolated_roc_replicates")
    grid = np.asarray(fpr_grid, dtype=np.float64)
    n_cases, n_classes = truth.shape
    blocks = []
    for cols in _blocks(n_classes, n_cases):
        order, s, y = sort_block(_block_T(score, cols), _block_T(truth, cols))
        both = np.flatnonzero(y.any(axis=1) & ~y.all(axis=1))  # classes without both labels stay NaN
        if both.size:
            blocks.append((np.arange(cols.start, cols.stop)[both], ReplicateCurves(order[both], s[both], y[both], None)))
    one = partial(_replicate_roc, blocks=blocks, n_classes=n_classes, grid=grid)
    threads = min(BOOTSTRAP_THREADS if threads is None else threads, len(case_weights))
    if threads <= 1:
        yield from map(one, case_weights)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="roc-bootstrap") as pool:
        yield from pool.map(one, case_weights)


def _replicate_roc(weights: np.ndarray, blocks: list[tuple], n_classes: int, grid: np.ndarray) -> np.ndarray:
    """One replicate of :func:`interpolated_roc_replicates` from the prepared blocks."""
    out = np.full((n_classes, grid.size), np.nan)
    for rows, curves in blocks:
        out[rows] = curves.tpr_at(weights, grid)
    return out


def _interpolate_rows(s: np.ndarray, y: np.ndarray, w: np.ndarray | None, grid: np.ndarray) -> np.ndarray:
    """TPR at ``grid`` of rows sorted by decreasing score ``s`` with labels ``y`` and optional
    weights ``w`` (k, m): (k, G), NaN rows where a row lacks positives or negatives."""
    k = s.shape[0]
    out = np.full((k, grid.size), np.nan)
    tps, fps = _cumulative_counts(y, w)
    pos, neg = tps[:, -1:], fps[:, -1:]
    tp, fp, _ = _compact_points(s, tps, fps)
    with np.errstate(divide="ignore", invalid="ignore"):
        fpr = np.concatenate([np.zeros((k, 1)), fp / neg], axis=1)
        tpr = np.concatenate([np.zeros((k, 1)), tp / pos], axis=1)
    ok = ((pos > 0) & (neg > 0))[:, 0]
    if not ok.any():
        return out
    # One np.interp over all rows: row r lives on [2r, 2r + 1] of the x axis.
    offset = 2.0 * np.arange(int(ok.sum()))[:, None]
    xs = (grid[None, :] + offset).ravel()
    values = np.interp(xs, (fpr[ok] + offset).ravel(), tpr[ok].ravel())
    out[ok] = values.reshape(-1, grid.size)
    return out


def calibration_bins(
    y_true: np.ndarray, y_score: np.ndarray, n_bins: int = 10, strategy: str = "uniform"
) -> pd.DataFrame:
    """Reliability table pooled over all (case, class) pairs; scores must be probabilities in [0, 1].

    Bins are ``uniform`` on [0, 1] or ``quantile`` of the scores; a score on an edge goes to the
    lower bin (as :func:`sklearn.calibration.calibration_curve`). Returns the non-empty bins with
    columns ``lower, upper, count, mean_score, frac_pos``; ``df.attrs["ece"]`` is the expected
    calibration error ``Σ count/total · |frac_pos - mean_score|``.
    """
    import pandas as pd

    truth, score = _as_inputs(y_true, y_score, "calibration_bins")
    prob = score.ravel().astype(np.float64)
    hit = truth.ravel().astype(np.float64)
    if prob.min() < 0 or prob.max() > 1:
        raise ValueError("calibration_bins needs probabilities in [0, 1]; apply a sigmoid to logits first")
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    elif strategy == "quantile":
        edges = np.percentile(prob, np.linspace(0, 100, n_bins + 1))
    else:
        raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")
    ids = np.searchsorted(edges[1:-1], prob)
    total = np.bincount(ids, minlength=n_bins)
    sums = np.bincount(ids, weights=prob, minlength=n_bins)
    hits = np.bincount(ids, weights=hit, minlength=n_bins)
    nonempty = total > 0
    frame = pd.DataFrame(
        {
            "lower": edges[:-1][nonempty],
            "upper": edges[1:][nonempty],
            "count": total[nonempty],
            "mean_score": sums[nonempty] / total[nonempty],
            "frac_pos": hits[nonempty] / total[nonempty],
        }
    )
    frame.attrs["ece"] = float(np.sum(frame["count"] * np.abs(frame["frac_pos"] - frame["mean_score"])) / prob.size)
    return frame
