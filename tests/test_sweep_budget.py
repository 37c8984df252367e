"""``sweep.max_trial_epochs``: the trial-epoch budget of a sweep (tune.sweep.TrialEpochBudget).

The unit tests need no Ray cluster; the slow one runs a real budgeted sweep."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from conftest import tiny_overrides
from raddiag.tracking import Tags


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


def test_ledger_grants_each_epoch_once_and_denies_past_the_budget() -> None:
    from raddiag.tune.ledger import Ledger

    ledger = Ledger(4)
    assert ledger.claim("a", 1) and ledger.claim("a", 1)  # a second rank asking for the same epoch
    assert ledger.claim("b", 1) and ledger.claim("a", 2) and ledger.claim("b", 2)
    assert ledger.consumed == 4 and ledger.exhausted() and not ledger.spent()  # a and b still run
    assert not ledger.claim("a", 3) and not ledger.claim("a", 3)  # every rank is denied alike
    assert ledger.claim("b", 2)  # re-run of a granted epoch after a worker restart: free
    assert not ledger.claim("c", 1) and ledger.consumed == 4
    ledger.release("a")
    ledger.release("b")
    assert not ledger.spent()  # c, denied, is still recording its run: the sweep must not end under it
    ledger.release("c")
    assert ledger.spent() and ledger.state()["granted"] == {"a": 2, "b": 2}


def test_ledger_prices_a_jump_seeds_from_a_resume_and_ignores_ended_trials() -> None:
    from raddiag.tune.ledger import Ledger

    resumed = Ledger(6, epochs={"a": 3})  # seeded with the epochs reported before the driver died
    assert resumed.claim("a", 3) and resumed.consumed == 3  # re-runs its last epoch from the checkpoint
    assert not resumed.claim("b", 4)  # a jump costs every epoch it skips: 3 + 4 > 6
    assert resumed.claim("b", 3) and resumed.consumed == 6
    resumed.end("b")  # Tune stopped it (ASHA) while its workers were still alive
    assert resumed.active == {"a"} and resumed.exhausted() and not resumed.spent()
    resumed.release("a")
    assert resumed.spent()
    ledger = Ledger(10)
    assert ledger.claim("x", 1)
    ledger.end("x")
    assert not ledger.claim("x", 2) and ledger.consumed == 1 and not ledger.active
    with pytest.raises(ValueError):
        Ledger(0)


@pytest.mark.slow
def test_stopper_ends_the_sweep_when_the_ledger_is_spent(ray_local) -> None:
    import ray

    from raddiag.tune.budget import TrialEpochBudget
    from raddiag.tune.ledger import claim_epoch, exhausted, release, start_ledger

    name = "raddiag-budget-unit-test"
    actor = start_ledger(name, 2)
    try:
        stopper = TrialEpochBudget(2, ledger=name)
        stopper.poll_s = 0.0
        assert claim_epoch(name, "t1", 1) and claim_epoch(name, "t2", 1) and exhausted(name)
        assert not stopper.stop_all()  # both trials still train
        assert not claim_epoch(name, "t1", 2)
        release(name, "t2")
        assert not stopper.stop_all()  # t1 was denied but has not recorded its run yet
        release(name, "t1", ended=True)  # Tune's callback
        assert stopper.stop_all() and stopper.consumed == 0  # before Tune has seen a single result
        copy = pickle.loads(pickle.dumps(stopper))
        assert copy.ledger == name and copy.max_trial_epochs == 2
        actor = start_ledger(name, 3)  # a stale ledger of the same sweep is replaced
        assert claim_epoch(name, "t1", 3) and not claim_epoch(name, "t2", 1)
    finally:
        ray.kill(actor)
    assert claim_epoch("raddiag-budget-none", "t", 1)  # no ledger: the workers train unchecked
    gone = TrialEpochBudget(2, ledger="raddiag-budget-none")
    gone.poll_s = 0.0
    assert not gone.stop_all()
    gone("t", {"training_iteration": 2})
    assert gone.stop_all()  # no ledger reachable: the epochs Tune received decide


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
    from raddiag.config import ConfigError

    with pytest.raises(ConfigError, match="max_trial_epochs"):
        load_config(None, ["sweep.max_trial_epochs=-1"])


@pytest.mark.slow
def test_budgeted_sweep_stops_at_the_budget_not_the_sample_cap(tmp_path: Path, tiny_store, ray_local) -> None:
    from raddiag.config import load_config
    from raddiag.tune.sweep import run_sweep

    store_cfg, _ = tiny_store
    # A ViT slice encoder and one worker per trial: the budget depends on neither (workers need not import MONAI).
    cfg = load_config(None, [*tiny_overrides(tmp_path), f"store.url={store_cfg.store.url}", "train.epochs=3", "model.encoder=vit",
                             "train.num_workers=1", "sweep.num_samples=20", "sweep.max_trial_epochs=5", "sweep.max_concurrent_trials=2",
                             "sweep.scheduler=none", "sweep.searcher=random", "sweep.name=budgeted"])
    result = run_sweep(cfg)
    epochs = [t["epochs"] for t in result.trials if t["epochs"]]
    # two trials at a time: the ledger grants exactly 5 epochs, however far the workers run ahead of Tune
    assert sum(epochs) == 5 and len(epochs) >= 2 and max(epochs) <= 3, result.trials
    assert len(result.trials) < cfg.sweep.num_samples


@pytest.mark.slow
def test_a_trial_the_budget_denies_its_first_epoch_is_skipped_not_an_error(tmp_path: Path, tiny_store, ray_local) -> None:
    from raddiag import tracking
    from raddiag.config import load_config
    from raddiag.tune.sweep import run_sweep

    store_cfg, _ = tiny_store
    cfg = load_config(None, [*tiny_overrides(tmp_path), f"store.url={store_cfg.store.url}", "train.epochs=2", "model.encoder=vit",
                             "train.num_workers=1", "sweep.num_samples=2", "sweep.max_trial_epochs=1",
                             "sweep.max_concurrent_trials=2", "sweep.scheduler=none", "sweep.name=denied"])
    # Both trials start together; whichever claims second finds the single epoch taken. Returning
    # without a result would make Tune fail the sweep (strict metric checking): it must idle until stopped.
    result = run_sweep(cfg)
    assert sorted(t["epochs"] for t in result.trials) == [0, 1], result.trials
    skipped = [t for t in result.trials if t["status"] == "SKIPPED"]
    assert len(skipped) == 1 and result.best_run_id != skipped[0]["run_id"]
    run = tracking.client(cfg.tracking.resolved_uri()).get_run(skipped[0]["run_id"])
    assert run.info.status == "KILLED" and Tags.SKIPPED in run.data.tags
