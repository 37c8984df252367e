"""raddiag.train.run: one MLflow run lifecycle for ``train``, sweep trials and ablation arms (open or
resume by tag, config + dataset logged, finish), the typed payloads that cross process boundaries,
tag names spelled only in ``tracking.Tags``, and training workers that never import Ray Tune."""

from __future__ import annotations

import ast
import math
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "platform" / "raddiag"


@pytest.fixture()
def mlflow_env(tmp_path: Path, tiny_store):
    """(config, manifest, experiment id) with MLflow in a fresh sqlite database."""
    from raddiag import tracking
    from raddiag.config import load_config

    store_cfg, manifest = tiny_store
    cfg = load_config(None, [f"store.url={store_cfg.store.url}", f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
                             "tracking.experiment=run-tests", "train.name=lifecycle", "loss.type=bce"])
    with pytest.MonkeyPatch.context() as env:  # setup exports MLFLOW_TRACKING_URI: keep it to this test
        env.setenv("MLFLOW_TRACKING_URI", cfg.tracking.resolved_uri())
        yield cfg, manifest, tracking.setup(cfg.tracking)


def test_a_train_run_is_created_once_then_resumed_by_its_name(mlflow_env) -> None:
    from raddiag import tracking
    from raddiag.tracking import Tags
    from raddiag.train.run import TrainingRun

    cfg, manifest, experiment_id = mlflow_env
    client = tracking.client(cfg.tracking.resolved_uri())
    run = TrainingRun.open(cfg, manifest, kind="train", experiment_id=experiment_id)
    assert (run.name, run.kind, run.resumed) == ("lifecycle", "train", False)
    logged = client.get_run(run.run_id)
    tags = logged.data.tags
    assert tags[Tags.KIND] == "train" and tags[Tags.TRAIN_NAME] == "lifecycle"
    assert tags[Tags.DATASET_VERSION] == manifest.version and Tags.PARENT_RUN_ID not in tags
    assert logged.data.params["train.name"] == "lifecycle" and logged.data.params["loss.type"] == "bce"
    assert not any(key.startswith("loss.focal") for key in logged.data.params)  # only the active loss's keys
    assert [d.dataset.digest for d in logged.inputs.dataset_inputs] == [manifest.version]
    run.finish("FAILED")

    again = TrainingRun.open(cfg, manifest, kind="train", experiment_id=experiment_id)
    assert again.run_id == run.run_id and again.resumed
    assert client.get_run(run.run_id).info.status == "RUNNING"  # reopened
    assert len(client.get_run(run.run_id).inputs.dataset_inputs) == 1  # nothing logged twice
    with pytest.raises(RuntimeError, match="boom"), again.failed_on_error():
        raise RuntimeError("boom")
    assert client.get_run(run.run_id).info.status == "FAILED"
    other = TrainingRun.open(cfg.model_copy(update={"train": cfg.train.model_copy(update={"name": "other"})}), manifest,
                             kind="train", experiment_id=experiment_id)
    assert other.run_id != run.run_id and not other.resumed


def test_trials_resume_under_their_parent_and_arms_start_anew(mlflow_env) -> None:
    from raddiag import tracking
    from raddiag.tracking import Tags
    from raddiag.train.run import TrainingRun

    cfg, manifest, experiment_id = mlflow_env
    uri = cfg.tracking.resolved_uri()
    client = tracking.client(uri)
    parents = [client.create_run(experiment_id, run_name=f"sweep-{i}").info.run_id for i in range(2)]

    def trial(parent: str) -> TrainingRun:
        return TrainingRun.open(cfg, manifest, kind="trial", experiment_id=experiment_id, uri=uri, name="s-abc", parent=parent,
                                trial_id="abc", tags={Tags.SWEEP: "s"}, params={"sampled.train.lr": 0.01})

    first = trial(parents[0])
    tags = client.get_run(first.run_id).data.tags
    assert tags[Tags.PARENT_RUN_ID] == parents[0] and tags[Tags.TRIAL_ID] == "abc" and tags[Tags.KIND] == "trial"
    assert tags[Tags.SWEEP] == "s" and tags[Tags.SOURCE_GIT_COMMIT]
    assert client.get_run(first.run_id).data.params["sampled.train.lr"] == "0.01"
    first.finish("KILLED", tags={Tags.SKIPPED: "budget spent"})
    assert client.get_run(first.run_id).info.status == "KILLED" and client.get_run(first.run_id).data.tags[Tags.SKIPPED]
    assert trial(parents[0]).run_id == first.run_id  # the resumed sweep's trial: the same child run
    assert trial(parents[1]).run_id != first.run_id  # the same trial id under another sweep: its own run

    arms = [TrainingRun.open(cfg, manifest, kind="arm", experiment_id=experiment_id, uri=uri, name="a-x-s0", parent=parents[0])
            for _ in range(2)]
    assert arms[0].run_id != arms[1].run_id and not arms[1].resumed
    assert [r.info.run_id for r in tracking.child_runs(uri, experiment_id, parents[1])] == [trial(parents[1]).run_id]
    with pytest.raises(ValueError, match="run kind 'job'"):
        TrainingRun.open(cfg, manifest, kind="job", experiment_id=experiment_id)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pass parent"):
        TrainingRun.open(cfg, manifest, kind="arm", experiment_id=experiment_id)
    with pytest.raises(ValueError, match="pass trial_id"):
        TrainingRun.open(cfg, manifest, kind="trial", experiment_id=experiment_id, parent=parents[0])


def test_payloads_round_trip_and_pickle(tmp_path: Path) -> None:
    from raddiag.train.run import BudgetClaim, CheckpointMeta, EpochReport, LoopConfig, TrainingRun, TrialContext

    run = TrainingRun("sqlite:///x.db", "1", "r1", "t1")
    loop = LoopConfig({"train": {"epochs": 2}}, run, [[0.5, 1.0]], BudgetClaim("ledger-x", "t-1"))
    assert LoopConfig.from_dict(loop.to_dict()) == loop and pickle.loads(pickle.dumps(loop)) == loop
    assert set(loop.to_dict()) == {"config", "run", "label_embeddings", "budget"}
    context = TrialContext("sqlite:///x.db", "1", "p1", ledger="ledger-x")
    assert pickle.loads(pickle.dumps(context)) == context

    report = EpochReport(3, 1e-3, 2.5, {"train_loss": 0.7}, {"val_auc_macro_all": 0.61})
    assert report.value("val_auc_macro_all") == 0.61 and math.isnan(report.value("val_nothing"))
    report.best = ("val_auc_macro_all", 0.64)
    assert report.to_dict() == {"train_loss": 0.7, "val_auc_macro_all": 0.61, "epoch": 3, "lr": 1e-3, "epoch_time_s": 2.5,
                                "best_val_auc_macro_all": 0.64}

    meta = CheckpointMeta({"train": {"epochs": 2}}, ["a", "b"], [3, 4], "v1", "val_auc_macro_all", epoch=1, best_value=0.6)
    meta.write(str(tmp_path))
    assert CheckpointMeta.read(str(tmp_path)) == meta
    (tmp_path / CheckpointMeta.FILE).write_text('{"config": {}, "label_names": []}')
    with pytest.raises(ValueError, match="meta.json: missing train_counts, dataset_version, metric"):
        CheckpointMeta.read(str(tmp_path))


def _string_constants(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.append((node.lineno, node.value))
    return out


#: Files whose strings may look like tag names but are something else.
NOT_TAGS = {"score.py": "the scores' Parquet schema metadata keys (raddiag.model_uri, raddiag.dataset_version)"}


def test_tag_names_are_spelled_only_in_tracking_tags() -> None:
    from raddiag.tracking import Tags

    names = {value for key, value in vars(Tags).items() if key.isupper() and isinstance(value, str)}
    assert len(names) == len([k for k in vars(Tags) if k.isupper() and isinstance(vars(Tags)[k], str)]), "two constants share a tag"
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, text in _string_constants(path):
            spelled = text in names or "tags.`raddiag." in text or "tags.raddiag." in text or "tags.mlflow." in text
            if spelled and path.name != "tracking.py" and path.name not in NOT_TAGS:
                found.append(f"{path.relative_to(REPO)}:{line}: {text!r}")
    assert not found, "tag names outside raddiag.tracking.Tags:\n" + "\n".join(found)


def _imported_modules(path: Path) -> set[str]:
    """Every absolute module ``path`` imports, at module level or inside a function (lazily)."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)  # kept when a submodule
    return modules


def test_a_training_worker_imports_no_ray_tune() -> None:
    """The Ray Train worker entry point and every module it (or the run/ledger modules it calls)
    imports, lazily included, leave ``ray.tune`` out of a fresh interpreter. (Checked here, not
    inside a Ray Train worker: with Ray 2.60 a bare Train worker, running a loop that imports
    nothing of ours, already holds ~80 ``ray.tune`` modules loaded by Ray itself, so a check there
    could not tell whether our code imported Tune.)"""
    modules = set()
    for source in ("train/loop.py", "train/run.py", "tune/ledger.py", "tracking.py"):
        modules |= _imported_modules(PACKAGE / source)
    modules = sorted(m for m in modules if m.split(".")[0] in ("raddiag", "ray", "mlflow", "torch"))
    assert "raddiag.train.run" in modules and "raddiag.tune.ledger" in modules and "ray.train.torch" in modules
    script = (
        "import importlib, importlib.util, sys\n"
        f"for name in {modules!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError:\n"
        "        parent, _, attr = name.rpartition('.')\n"
        "        getattr(importlib.import_module(parent), attr)  # a name, not a module: it must exist\n"
        "import raddiag.train.loop\n"
        "print(sorted(m for m in sys.modules if m == 'ray.tune' or m.startswith('ray.tune.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]", f"a training worker imports Ray Tune: {result.stdout.strip()[:300]}"

