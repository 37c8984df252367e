"""Benchmark: raddiag.metrics.evaluate_scores at paper scale vs a per-class scikit-learn loop.

Random long-tailed labels for 5,569 classes × 10,000 cases (float32 sigmoid-like scores). The
scikit-learn loop (AUC, AP, F1-max + MCC, R@FPR by nearest point -- the paper's evaluation code)
runs on a subset of classes and is extrapolated linearly to all classes. Prints one JSON object.

    .venv/bin/python bench/metrics_speed.py [--classes 5569] [--cases 10000] [--subset 100]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings

import numpy as np
from sklearn.metrics import average_precision_score, matthews_corrcoef, precision_recall_curve, roc_auc_score, roc_curve

from raddiag.metrics import evaluate_scores


def make_data(n_cases: int, n_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Power-law label frequencies (rank^-1.3), scores = noisy sigmoid of a label-dependent logit."""
    rng = np.random.default_rng(seed)
    rate = np.clip(0.2 * np.arange(1, n_classes + 1) ** -1.3 * 50, 2 / n_cases, 0.3)
    y_true = rng.random((n_cases, n_classes), dtype=np.float32) < rate.astype(np.float32)
    logits = rng.standard_normal((n_cases, n_classes), dtype=np.float32) - 3.0 + 2.0 * y_true
    y_score = 1.0 / (1.0 + np.exp(-logits))
    train_counts = np.round(rate * 40_000).astype(np.int64)
    return y_true, y_score, train_counts


def sklearn_loop(y_true: np.ndarray, y_score: np.ndarray) -> None:
    """The reference per-class loop (as in the RadDiag authors' eval.py)."""
    for c in range(y_true.shape[1]):
        yt, sc = y_true[:, c], y_score[:, c]
        if len(np.unique(yt)) < 2:
            continue
        roc_auc_score(yt, sc)
        average_precision_score(yt, sc)
        precision, recall, thresholds = precision_recall_curve(yt, sc)
        with np.errstate(invalid="ignore"):
            f1 = 2 * precision * recall / (precision + recall)
        f1[np.isnan(f1)] = 0
        best = int(np.argmax(f1))
        matthews_corrcoef(yt, (sc >= thresholds[best]).astype(int))
        fpr, tpr, _ = roc_curve(yt, sc)
        for x in (0.01, 0.05, 0.1):
            tpr[np.abs(fpr - x).argmin()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=5569)
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--subset", type=int, default=100, help="classes timed in the scikit-learn loop")
    args = parser.parse_args()

    y_true, y_score, train_counts = make_data(args.cases, args.classes)
    start = time.perf_counter()
    report = evaluate_scores(y_true, y_score, train_counts)
    vectorised_s = time.perf_counter() - start

    subset = np.linspace(0, args.classes - 1, args.subset).round().astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        sklearn_loop(y_true[:, subset], y_score[:, subset])
        subset_s = time.perf_counter() - start
    sklearn_s = subset_s * args.classes / args.subset
    print(
        json.dumps(
            {
                "classes": args.classes,
                "cases": args.cases,
                "vectorised_s": round(vectorised_s, 2),
                "sklearn_subset_classes": args.subset,
                "sklearn_subset_s": round(subset_s, 2),
                "sklearn_extrapolated_s": round(sklearn_s, 1),
                "speedup": round(sklearn_s / vectorised_s, 1),
                "n_evaluated": report.counts["all"]["n_evaluated"],
                "auc_macro": round(report.summary["all"]["auc"], 4),
                "cpus": os.cpu_count(),
                "load_avg_1m_at_end": round(os.getloadavg()[0], 2),  # the machine is shared
                "numpy": np.__version__,
                "python": platform.python_version(),
            }
        )
    )


if __name__ == "__main__":
    main()
