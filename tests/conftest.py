"""Shared fixtures: a tiny synthetic store, a real moto S3 server on 127.0.0.1, and a local Ray."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
# Ray Train's controller polls its workers every 2 s (default): a tiny run waits ~4 s of polls after
# its last epoch before fit() returns. Every Ray the tests start (local, `ray start`, CLI
# subprocesses, jobs) inherits this environment, so each TorchTrainer run ends ~3.5 s sooner.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


def tiny_overrides(tmp: Path) -> list[str]:
    """The demo chain at its smallest: a few dozen cases of 16x16 scans, tiny model and sweep."""
    return [
        f"store.url={tmp / 'store'}",
        "synth.n_cases=60",
        "synth.n_labels=8",
        "synth.image_size=16",
        "synth.max_depth=4",
        "data.image_size=16",
        "data.depth=4",
        "model.embed_dim=32",
        "model.width=4",
        "train.epochs=2",
        "train.batch_size=8",
        "train.num_workers=2",  # DDP is part of what the tiny chain exercises
        "train.cpus_per_worker=0.5",
        f"train.storage_path={tmp / 'ray'}",
        f"tracking.tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
        "tracking.experiment=tests",
        "sweep.num_samples=2",
    ]


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory):
    """(config, manifest) of a small synthetic store shared by the data tests."""
    from raddiag.config import load_config
    from raddiag.storage.store import Store
    from raddiag.storage.synth import generate

    tmp = tmp_path_factory.mktemp("tiny")
    cfg = load_config(None, tiny_overrides(tmp))
    manifest = generate(cfg.synth, Store(cfg.store.url))
    return cfg, manifest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API (moto server mode) on 127.0.0.1 with a bucket ``raddiag-test``."""
    from moto.server import ThreadedMotoServer

    os.environ.update(
        {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    )
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="raddiag-test")
    yield endpoint
    server.stop()


@pytest.fixture
def ray_local(_ray_session):
    """A local Ray for the tests that need one (started once, restarted if a test shut it down)."""
    from raddiag.config import RayConfig
    from raddiag.runtime import init_ray

    init_ray(RayConfig(num_cpus=8), verbose=False)
    yield


@pytest.fixture(scope="session")
def _ray_session():
    yield
    import ray

    ray.shutdown()


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None):
    """Run the ``raddiag`` console script in a subprocess; returns CompletedProcess."""
    import subprocess

    exe = Path(sys.executable).with_name("raddiag")
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})}, timeout=900
    )
