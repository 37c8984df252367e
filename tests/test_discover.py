"""Discovery verbs: `raddiag runs`, `sweeps`, `models` (on a real MLflow sqlite store) and `config show`."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from conftest import run_cli
from raddiag.tracking import Tags


def _tracking(tmp_path: Path) -> tuple[str, list[str]]:
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("disc", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(experiment, run_name="sweep-a", tags={Tags.ROLE: "sweep", Tags.SWEEP: "sweep-a"})
    children = []
    for i, auc in enumerate((0.61, 0.74)):
        child = client.create_run(experiment, run_name=f"trial-{i}", tags={
            Tags.PARENT_RUN_ID: parent.info.run_id, Tags.TRIAL_ID: str(i), Tags.SWEEP: "sweep-a",
            Tags.DATASET_VERSION: "abc123"})
        client.log_metric(child.info.run_id, "val_auc_macro", auc)
        client.log_metric(child.info.run_id, "val_auc_tail", auc - 0.1)
        client.set_terminated(child.info.run_id, "FINISHED")
        children.append(child.info.run_id)
    client.set_tag(parent.info.run_id, Tags.BEST_RUN_ID, children[1])
    client.set_terminated(parent.info.run_id, "FINISHED")
    client.create_registered_model("disc-model")
    client.create_model_version("disc-model", "runs:/x/model", run_id=children[0])
    version = client.create_model_version("disc-model", "runs:/y/model", run_id=children[1], tags={Tags.DECISION: "champion"})
    client.set_registered_model_alias("disc-model", "champion", version.version)
    mlflow.set_tracking_uri(uri)
    return uri, children


def test_runs_sweeps_and_models_list_what_mlflow_holds(tmp_path: Path, monkeypatch) -> None:
    from raddiag.config import load_config
    from raddiag.discover import list_models, list_runs

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri, children = _tracking(tmp_path)
    cfg = load_config(None, [f"tracking.tracking_uri={uri}", "tracking.experiment=disc"])
    rows = list_runs(cfg)
    assert {r["name"] for r in rows} == {"sweep-a", "trial-0", "trial-1"}
    trial = next(r for r in rows if r["run_id"] == children[1])
    assert trial["kind"] == "trial" and trial["metrics"] == {"val_auc_macro": 0.74, "val_auc_tail": 0.64}
    sweeps = list_runs(cfg, sweeps_only=True)
    assert [(s["sweep"], s["trials"], s["best_run_id"]) for s in sweeps] == [("sweep-a", 2, children[1])]
    models = list_models(cfg)
    assert [(m["version"], m["aliases"], m["origin"]) for m in models] == [(2, ["champion"], "champion"), (1, [], "")]

    result = run_cli("models", "--json", "--set", f"tracking.tracking_uri={uri}", "--set", "tracking.experiment=disc")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["uri"] == "models:/disc-model/2"
    missing = run_cli("runs", "--set", f"tracking.tracking_uri=sqlite:///{tmp_path / 'nope.db'}", cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "nope.db" in missing.stderr
    assert not (tmp_path / "nope.db").exists()  # listing creates nothing


def test_config_show_prints_the_resolved_config_and_every_key(tmp_path: Path) -> None:
    from raddiag.config import load_config
    from raddiag.discover import config_keys, resolved_yaml

    cfg = load_config(None, ["train.epochs=3", "eval.grouping=rank"])
    text = resolved_yaml(cfg)
    (tmp_path / "back.yaml").write_text(text)
    assert load_config([tmp_path / "back.yaml"]) == cfg  # the printed config loads back to itself
    keys = {row["key"]: row for row in config_keys()}
    assert keys["train.epochs"]["default"] == "16" and keys["eval.grouping"]["type"] == "counts | rank"
    assert keys["model.ke.temperature_init"]["help"] and "data.augment.on" in keys
    result = run_cli("config", "show", "--set", "train.epochs=3")
    assert result.returncode == 0 and yaml.safe_load(result.stdout)["train"]["epochs"] == 3
    bad = run_cli("config", "show", "--set", "train.epochs=zero")
    assert bad.returncode == 2 and "train.epochs" in bad.stderr


def test_dry_run_prints_the_plan_and_starts_nothing(tiny_store, tmp_path: Path) -> None:
    cfg, manifest = tiny_store
    db = tmp_path / "dry.db"
    sets = ["--set", f"store.url={cfg.store.url}", "--set", f"tracking.tracking_uri=sqlite:///{db}", "--set", "train.fraction=0.5"]
    result = run_cli("train", "--dry-run", *sets, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    plan = yaml.safe_load(result.stdout)
    assert plan["store"]["version"] == manifest.version and plan["store"]["cases"]["train"] == len(manifest.case_records("train"))
    assert plan["data"]["train_fraction"] == 0.5 and "nothing started" in result.stderr
    swept = yaml.safe_load(run_cli("sweep", "--dry-run", *sets, cwd=tmp_path).stdout)
    assert swept["sweep"]["search_space"] and swept["sweep"]["trials"] == cfg.sweep.num_samples
    assert not db.exists() and not (tmp_path / ".raddiag").exists()  # no MLflow database, no Ray results
