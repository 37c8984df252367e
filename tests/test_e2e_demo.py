"""The demo chain at its smallest, for real: synth -> Zarr -> Ray Data -> Tune/Optuna/ASHA sweep of
TorchTrainer (DDP, 2 gloo workers) trials -> MLflow parent + child runs -> @champion -> predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, run_cli, tiny_overrides
from raddiag.tracking import Tags

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory, _ray_session):
    from raddiag.config import load_config
    from raddiag.demo import run_demo

    tmp = tmp_path_factory.mktemp("demo")
    cfg = load_config(None, tiny_overrides(tmp))
    result = run_demo(cfg)
    return cfg, result, tmp


def test_parent_and_child_runs_with_every_epoch_logged(demo_run) -> None:
    from raddiag import tracking

    cfg, result, _ = demo_run
    client = tracking.client(cfg.tracking.resolved_uri())
    parent = client.get_run(result.sweep.parent_run_id)
    assert parent.data.tags[Tags.ROLE] == "sweep" and parent.info.status == "FINISHED"
    assert parent.data.params["sweep.num_samples"] == "2"
    children = tracking.child_runs(cfg.tracking.resolved_uri(), result.sweep.experiment_id, parent.info.run_id)
    assert len(children) == cfg.sweep.num_samples == len(result.sweep.trials)
    for child in children:
        assert child.info.status in {"FINISHED", "KILLED"}
        assert child.data.params["loss.type"] in {"bce", "focal", "asl"}
        epochs = [m.step for m in client.get_metric_history(child.info.run_id, "val_auc_macro")]
        trial = next(t for t in result.sweep.trials if t["run_id"] == child.info.run_id)
        assert sorted(epochs) == list(range(trial["epochs"])), "one value per epoch, no gaps or duplicates"
        for key in ("train_loss", "train_key_slice_loss", "val_auc_tail", "val_ap_macro", "lr"):
            assert len(client.get_metric_history(child.info.run_id, key)) == trial["epochs"], key
    finished = [t for t in result.sweep.trials if t["status"] == "FINISHED"]
    assert finished and all(t["epochs"] == cfg.train.epochs for t in finished)


def test_champion_loads_and_predicts_one_case(demo_run) -> None:
    import mlflow.pyfunc

    from raddiag.data.pipeline import local_batches
    from raddiag.storage.store import Store

    cfg, result, _ = demo_run
    assert result.promotion.decision == "champion"
    model = mlflow.pyfunc.load_model(f"models:/{cfg.tracking.registered_model}@champion")
    manifest = Store(cfg.store.url).manifest()
    names = manifest.label_names()
    batch = next(iter(local_batches(manifest.case_records("test")[:1], cfg, names, 1)))
    frame = model.predict({k: batch[k] for k in ("images", "scan_mask", "slice_mask", "modality_ids")})
    assert frame.shape == (1, len(names))
    assert list(frame.columns) == names
    assert ((frame.to_numpy() > 0) & (frame.to_numpy() < 1)).all()
    version = result.promotion.version
    from raddiag import tracking

    client = tracking.client(cfg.tracking.resolved_uri())
    registered = client.get_model_version(cfg.tracking.registered_model, version)
    tags = registered.tags
    assert tags[Tags.DATASET_VERSION] == manifest.version
    assert "test_auc_macro" in tags and tags[Tags.DECISION] == "champion"
    assert len([k for k in tags if k.startswith("test_")]) <= 5  # headline tags only, not ~80
    from raddiag.registry import model_id_of

    logged = {m.key: m for m in client.get_logged_model(model_id_of(registered)).metrics}  # every test metric, on the model
    assert {"test_auc_tail", "test_ap_macro", "test_r50_tail"} <= set(logged)
    assert logged["test_auc_tail"].dataset_digest == manifest.version
    run = client.get_run(registered.run_id)
    assert run.data.tags.get(Tags.SOURCE_GIT_COMMIT) and "loss.focal.gamma" not in run.data.params


def test_evaluate_and_predict_cli_against_the_champion(demo_run) -> None:
    cfg, _, tmp = demo_run
    args = []
    for override in tiny_overrides(tmp):
        args += ["--set", override]
    report = tmp / "report.json"
    result = run_cli("evaluate", "--output", str(report), *args, cwd=REPO)
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    assert data["split"] == "test" and "summary" in data
    case = tmp / "case"
    case.mkdir()
    np.save(case / "xray.npy", np.random.default_rng(0).random((16, 16, 1), dtype=np.float32))
    np.save(case / "ct.npy", np.random.default_rng(1).random((16, 16, 9), dtype=np.float32))
    result = run_cli("predict", str(case), "--json", "--top-k", "3", *args, cwd=REPO)
    assert result.returncode == 0, result.stderr
    ranked = json.loads(result.stdout)["top_k"]
    assert len(ranked) == 3 and ranked[0]["probability"] >= ranked[-1]["probability"]


def test_promoting_the_champion_run_again_registers_nothing(demo_run) -> None:
    from raddiag import tracking
    from raddiag.registry import promote

    cfg, result, _ = demo_run
    client = tracking.client(cfg.tracking.resolved_uri())
    before = sorted(int(v.version) for v in client.search_model_versions(f"name='{cfg.tracking.registered_model}'"))
    strict = cfg.model_copy(update={"promote": cfg.promote.model_copy(update={"margin": 1.0})})
    again = promote(strict, result.sweep.name)  # its best run is v1 already, @champion: no duplicate, no challenger
    assert again.unchanged and again.decision == "champion" and again.version == result.promotion.version
    assert sorted(int(v.version) for v in client.search_model_versions(f"name='{cfg.tracking.registered_model}'")) == before


def test_dry_run_promotion_changes_nothing(demo_run) -> None:
    from raddiag import tracking
    from raddiag.registry import promote

    cfg, result, _ = demo_run
    client = tracking.client(cfg.tracking.resolved_uri())
    before = sorted(int(v.version) for v in client.search_model_versions(f"name='{cfg.tracking.registered_model}'"))
    dry = promote(cfg, result.sweep.name, dry_run=True)
    assert dry.decision.startswith("dry-run:") and dry.version == result.promotion.version and dry.unchanged
    after = sorted(int(v.version) for v in client.search_model_versions(f"name='{cfg.tracking.registered_model}'"))
    assert after == before
    assert str(client.get_model_version_by_alias(cfg.tracking.registered_model, "champion").version) == result.promotion.version


def test_promotion_refuses_to_compare_across_dataset_versions(demo_run, tmp_path: Path) -> None:
    from raddiag.registry import PromotionError, promote
    from raddiag.storage.store import Store
    from raddiag.storage.synth import generate

    cfg, result, _ = demo_run
    other = cfg.model_copy(update={
        "store": cfg.store.model_copy(update={"url": str(tmp_path / "other")}),
        "synth": cfg.synth.model_copy(update={"seed": cfg.synth.seed + 1}),
    })
    manifest = generate(other.synth, Store(other.store.url))
    assert manifest.label_names() == Store(cfg.store.url).manifest().label_names()
    from raddiag import tracking

    client = tracking.client(cfg.tracking.resolved_uri())
    before = len(client.search_model_versions(f"name='{cfg.tracking.registered_model}'"))
    with pytest.raises(PromotionError, match="dataset version"):
        promote(other, result.sweep.name)
    assert len(client.search_model_versions(f"name='{cfg.tracking.registered_model}'")) == before


def test_finetune_on_a_new_label_set_then_zeroshot(demo_run, tmp_path: Path) -> None:
    """Fine-tune the champion on another store (another label set) with a KE head; the result is a
    pyfunc in its run that scores unseen label names zero-shot and normal/abnormal via "Normal"."""
    from raddiag import tracking
    from raddiag.finetune import finetune, zeroshot_case
    from raddiag.storage.store import Store
    from raddiag.storage.synth import generate

    cfg, _, _ = demo_run
    other = cfg.model_copy(update={
        "store": cfg.store.model_copy(update={"url": str(tmp_path / "new-labels")}),
        "synth": cfg.synth.model_copy(update={"n_labels": 6, "seed": 11}),
        "train": cfg.train.model_copy(update={"name": "finetune-ke", "epochs": 1}),
    })
    generate(other.synth, Store(other.store.url))
    result = finetune(other, f"models:/{cfg.tracking.registered_model}@champion", head="ke")
    client = tracking.client(cfg.tracking.resolved_uri())
    run = client.get_run(result.run_id)
    assert run.data.tags[Tags.FINETUNED_FROM].endswith("@champion")
    assert len(client.get_metric_history(result.run_id, "epoch")) == 1

    case = tmp_path / "case"
    case.mkdir()
    np.save(case / "ct.npy", np.random.default_rng(2).random((16, 16, 6), dtype=np.float32))
    unseen = ["Pneumothorax", "Fracture of femur", "Meningioma"]
    scored = zeroshot_case(f"runs:/{result.run_id}/model", case, unseen, top_k=3)
    assert sorted(r["label"] for r in scored["labels"]) == sorted(unseen)
    assert all(0 < r["probability"] < 1 for r in scored["labels"])
    assert 0 <= scored["abnormal_probability"] <= 1


def test_trial_runs_record_the_dataset_version_as_an_input(demo_run) -> None:
    from raddiag import tracking
    from raddiag.storage.store import Store

    cfg, result, _ = demo_run
    version = Store(cfg.store.url).manifest().version
    client = tracking.client(cfg.tracking.resolved_uri())
    for trial in result.sweep.trials:
        inputs = client.get_run(trial["run_id"]).inputs.dataset_inputs
        assert [d.dataset.digest for d in inputs] == [version]
