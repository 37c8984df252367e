"""Starting Ray quietly with a CPU budget that fits small machines."""

from __future__ import annotations

import logging
import os
import socket
import warnings
from typing import Any

from raddiag.config import RayConfig


def quiet(verbose: bool) -> None:
    """Silence Ray/MLflow/Tune chatter unless ``verbose``."""
    if verbose:
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", "2")
    os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # Ray Data/Tune/Train start many short-lived workers with fractional CPUs; let the raylet start
    # them a few at a time instead of warning about it.
    os.environ.setdefault("RAY_worker_maximum_startup_concurrency", "8")
    for name in ("ray", "ray.data", "ray.tune", "ray.train", "mlflow", "alembic", "optuna", "urllib3", "filelock"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def logical_cpus(cfg: RayConfig) -> int:
    """Logical CPUs for a local Ray: configured, else 4 x physical (trials, workers and data tasks
    hold fractional slots but mostly wait on each other on a small machine)."""
    return cfg.num_cpus or 4 * (os.cpu_count() or 1)


# Environment of every Ray worker the platform starts (a submitted job carries it in its runtime_env).
WORKER_ENV = {"PYTHONWARNINGS": "ignore", "RAY_TRAIN_V2_ENABLED": "1", "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _init_local_with_state_api(ray: Any, cfg: RayConfig, kwargs: dict[str, Any]) -> None:
    """Start a local Ray whose State API works from inside its own workers.

    Ray Train v2 frees the worker placement group of a run whose controller died — every trial that
    Tune stops (ASHA, a budget) — from a ``PlacementGroupCleaner`` actor that polls the State API,
    which is served by the dashboard; without it the CPUs of every stopped trial stay reserved until
    the sweep starves. The State API also resolves "which cluster" by scanning the machine and fails
    with "multiple active Ray instances" when another Ray runs here, so the GCS port is chosen up
    front and handed to every worker as ``RAY_ADDRESS``.
    """
    from ray.util import get_node_ip_address

    port = _free_port()
    kwargs = {**kwargs, "include_dashboard": True, "dashboard_port": _free_port()}
    kwargs["runtime_env"] = {**kwargs["runtime_env"], "env_vars": {**kwargs["runtime_env"]["env_vars"], "RAY_ADDRESS": f"{get_node_ip_address()}:{port}"}}
    saved = os.environ.get("RAY_GCS_SERVER_PORT")
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)  # read by the node that ray.init starts
    try:
        ray.init(address="local", num_cpus=logical_cpus(cfg), **kwargs)
    finally:
        if saved is None:
            os.environ.pop("RAY_GCS_SERVER_PORT", None)
        else:
            os.environ["RAY_GCS_SERVER_PORT"] = saved


def init_ray(cfg: RayConfig, verbose: bool = False, runtime_env: dict | None = None) -> None:
    """Connect to ``cfg.address``/``$RAY_ADDRESS`` (``auto`` = the cluster `ray start`ed here) or
    start a private local Ray sized by :func:`logical_cpus`."""
    import ray

    if ray.is_initialized():
        return
    quiet(verbose)
    address = cfg.address or os.environ.get("RAY_ADDRESS") or None
    level = logging.INFO if verbose else logging.ERROR
    env = dict(runtime_env or {})
    env.setdefault("env_vars", {}).update(WORKER_ENV)
    kwargs = dict(logging_level=level, log_to_driver=verbose, include_dashboard=False, runtime_env=env)
    if address and os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") and not runtime_env:
        del kwargs["runtime_env"]  # a submitted job: Ray refuses a second runtime_env; the job's applies
    if address:
        ray.init(address=address, **kwargs)
    elif cfg.state_api:  # a fresh local instance (never one someone `ray start`ed here) with its State API
        _init_local_with_state_api(ray, cfg, kwargs)
    else:
        ray.init(address="local", num_cpus=logical_cpus(cfg), **kwargs)
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = verbose
    ctx.print_on_execution_start = verbose
    ctx.verbose_progress = verbose
