"""The sweep's trial-epoch budget (``sweep.max_trial_epochs``), enforced exactly.

Tune learns of a trial's epoch only after Ray Train's controller has polled the workers, queued the
result for the trial's function trainable and the Tune driver has processed it; meanwhile the
workers keep training. A budget enforced only from Tune's side therefore overshoots by however many
epochs fit into that latency (on tiny CPU epochs: all of them). So the budget is a ledger instead:

* :class:`~raddiag.tune.ledger.Ledger` (:mod:`raddiag.tune.ledger`, which imports no Tune: training
  workers use it) — run as a Ray actor owned by the sweep driver. Every training worker *claims* an
  epoch before it starts it; the ledger grants epochs until the budget is spent, then denies, and
  the trial ends cleanly after its last granted epoch (checkpoint and MLflow metrics included).
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

import time
from typing import Any

from ray.tune import Callback, Stopper

from raddiag.tune.ledger import ask, release


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
            answer = ask(self.ledger, "spent", default=None, timeout=10)
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
