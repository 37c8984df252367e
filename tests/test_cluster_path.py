"""The cluster path for real, on 127.0.0.1: a `ray start --head` with token auth, an MLflow server
(sqlite backend, artifacts proxied to S3 = moto), `raddiag submit` of a synth job (config YAML) and
of jobs/sweep.job.yaml (tiny overrides) through the Ray Jobs API, the Ray metrics endpoint scraped
while the sweep trains, then `raddiag report` rendered in headless Chromium."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, run_cli, tiny_overrides
from raddiag.tracking import Tags
from raycluster import LocalRayCluster, free_port

pytestmark = pytest.mark.slow

SWEEP = "cluster-sweep"


@pytest.fixture(scope="module")
def mlflow_server(s3_endpoint, tmp_path_factory):
    """scripts/mlflow_server.sh (the head's MLflow server) on 127.0.0.1 with artifacts in moto S3."""
    tmp = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp / 'mlflow.db'}",
        "MLFLOW_ARTIFACTS_DESTINATION": "s3://raddiag-test/mlflow",
        "MLFLOW_HOST": "127.0.0.1",
        "MLFLOW_PORT": str(port),
        "MLFLOW_WORKERS": "1",
        "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
    }
    log = open(tmp / "server.log", "wb")
    process = subprocess.Popen(
        ["bash", str(REPO / "scripts" / "mlflow_server.sh")], env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240  # a loaded 2-core machine needs minutes to import MLflow's server
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL) if process.poll() is None else None
            pytest.fail(f"mlflow server did not start:\n{(tmp / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield uri
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    log.close()


class Scraper(threading.Thread):
    """Polls a Prometheus endpoint and keeps every ``ray_raddiag_*`` series name it saw (+ last value)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.seen: dict[str, float] = {}
        self.stopped = threading.Event()

    def run(self) -> None:
        pattern = re.compile(r"^(ray_raddiag_[a-zA-Z0-9_]+)(\{[^}]*\})?\s+(\S+)", re.M)
        while not self.stopped.wait(1.5):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    text = response.read().decode()
            except Exception:
                continue
            for name, _, value in pattern.findall(text):
                self.seen[name] = float(value)


@pytest.fixture(scope="module")
def cluster_run(mlflow_server, tmp_path_factory):
    """Both jobs submitted with `raddiag submit` to a token-auth `ray start --head`."""
    tmp = tmp_path_factory.mktemp("cluster")
    overrides = [o for o in tiny_overrides(tmp) if not o.startswith("tracking.tracking_uri")]
    # a ViT slice encoder and one Train worker per trial: the job path, not the backbone or DDP (the demo test's), is
    # under test (each Train worker skips MONAI's ~8 s import, and each trial starts one worker process, not two)
    overrides += [f"tracking.tracking_uri={mlflow_server}", f"sweep.name={SWEEP}", "train.use_gpu=false", "model.encoder=vit",
                  "train.num_workers=1"]
    sets = [arg for item in overrides for arg in ("--set", item)]
    with LocalRayCluster(num_cpus=8, extra_env={"RAY_metrics_report_interval_ms": "1000"}) as cluster:
        scraper = Scraper(f"http://127.0.0.1:{cluster.metrics_port}/metrics")
        scraper.start()
        auth = cluster.client_env()
        started = time.monotonic()
        synth = run_cli("submit", "jobs/synth.yaml", "--address", cluster.dashboard_url, *sets, cwd=REPO, env=auth)
        synth_s = time.monotonic() - started
        started = time.monotonic()
        sweep = run_cli("submit", "jobs/sweep.job.yaml", "--address", cluster.dashboard_url, *sets, cwd=REPO, env=auth)
        sweep_s = time.monotonic() - started
        failing = tmp / "fail.job.yaml"
        failing.write_text("entrypoint: python -c 'import sys; print(\"failing on purpose\"); sys.exit(3)'\n"
                           "runtime_env: {working_dir: ., ship_code: false}\n")
        failed = run_cli("submit", str(failing), "--address", cluster.dashboard_url, cwd=tmp, env=auth)
        no_token = run_cli("submit", str(failing), "--address", cluster.dashboard_url, cwd=tmp,
                           env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "not-the-token"})
        time.sleep(3)  # one more scrape after the last report interval
        scraper.stopped.set()
        scraper.join()
        print(f"\nsynth job {synth_s:.1f}s, sweep job {sweep_s:.1f}s")
        yield {"tmp": tmp, "overrides": overrides, "synth": synth, "sweep": sweep, "failed": failed,
               "no_token": no_token, "metrics": dict(scraper.seen), "uri": mlflow_server}


def test_submit_runs_a_config_yaml_as_a_job_and_streams_its_logs(cluster_run) -> None:
    synth = cluster_run["synth"]
    assert synth.returncode == 0, synth.stdout[-3000:] + synth.stderr[-3000:]
    assert "submitted job" in synth.stdout and "raddiag synth -c jobs/synth.yaml" in synth.stdout
    assert re.search(r"store .* version \w+: 60\s+cases", synth.stdout), synth.stdout[-2000:]  # the job's own output
    assert "SUCCEEDED" in synth.stdout


def test_submit_sweep_job_spec_succeeds(cluster_run) -> None:
    sweep = cluster_run["sweep"]
    assert sweep.returncode == 0, sweep.stdout[-4000:] + sweep.stderr[-3000:]
    assert f"sweep {SWEEP}" in sweep.stdout and "SUCCEEDED" in sweep.stdout


def test_submit_returns_the_jobs_exit_status(cluster_run) -> None:
    failed = cluster_run["failed"]
    assert failed.returncode == 3, failed.stdout + failed.stderr
    assert "failing on purpose" in failed.stdout and "FAILED" in failed.stdout


def test_token_auth_is_enforced(cluster_run) -> None:
    refused = cluster_run["no_token"]
    assert refused.returncode != 0
    assert "auth" in (refused.stdout + refused.stderr).lower()


def test_workers_logged_to_the_mlflow_server_with_artifacts_in_s3(cluster_run, s3_endpoint) -> None:
    import boto3

    from raddiag import tracking
    from raddiag.config import load_config
    from raddiag.registry import find_sweep

    cfg = load_config(None, cluster_run["overrides"])
    parent = find_sweep(cfg, SWEEP)
    assert parent.info.status == "FINISHED"
    uri = cluster_run["uri"]
    children = tracking.child_runs(uri, parent.info.experiment_id, parent.info.run_id)
    assert len(children) == 2
    client = tracking.client(uri)
    for child in children:  # metrics logged by rank 0 inside the Train worker, by URI
        assert client.get_metric_history(child.info.run_id, "val_auc_macro")
    best = parent.data.tags[Tags.BEST_RUN_ID]
    assert {Path(a.path).name for a in client.list_artifacts(best, "plots")} >= {"roc_by_group.png", "auc_vs_frequency.png"}
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="raddiag-test", Prefix="mlflow/").get("Contents", [])]
    assert any(k.endswith(f"{best}/artifacts/plots/roc_by_group.png") for k in keys), keys[:20]


def test_the_sweep_emitted_every_dashboard_metric(cluster_run) -> None:
    from test_observability import dashboard_series

    seen = cluster_run["metrics"]
    gpu_only = {s for s in dashboard_series() if "gpu" in s}
    missing = dashboard_series() - gpu_only - set(seen)
    assert not missing, f"queried by dashboards/raddiag.json but never exported: {sorted(missing)}; seen {sorted(seen)}"
    assert seen["ray_raddiag_store_read_bytes_total"] > 0 and seen["ray_raddiag_train_cases_total"] > 0
    assert 0.0 <= seen["ray_raddiag_val_auc"] <= 1.0


def test_report_renders_in_headless_chromium(cluster_run) -> None:
    from browser import blank_fraction, chromium_binary, load_page

    out = cluster_run["tmp"] / "report.html"
    sets = [arg for item in cluster_run["overrides"] for arg in ("--set", item)]
    result = run_cli("report", SWEEP, "--output", str(out), *sets, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    page = out.read_text()
    assert "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page  # self-contained
    if chromium_binary() is None:
        pytest.skip("no Chromium here (CI installs it in .ci/run)")
    loaded = load_page(out, {
        "rows": "document.querySelectorAll('#leaderboard tbody tr').length",
        "images": "Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)",
        "ready": "document.body.dataset.ready",
        "sorted": "(function(){var th=document.querySelectorAll('#leaderboard th')[3]; th.click(); th.click();"
                  " return Array.from(document.querySelectorAll('#leaderboard tbody tr td:nth-child(4)')).map(td=>td.textContent)})()",
    })
    assert loaded.errors == [], loaded.errors
    assert all(url.startswith(("file://", "data:")) for url in loaded.requests), loaded.requests
    assert loaded.evaluated["rows"] == 2 and loaded.evaluated["ready"] == "1"
    assert len(loaded.evaluated["images"]) >= 4 and all(loaded.evaluated["images"])
    values = [float(v) for v in loaded.evaluated["sorted"]]
    assert values == sorted(values, reverse=True)
    assert blank_fraction(loaded.screenshot) < 0.95
