"""raddiag.plots writes valid, non-empty PNG files."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from raddiag.metrics import evaluate_scores
from raddiag.plots import auc_vs_frequency, calibration, roc_by_group

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    assert path.exists() and path.stat().st_size > 5_000, path
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.01  # something was drawn


@pytest.fixture
def split():
    rng = np.random.default_rng(0)
    n, c = 60, 24
    y = (rng.random((n, c)) < np.linspace(0.5, 0.03, c)).astype(int)
    logits = rng.normal(-1.5, 1.0, (n, c)) + 2.5 * y
    scores = 1 / (1 + np.exp(-logits))
    counts = np.round(np.geomspace(400, 2, c)).astype(int)
    return y, scores, counts


def test_roc_by_group(tmp_path, split):
    y, scores, counts = split
    out = roc_by_group(y, scores, counts, tmp_path / "plots" / "roc.png", n_bootstrap=20, seed=1)
    assert out == tmp_path / "plots" / "roc.png"
    assert_png(out)


def test_roc_by_group_without_band_and_with_an_empty_group(tmp_path, split):
    y, scores, counts = split
    out = roc_by_group(y, scores, np.full(len(counts), 500), tmp_path / "roc_head_only.png", n_bootstrap=0)
    assert_png(out)
    with pytest.raises(ValueError, match="classes"):
        roc_by_group(y, scores, counts[:-1], tmp_path / "bad.png")


def test_auc_vs_frequency(tmp_path, split):
    y, scores, counts = split
    y[:, -1] = 0  # one skipped tail class, reported in the legend
    report = evaluate_scores(y, scores, counts)
    assert report.counts["tail"]["n_skipped"] >= 1
    assert_png(auc_vs_frequency(report, tmp_path / "auc_vs_frequency.png"))


def test_calibration(tmp_path, split):
    y, scores, _ = split
    assert_png(calibration(y, scores, tmp_path / "calibration.png", n_bins=10))
    with pytest.raises(ValueError, match="probabilities"):
        calibration(y, scores * 4 - 2, tmp_path / "bad.png")
