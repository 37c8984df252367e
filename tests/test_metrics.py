"""raddiag.metrics against scikit-learn (the paper's own evaluation procedure) and hand-made cases."""

from __future__ import annotations

import io
import json
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    matthews_corrcoef,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from raddiag.metrics import (
    GROUPS,
    MetricReport,
    calibration_bins,
    evaluate_scores,
    group_of_counts,
    interpolated_roc,
)
from raddiag.views.console import metric_table, print_report

FPRS = {"r01": 0.01, "r05": 0.05, "r10": 0.1, "r20": 0.2, "r50": 0.5}


# ----------------------------------------------------------------------------- reference


def paper_metrics(y: np.ndarray, s: np.ndarray) -> dict[str, float]:
    """One class, computed the way the RadDiag authors' eval.py does (scikit-learn per class)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        precision, recall, thresholds = precision_recall_curve(y, s)
        f1 = 2 * (precision * recall) / (precision + recall)
    f1[np.isnan(f1)] = 0
    best = int(np.argmax(f1))
    out = {
        "auc": roc_auc_score(y, s),
        "ap": average_precision_score(y, s),
        "f1": f1[best],
        "threshold": thresholds[best],
        "mcc": matthews_corrcoef(y, (s >= thresholds[best]).astype(int)),
    }
    fpr, tpr, _ = roc_curve(y, s)  # drop_intermediate=True, as in the paper
    full_fpr, full_tpr, _ = roc_curve(y, s, drop_intermediate=False)
    for name, x in FPRS.items():
        out[name] = tpr[np.abs(fpr - x).argmin()]
        out[f"{name}_interp"] = np.interp(x, full_fpr, full_tpr)  # np.interp takes the top of a vertical run
    return out


def honest_metrics(y_val, s_val, y, s) -> dict[str, float]:
    """Thresholds picked on validation with scikit-learn, applied to the test split."""
    threshold = paper_metrics(y_val, s_val)["threshold"]
    predicted = s >= threshold
    out = {"f1_val": f1_score(y, predicted), "mcc_val": matthews_corrcoef(y, predicted)}
    fpr, _, thresholds = roc_curve(y_val, s_val, drop_intermediate=False)
    for name, x in FPRS.items():
        cut = thresholds[np.nonzero(fpr <= x)[0][-1]]  # lowest threshold with validation FPR <= x
        out[f"{name}_val"] = np.mean(s[y == 1] >= cut)
    return out


def random_split(rng, n, c, ties=False):
    rate = rng.uniform(0.02, 0.6, c)
    y = (rng.random((n, c)) < rate).astype(np.int64)
    s = rng.random((n, c)) + y * rng.uniform(0, 1.5, c)
    if ties:
        s = np.round(s, 1)
    return y, s


def assert_matches_reference(report: MetricReport, y, s, val=None):
    for c in range(y.shape[1]):
        row = report.per_class.iloc[c]
        both = 0 < y[:, c].sum() < len(y)
        assert row["evaluated"] == both
        if not both:
            assert math.isnan(row["auc"]) and math.isnan(row["f1"])
            continue
        ref = paper_metrics(y[:, c], s[:, c])
        if val is not None and 0 < val[0][:, c].sum() < len(val[0]):
            ref |= honest_metrics(val[0][:, c], val[1][:, c], y[:, c], s[:, c])
        for key, value in ref.items():
            assert row[key] == pytest.approx(value, abs=1e-9), (c, key)


# ----------------------------------------------------------------------------- against sklearn


@pytest.mark.parametrize("ties", [False, True])
def test_per_class_matches_sklearn(ties):
    rng = np.random.default_rng(3)
    y, s = random_split(rng, 200, 30, ties)
    report = evaluate_scores(y, s, rng.integers(0, 300, 30))
    assert_matches_reference(report, y, s)


def test_honest_variant_matches_sklearn():
    rng = np.random.default_rng(4)
    y, s = random_split(rng, 150, 20, ties=True)
    val = random_split(rng, 90, 20, ties=True)
    report = evaluate_scores(y, s, np.full(20, 50), val_true=val[0], val_score=val[1])
    assert_matches_reference(report, y, s, val)
    assert {"f1_val", "mcc_val", "r01_val", "r05_val", "r10_val", "r20_val", "r50_val"} <= set(report.per_class.columns)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 25),
    c=st.integers(1, 4),
    levels=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_small_splits_match_sklearn(n, c, levels, seed):
    """Tiny splits with heavy ties (scores drawn from `levels` values), including degenerate classes."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < rng.uniform(0, 1, c)).astype(np.int64)
    s = rng.integers(0, levels, (n, c)) / levels
    val = ((rng.random((n, c)) < 0.5).astype(np.int64), rng.integers(0, levels, (n, c)) / levels)
    report = evaluate_scores(y, s, rng.integers(0, 200, c), val_true=val[0], val_score=val[1])
    assert_matches_reference(report, y, s, val)


def test_honest_equals_in_split_when_validation_is_the_split():
    rng = np.random.default_rng(5)
    y, s = random_split(rng, 120, 15)
    report = evaluate_scores(y, s, np.full(15, 10), val_true=y, val_score=s)
    frame = report.per_class
    assert np.allclose(frame["f1_val"], frame["f1"]) and np.allclose(frame["mcc_val"], frame["mcc"])
    for name in FPRS:  # same threshold on the same data: TPR of the last point with FPR <= x
        assert np.all(frame[f"{name}_val"] <= frame[f"{name}_interp"] + 1e-12)


def test_interpolated_roc_matches_numpy_interp():
    rng = np.random.default_rng(6)
    y, s = random_split(rng, 80, 6, ties=True)
    grid = np.linspace(0, 1, 23)
    curves = interpolated_roc(y, s, grid)
    for c in range(6):
        fpr, tpr, _ = roc_curve(y[:, c], s[:, c], drop_intermediate=False)
        assert curves[c] == pytest.approx(np.interp(grid, fpr, tpr), abs=1e-12)


def test_interpolated_roc_weights_equal_a_resample():
    rng = np.random.default_rng(7)
    y, s = random_split(rng, 60, 5)
    draw = rng.integers(0, 60, 60)
    weights = np.bincount(draw, minlength=60)
    grid = np.linspace(0, 1, 11)
    assert interpolated_roc(y, s, grid, weights) == pytest.approx(interpolated_roc(y[draw], s[draw], grid), nan_ok=True)


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_calibration_bins_match_sklearn(strategy):
    rng = np.random.default_rng(8)
    s = rng.random((300, 4))
    y = (rng.random((300, 4)) < s).astype(int)
    bins = calibration_bins(y, s, n_bins=8, strategy=strategy)
    frac, mean = calibration_curve(y.ravel(), s.ravel(), n_bins=8, strategy=strategy)
    assert bins["frac_pos"].to_numpy() == pytest.approx(frac)
    assert bins["mean_score"].to_numpy() == pytest.approx(mean)
    assert bins["count"].sum() == s.size
    expected_ece = np.sum(bins["count"] * np.abs(frac - mean)) / s.size
    assert bins.attrs["ece"] == pytest.approx(expected_ece)


# ----------------------------------------------------------------------------- edge cases


def test_ties_all_equal_scores():
    y = np.array([[1], [0], [1], [0], [0]])
    s = np.full((5, 1), 0.3)
    row = evaluate_scores(y, s, np.array([5])).per_class.iloc[0]
    assert row["auc"] == 0.5
    assert row["ap"] == pytest.approx(0.4)  # one threshold: precision = prevalence, recall 1
    assert row["f1"] == pytest.approx(2 * 0.4 / 1.4)
    assert row["mcc"] == 0.0  # everything predicted positive
    assert row["r01"] == 0.0  # nearest point to FPR 0.01 is the origin
    assert row["r10_interp"] == pytest.approx(0.1)  # on the diagonal


def test_perfect_and_inverted_separation():
    y = np.array([[1, 1], [1, 1], [0, 0], [0, 0]])
    s = np.array([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.1, 0.9]])
    frame = evaluate_scores(y, s, np.array([200, 200])).per_class
    assert list(frame["auc"]) == [1.0, 0.0]
    assert frame["f1"][0] == 1.0 and frame["mcc"][0] == 1.0 and frame["threshold"][0] == 0.8
    # The paper's rule takes the *first* ROC point nearest FPR x; at FPR 0 that is the origin, so a
    # perfect classifier scores R@.01 = 0 (n_neg = 2 here). The interpolated variant gives 1.
    assert frame["r01"][0] == 0.0 and frame["r01_interp"][0] == 1.0


def test_single_class():
    y = np.array([[1], [0], [1], [0]])
    s = np.array([[0.7], [0.2], [0.6], [0.4]])
    report = evaluate_scores(y, s, np.array([12]), label_names=["Normal"])
    assert report.per_class["label"].tolist() == ["Normal"]
    assert report.summary["tail"]["auc"] == 1.0 and report.summary["all"]["auc"] == 1.0
    assert math.isnan(report.summary["head"]["auc"]) and math.isnan(report.summary["medium"]["auc"])
    assert report.counts["head"] == {"n_classes": 0, "n_evaluated": 0, "n_skipped": 0}


def test_classes_without_both_labels_are_skipped_and_counted():
    rng = np.random.default_rng(9)
    y, s = random_split(rng, 40, 6)
    y[:, 0] = 0  # all negative, head
    y[:, 1] = 1  # all positive, tail
    y[:, 2] = 0  # all negative, tail
    counts = np.array([150, 3, 10, 150, 50, 5])
    report = evaluate_scores(y, s, counts)
    assert report.counts["head"] == {"n_classes": 2, "n_evaluated": 1, "n_skipped": 1}
    assert report.counts["medium"] == {"n_classes": 1, "n_evaluated": 1, "n_skipped": 0}
    assert report.counts["tail"] == {"n_classes": 3, "n_evaluated": 1, "n_skipped": 2}
    assert report.counts["all"] == {"n_classes": 6, "n_evaluated": 3, "n_skipped": 3}
    flat = report.flat()
    assert flat["n_skipped_tail"] == 2 and flat["n_skipped_macro"] == 3 and flat["n_evaluated_head"] == 1
    assert report.summary["head"]["auc"] == pytest.approx(roc_auc_score(y[:, 3], s[:, 3]))
    assert report.per_class["n_pos"].tolist()[:3] == [0, 40, 0]


def test_all_negative_split():
    report = evaluate_scores(np.zeros((5, 3)), np.random.default_rng(0).random((5, 3)), np.array([100, 40, 2]))
    assert report.counts["all"]["n_skipped"] == 3
    assert all(math.isnan(v) for group in report.summary.values() for v in group.values())
    assert "-" in _render(report)


def test_one_case():
    report = evaluate_scores(np.array([[1, 0]]), np.array([[0.4, 0.6]]), np.array([1, 1]))
    assert report.counts["all"]["n_skipped"] == 2


def test_validation_class_without_positives_gives_nan_honest_metrics():
    y = np.array([[1], [0], [1], [0]])
    s = np.array([[0.7], [0.2], [0.6], [0.4]])
    report = evaluate_scores(y, s, np.array([40]), val_true=np.zeros((3, 1)), val_score=np.ones((3, 1)) * 0.5)
    row = report.per_class.iloc[0]
    assert row["auc"] == 1.0 and math.isnan(row["f1_val"]) and math.isnan(row["r05_val"])


def test_summary_is_macro_mean_of_evaluated_classes():
    rng = np.random.default_rng(10)
    y, s = random_split(rng, 100, 40)
    counts = rng.integers(0, 400, 40)
    report = evaluate_scores(y, s, counts)
    frame = report.per_class[report.per_class["evaluated"]]
    for group in GROUPS:
        part = frame[frame["group"] == group]
        assert report.summary[group]["ap"] == pytest.approx(part["ap"].mean())
    assert report.summary["all"]["mcc"] == pytest.approx(frame["mcc"].mean())


def test_scores_may_be_logits_or_float32():
    rng = np.random.default_rng(11)
    y, s = random_split(rng, 60, 5)
    logits = np.log(s) - np.log1p(-np.clip(s / 3, 0, 0.99))
    a = evaluate_scores(y, s, np.full(5, 9)).per_class["auc"]
    b = evaluate_scores(y.astype(bool), (s * 10 - 3).astype(np.float32), np.full(5, 9)).per_class["auc"]
    assert np.allclose(a, b)
    assert np.all(np.isfinite(evaluate_scores(y, logits, np.full(5, 9)).per_class["auc"]))


def test_input_errors_name_the_problem():
    y, s = np.zeros((4, 2)), np.zeros((4, 2))
    with pytest.raises(ValueError, match="train_counts"):
        evaluate_scores(y, s, np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="both"):
        evaluate_scores(y, np.zeros((4, 3)), np.array([1, 2]))
    with pytest.raises(ValueError, match="class column 1"):
        evaluate_scores(y, np.array([[0, 0], [0, np.nan], [0, 0], [0, 0]]), np.array([1, 2]))
    with pytest.raises(ValueError, match="0/1"):
        evaluate_scores(y + 2, s, np.array([1, 2]))
    with pytest.raises(ValueError, match="label_names"):
        evaluate_scores(y, s, np.array([1, 2]), label_names=["a"])
    with pytest.raises(ValueError, match="val_true and val_score"):
        evaluate_scores(y, s, np.array([1, 2]), val_true=y)
    with pytest.raises(ValueError, match="validation"):
        evaluate_scores(y, s, np.array([1, 2]), val_true=np.zeros((3, 3)), val_score=np.zeros((3, 3)))


def test_group_of_counts_boundaries():
    counts = np.array([0, 29, 30, 99, 100, 5000])
    assert group_of_counts(counts).tolist() == ["tail", "tail", "medium", "medium", "head", "head"]
    assert group_of_counts(counts, head_min=50, medium_min=10).tolist() == [
        "tail", "medium", "medium", "head", "head", "head"
    ]
    with pytest.raises(ValueError):
        group_of_counts(counts, head_min=10, medium_min=20)


# ----------------------------------------------------------------------------- bootstrap


def test_single_bootstrap_replicate_equals_the_resample():
    """The CI of one replicate is that replicate's group means, which must equal scikit-learn's
    metrics on the explicitly resampled cases (drawn as documented: rng.integers(0, n, n))."""
    rng = np.random.default_rng(12)
    y, s = random_split(rng, 70, 8, ties=True)
    counts = np.array([500, 500, 60, 60, 5, 5, 5, 150])
    report = evaluate_scores(y, s, counts, n_bootstrap=1, seed=42)
    draw = np.random.default_rng(42).integers(0, 70, 70)
    resampled = evaluate_scores(y[draw], s[draw], counts)
    for group in GROUPS + ("all",):
        for metric in ("auc", "ap", "f1", "mcc", "r05", "r10_interp"):
            expected = resampled.summary[group][metric]
            assert report.draws[group][metric][0] == pytest.approx(expected, abs=1e-12)
            lo, hi = report.ci[group][metric]  # one replicate: no spread, the interval is the estimate
            assert lo == pytest.approx(report.summary[group][metric]) and hi == pytest.approx(report.summary[group][metric])


@pytest.mark.parametrize("seed", range(6))
def test_every_interval_contains_its_estimate(seed):
    """Small, imbalanced splits where resampling inflates F1-max/AP/MCC (the percentile interval
    excluded its estimate here: AP 23.68 [24.27, 33.67]); the interval must contain the estimate
    for every group and metric, with the honest variant too, and keep the replicates' spread."""
    rng = np.random.default_rng(100 + seed)
    n, c = 60, 24
    y = (rng.random((n, c)) < rng.uniform(0.02, 0.3, c)).astype(int)
    s = np.clip(y * rng.uniform(0, 0.6, (n, c)) + rng.random((n, c)) * 0.7, 0, 1)
    val = ((rng.random((40, c)) < 0.15).astype(int), rng.random((40, c)))
    counts = np.repeat([300, 60, 5], c // 3)
    report = evaluate_scores(y, s, counts, val_true=val[0], val_score=val[1], n_bootstrap=80, seed=seed)
    outside_percentile = 0
    for group in GROUPS + ("all",):
        for metric in report.metrics:
            estimate = report.summary[group][metric]
            lo, hi = report.ci[group][metric]
            if not np.isfinite(estimate):
                continue
            assert lo <= estimate <= hi, (group, metric, estimate, lo, hi)
            draws = report.draws[group][metric]
            draws = draws[np.isfinite(draws)]
            q_lo, q_hi = np.percentile(draws, [2.5, 97.5])
            assert hi - lo == pytest.approx(q_hi - q_lo)
            outside_percentile += not (q_lo <= estimate <= q_hi)
    assert outside_percentile > 0 or seed > 0  # the data does reproduce the defect of the percentile interval


def test_bootstrap_keeps_the_class_set_of_the_split():
    """A class whose few positives a resample loses is skipped there, never replaced by others:
    every replicate averages only classes evaluated on the split."""
    rng = np.random.default_rng(5)
    y, s = random_split(rng, 40, 6)
    y[:, 0] = 0
    y[0, 0] = 1  # one positive: absent from ~37% of resamples
    y[:, 1] = 0  # never evaluable
    report = evaluate_scores(y, s, np.full(6, 200), n_bootstrap=30, seed=0)
    assert report.counts["head"]["n_evaluated"] == 5
    assert np.isfinite(report.draws["head"]["auc"]).all()


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(13)
    y, s = random_split(rng, 150, 12)
    counts = np.repeat([300, 50, 10], 4)
    kwargs = {"n_bootstrap": 60, "seed": 1}
    first = evaluate_scores(y, s, counts, **kwargs)
    again = evaluate_scores(y, s, counts, **kwargs)
    other = evaluate_scores(y, s, counts, n_bootstrap=60, seed=2)
    assert first.ci == again.ci and first.ci != other.ci
    for group in GROUPS + ("all",):
        lo, hi = first.ci[group]["auc"]
        assert lo < first.summary[group]["auc"] < hi
        assert 0 < hi - lo < 0.3
    assert first.flat()["auc_macro_lo"] == first.ci["all"]["auc"][0]


def test_bootstrap_with_validation_thresholds():
    rng = np.random.default_rng(14)
    y, s = random_split(rng, 80, 5)
    val = random_split(rng, 50, 5)
    report = evaluate_scores(y, s, np.full(5, 120), val_true=val[0], val_score=val[1], n_bootstrap=20)
    lo, hi = report.ci["head"]["f1_val"]
    assert 0 <= lo <= report.summary["head"]["f1_val"] <= hi <= 1


# ----------------------------------------------------------------------------- report outputs


def _render(report: MetricReport, **kwargs) -> str:
    console = Console(file=io.StringIO(), width=200, record=True)
    console.print(metric_table(report, "Disorders", **kwargs))
    return console.export_text()


def test_flat_keys_and_json():
    rng = np.random.default_rng(15)
    y, s = random_split(rng, 60, 10)
    report = evaluate_scores(y, s, np.repeat([200, 60, 3, 0, 1], 2), label_names=[f"d{i}" for i in range(10)])
    flat = report.flat()
    for key in ("auc_head", "auc_medium", "auc_tail", "auc_macro", "ap_macro", "f1_macro", "mcc_macro",
                "r01_macro", "r10_interp_tail", "n_skipped_tail", "n_classes_head", "n_evaluated_macro"):
        assert key in flat and isinstance(flat[key], float), key
    assert flat["auc_macro"] == report.summary["all"]["auc"]
    y[:, :2] = 0  # make head classes unevaluable -> NaN -> null in JSON
    payload = evaluate_scores(y, s, np.repeat([200, 60, 3, 0, 1], 2)).to_json()
    text = json.dumps(payload, allow_nan=False)
    back = json.loads(text)
    assert back["summary"]["head"]["auc"] is None
    assert back["counts"]["head"]["n_skipped"] == 2
    assert len(back["per_class"]) == 10 and back["per_class"][0]["auc"] is None
    assert set(back["per_class"][2]) >= {"label", "group", "train_count", "n_pos", "auc", "ap", "f1", "mcc",
                                          "threshold", "r01", "r05", "r10", "r20", "r50", "r01_interp", "r05_interp", "r10_interp",
                                          "r20_interp", "r50_interp"}


def test_table_is_shaped_like_the_paper():
    rng = np.random.default_rng(16)
    y, s = random_split(rng, 80, 9)
    report = evaluate_scores(y, s, np.repeat([200, 60, 3], 3), n_bootstrap=10)
    text = _render(report)
    for header in ("Group", "AUC", "AP", "F1", "MCC", "R@.01", "R@.05", "R@.1", "R@.2", "R@.5"):
        assert header in text
    rows = [line.split() for line in text.splitlines()
            if line.split()[:1] in (["head"], ["medium"], ["tail"], ["all"]) and "/" in line.split()[1]]  # not the caption
    assert [row[0] for row in rows] == ["head", "medium", "tail", "all"]
    tail = rows[2]
    assert tail[1] == "3/3"
    paper_columns = ("auc", "ap", "f1", "mcc", "r01", "r05", "r10", "r20", "r50")
    assert tail[2:] == [f"{100 * report.summary['tail'][m]:.2f}" for m in paper_columns]
    lo, hi = report.ci["tail"]["auc"]
    assert f"{100 * lo:.2f}–" in text and f"{100 * hi:.2f}" in text
    with pytest.raises(ValueError, match="validation"):
        metric_table(report, "x", variant="honest")


def test_print_report_writes_json_and_honest_table(tmp_path):
    rng = np.random.default_rng(17)
    y, s = random_split(rng, 50, 4)
    val = random_split(rng, 40, 4)
    report = evaluate_scores(y, s, np.full(4, 150), val_true=val[0], val_score=val[1])
    console = Console(file=io.StringIO(), width=200, record=True)
    out = tmp_path / "sub" / "report.json"
    print_report(report, "Disorders", json_path=out, console=console)
    text = console.export_text()
    assert "thresholds chosen on validation" in text and "(val" in text and "thr)" in text
    assert json.loads(out.read_text()) == json.loads(json.dumps(report.to_json()))


# ----------------------------------------------------------------------------- the metric table


def test_every_metric_the_kernel_computes_is_in_the_table_and_vice_versa():
    """METRIC_SPECS is the one list of metrics: the kernel's per-class outputs (curve statistics and
    the honest variant), minus its bookkeeping (counts, thresholds, TP/FP at thresholds), are exactly
    the table's names, each once, and a report carries them in table order."""
    from raddiag import metrics
    from raddiag.metrics import FPR_POINTS, METRIC_SPECS, TABLE_VARIANTS, curve_stats, metric_keys, sort_block, specs_for

    rng = np.random.default_rng(18)
    y, s = random_split(rng, 60, 5)
    val_y, val_s = random_split(rng, 40, 5)
    _, vs, vy = sort_block(np.ascontiguousarray(val_s.T), np.ascontiguousarray(val_y.T))
    vstats = curve_stats(vs, vy)
    thresholds = {"f1": vstats["threshold"]} | {f"r{sfx}": vstats[f"threshold_r{sfx}"] for sfx, _ in FPR_POINTS}
    _, ss, sy = sort_block(np.ascontiguousarray(s.T), np.ascontiguousarray(y.T))
    stats = curve_stats(ss, sy, None, thresholds)
    stats |= metrics._honest(stats)
    computed = {key for key in stats if key not in ("n_pos", "n_neg", "valid", "threshold")
                and not key.startswith(("threshold_", "tp_", "fp_"))}
    names = [spec.name for spec in METRIC_SPECS]
    assert len(names) == len(set(names)) and set(names) == computed

    report = evaluate_scores(y, s, np.full(5, 150), val_true=val_y, val_score=val_s)
    assert report.metrics == tuple(names)
    assert set(metric_keys()) <= set(report.flat())
    for variant in TABLE_VARIANTS:
        labels = [spec.label for spec in specs_for(variant)]
        assert labels and len(labels) == len(set(labels)), variant  # one column per metric in each table
        text = _render(report, variant=variant)
        assert all(label in text for label in labels), variant


@pytest.mark.parametrize(("key", "value", "fix"), [
    ("train.metric", "val_auc_macr", "val_auc_macro"), ("sweep.metric", "auc_macro", "val_auc_macro"),
    ("promote.metric", "val_auc_tail", "auc_tail"), ("sweep.metric", "val_f1_val_tail", None),
])
def test_a_metric_name_outside_the_table_fails_at_config_load(key, value, fix):
    """``train.metric`` / ``sweep.metric`` name what a run logs each epoch (val_<metric>_<group>, no
    validation-threshold variants) and ``promote.metric`` a test metric: a typo is one line at load."""
    from raddiag.config import ConfigError, load_config

    with pytest.raises(ConfigError) as caught:
        load_config(None, [f"{key}={value}"])
    message = str(caught.value)
    assert "\n" not in message and key in message and "head, medium, tail, macro" in message
    assert fix is None or repr(fix) in message
    cfg = load_config(None, ["train.metric=train_loss", "sweep.metric=val_r50_interp_tail", "promote.metric=f1_val_macro"])
    assert (cfg.train.metric, cfg.sweep.metric, cfg.promote.metric) == ("train_loss", "val_r50_interp_tail", "f1_val_macro")


def test_the_direction_of_a_metric_comes_from_the_table():
    """Early stopping/checkpointing (train.metric) and the sweep's mode follow ``higher_is_better``:
    a sweep that would minimise an AUC or maximise the loss is refused at load, naming the fix."""
    from raddiag.config import ConfigError, load_config
    from raddiag.metrics import higher_is_better

    assert higher_is_better("val_auc_tail") and higher_is_better("test_r50_interp_macro") and not higher_is_better("train_loss")
    with pytest.raises(ValueError, match="val_nope"):
        higher_is_better("val_nope")
    for overrides, fix in ((["sweep.mode=min"], "sweep.mode=max"), (["sweep.metric=train_loss"], "sweep.mode=min")):
        with pytest.raises(ConfigError, match=fix):
            load_config(None, overrides)
    assert load_config(None, ["sweep.metric=train_loss", "sweep.mode=min"]).sweep.mode == "min"
    defaults = load_config(None, [])  # not checked unless set: the defaults must agree
    assert higher_is_better(defaults.sweep.metric) == (defaults.sweep.mode == "max") and higher_is_better(defaults.train.metric)
