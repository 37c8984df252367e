"""The sweep report page: validation and test are named as such, parameters that never varied are
not columns, numbers are rounded, wide tables scroll, and the registry's test figures are shown."""

from __future__ import annotations

from raddiag.report import SweepData, Trial
from raddiag.views.html import render_html


def _data() -> SweepData:
    trials = [
        Trial(f"run{i}", f"trial-{i}", "FINISHED",
              {"train.lr": lr, "loss.type": "bce", "loss.focal.gamma": "2.0"},
              {"val_auc_macro": [(0, 0.5 + i / 10), (1, 0.6 + i / 10)], "val_auc_tail": [(1, 0.55)]})
        for i, lr in enumerate(("0.17367144413306937", "0.000312345678"))
    ]
    return SweepData("sw", "parent", "val_auc_macro", "max", "run1", {"train.lr": {"loguniform": [1e-4, 1]}}, trials, "v1")


def test_report_page_names_splits_drops_constants_rounds_and_shows_the_registry() -> None:
    page = render_html(_data(), {"train.lr": 1.0}, "note", {}, {}, "best", [
        {"version": "3", "aliases": "champion", "run": "run1", "decision": "champion",
         "test head": "0.912345678", "test medium": "0.8", "test tail": "0.71", "test macro": "0.85"}])
    assert "Test AUC" not in page and "Leaderboard (validation split)" in page and "Registry: test split" in page
    assert "0.17367144413306937" not in page and "0.1737" in page and "0.0003123" in page
    assert "<th>loss.type</th>" not in page and "loss.type=bce" in page and "<th>train.lr</th>" in page
    assert 'class="scroll"' in page and "<td>champion</td>" in page and "0.9123" in page
    empty = render_html(_data(), {}, "note", {}, {}, "best", [])
    assert "No trial of this sweep is registered yet" in empty
