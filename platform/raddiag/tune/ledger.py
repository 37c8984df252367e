"""The sweep's trial-epoch ledger, without Ray Tune: what training workers and trials call.

:class:`Ledger` runs as a Ray actor owned by the sweep driver (:func:`start_ledger`). Every training
worker *claims* an epoch before it starts it (:func:`claim_epoch`); the ledger grants epochs until
``sweep.max_trial_epochs`` is spent, then denies, and the trial ends cleanly after its last granted
epoch (checkpoint and MLflow metrics included). A trial is *active* from its first claim until its
trainable has recorded its run and releases it (:func:`release`). Claims are idempotent per
(trial, epoch), so every DDP rank gets the same answer, and an epoch re-run after a worker restart
costs nothing twice. The ledger is found by name (:func:`ledger_name`, derived from the experiment
path), so a resumed sweep's pickled stopper and callback find the new ledger.

This module imports only Ray core: a Ray Train worker (:mod:`raddiag.train.loop`) claims its epochs
through it and must not import Ray Tune, which would pull Tune's whole import tree (and its
process-global state) into every training worker. The Tune side of the budget — the stopper and the
callback — is :mod:`raddiag.tune.budget`.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

NAMESPACE = "raddiag"


def ledger_name(experiment_path: str) -> str:
    """The ledger actor's name for a sweep's experiment path (stable across ``--resume``)."""
    return "raddiag-budget-" + hashlib.sha1(experiment_path.encode()).hexdigest()[:16]


class Ledger:
    """The ledger's bookkeeping: plain Python, run as a Ray actor by :func:`start_ledger`."""

    def __init__(self, budget: int, epochs: dict[str, int] | None = None) -> None:
        if budget < 1:
            raise ValueError(f"max_trial_epochs must be >= 1, got {budget}")
        self.budget = budget
        self.granted: dict[str, int] = dict(epochs or {})  # trial -> highest epoch granted (1-based)
        self.active: set[str] = set()  # trials that claimed an epoch and have not been released
        self.ended: set[str] = set()  # trials Tune has ended: their workers may still be dying

    @property
    def consumed(self) -> int:
        return sum(self.granted.values())

    def claim(self, trial_id: str, epoch: int) -> bool:
        """May ``trial_id`` train its ``epoch``-th epoch (1-based)? The trial is active from now on."""
        if trial_id in self.ended:
            return False
        self.active.add(trial_id)
        done = self.granted.get(trial_id, 0)
        if epoch <= done:  # granted before: another rank, or a re-run after a restart
            return True
        if self.consumed + (epoch - done) > self.budget:
            return False
        self.granted[trial_id] = epoch
        return True

    def release(self, trial_id: str) -> None:
        """The trial's trainable is done (its run ended and is recorded)."""
        self.active.discard(trial_id)

    def end(self, trial_id: str) -> None:
        """Tune ended the trial (finished, stopped or failed): release it and deny its workers,
        which may still be running until Ray tears them down, any further epoch."""
        self.active.discard(trial_id)
        self.ended.add(trial_id)

    def exhausted(self) -> bool:
        """No epoch is left to grant."""
        return self.consumed >= self.budget

    def spent(self) -> bool:
        """Exhausted, and no trial is active: the sweep has nothing left to do."""
        return self.exhausted() and not self.active

    def state(self) -> dict[str, Any]:
        return {"budget": self.budget, "consumed": self.consumed, "granted": dict(self.granted), "active": sorted(self.active)}


def _actor_class() -> Any:
    import ray

    return ray.remote(num_cpus=0, max_restarts=0)(Ledger)


def start_ledger(name: str, budget: int, epochs: dict[str, int] | None = None) -> Any:
    """Start the sweep's ledger actor ``name`` (owned by the calling driver: it ends with the
    driver), replacing a stale one left by an earlier driver of the same sweep."""
    import ray

    stale = get_ledger(name)
    if stale is not None:
        ray.kill(stale)
    deadline = time.monotonic() + 30
    while True:
        try:
            actor = _actor_class().options(name=name, namespace=NAMESPACE).remote(budget, epochs)
            ray.get(actor.state.remote(), timeout=60)  # up and registered
            return actor
        except ValueError:  # the killed actor's name is not released yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def get_ledger(name: str) -> Any | None:
    import ray

    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:  # not running: no budget is enforced from the workers' side
        return None


def ask(name: str, method: str, *args: Any, default: Any, timeout: float = 60) -> Any:
    """Call ``method`` on the ledger ``name``; ``default`` when it is not running or not answering
    (the driver died: the workers then train unchecked rather than hang)."""
    import ray

    ledger = get_ledger(name)
    if ledger is None:
        return default
    try:
        return ray.get(getattr(ledger, method).remote(*args), timeout=timeout)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return default


def claim_epoch(name: str, trial_id: str, epoch: int) -> bool:
    """A training worker's claim on its ``epoch``-th epoch; without a reachable ledger, granted."""
    return bool(ask(name, "claim", trial_id, epoch, default=True))


def release(name: str, trial_id: str, ended: bool = False) -> None:
    """The trial's trainable is done (``ended``: Tune ended the trial)."""
    ask(name, "end" if ended else "release", trial_id, default=False)


def exhausted(name: str) -> bool:
    """True when the budget has no epoch left to grant (a new trial would do nothing)."""
    return bool(ask(name, "exhausted", default=False))
