"""A real ``ray start --head`` on 127.0.0.1 for tests, isolated from other Ray instances on the machine.

* Its own ``--temp-dir`` (so ``ray.init()`` elsewhere never discovers it through
  ``/tmp/ray/ray_current_cluster``) and its own free ports.
* Token authentication on, with a token of its own passed as ``RAY_AUTH_TOKEN`` (``~/.ray/auth_token``
  is neither read nor written); clients get ``RAY_AUTH_MODE=token`` + the token via :meth:`client_env`.
* ``ray start --block`` runs in a new session; :meth:`stop` ends that process group and any leftover
  process whose command line names this cluster's temp dir — never ``ray stop``, which would also
  stop other people's Ray on a shared machine.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalRayCluster:
    """``ray start --head --block`` with token auth; use as a context manager."""

    def __init__(
        self,
        num_cpus: int = 2,
        autoscaling_config: Path | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.num_cpus = num_cpus
        self.autoscaling_config = autoscaling_config
        self.extra_env = dict(extra_env or {})
        self.token = secrets.token_hex(32)
        self.temp_dir = tempfile.mkdtemp(prefix="rdg-", dir="/tmp")  # short: unix socket paths are limited
        self.port = free_port()
        self.dashboard_port = free_port()
        self.metrics_port = free_port()
        # Ray's fixed default ports (agent 52365, client server 10001) clash with any other Ray here.
        self.other_ports = {
            "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(),
            "--runtime-env-agent-port": free_port(),
            "--ray-client-server-port": free_port(),
        }
        self.process: subprocess.Popen | None = None
        self.log = Path(self.temp_dir) / "ray-start.log"

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def client_env(self) -> dict[str, str]:
        """Environment a client process needs to talk to this cluster (token auth)."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def _env(self) -> dict[str, str]:
        env = {**os.environ, **self.client_env(), "RAY_TMPDIR": self.temp_dir, **self.extra_env}
        # Job entrypoints (`raddiag ...`) run with the raylet's PATH: put this interpreter's bin first.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.pop("RAY_ADDRESS", None)
        return env

    def start(self, timeout: float = 120) -> "LocalRayCluster":
        ray_exe = str(Path(sys.executable).with_name("ray"))
        command = [
            ray_exe, "start", "--head", "--block", "--disable-usage-stats",
            "--node-ip-address=127.0.0.1", f"--port={self.port}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--metrics-export-port={self.metrics_port}",
            f"--num-cpus={self.num_cpus}", f"--temp-dir={self.temp_dir}",
            *(f"{flag}={port}" for flag, port in self.other_ports.items()),
        ]
        if self.autoscaling_config is not None:
            command.append(f"--autoscaling-config={self.autoscaling_config}")
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                command, env=self._env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            if self._jobs_api_ready():
                return self
            time.sleep(1)
        self.stop()
        raise TimeoutError(f"Ray dashboard on {self.dashboard_url} not ready after {timeout}s")

    def _jobs_api_ready(self) -> bool:
        request = urllib.request.Request(
            f"{self.dashboard_url}/api/jobs/", headers={"Authorization": f"Bearer {self.token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                json.load(response)
                return response.status == 200
        except Exception:
            return False

    def run_python(self, code: str, timeout: float = 180, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run ``code`` in a fresh interpreter connected to this cluster (``RAY_ADDRESS`` set)."""
        full_env = {**os.environ, **self.client_env(), "RAY_ADDRESS": self.gcs_address, **(env or {})}
        return subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=timeout
        )

    def _leftovers(self) -> list:
        import psutil

        found = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                if proc.pid != os.getpid() and self.temp_dir in " ".join(proc.info["cmdline"] or []):
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return found

    def stop(self) -> None:
        """End every process this cluster started (its process group, then stragglers by temp dir)."""
        import psutil

        if self.process is not None:
            try:
                group = os.getpgid(self.process.pid)
            except ProcessLookupError:
                group = None
            victims = self._leftovers()
            for proc in list(victims):
                try:
                    victims.extend(proc.children(recursive=True))
                except psutil.NoSuchProcess:
                    pass
            _signal_group(group, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            _signal_group(group, signal.SIGKILL)
            for proc in victims + self._leftovers():
                try:
                    proc.kill()
                except psutil.NoSuchProcess:
                    pass
            self.process = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "LocalRayCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(group: int | None, sig: int) -> None:
    """Send ``sig`` to process group ``group`` if it (still) exists."""
    if group is None:
        return
    try:
        os.killpg(group, sig)
    except ProcessLookupError:
        pass
