"""A run's life after training: resuming by name (refused when the settings change what the
checkpoint means, "already complete" when nothing is left), the store checked before Ray starts, and
promotion (a dry run writes nothing to MLflow; a run is registered once).

The slow tests share one tiny 1-epoch training; every check after it runs before Ray would start
(the CLI is given an unreachable ``ray.address``, so a command that reached Ray would fail)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from conftest import REPO, run_cli, tiny_overrides
from raddiag.tracking import Tags

NO_RAY = "ray.address=127.0.0.1:1"  # nothing listens there: reaching Ray would fail the command


def _sets(overrides: list[str]) -> list[str]:
    args: list[str] = []
    for override in overrides:
        args += ["--set", override]
    return args


def test_resume_conflicts_name_checkpoint_keys_and_allow_length_and_resources() -> None:
    from raddiag.config import load_config
    from raddiag.tracking import params_from
    from raddiag.train.trainer import resume_conflicts

    before = load_config(None, ["model.head=ke", "train.epochs=1", "loss.type=bce"])
    previous = params_from(before.flat())
    longer = load_config(None, ["model.head=ke", "train.epochs=8", "train.num_workers=3", "train.early_stop_patience=2", "data.read_parallelism=4"])
    assert resume_conflicts(previous, longer) == []
    changed = load_config(None, ["model.head=mlp", "train.epochs=8", "loss.type=focal", "train.lr=0.1", "data.label_level=icd"])
    assert resume_conflicts(previous, changed) == [
        ("data.label_level", "disorder", "icd"), ("loss.type", "bce", "focal"), ("model.head", "ke", "mlp"), ("train.lr", "0.002", "0.1"),
    ]
    del previous["model.head"]  # a key the earlier run did not record is not held against it
    assert [key for key, _, _ in resume_conflicts(previous, changed)] == ["data.label_level", "loss.type", "train.lr"]


def test_jobs_train_yaml_does_not_share_the_default_run_name() -> None:
    from raddiag.config import load_config

    assert load_config([REPO / "jobs" / "train.yaml"]).train.name != load_config().train.name


@pytest.mark.parametrize("kind", ["missing", "empty", "file"])
def test_train_refuses_a_bad_store_in_one_line_before_ray(kind: str, tmp_path: Path) -> None:
    store = tmp_path / "store"
    if kind == "empty":
        store.mkdir()
    elif kind == "file":
        store.write_text("not a store")
    db = tmp_path / "mlflow.db"
    result = run_cli(
        "train", *_sets([f"store.url={store}", f"tracking.tracking_uri=sqlite:///{db}", f"train.storage_path={tmp_path / 'ray'}", NO_RAY]),
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: store.url {store}: "), result.stderr
    assert ("raddiag synth" in lines[0] and "raddiag ingest" in lines[0]), lines[0]
    assert not db.exists(), "the store is checked before MLflow is opened"


# --- one tiny training, then everything that happens to its run ----------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_store, _ray_session):
    """(overrides, config, run id) of a finished 1-epoch ``train.name=t1`` on the tiny store."""
    from raddiag.config import RayConfig, load_config
    from raddiag.runtime import init_ray
    from raddiag.train.trainer import run_train

    tmp = tmp_path_factory.mktemp("lifecycle")
    store_cfg, _ = tiny_store
    overrides = [*tiny_overrides(tmp), f"store.url={store_cfg.store.url}", "train.name=t1", "train.epochs=1", "train.num_workers=1", "train.cpus_per_worker=1"]
    cfg = load_config(None, overrides)
    with pytest.MonkeyPatch.context() as env:  # run_train exports MLFLOW_TRACKING_URI; keep it to this module
        env.setenv("MLFLOW_TRACKING_URI", cfg.tracking.resolved_uri())
        init_ray(RayConfig(num_cpus=8), verbose=False)
        result = run_train(cfg)
        assert result.checkpoint_path and result.already_complete is None
        yield overrides, cfg, result.run_id, tmp


def _runs_named(cfg, name: str) -> list:
    from raddiag import tracking

    client = tracking.client(cfg.tracking.resolved_uri())
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.`{Tags.TRAIN_NAME}` = '{name}'")


@pytest.mark.slow
def test_resuming_with_another_head_is_refused_in_one_line_before_ray(trained) -> None:
    overrides, cfg, run_id, tmp = trained
    result = run_cli("train", *_sets([*overrides, "model.head=mlp", NO_RAY]), cwd=tmp)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith(f"Error: train.name 't1' names an earlier run (MLflow run {run_id}, checkpoint {tmp / 'ray' / 't1'}"), line
    assert "model.head ke -> mlp" in line and "choose another train.name" in line and "same settings" in line, line
    assert "train.epochs" not in line
    assert len(_runs_named(cfg, "t1")) == 1


@pytest.mark.slow
def test_rerunning_a_finished_run_says_already_complete_before_ray(trained) -> None:
    from raddiag import tracking
    from raddiag.train.trainer import run_train

    overrides, cfg, run_id, tmp = trained
    result = run_cli("train", *_sets([*overrides, "train.num_workers=2", NO_RAY]), cwd=tmp)  # workers may differ
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert f"train.name 't1' is already complete (1/1 epochs done), nothing trained: MLflow run {run_id}, model runs:/{run_id}/raddiag-classifier" in out, out
    again = run_train(cfg)
    assert again.run_id == run_id and again.already_complete == "1/1 epochs done"
    assert again.checkpoint_path == tracking.client(cfg.tracking.resolved_uri()).get_run(run_id).data.tags[Tags.CHECKPOINT]
    assert [m.step for m in tracking.client(cfg.tracking.resolved_uri()).get_metric_history(run_id, "epoch")] == [0]


@pytest.mark.slow
def test_continuing_a_run_whose_checkpoints_are_elsewhere_is_refused_before_ray(trained, tmp_path: Path) -> None:
    overrides, cfg, run_id, tmp = trained
    moved = tmp_path / "elsewhere"
    result = run_cli("train", *_sets([*overrides, "train.epochs=2", f"train.storage_path={moved}", NO_RAY]), cwd=tmp)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"Error: train.name 't1': MLflow run {run_id} logged 1 epoch(s), but no checkpoint of it is under {moved / 't1'}; "
        "set train.storage_path to where it trained, or choose another train.name"
    )


def _snapshot(cfg, tmp: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Everything MLflow holds: every row of its database and every artifact file."""
    db = cfg.tracking.resolved_uri().removeprefix("sqlite:///")
    with sqlite3.connect(db) as connection:
        rows = list(connection.iterdump())
    files = sorted((str(p.relative_to(tmp)), p.stat().st_size) for p in (tmp / "mlartifacts").rglob("*") if p.is_file())
    return rows, files


def _sweep_over(cfg, name: str, best_run_id: str) -> None:
    """A finished sweep parent run whose best trial is ``best_run_id`` (what ``raddiag sweep`` leaves)."""
    from raddiag import tracking

    client = tracking.client(cfg.tracking.resolved_uri())
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    run = client.create_run(experiment.experiment_id, run_name=name, tags={Tags.SWEEP: name, Tags.ROLE: "sweep", Tags.BEST_RUN_ID: best_run_id})
    client.set_terminated(run.info.run_id, "FINISHED")


@pytest.mark.slow
def test_dry_run_promotion_writes_nothing_and_a_run_is_registered_once(trained) -> None:
    from raddiag import tracking
    from raddiag.registry import promote

    overrides, cfg, run_id, tmp = trained
    client = tracking.client(cfg.tracking.resolved_uri())
    name = cfg.tracking.registered_model
    _sweep_over(cfg, "s1", run_id)

    before = _snapshot(cfg, tmp)
    dry = run_cli("promote", "--sweep", "s1", "--dry-run", *_sets(overrides), cwd=tmp)
    assert dry.returncode == 0, dry.stderr
    out = " ".join(dry.stdout.split())
    assert f"dry run, nothing written to MLflow ({cfg.tracking.resolved_uri()}): would register run {run_id} as a new version of {name}" in out, out
    assert "(evaluated now, not logged) vs no champion yet → would set @champion" in out, out
    assert _snapshot(cfg, tmp) == before, "a dry run wrote to MLflow"

    first = promote(cfg, "s1")
    assert (first.version, first.decision, first.reused) == ("1", "champion", False)
    again = promote(cfg, "s1")  # the same run: no second version, the champion stays
    assert (again.version, again.decision, again.unchanged) == ("1", "champion", True)
    assert [str(v.version) for v in client.search_model_versions(f"name='{name}'")] == ["1"]

    # Another trial with the same weights must beat v1 by the margin: a challenger, decided alike
    # by the dry run (from v1's logged test metric) and the real promotion (v1 evaluated again).
    trial = client.create_run(client.get_experiment_by_name(cfg.tracking.experiment).experiment_id, run_name="t1-copy",
                              tags={Tags.CHECKPOINT: client.get_run(run_id).data.tags[Tags.CHECKPOINT]})
    client.set_terminated(trial.info.run_id, "FINISHED")
    _sweep_over(cfg, "s2", trial.info.run_id)
    strict = _sets([*overrides, "promote.margin=0.01"])
    before = _snapshot(cfg, tmp)
    dry = run_cli("promote", "--sweep", "s2", "--dry-run", *strict, cwd=tmp)
    assert dry.returncode == 0, dry.stderr
    out = " ".join(dry.stdout.split())
    assert f"would register run {trial.info.run_id} as a new version of {name}" in out, out
    assert f"vs champion v1 {first.candidate_value:.4f} (logged when v1 was promoted) → would set @challenger" in out, out
    assert _snapshot(cfg, tmp) == before, "a dry run wrote to MLflow"

    margin = cfg.model_copy(update={"promote": cfg.promote.model_copy(update={"margin": 0.01})})
    second = promote(margin, "s2")
    assert (second.version, second.decision, second.champion_version) == ("2", "challenger", "1")
    repeat = promote(margin, "s2")
    assert (repeat.version, repeat.decision, repeat.reused) == ("2", "challenger", True)
    assert sorted(str(v.version) for v in client.search_model_versions(f"name='{name}'")) == ["1", "2"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "2"
