"""``sweep.max_trial_epochs``: the trial-epoch budget of a sweep (tune.sweep.TrialEpochBudget).

The unit tests need no Ray cluster; the slow one runs a real budgeted sweep."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from conftest import tiny_overrides


def test_budget_counts_epochs_over_all_trials_and_stops_all_at_the_budget() -> None:
    from ray.tune import Stopper

    from raddiag.tune.sweep import TrialEpochBudget

    budget = TrialEpochBudget(5)
    assert isinstance(budget, Stopper) and not budget.stop_all()
    for trial_id, iteration in [("a", 1), ("b", 1), ("a", 2), ("b", 2)]:
        assert budget(trial_id, {"training_iteration": iteration, "val_auc_tail": 0.5}) is False  # never stops one trial
    assert budget.consumed == 4 and not budget.stop_all()
    budget("c", {"training_iteration": 1})
    assert budget.consumed == 5 and budget.stop_all()
    budget("d", {"training_iteration": 1})
    assert budget.stop_all()


def test_budget_ignores_repeated_results_and_continues_a_resumed_trial() -> None:
    from raddiag.tune.sweep import TrialEpochBudget

    budget = TrialEpochBudget(10)
    budget("a", {"training_iteration": 3})
    budget("a", {"training_iteration": 3})  # Tune re-sends the last result when a trial ends
    assert budget.consumed == 3
    budget("a", {})  # no iteration counter: one more epoch
    assert budget.consumed == 4
    resumed = TrialEpochBudget(10, epochs={"a": 4, "b": 2})  # seeded from the restored experiment
    resumed("b", {"training_iteration": 3})
    assert resumed.consumed == 7


def test_budget_survives_pickling_and_rejects_an_empty_budget() -> None:
    from raddiag.tune.sweep import TrialEpochBudget

    budget = TrialEpochBudget(3)
    budget("a", {"training_iteration": 2})
    copy = pickle.loads(pickle.dumps(budget))
    assert copy.max_trial_epochs == 3 and copy.epochs == {"a": 2}
    copy("b", {"training_iteration": 1})
    assert copy.stop_all() and not budget.stop_all()
    with pytest.raises(ValueError):
        TrialEpochBudget(0)


def test_config_key_and_planned_trials(tmp_path: Path) -> None:
    from raddiag.config import load_config
    from raddiag.tune.sweep import planned_trials

    cfg = load_config(None, ["sweep.num_samples=6"])
    assert cfg.sweep.max_trial_epochs == 0 and planned_trials(cfg) == 6  # no budget: num_samples
    asha = load_config(None, ["train.epochs=8", "sweep.num_samples=64", "sweep.max_trial_epochs=32",
                              "sweep.scheduler=asha", "sweep.grace_period=1", "sweep.reduction_factor=2"])
    assert planned_trials(asha) == 13  # 32 / (1 + 3 * 0.5) trial-epochs per ASHA trial
    fifo = load_config(None, ["train.epochs=8", "sweep.num_samples=64", "sweep.max_trial_epochs=32", "sweep.scheduler=none"])
    assert planned_trials(fifo) == 4
    capped = load_config(None, ["train.epochs=8", "sweep.num_samples=2", "sweep.max_trial_epochs=32", "sweep.scheduler=none"])
    assert planned_trials(capped) == 2  # num_samples caps the trials
    with pytest.raises(Exception):
        load_config(None, ["sweep.max_trial_epochs=-1"])


@pytest.mark.slow
def test_budgeted_sweep_stops_at_the_budget_not_the_sample_cap(tmp_path: Path, tiny_store, ray_local) -> None:
    from raddiag.config import load_config
    from raddiag.tune.sweep import run_sweep

    store_cfg, _ = tiny_store
    cfg = load_config(None, [*tiny_overrides(tmp_path), f"store.url={store_cfg.store.url}", "train.epochs=3",
                             "sweep.num_samples=20", "sweep.max_trial_epochs=5", "sweep.max_concurrent_trials=1",
                             "sweep.scheduler=none", "sweep.searcher=random", "sweep.name=budgeted"])
    result = run_sweep(cfg)
    epochs = [t["epochs"] for t in result.trials if t["epochs"]]
    # 3 + 2 epochs, then the budget ends the sweep; the epoch already running when it did may finish
    assert len(epochs) == 2 and 5 <= sum(epochs) <= 6, result.trials
    assert len(result.trials) < cfg.sweep.num_samples
