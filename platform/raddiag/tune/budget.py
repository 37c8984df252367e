"""The sweep's trial-epoch budget (``sweep.max_trial_epochs``), enforced exactly.

Tune learns of a trial's epoch only after Ray Train's controller has polled the workers, queued the
result for the trial's function trainable and the Tune driver has processed it; meanwhile the
workers keep training. A budget enforced only from Tune's side therefore overshoots by however many
epochs fit into that latency (on tiny CPU epochs: all of them). So the budget is a ledger instead:

* :class:`Ledger` — run as a Ray actor owned by the sweep driver (:func:`start_ledger`). Every
  training worker *claims* an epoch before it starts it (:func:`claim_epoch`); the ledger grants
  epochs until the budget is spent, then denies, and the trial ends cleanly after its last granted
  epoch (checkpoint and MLflow metrics included). A trial is *active* from its first claim until
  its trainable has recorded its run and releases it. Claims are idempotent per (trial, epoch), so
  every DDP rank gets the same answer, and an epoch re-run after a worker restart costs nothing
  twice.
* :class:`TrialEpochBudget` — the Tune ``Stopper``: counts the epochs reported and ends the sweep
  (no new trial) once the ledger is spent — nothing left to grant and no trial active — so no trial
  is cut short in its last steps; without a reachable ledger, once the reported epochs reach the
  budget.
* :class:`LedgerCallback` — tells the ledger when Tune ends a trial (ASHA stop, error), so a trial
  that Tune killed does not keep the sweep waiting and its dying workers get no further epoch.

The ledger is found by name (derived from the experiment path), so the pickled stopper and callback
in Tune's ``tuner.pkl`` find the new ledger after ``raddiag sweep --resume``, which seeds it with the
epochs each trial had already reported.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from ray.tune import Callback, Stopper

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


def _ask(name: str, method: str, *args: Any, default: Any, timeout: float = 60) -> Any:
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
    return bool(_ask(name, "claim", trial_id, epoch, default=True))


def release(name: str, trial_id: str, ended: bool = False) -> None:
    """The trial's trainable is done (``ended``: Tune ended the trial)."""
    _ask(name, "end" if ended else "release", trial_id, default=False)


def exhausted(name: str) -> bool:
    """True when the budget has no epoch left to grant (a new trial would do nothing)."""
    return bool(_ask(name, "exhausted", default=False))


class TrialEpochBudget(Stopper):
    """Ends the sweep once its trial-epoch budget is used up.

    A trial's cost is the highest ``training_iteration`` (epoch) it has reported, so a repeated
    result (Tune re-sends the last one when a trial ends) is not counted twice and a trial resumed
    from a checkpoint continues its own count. ``__call__`` never stops one trial; ``stop_all``
    turns true when the ledger (``ledger``: its actor name) is spent — no epoch left and no trial
    active — or, without a reachable ledger, when the reported epochs reach the budget. Tune then
    stops what still runs and starts no new trial. Picklable: Tune stores it in ``tuner.pkl``.
    """

    poll_s = 0.5

    def __init__(self, max_trial_epochs: int, epochs: dict[str, int] | None = None, ledger: str = "") -> None:
        if max_trial_epochs < 1:
            raise ValueError(f"max_trial_epochs must be >= 1, got {max_trial_epochs}")
        self.max_trial_epochs = max_trial_epochs
        self.epochs: dict[str, int] = dict(epochs or {})
        self.ledger = ledger
        self._checked = 0.0
        self._spent = False

    def __getstate__(self) -> dict[str, Any]:
        return {"max_trial_epochs": self.max_trial_epochs, "epochs": self.epochs, "ledger": self.ledger}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    @property
    def consumed(self) -> int:
        """Trial-epochs reported so far, over all trials."""
        return sum(self.epochs.values())

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        iteration = result.get("training_iteration")
        done = self.epochs.get(trial_id, 0)
        self.epochs[trial_id] = max(done, int(iteration)) if iteration is not None else done + 1
        return False

    def stop_all(self) -> bool:
        if self._spent:
            return True
        if not self.ledger:
            return self.consumed >= self.max_trial_epochs
        if time.monotonic() - self._checked >= self.poll_s:  # Tune asks at every step
            self._checked = time.monotonic()
            answer = _ask(self.ledger, "spent", default=None, timeout=10)
            self._spent = self.consumed >= self.max_trial_epochs if answer is None else bool(answer)
        return self._spent


class LedgerCallback(Callback):
    """Ends a trial in the ledger when Tune ends it: stopped by ASHA or failed, it may never
    release itself, and its dying workers must get no further epoch."""

    def __init__(self, ledger: str) -> None:
        self.ledger = ledger

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        release(self.ledger, trial.trial_id, ended=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        release(self.ledger, trial.trial_id, ended=True)
