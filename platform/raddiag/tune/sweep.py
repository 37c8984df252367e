"""``raddiag sweep``: Ray Tune + Optuna (TPE) + ASHA, one TorchTrainer per trial, MLflow nesting.

The search space is the YAML mapping ``sweep.search_space`` of dotted config keys to distributions
(see :class:`raddiag.config.SweepConfig`), turned into an Optuna define-by-run function so that
conditional parameters (``when``) are only sampled when their condition holds. Each trial is a Tune
function trainable that builds the trial's config, opens a child MLflow run under the sweep's
parent run and runs a ``TorchTrainer`` whose ``TuneReportCallback`` feeds ASHA every epoch.
``sweep.max_trial_epochs`` gives the sweep an exact budget in trial-epochs (:mod:`raddiag.tune.budget`).
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from raddiag.config import RadDiagConfig, with_overrides
from raddiag.train.run import TrialContext
from raddiag.tune.budget import LedgerCallback, TrialEpochBudget
from raddiag.tune.ledger import ledger_name, start_ledger

__all__ = ["TrialEpochBudget", "run_sweep", "planned_trials", "max_concurrent", "SweepResult", "SweepError"]


class DefineByRun:
    """An Optuna define-by-run function for ``space`` (keys sampled in YAML order); picklable so
    Tune can checkpoint the searcher."""

    def __init__(self, space: dict[str, dict[str, Any]]) -> None:
        self.space = space

    def __call__(self, trial: Any) -> None:
        values: dict[str, Any] = {}
        for key, spec in self.space.items():
            condition = spec.get("when") or {}
            if any(values.get(k, _MISSING) != v for k, v in condition.items()):
                continue
            if "choice" in spec:
                values[key] = trial.suggest_categorical(key, spec["choice"])
            elif "uniform" in spec:
                values[key] = trial.suggest_float(key, *spec["uniform"])
            elif "loguniform" in spec:
                values[key] = trial.suggest_float(key, *spec["loguniform"], log=True)
            else:
                values[key] = trial.suggest_int(key, *spec["int"])
        return None


_MISSING = object()


def planned_trials(cfg: RadDiagConfig) -> int:
    """Trials the sweep expects to start: ``num_samples``, or with a trial-epoch budget as many as
    the budget pays for (capped by ``num_samples``). A full trial costs ``train.epochs``; under ASHA
    the expected cost is ``g * (1 + k * (1 - 1/eta))`` for grace period g, reduction factor eta and
    k rungs above the grace period (half the trials stop at each rung when eta = 2)."""
    budget = cfg.sweep.max_trial_epochs
    if not budget:
        return cfg.sweep.num_samples
    per_trial = float(cfg.train.epochs)
    if cfg.sweep.scheduler == "asha":
        grace, eta = min(cfg.sweep.grace_period, cfg.train.epochs), cfg.sweep.reduction_factor
        rungs = int(math.floor(math.log(cfg.train.epochs / grace, eta) + 1e-9))
        per_trial = grace * (1 + rungs * (1 - 1 / eta))
    return max(1, min(cfg.sweep.num_samples, math.ceil(budget / per_trial)))


def _seed_budget(tuner: Any) -> dict[str, int]:
    """On resume, give the restored :class:`TrialEpochBudget` (Tune unpickles a fresh one from
    ``tuner.pkl``) the epochs each trial had already reported, so the budget is not spent twice;
    returns them (the new ledger starts from the same counts). Under Ray Client the tuner lives
    remotely and the budget restarts from zero."""
    local = getattr(tuner, "_local_tuner", None)
    stopper = local.get_run_config().stop if local is not None else None
    if not isinstance(stopper, TrialEpochBudget):  # or a CombinedStopper holding one
        stopper = next((s for s in getattr(stopper, "_stoppers", ()) if isinstance(s, TrialEpochBudget)), None)
    if stopper is None:
        return {}
    try:
        grid = tuner.get_results()
    except Exception:  # no experiment state to read: nothing was reported yet
        return stopper.epochs
    for result in grid:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or _trial_id_from_path(str(result.path))
        stopper.epochs[trial_id] = max(stopper.epochs.get(trial_id, 0), int(metrics.get("training_iteration") or 0))
    return stopper.epochs


def trial_cpus(cfg: RadDiagConfig) -> float:
    """Logical CPUs one trial holds at peak: its driver, its train workers and its read tasks."""
    return cfg.sweep.trial_cpus + cfg.train.num_workers * (
        cfg.train.cpus_per_worker + cfg.data.read_parallelism * cfg.data.data_cpus
    )


def max_concurrent(cfg: RadDiagConfig, cluster_cpus: float) -> int:
    """``sweep.max_concurrent_trials`` or as many trials as fit in the cluster's CPUs (>= 1)."""
    if cfg.sweep.max_concurrent_trials:
        return cfg.sweep.max_concurrent_trials
    return max(1, min(cfg.sweep.num_samples, int(cluster_cpus // trial_cpus(cfg))))


def _trial(params: dict[str, Any], *, base: dict[str, Any], ctx: TrialContext) -> None:
    """Tune function trainable: one TorchTrainer run tracked as a child MLflow run. With a budget,
    the trial stays active in the ledger until its run is recorded (so the sweep is not ended
    under it)."""
    import ray.tune

    from raddiag.tune import ledger

    trial_id = ray.tune.get_context().get_trial_id()
    if ctx.ledger and ledger.exhausted(ctx.ledger):  # started before Tune saw the budget spent
        _idle_until_stopped(ctx.ledger)
        return
    trained = False
    try:
        trained = _run_trial(params, base=base, ctx=ctx, trial_id=trial_id)
    finally:
        if ctx.ledger:
            ledger.release(ctx.ledger, trial_id)
    if ctx.ledger and not trained:
        _idle_until_stopped(ctx.ledger)


def _idle_until_stopped(ledger: str) -> None:
    """A trial that trained nothing must not return: Tune rejects a trial's final result without
    ``sweep.metric`` (strict metric checking) and would fail the sweep. The spent budget ends the
    sweep, and Tune stops this trial (Optuna records it as pruned); if the ledger is gone (the
    driver died), return."""
    from raddiag.tune.ledger import exhausted

    while exhausted(ledger):
        time.sleep(1)


def _run_trial(params: dict[str, Any], *, base: dict[str, Any], ctx: TrialContext, trial_id: str) -> bool:
    """The trial's TorchTrainer run and its child MLflow run (reopened when a resumed sweep
    continues the trial); False when the budget denied it its first epoch (it trained nothing)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from raddiag.tracking import Tags
    from raddiag.train.run import BudgetClaim, TrainingRun
    from raddiag.train.trainer import build_trainer, label_embeddings

    sampled = {k: v for k, v in params.items() if "." in k}
    cfg = with_overrides(RadDiagConfig.model_validate(base), sampled)
    manifest = cfg.store.ref().manifest()
    run = TrainingRun.open(
        cfg, manifest, kind="trial", experiment_id=ctx.experiment_id, uri=ctx.uri, name=f"{cfg.sweep.name}-{trial_id}",
        parent=ctx.parent_run_id, trial_id=trial_id, tags={Tags.SWEEP: cfg.sweep.name},
        params={f"sampled.{k}": v for k, v in sampled.items()},
    )
    level = cfg.data.label_level
    embeddings = label_embeddings(cfg, manifest.label_names(level), manifest.label_codes(level))
    trainer = build_trainer(
        cfg, run=run, embeddings=embeddings, callbacks=[TuneReportCallback()],
        budget=BudgetClaim(ctx.ledger, trial_id) if ctx.ledger else None,
    )
    result = trainer.fit()
    if result.checkpoint is not None:
        run.set_checkpoint(result.checkpoint.path)
    if result.error is None and not result.metrics and not run.resumed:  # denied its first epoch
        run.finish("KILLED", tags={Tags.SKIPPED: "the trial-epoch budget was spent before its first epoch"})
        return False
    run.finish("FINISHED" if result.error is None else "FAILED")
    return True


class SweepError(RuntimeError):
    """The sweep produced no usable trial; the message carries the first trial's error."""


@dataclass
class SweepResult:
    name: str
    parent_run_id: str
    experiment_id: str
    best_run_id: str
    best_checkpoint: str
    best_value: float
    trials: list[dict[str, Any]] = field(default_factory=list)


def _experiment_path(cfg: RadDiagConfig) -> str:
    return f"{cfg.train.storage_path.rstrip('/')}/{cfg.sweep.name}"


def _optuna_storage(cfg: RadDiagConfig) -> Any:
    """The Optuna study's own persistent storage: sqlite beside the Tune experiment (local storage),
    else in-memory (Tune's experiment checkpoint on the remote storage still restores it)."""
    import optuna

    if "://" in cfg.train.storage_path:
        return None
    os.makedirs(cfg.train.storage_path, exist_ok=True)
    return optuna.storages.RDBStorage(f"sqlite:///{cfg.train.storage_path}/{cfg.sweep.name}.optuna.db")


def run_sweep(cfg: RadDiagConfig, verbose: bool = False, resume: bool = False, stop: Any = None) -> SweepResult:
    """Run the sweep (or, with ``resume``, continue the one named ``sweep.name`` after its driver
    died: finished trials are kept, unfinished ones resume from their last checkpoint into the same
    MLflow child run, and the searcher continues its persisted study). Returns the best trial (by
    the best value of ``sweep.metric`` over epochs). ``stop``: an extra Tune stop criterion
    (a ``ray.tune.Stopper``, Python API only), combined with the trial-epoch budget; a resumed sweep
    keeps the criteria it was started with."""
    import optuna
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch
    from ray.tune.stopper import CombinedStopper

    from raddiag import tracking
    from raddiag.runtime import init_ray

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")  # persist the experiment state often
    init_ray(cfg.ray, verbose)
    optuna.logging.set_verbosity(optuna.logging.DEBUG if verbose else optuna.logging.ERROR)
    experiment_id = tracking.setup(cfg.tracking)
    uri = cfg.tracking.resolved_uri()
    manifest = cfg.store.ref().manifest()
    path = _experiment_path(cfg)
    exists = tune.Tuner.can_restore(path)
    if resume and not exists:
        raise SweepError(f"sweep {cfg.sweep.name}: nothing to resume at {path}")
    if not resume and exists:
        raise SweepError(f"sweep {cfg.sweep.name} already exists at {path}: pass --resume to continue it or set sweep.name")
    parent_run_id = tracking.parent_run(uri, experiment_id, "sweep", cfg.sweep.name, manifest.version, cfg.run_params("sweep"), resume)
    ledger = ledger_name(path if "://" in path else os.path.abspath(path)) if cfg.sweep.max_trial_epochs else ""
    ctx = TrialContext(uri, experiment_id, parent_run_id, ledger=ledger)
    trainable = tune.with_resources(
        tune.with_parameters(_trial, base=cfg.model_dump(mode="json"), ctx=ctx), {"CPU": cfg.sweep.trial_cpus}
    )
    if resume:
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        budget_stop = TrialEpochBudget(cfg.sweep.max_trial_epochs, ledger=ledger) if ledger else None
        stop = CombinedStopper(budget_stop, stop) if budget_stop and stop else budget_stop or stop
        sampler = (
            optuna.samplers.TPESampler(seed=cfg.sweep.seed, n_startup_trials=max(2, planned_trials(cfg) // 3))
            if cfg.sweep.searcher == "optuna"
            else optuna.samplers.RandomSampler(seed=cfg.sweep.seed)
        )
        searcher = OptunaSearch(
            space=DefineByRun(cfg.sweep.search_space), metric=cfg.sweep.metric, mode=cfg.sweep.mode,
            sampler=sampler, seed=cfg.sweep.seed, study_name=cfg.sweep.name, storage=_optuna_storage(cfg),
        )
        scheduler = (
            ASHAScheduler(
                time_attr="training_iteration", max_t=cfg.train.epochs, grace_period=min(cfg.sweep.grace_period, cfg.train.epochs),
                reduction_factor=cfg.sweep.reduction_factor,
            )
            if cfg.sweep.scheduler == "asha"
            else FIFOScheduler()
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher, scheduler=scheduler, num_samples=cfg.sweep.num_samples,
                max_concurrent_trials=max_concurrent(cfg, ray.cluster_resources().get("CPU", 1)),
                metric=cfg.sweep.metric, mode=cfg.sweep.mode,
            ),
            run_config=tune.RunConfig(
                name=cfg.sweep.name, storage_path=cfg.train.storage_path, verbose=1 if verbose else 0,
                stop=stop,
                callbacks=[LedgerCallback(ledger)] if ledger else None,
            ),
        )
    ledger_actor = start_ledger(ledger, cfg.sweep.max_trial_epochs, _seed_budget(tuner) if resume else None) if ledger else None
    try:
        grid = tuner.fit()
    finally:
        if ledger_actor is not None:
            ray.kill(ledger_actor)
    return _summarise(cfg, grid, uri, experiment_id, parent_run_id)


def _trial_id_from_path(path: str) -> str:
    """Tune names trial directories ``<trainable>_<trial_id>_<index>_<params>_<date>``."""
    found = re.search(r"_([0-9a-f]{8,})_\d+_", os.path.basename(path))
    return found.group(1) if found else os.path.basename(path)


def _summarise(cfg: RadDiagConfig, grid: Any, uri: str, experiment_id: str, parent_run_id: str) -> SweepResult:
    """Close the child runs (ASHA-stopped ones as KILLED), pick the best, tag the parent."""
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY as CHECKPOINT_METRIC_KEY

    from raddiag import tracking
    from raddiag.tracking import Tags

    client = tracking.client(uri)
    runs = {r.data.tags.get(Tags.TRIAL_ID): r for r in tracking.child_runs(uri, experiment_id, parent_run_id)}
    sign = 1.0 if cfg.sweep.mode == "max" else -1.0
    trials, best = [], None
    for result in grid:
        trial_id = (result.metrics or {}).get("trial_id") or _trial_id_from_path(str(result.path))
        run = runs.get(trial_id)
        # MLflow is the source of truth for per-epoch values: a trial resumed after a driver crash
        # may report nothing new to Tune, but its child run holds every epoch exactly once.
        history = client.get_metric_history(run.info.run_id, cfg.sweep.metric) if run is not None else []
        values = [m.value for m in sorted(history, key=lambda m: m.step)]
        value = (max if sign > 0 else min)(values) if values else math.nan
        checkpoint = (result.metrics or {}).get(CHECKPOINT_METRIC_KEY) or (run.data.tags.get(Tags.CHECKPOINT) if run else None)
        epochs = len(values)
        status = "FINISHED" if epochs >= cfg.train.epochs else "KILLED" if epochs else "SKIPPED"
        if run is not None:
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, "KILLED" if status == "SKIPPED" else status)
            if checkpoint:
                client.set_tag(run.info.run_id, Tags.CHECKPOINT, checkpoint)
        row = {
            "trial_id": trial_id,
            "run_id": run.info.run_id if run else "",
            "value": value,
            "epochs": epochs,
            "status": status if result.error is None else "ERROR",
            "checkpoint": checkpoint,
            "params": {k: v for k, v in (result.config or {}).items() if "." in k},
        }
        trials.append(row)
        if math.isfinite(value) and checkpoint and (best is None or sign * value > sign * best["value"]):
            best = row
    known = {t["trial_id"] for t in trials}
    for trial_id, run in runs.items():  # child runs of trials the restored experiment never knew
        if trial_id not in known and run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, Tags.ORPHAN, "true")
            client.set_terminated(run.info.run_id, "KILLED")
    if best is None:
        client.set_terminated(parent_run_id, "FAILED")
        errors = [str(r.error).strip().splitlines()[-1] for r in grid if r.error is not None]
        cause = f"; first trial error: {errors[0]}" if errors else ""
        raise SweepError(f"sweep {cfg.sweep.name}: no trial reported {cfg.sweep.metric} with a checkpoint{cause}")
    client.set_tag(parent_run_id, Tags.BEST_RUN_ID, best["run_id"])
    client.log_metric(parent_run_id, f"best_{cfg.sweep.metric}", best["value"])
    client.log_metric(parent_run_id, "trial_epochs", sum(t["epochs"] for t in trials))
    client.set_terminated(parent_run_id, "FINISHED")
    return SweepResult(
        name=cfg.sweep.name, parent_run_id=parent_run_id, experiment_id=experiment_id, best_run_id=best["run_id"],
        best_checkpoint=best["checkpoint"], best_value=best["value"], trials=trials,
    )
