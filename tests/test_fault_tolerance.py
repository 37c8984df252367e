"""Ray Train fault tolerance: a SIGKILLed worker restarts from the last checkpoint, the run finishes,
and MLflow holds every epoch's metrics exactly once; re-running a finished name resumes (no-op)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from conftest import tiny_overrides
from raddiag.tracking import Tags

pytestmark = pytest.mark.slow


def _train_worker_pids() -> list[int]:
    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if "RayTrainWorker" in cmdline:
            pids.append(proc.info["pid"])
    return sorted(pids)


def _kill_a_worker_after_first_epoch(uri: str, experiment: str, name: str, killed: list[int], stop: threading.Event) -> None:
    from raddiag import tracking

    client = tracking.client(uri)
    deadline = time.time() + 600
    while time.time() < deadline and not stop.is_set():
        runs = client.search_runs([e.experiment_id for e in client.search_experiments() if e.name == experiment] or ["0"],
                                  filter_string=f"tags.`{Tags.TRAIN_NAME}` = '{name}'")
        if runs and client.get_metric_history(runs[0].info.run_id, "epoch"):
            pids = _train_worker_pids()
            if pids:
                os.kill(pids[-1], signal.SIGKILL)
                killed.append(pids[-1])
                return
        time.sleep(0.5)


def test_sigkill_one_worker_run_finishes_with_each_epoch_logged_once(tmp_path: Path, tiny_store, ray_local) -> None:
    from raddiag import tracking
    from raddiag.config import load_config
    from raddiag.train.trainer import run_train

    store_cfg, _ = tiny_store
    # a ViT slice encoder: every restarted worker would otherwise import MONAI again (~8 s of CPU each)
    cfg = load_config(None, [*tiny_overrides(tmp_path), f"store.url={store_cfg.store.url}", "train.epochs=4", "train.max_failures=2",
                             "train.name=ft", "model.encoder=vit"])
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(
        target=_kill_a_worker_after_first_epoch, args=(cfg.tracking.resolved_uri(), cfg.tracking.experiment, "ft", killed, stop), daemon=True
    )
    killer.start()
    try:
        result = run_train(cfg)
    finally:
        stop.set()
        killer.join(timeout=5)
    assert killed, "the test never killed a worker"
    client = tracking.client(cfg.tracking.resolved_uri())
    for key in ("epoch", "val_auc_macro", "train_loss"):
        steps = [m.step for m in client.get_metric_history(result.run_id, key)]
        assert sorted(steps) == [0, 1, 2, 3], (key, steps)
    assert result.metrics["epoch"] == 3
    assert client.get_run(result.run_id).info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert "plots/roc_by_group.png" in artifacts

    again = run_train(cfg)  # same name: resumes the finished run, trains nothing new
    assert again.run_id == result.run_id
    steps = [m.step for m in client.get_metric_history(result.run_id, "epoch")]
    assert sorted(steps) == [0, 1, 2, 3]
