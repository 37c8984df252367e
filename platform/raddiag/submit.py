"""``raddiag submit``: run a job spec on a Ray cluster through the Ray Jobs API.

A job spec is a YAML with an ``entrypoint`` (:class:`raddiag.config.JobSpec`), e.g.
``jobs/sweep.job.yaml``; a plain config YAML from ``jobs/`` works too and becomes
``raddiag <verb> -c <file>``. ``--set`` overrides are appended to every ``raddiag`` command of the
entrypoint. The runtime_env uploads the working directory (minus local state and virtualenvs) and,
by default, this checkout's ``raddiag`` package, and carries environment variables — never secrets:
on a cluster, credentials come from the nodes' instance profile, and a variable whose name looks
like a credential is refused.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml
from pydantic import ValidationError

from raddiag.config import ConfigError, JobSpec
from raddiag.runtime import WORKER_ENV

VERBS = ("synth", "ingest", "verify", "train", "sweep", "evaluate", "promote", "demo")
DEFAULT_EXCLUDES = [
    ".git", ".venv", "venv", ".raddiag", ".pytest_cache", ".hypothesis", "**/__pycache__", "*.pyc",
    "mlruns", "mlartifacts", "*.egg-info", "node_modules", "bench/results",
]
# Forwarded from the submitting shell when set (addresses and switches, not credentials).
PASS_THROUGH_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION", "RADDIAG_CACHE")
_SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|PRIVATE|ACCESS_KEY|SESSION_KEY|API_KEY|AUTH", re.I)
_NO_AGENT = "No available agent"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


@dataclass
class JobOutcome:
    job_id: str
    status: str
    exit_code: int | None
    message: str


def default_address() -> str:
    """``$RAY_API_SERVER_ADDRESS``, an ``http`` ``$RAY_ADDRESS``, else the local dashboard."""
    for name in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        value = os.environ.get(name, "")
        if value.startswith(("http://", "https://")):
            return value
    return "http://127.0.0.1:8265"


def load_job_spec(path: Path, verb: str | None = None, overrides: list[str] | None = None) -> JobSpec:
    """The job spec of ``path``: a YAML with ``entrypoint``, or a config YAML (+ ``verb``)."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"job spec {path}: not found") from None
    except yaml.YAMLError:
        raise ConfigError(f"job spec {path}: invalid YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"job spec {path}: top level must be a mapping")
    if "entrypoint" not in data:
        verb = verb or Path(path).stem
        if verb not in VERBS:
            raise ConfigError(
                f"job spec {path}: no 'entrypoint' and no verb (pass --verb, one of {', '.join(VERBS)})"
            )
        from raddiag.config import load_config

        load_config([Path(path)])  # fail here, not on the cluster, when the config is invalid
        data = {"entrypoint": f"raddiag {verb} -c {shlex.quote(str(path))}"}
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"job spec {path}: key '{key}': {first['msg']}") from None
    if overrides:
        spec = spec.model_copy(update={"entrypoint": with_overrides(spec.entrypoint, overrides)})
    return spec


def with_overrides(entrypoint: str, overrides: list[str]) -> str:
    """Append ``--set`` overrides to every ``raddiag`` command of a shell entrypoint."""
    flags = " ".join(f"--set {shlex.quote(item)}" for item in overrides)
    parts = re.split(r"(\s*(?:&&|\|\||;)\s*)", entrypoint)
    out = []
    for part in parts:
        if part.strip().startswith("raddiag "):
            part = f"{part.rstrip()} {flags}"
        out.append(part)
    return "".join(out)


def check_env(env: dict[str, str]) -> None:
    """Refuse credentials in a job's environment (they would show in the dashboard and logs)."""
    for name in env:
        if _SECRET_NAME.search(name):
            raise ConfigError(
                f"env var {name}: looks like a credential; job env vars are visible in the Ray dashboard. "
                "Give the nodes an IAM instance profile (ray_cluster.yaml) instead"
            )


def runtime_env(spec: JobSpec, extra_env: dict[str, str] | None = None, base: Path | None = None) -> dict[str, Any]:
    """The Ray runtime_env of ``spec``: working_dir, excludes, py_modules, env_vars (no secrets)."""
    base = Path(base or Path.cwd())
    working_dir = (base / spec.runtime_env.working_dir).resolve()
    if not working_dir.is_dir():
        raise ConfigError(f"runtime_env.working_dir {working_dir}: not a directory")
    env = {name: os.environ[name] for name in PASS_THROUGH_ENV if os.environ.get(name)}
    env.update(spec.runtime_env.env_vars)
    env.update(extra_env or {})
    env.update({"PYTHONUNBUFFERED": "1", **WORKER_ENV})
    check_env(env)
    out: dict[str, Any] = {
        "working_dir": str(working_dir),
        "excludes": DEFAULT_EXCLUDES + list(spec.runtime_env.excludes),
        "env_vars": env,
    }
    if spec.runtime_env.ship_code:
        import raddiag

        out["py_modules"] = [str(Path(raddiag.__file__).resolve().parent)]
    return out


def _client(address: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def submit_job(
    spec: JobSpec,
    address: str,
    *,
    extra_env: dict[str, str] | None = None,
    follow: bool = True,
    echo: Callable[[str], None] = print,
    agent_wait_s: float = 120.0,
) -> JobOutcome:
    """Submit ``spec`` to the Ray Jobs API at ``address``; follow its logs to the end when ``follow``.

    Retries while the cluster's job agent is not up yet (a cluster that has just started)."""
    env = runtime_env(spec, extra_env)
    client = _client(address)
    kwargs = dict(
        entrypoint=spec.entrypoint, runtime_env=env, metadata=spec.metadata or None,
        submission_id=spec.submission_id,
        entrypoint_num_cpus=spec.entrypoint_num_cpus or None, entrypoint_num_gpus=spec.entrypoint_num_gpus or None,
    )
    deadline = time.monotonic() + agent_wait_s
    while True:
        try:
            job_id = client.submit_job(**kwargs)
            break
        except RuntimeError as exc:
            if _NO_AGENT not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2)
    echo(f"submitted job {job_id} to {address}: {spec.entrypoint}")
    if not follow:
        return JobOutcome(job_id, str(client.get_job_status(job_id)), None, "not followed")
    asyncio.run(_tail(client, job_id, echo))
    return wait_for(client, job_id)


async def _tail(client: Any, job_id: str, echo: Callable[[str], None]) -> None:
    buffer = ""
    async for chunk in client.tail_job_logs(job_id):
        buffer += chunk
        *lines, buffer = buffer.split("\n")
        for line in lines:
            echo(line)
    if buffer:
        echo(buffer)


def wait_for(client: Any, job_id: str, timeout_s: float = 60.0) -> JobOutcome:
    """Poll until the job is terminal; its driver's exit code (``None`` if it never ran)."""
    deadline = time.monotonic() + timeout_s
    while True:
        info = client.get_job_info(job_id)
        status = str(getattr(info.status, "value", info.status))
        if status in TERMINAL or time.monotonic() > deadline:
            return JobOutcome(job_id, status, info.driver_exit_code, info.message or "")
        time.sleep(1)


def exit_status(outcome: JobOutcome) -> int:
    """The CLI's exit code for a job: 0 on success, the driver's code, else 1."""
    if outcome.status == "SUCCEEDED":
        return 0
    if outcome.exit_code:
        return int(outcome.exit_code)
    return 1
