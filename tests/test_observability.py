"""dashboards/raddiag.json queries exactly the metrics raddiag.observability emits; the emitters'
arithmetic without Ray. (The live scrape during a real sweep is in test_cluster_path.py.)"""

from __future__ import annotations

import json
import re
import time

import numpy as np
import torch

from conftest import REPO

_PROMQL_WORDS = {"sum", "by", "rate", "histogram_quantile", "max", "avg", "label_values", "le", "run", "rank", "group", "split"}


def _exprs() -> list[str]:
    dashboard = json.loads((REPO / "dashboards" / "raddiag.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v.get("definition")]
    return exprs


def dashboard_series() -> set[str]:
    """Every Prometheus series name the dashboard's queries reference."""
    names = set()
    for expr in _exprs():
        names |= {n for n in re.findall(r"\b(ray_[a-z0-9_]+)\b", expr)}
    return names


def test_every_queried_series_is_emitted_and_every_metric_is_on_the_dashboard() -> None:
    from raddiag.observability import METRICS, prometheus_series

    emitted = {series for name in METRICS for series in prometheus_series(name)}
    queried = dashboard_series()
    assert queried, "the dashboard queries nothing"
    assert queried <= emitted, f"queried but not emitted: {sorted(queried - emitted)}"
    shown = {name for name in METRICS if set(prometheus_series(name)) & queried}
    assert shown == set(METRICS), f"emitted but not on the dashboard: {sorted(set(METRICS) - shown)}"


def test_every_panel_has_a_datasource_unit_and_description() -> None:
    dashboard = json.loads((REPO / "dashboards" / "raddiag.json").read_text())
    assert dashboard["uid"] and dashboard["title"]
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"] and panel["description"], panel["title"]
        assert panel["targets"], panel["title"]


def test_histogram_queries_use_bucket_series_with_le() -> None:
    for expr in _exprs():
        if "histogram_quantile" in expr:
            assert "_bucket" in expr and "le" in expr, expr


def test_batches_wrapper_times_wait_and_compute_without_ray() -> None:
    from raddiag.observability import TrainMetrics

    def slow_batches():
        for _ in range(3):
            time.sleep(0.05)  # the data pipeline
            yield {"labels": torch.zeros(4, 3), "images": torch.zeros(4, 2, 1, 8, 8)}

    observe = TrainMetrics("run-a", rank=0)
    seen = 0
    for _batch in observe.batches(slow_batches()):
        time.sleep(0.02)  # the step
        seen += 1
    assert seen == 3
    assert 0.04 <= observe.last["raddiag_train_data_wait_seconds"] < 0.5
    assert 0.015 <= observe.last["raddiag_train_step_seconds"] < 0.5
    assert observe.last["raddiag_train_cases_total"] == 4
    expected_bytes = (4 * 3 + 4 * 2 * 8 * 8) * 4
    rate = observe.last["raddiag_train_input_bytes_per_second"]
    assert np.isclose(rate / observe.last["raddiag_train_cases_per_second"], expected_bytes / 4)
    observe.epoch({"epoch": 2, "epoch_time_s": 1.5, "train_loss": 0.7, "val_auc_macro": 0.8, "val_auc_tail": float("nan")})
    assert observe.last["raddiag_epoch"] == 2 and observe.last["raddiag_train_loss"] == 0.7
    assert observe.last["raddiag_val_auc"] == 0.8  # NaN tail AUC (no positives) is not exported


def test_read_metrics_counts_bytes_returned_by_the_store() -> None:
    from raddiag.observability import ReadMetrics

    read = ReadMetrics(lambda scan_id, indices: np.zeros((len(indices), 16, 16), np.uint8), "train")
    read("s1", [0, 1])
    read("s2", [3])
    read.flush(cases=2)
    assert read.bytes == 3 * 256
