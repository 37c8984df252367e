"""Kill the sweep driver mid-sweep; `raddiag sweep --resume` finishes it with no trial lost or
duplicated (Tune experiment state + the persisted Optuna study + per-trial Train checkpoints), and
spends exactly the sweep's trial-epoch budget (the new ledger starts from the epochs reported)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, tiny_overrides
from raddiag.tracking import Tags

pytestmark = pytest.mark.slow


def _args(tmp: Path, store_url: str) -> list[str]:
    args = []
    # One Train worker per trial, and a ViT slice encoder (its workers need not import MONAI): resuming
    # is about Tune's state, the Optuna study and the trials' checkpoints, not DDP or the backbone, and
    # the four TorchTrainer runs would each pay a second worker's and MONAI's start-up.
    for override in [*tiny_overrides(tmp), f"store.url={store_url}", "train.num_workers=1", "model.encoder=vit",
                     "sweep.num_samples=3", "train.epochs=3",
                     "sweep.max_trial_epochs=7", "sweep.max_concurrent_trials=1", "sweep.scheduler=none",
                     "sweep.name=resumable"]:
        args += ["--set", override]
    return args


def _finished_children(uri: str, experiment: str) -> list:
    from raddiag import tracking

    client = tracking.client(uri)
    ids = [e.experiment_id for e in client.search_experiments() if e.name == experiment]
    if not ids:
        return []
    return [r for r in client.search_runs(ids, filter_string=f"tags.`{Tags.TRIAL_ID}` != ''") if r.info.status == "FINISHED"]


def test_killed_sweep_driver_resumes_without_losing_or_duplicating_trials(tmp_path: Path, tiny_store) -> None:
    from raddiag import tracking
    from raddiag.config import load_config

    store_cfg, _ = tiny_store
    args = _args(tmp_path, store_cfg.store.url)
    cfg = load_config(None, [a for a in args if a != "--set"])
    uri = cfg.tracking.resolved_uri()
    exe = str(Path(sys.executable).with_name("raddiag"))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    log = open(tmp_path / "first-driver.log", "w")
    driver = subprocess.Popen([exe, "sweep", *args], cwd=REPO, env=env, start_new_session=True, stdout=log, stderr=log)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and not _finished_children(uri, cfg.tracking.experiment):
            assert driver.poll() is None, (tmp_path / "first-driver.log").read_text()[-3000:]
            time.sleep(1)
        time.sleep(3)  # let the next trial start, so there is unfinished work to resume
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert len(_finished_children(uri, cfg.tracking.experiment)) < cfg.sweep.num_samples
    time.sleep(5)  # the dead driver's Ray shuts down with it

    resumed = subprocess.run([exe, "sweep", "--resume", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    client = tracking.client(uri)
    parents = client.search_runs(
        [client.get_experiment_by_name(cfg.tracking.experiment).experiment_id],
        filter_string=f"tags.`{Tags.ROLE}` = 'sweep'",
    )
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = tracking.child_runs(uri, parents[0].info.experiment_id, parents[0].info.run_id)
    live = [c for c in children if c.data.tags.get(Tags.ORPHAN) != "true"]
    trial_ids = [c.data.tags[Tags.TRIAL_ID] for c in live]
    assert len(trial_ids) == len(set(trial_ids)) == cfg.sweep.num_samples
    epochs = []
    for child in live:
        assert child.info.status == "FINISHED"
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "epoch"))
        assert steps == list(range(len(steps))), (child.data.tags[Tags.TRIAL_ID], steps)  # each epoch once
        epochs.append(len(steps))
    assert sorted(epochs) == [1, 3, 3], epochs  # 3 + 3 + 1 = the budget of 7, across the driver's death
    assert (Path(cfg.train.storage_path) / "resumable.optuna.db").exists()
