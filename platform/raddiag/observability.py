"""Ray application metrics (``ray.util.metrics``) for Prometheus/Grafana.

Ray exports every application metric on each node's metrics endpoint with a ``ray_`` prefix;
histograms add ``_bucket``/``_sum``/``_count`` series and counters a ``_total`` series. The Grafana
dashboard in ``dashboards/raddiag.json`` queries exactly the names in :data:`METRICS`
(``tests/test_observability.py`` checks both directions against a live scrape).

* :class:`TrainMetrics` -- one object per Ray Train worker; the loop wraps each epoch's batches in
  :meth:`TrainMetrics.batches` (emits once per step) and calls :meth:`TrainMetrics.epoch` once per epoch.
* :class:`ReadMetrics` -- counts the bytes a Ray Data read task pulls from the store.

Both are no-ops outside a Ray worker/driver (plain unit tests), and never raise into training.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Iterator

import numpy as np

# name -> (kind, description, tag keys). Units are in the names (seconds, bytes, per_second).
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "raddiag_train_cases_total": ("counter", "Training cases consumed by the optimiser.", ("run", "rank")),
    "raddiag_train_cases_per_second": ("gauge", "Training cases per second over the last step (wait + compute).", ("run", "rank")),
    "raddiag_train_input_bytes_per_second": ("gauge", "Bytes of batch tensors delivered to the step per second.", ("run", "rank")),
    "raddiag_train_step_seconds": ("histogram", "Compute time of one optimisation step (forward, backward, update).", ("run", "rank")),
    "raddiag_train_data_wait_seconds": ("histogram", "Time one step waited for its batch from Ray Data.", ("run", "rank")),
    "raddiag_train_loss": ("gauge", "Mean training loss of the last epoch.", ("run", "rank")),
    "raddiag_gpu_memory_allocated_bytes": ("gauge", "CUDA memory held by tensors on the worker's GPU (only on GPU workers).", ("run", "rank")),
    "raddiag_gpu_memory_peak_bytes": ("gauge", "Peak CUDA memory held by tensors since the worker started (only on GPU workers).", ("run", "rank")),
    "raddiag_epoch": ("gauge", "Last finished epoch (0-based).", ("run", "rank")),
    "raddiag_epoch_seconds": ("gauge", "Wall time of the last epoch, validation included.", ("run", "rank")),
    "raddiag_val_auc": ("gauge", "Validation macro AUC of the last epoch, by class-frequency group.", ("run", "group")),
    "raddiag_store_read_bytes_total": ("counter", "Bytes of scan slices read from the Zarr store by Ray Data tasks.", ("split",)),
    "raddiag_store_read_cases_total": ("counter", "Cases assembled from the store by Ray Data tasks.", ("split",)),
}

STEP_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
VAL_GROUPS = ("macro", "head", "medium", "tail")


def prometheus_series(name: str) -> list[str]:
    """The Prometheus series Ray exports for metric ``name`` (e.g. ``ray_x_bucket`` for histograms)."""
    kind = METRICS[name][0]
    base = f"ray_{name}"
    if kind == "histogram":
        return [f"{base}_bucket", f"{base}_sum", f"{base}_count"]
    if kind == "counter":  # Prometheus counters end in _total; Ray adds it when the name lacks it
        return [base if base.endswith("_total") else f"{base}_total"]
    return [base]


def _ray_ready() -> bool:
    try:
        import ray

        return ray.is_initialized()
    except Exception:
        return False


def _build(names: list[str]) -> dict[str, Any]:
    from ray.util import metrics

    built = {}
    for name in names:
        kind, description, tags = METRICS[name]
        if kind == "counter":
            built[name] = metrics.Counter(name, description=description, tag_keys=tags)
        elif kind == "histogram":
            built[name] = metrics.Histogram(name, description=description, boundaries=STEP_BUCKETS, tag_keys=tags)
        else:
            built[name] = metrics.Gauge(name, description=description, tag_keys=tags)
    return built


_TRAIN_NAMES = [n for n in METRICS if not n.startswith("raddiag_store_")]


class TrainMetrics:
    """Per-worker training metrics: wrap the epoch's batch iterator with :meth:`batches` (per-step
    timings) and call :meth:`epoch` with the epoch's metrics."""

    def __init__(self, run: str, rank: int, device: Any = "cpu") -> None:
        self.tags = {"run": run, "rank": str(rank)}
        self.run = run
        self.rank = rank
        self.cuda = getattr(device, "type", str(device)) == "cuda"
        self.device = device
        self.last: dict[str, float] = {}
        self._metrics = _build(_TRAIN_NAMES) if _ray_ready() else {}

    def _emit(self, name: str, value: float, tags: dict[str, str] | None = None) -> None:
        self.last[name] = float(value)
        metric = self._metrics.get(name)
        if metric is None:
            return
        try:
            tags = tags or self.tags
            if isinstance(metric, _counter_type()):
                if value > 0:
                    metric.inc(float(value), tags=tags)
            elif hasattr(metric, "observe"):
                metric.observe(float(value), tags=tags)
            else:
                metric.set(float(value), tags=tags)
        except Exception:  # metrics must never break training
            pass

    def batches(self, batches: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Yield ``batches`` unchanged while timing each (micro-)step: the wait for the batch from
        Ray Data, and the compute between handing it out and the request for the next one."""
        iterator = iter(batches)
        handed_out: float | None = None
        previous: tuple[dict[str, Any], float] | None = None
        while True:
            requested = time.perf_counter()
            if previous is not None and handed_out is not None:
                self._step(previous[0], wait=previous[1], compute=requested - handed_out)
            try:
                batch = next(iterator)
            except StopIteration:
                return
            handed_out = time.perf_counter()
            previous = (batch, handed_out - requested)
            yield batch

    def _step(self, batch: dict[str, Any], wait: float, compute: float) -> None:
        labels = batch.get("labels")
        cases = int(labels.shape[0]) if labels is not None else 0
        total = max(wait + compute, 1e-9)
        self._emit("raddiag_train_cases_total", cases)
        self._emit("raddiag_train_cases_per_second", cases / total)
        self._emit("raddiag_train_input_bytes_per_second", sum(_nbytes(v) for v in batch.values()) / total)
        self._emit("raddiag_train_step_seconds", compute)
        self._emit("raddiag_train_data_wait_seconds", wait)
        if self.cuda:
            import torch

            self._emit("raddiag_gpu_memory_allocated_bytes", torch.cuda.memory_allocated(self.device))
            self._emit("raddiag_gpu_memory_peak_bytes", torch.cuda.max_memory_allocated(self.device))

    def epoch(self, metrics: dict[str, Any]) -> None:
        """After one epoch: the loop's epoch metrics (``epoch``, ``epoch_time_s``, ``val_auc_*``)."""
        self._emit("raddiag_epoch", metrics.get("epoch", 0))
        self._emit("raddiag_epoch_seconds", metrics.get("epoch_time_s", 0.0))
        if "train_loss" in metrics:
            self._emit("raddiag_train_loss", metrics["train_loss"])
        if self.rank != 0:
            return
        for group in VAL_GROUPS:
            value = metrics.get(f"val_auc_{group}")
            if value is not None and np.isfinite(value):
                self._emit("raddiag_val_auc", value, {"run": self.run, "group": group})


def _nbytes(value: Any) -> int:
    """Bytes of a torch tensor or numpy array (0 for anything else)."""
    if hasattr(value, "element_size"):
        return int(value.numel() * value.element_size())
    return int(getattr(value, "nbytes", 0))


def _counter_type() -> type:
    from ray.util.metrics import Counter

    return Counter


class ReadMetrics:
    """Wraps a ``read_slices(scan_id, indices)`` function and counts the bytes it returns; call
    :meth:`flush` once per Ray Data batch to add them to the store-read counters."""

    def __init__(self, read: Callable[..., np.ndarray], split: str) -> None:
        self._read = read
        self.tags = {"split": split}
        self.bytes = 0
        self._pending_bytes = 0

    def __call__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        out = self._read(*args, **kwargs)
        self._pending_bytes += int(getattr(out, "nbytes", 0))
        return out

    def flush(self, cases: int) -> None:
        self.bytes += self._pending_bytes
        pending, self._pending_bytes = self._pending_bytes, 0
        if not _ray_ready():
            return
        try:
            built = _store_metrics()
            if pending > 0:
                built["raddiag_store_read_bytes_total"].inc(float(pending), tags=self.tags)
            if cases > 0:
                built["raddiag_store_read_cases_total"].inc(float(cases), tags=self.tags)
        except Exception:
            pass


_STORE: dict[str, Any] = {}


def _store_metrics() -> dict[str, Any]:
    """Store-read counters, built once per process (Ray reuses worker processes across tasks)."""
    if not _STORE:
        _STORE.update(_build(["raddiag_store_read_bytes_total", "raddiag_store_read_cases_total"]))
    return _STORE
