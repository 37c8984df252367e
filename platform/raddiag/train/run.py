"""A training's MLflow run, and the typed payloads that cross process boundaries in training.

:class:`TrainingRun` is the life of one training's MLflow run, the same for ``raddiag train``
(kind ``train``), a sweep trial (``trial``) and an ablation arm (``arm``): :meth:`TrainingRun.open`
finds the run to resume by its tag (``train.name``; a trial's id under its sweep's parent run) or
creates it — tagged with its kind, name, parent and the code's git commit, its config logged
(:meth:`~raddiag.config.RadDiagConfig.run_params`) and its dataset recorded — and
:meth:`TrainingRun.finish` ends it. It holds only strings, so it travels to the Ray Train workers
inside :class:`LoopConfig`, where rank 0 logs each epoch through it.

The payloads are small picklable dataclasses: :class:`LoopConfig` (driver → Ray Train workers,
handed to Ray as a dict by :meth:`LoopConfig.to_dict`), :class:`EpochReport` (a worker's epoch →
Ray's ``report``, Tune's scheduler and MLflow), :class:`CheckpointMeta` (a checkpoint's
``meta.json``: what rebuilds its network and what a resume is checked against) and
:class:`TrialContext` (a sweep or ablation driver → its Tune trials).

This module imports neither MLflow nor Ray (a Ray Train worker imports it; see
:mod:`raddiag.tune.ledger` for why a worker must not import Ray Tune).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal

from raddiag.tracking import Tags

RunKind = Literal["train", "trial", "arm"]
KINDS: tuple[str, ...] = ("train", "trial", "arm")


@dataclass(frozen=True)
class TrainingRun:
    """One training's MLflow run: ``uri`` (tracking server), ``experiment_id``, ``run_id``, the
    Ray Train run ``name`` it tracks, its ``kind`` and ``parent`` run (trials and arms), and whether
    :meth:`open` reopened an earlier run (``resumed``) rather than creating one."""

    uri: str
    experiment_id: str
    run_id: str
    name: str
    kind: str = "train"
    parent: str | None = None
    resumed: bool = False

    @staticmethod
    def resume_tags(kind: str, name: str, parent: str | None = None, trial_id: str | None = None) -> dict[str, str] | None:
        """The tags that identify the run to resume: a ``train`` run by its name, a ``trial`` by its
        id under its parent; None for an ``arm`` (an ablation resumed trains a missing arm anew)."""
        if kind == "train":
            return {Tags.TRAIN_NAME: name}
        if kind == "trial":
            return {Tags.TRIAL_ID: str(trial_id), Tags.PARENT_RUN_ID: str(parent)}
        return None

    @staticmethod
    def find(uri: str, experiment_id: str, tags: dict[str, str]) -> Any | None:
        """The newest MLflow run (an ``mlflow.entities.Run``) carrying every one of ``tags``, or None."""
        from raddiag import tracking

        found = tracking.client(uri).search_runs(
            [experiment_id], filter_string=tracking.tag_filter(tags), order_by=["attributes.start_time DESC"], max_results=1,
        )
        return found[0] if found else None

    @classmethod
    def open(
        cls,
        cfg: Any,
        manifest: Any,
        *,
        kind: RunKind,
        experiment_id: str,
        uri: str | None = None,
        name: str | None = None,
        parent: str | None = None,
        trial_id: str | None = None,
        tags: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
    ) -> TrainingRun:
        """The run of ``cfg``'s training (``name`` defaults to ``train.name``): the earlier run it
        resumes (see :meth:`resume_tags`), set RUNNING again; else a new run (nested under
        ``parent``), tagged (``tags`` added) with ``cfg.run_params()`` + ``params`` logged and the
        store version of ``manifest`` recorded. ``uri`` defaults to ``cfg``'s tracking URI."""
        from raddiag import tracking

        if kind not in KINDS:
            raise ValueError(f"run kind {kind!r}: expected one of {', '.join(KINDS)}")
        if kind != "train" and not parent:
            raise ValueError(f"a {kind} run nests under its sweep's or ablation's run: pass parent")
        if kind == "trial" and not trial_id:
            raise ValueError("a trial run is found again by its Tune trial id: pass trial_id")
        uri = uri or cfg.tracking.resolved_uri()
        name = name or cfg.train.name
        key = cls.resume_tags(kind, name, parent, trial_id)
        earlier = cls.find(uri, experiment_id, key) if key else None
        if earlier is not None:
            tracking.client(uri).update_run(earlier.info.run_id, status="RUNNING")
            return cls(uri, experiment_id, earlier.info.run_id, name, kind, parent, resumed=True)
        all_tags = {Tags.KIND: kind, Tags.TRAIN_NAME: name, **({Tags.TRIAL_ID: str(trial_id)} if trial_id else {}), **(tags or {})}
        if parent:
            run_id = tracking.start_child_run(uri, experiment_id, parent, name, tags=all_tags)
        else:
            run_id = tracking.client(uri).create_run(experiment_id, run_name=name, tags={**all_tags, **tracking.source_tags()}).info.run_id
        run = cls(uri, experiment_id, run_id, name, kind, parent)
        run.log_config(cfg, params)
        run.log_dataset(manifest, cfg.store.url)
        return run

    def log_config(self, cfg: Any, extra: dict[str, Any] | None = None) -> None:
        """Log ``cfg.run_params()`` (only the settings this run uses), ``train.name`` = the run's
        name (a trial's own, not the base config's) and ``extra`` as MLflow params."""
        from raddiag import tracking

        tracking.log_params(self.uri, self.run_id, {**cfg.run_params(), "train.name": self.name, **(extra or {})})

    def log_dataset(self, manifest: Any, store_url: str) -> None:
        """Record the store version trained on: a tag and an MLflow dataset input (digest = version)."""
        from raddiag import tracking

        self.tag(Tags.DATASET_VERSION, manifest.version)
        tracking.log_dataset_input(self.uri, self.run_id, manifest, store_url)

    def tag(self, key: str, value: str) -> None:
        from raddiag import tracking

        tracking.client(self.uri).set_tag(self.run_id, key, value)

    def set_checkpoint(self, path: str) -> None:
        """Record the Ray Train checkpoint holding the run's best weights."""
        self.tag(Tags.CHECKPOINT, path)

    def log_epoch(self, report: EpochReport) -> bool:
        """Log an epoch's numbers at step ``report.epoch`` unless already logged (a restarted worker
        re-reporting it); False when they were."""
        from raddiag import tracking

        return tracking.log_epoch_metrics(self.uri, self.run_id, report.to_dict(), step=report.epoch, probe="epoch")

    @contextlib.contextmanager
    def failed_on_error(self) -> Iterator[TrainingRun]:
        """A block after which the run is ended FAILED if it raised an ``Exception`` (then re-raised);
        on success the caller ends it (:meth:`finish`)."""
        try:
            yield self
        except Exception:
            self.finish("FAILED")
            raise

    def finish(self, status: Literal["FINISHED", "FAILED", "KILLED"] = "FINISHED", tags: dict[str, str] | None = None) -> None:
        """End the run with ``status``, after setting ``tags`` (e.g. why it was skipped)."""
        from raddiag import tracking

        client = tracking.client(self.uri)
        for key, value in (tags or {}).items():
            client.set_tag(self.run_id, key, value)
        client.set_terminated(self.run_id, status)


@dataclass(frozen=True)
class BudgetClaim:
    """Where a sweep trial's workers claim each epoch: the ledger actor's name and the trial's id."""

    ledger: str
    trial_id: str

    def claim(self, epoch: int) -> bool:
        """May the trial train its ``epoch``-th epoch (1-based)? Every rank gets the same answer."""
        from raddiag.tune.ledger import claim_epoch

        return claim_epoch(self.ledger, self.trial_id, epoch)


@dataclass
class LoopConfig:
    """What ``train_loop_per_worker`` gets from the driver: the run's config (``config``, as
    ``RadDiagConfig.model_dump(mode="json")``), its MLflow ``run`` (None: nothing is logged), the
    KE head's label-text embeddings (``(C, E)`` rows, None for the MLP head) and a sweep trial's
    epoch ``budget`` (None outside a budgeted sweep)."""

    config: dict[str, Any]
    run: TrainingRun | None = None
    label_embeddings: list[list[float]] | None = None
    budget: BudgetClaim | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``train_loop_config`` dict Ray Train hands each worker (values kept as they are)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LoopConfig:
        return cls(**values)


@dataclass
class EpochReport:
    """One epoch's numbers as every worker reports them: its index (``epoch``, 0-based), learning
    rate, seconds, the mean training loss terms and throughput (``train``: ``train_loss``,
    ``train_cases_per_s`` ...), the validation metrics (``val``: ``val_<metric>_<group>``, the same
    on every rank), and once known the best value so far of ``train.metric`` (``best``)."""

    epoch: int
    lr: float
    epoch_time_s: float
    train: dict[str, float] = field(default_factory=dict)
    val: dict[str, float] = field(default_factory=dict)
    best: tuple[str, float] | None = None

    def value(self, metric: str) -> float:
        """The epoch's value of ``metric`` (NaN when it has none)."""
        return float(self.to_dict().get(metric, math.nan))

    def to_dict(self) -> dict[str, float]:
        """The flat ``{name: number}`` Ray's ``report`` (and so Tune's scheduler) and MLflow take."""
        out: dict[str, float] = {**self.train, **self.val, "epoch": self.epoch, "lr": self.lr, "epoch_time_s": self.epoch_time_s}
        if self.best is not None:
            out[f"best_{self.best[0]}"] = self.best[1]
        return out


@dataclass
class CheckpointMeta:
    """A checkpoint's ``meta.json``: the run's ``config`` (a model dump), its label vocabulary
    (``label_names``, ``train_counts``: None for an imported model), the KE head's ``label_embeddings``, the store's
    ``dataset_version`` and preprocessing ``plan``, the selection ``metric`` and, per checkpoint,
    its ``epoch`` (0-based) and ``best_value`` of the metric so far."""

    config: dict[str, Any]
    label_names: list[str]
    train_counts: list[int] | None
    dataset_version: str
    metric: str
    label_embeddings: list[list[float]] | None = None
    plan: dict[str, Any] | None = None
    epoch: int = -1
    best_value: float = math.nan

    FILE = "meta.json"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CheckpointMeta:
        """From a parsed ``meta.json`` (keys it does not know are ignored; ValueError names a missing one)."""
        if not isinstance(values, dict):
            raise ValueError(f"{cls.FILE}: expected a JSON object, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in values and f.default is dataclasses.MISSING]
        if missing:
            raise ValueError(f"{cls.FILE}: missing {', '.join(missing)}")
        return cls(**{key: value for key, value in values.items() if key in known})

    def write(self, directory: str) -> None:
        with open(os.path.join(directory, self.FILE), "w") as handle:
            json.dump(self.to_dict(), handle)

    @classmethod
    def read(cls, directory: str) -> CheckpointMeta:
        """The ``meta.json`` of a checkpoint folder (OSError/ValueError when absent or malformed)."""
        with open(os.path.join(directory, cls.FILE)) as handle:
            return cls.from_dict(json.load(handle))


@dataclass(frozen=True)
class TrialContext:
    """What a sweep's or ablation's driver gives each of its Tune trials: the MLflow tracking
    ``uri``, ``experiment_id`` and ``parent_run_id`` its run nests under, a budgeted sweep's
    ``ledger`` (actor name; empty without a budget) and an ablation's ``scores_dir``."""

    uri: str
    experiment_id: str
    parent_run_id: str
    ledger: str = ""
    scores_dir: str = ""
