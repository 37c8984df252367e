"""A sweep gives back what its stopped trials held: Tune stops trials mid-run (ASHA, a budget), and
Ray Train must then free each trial's worker placement group, or a long sweep starves."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _live_placement_groups() -> list[str]:
    import ray

    return [pg for pg, info in ray.util.placement_group_table().items() if info["state"] != "REMOVED"]


def test_trials_stopped_mid_run_free_their_placement_groups(tmp_path: Path, tiny_store, ray_local) -> None:
    from ray.tune.stopper import MaximumIterationStopper

    from raddiag.config import with_overrides
    from raddiag.tune.sweep import run_sweep

    cfg, _ = tiny_store
    epochs = 40  # far more tiny epochs than fit into Tune's stop latency, even on a loaded machine
    cfg = with_overrides(cfg, {
        "train.storage_path": str(tmp_path / "ray"), "tracking.tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "sweep.name": "stopped-mid-run", "train.epochs": epochs, "train.num_workers": 1,
        "sweep.num_samples": 2, "sweep.max_concurrent_trials": 2,
        "sweep.scheduler": "none",
    })
    # Tune stops each trial at its first result, as ASHA does at a rung: the trial's Train run is killed
    result = run_sweep(cfg, stop=MaximumIterationStopper(1))
    assert len(result.trials) == 2 and all(1 <= t["epochs"] < epochs for t in result.trials), result.trials
    deadline = time.time() + 90  # Ray Train's cleaner polls the State API every few seconds
    while _live_placement_groups() and time.time() < deadline:
        time.sleep(1)
    assert not _live_placement_groups(), "a stopped trial's workers stay reserved: later trials would starve"
