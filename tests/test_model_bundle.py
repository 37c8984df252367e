"""ModelBundle: one object per trained model, the same whichever way it is named (alias, version,
run, logged-model id, checkpoint folder); ``on_store`` changes only the store; the logged model's
name is one constant and runs logged under the old name ("model") still load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli


@pytest.fixture(scope="module")
def logged(tiny_store, tmp_path_factory):
    """A tiny untrained model of the tiny store: its checkpoint folder, logged as a pyfunc under the
    current name (registered as bundletest v1 = @champion) and, in a second run, the old way ("model")."""
    import mlflow
    import torch

    from raddiag import tracking
    from raddiag.config import load_config
    from raddiag.model import build_model
    from raddiag.serve.pyfunc import log_pyfunc

    store_cfg, manifest = tiny_store
    tmp = tmp_path_factory.mktemp("bundle")
    cfg = load_config(None, [
        f"store.url={store_cfg.store.url}", "data.image_size=16", "data.depth=4", "model.embed_dim=32", "model.width=4",
        "model.head=mlp", f"tracking.tracking_uri=sqlite:///{tmp / 'mlflow.db'}", "tracking.experiment=bundle-tests",
        "tracking.registered_model=bundletest", f"train.storage_path={tmp / 'ray'}",
    ])
    names = manifest.label_names("disorder")
    torch.manual_seed(0)
    network = build_model(cfg.model, len(names))
    checkpoint = tmp / "checkpoint"
    checkpoint.mkdir()
    torch.save(network.state_dict(), checkpoint / "best.pt")
    meta = {"config": cfg.model_dump(mode="json"), "label_names": names, "train_counts": manifest.train_counts("disorder").tolist(),
            "label_embeddings": None, "dataset_version": manifest.version, "metric": "val_auc_macro", "plan": manifest.info.get("plan")}
    (checkpoint / "meta.json").write_text(json.dumps(meta))
    n = cfg.data.n_image
    example = {"images": np.random.default_rng(0).random((1, n, 4, 16, 16), dtype=np.float32), "scan_mask": np.ones((1, n), bool),
               "slice_mask": np.ones((1, n, 4), bool), "modality_ids": np.ones((1, n), np.int64)}
    experiment = tracking.setup(cfg.tracking)
    with mlflow.start_run(experiment_id=experiment) as run:
        info = log_pyfunc(str(checkpoint), example, registered_model="bundletest")
    with mlflow.start_run(experiment_id=experiment) as old_run:
        log_pyfunc(str(checkpoint), example, name="model")  # how runs were logged before the name existed
    tracking.client(cfg.tracking.resolved_uri()).set_registered_model_alias("bundletest", "champion", info.registered_model_version)
    return {"cfg": cfg, "checkpoint": checkpoint, "run_id": run.info.run_id, "old_run_id": old_run.info.run_id,
            "model_id": info.model_id, "example": example}


def _weights(bundle) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in bundle.network.state_dict().items()}


def test_every_name_of_a_model_loads_the_same_bundle(logged) -> None:
    import mlflow.pyfunc

    from raddiag.serve.bundle import LOGGED_MODEL_NAME, ModelBundle, run_model_uri

    cfg = logged["cfg"]
    tracking_uri = cfg.tracking.resolved_uri()
    run_id = logged["run_id"]
    assert LOGGED_MODEL_NAME != "model" and run_model_uri(run_id) == f"runs:/{run_id}/{LOGGED_MODEL_NAME}"
    uris = ["models:/bundletest@champion", "models:/bundletest/1", run_model_uri(run_id), logged["model_id"],
            f"models:/{logged['model_id']}", str(logged["checkpoint"])]
    bundles = [ModelBundle.load(uri, tracking_uri) for uri in uris]
    reference = bundles[0]
    assert reference.label_names == cfg.store.ref().manifest().label_names("disorder")
    assert reference.plan == cfg.store.ref().manifest().info.get("plan") and reference.selection_metric == "val_auc_macro"
    for uri, bundle in zip(uris, bundles):
        assert bundle.source == (f"models:/{uri}" if uri.startswith("m-") else uri)
        assert bundle.meta == reference.meta and bundle.config == reference.config, uri
        weights = _weights(bundle)
        assert all(np.array_equal(weights[k], v) for k, v in _weights(reference).items()), uri
    # the bundle scores as the served pyfunc model does
    served = mlflow.pyfunc.load_model("models:/bundletest@champion").predict(logged["example"])
    np.testing.assert_allclose(reference.predict(logged["example"]).to_numpy(), served.to_numpy(), rtol=0, atol=1e-7)


def test_runs_logged_under_the_old_name_still_load(logged) -> None:
    from raddiag.serve.bundle import LEGACY_MODEL_NAME, ModelBundle, run_model_uri

    tracking_uri = logged["cfg"].tracking.resolved_uri()
    reference = _weights(ModelBundle.load(str(logged["checkpoint"])))
    old, new = logged["old_run_id"], logged["run_id"]
    for uri in (f"runs:/{old}/{LEGACY_MODEL_NAME}", run_model_uri(old), f"runs:/{new}/{LEGACY_MODEL_NAME}"):
        bundle = ModelBundle.load(uri, tracking_uri)
        assert bundle.source == uri
        assert all(np.array_equal(v, reference[k]) for k, v in _weights(bundle).items()), uri


def test_on_store_changes_only_the_store_keys(logged, tmp_path: Path) -> None:
    from raddiag.serve.bundle import ModelBundle
    from raddiag.storage.ref import StoreRef

    bundle = ModelBundle.load(str(logged["checkpoint"]))
    trained_on = bundle.config.store
    ref = StoreRef("s3://bucket/other/", endpoint_url="http://127.0.0.1:9")
    moved = bundle.on_store(ref)
    assert moved.config.store.url == "s3://bucket/other" and moved.config.store.endpoint_url == "http://127.0.0.1:9"
    assert moved.config.model_dump(exclude={"store"}) == bundle.config.model_dump(exclude={"store"})
    assert moved.network is bundle.network and moved.meta == bundle.meta and moved.source == bundle.source
    assert bundle.config.store == trained_on  # the original is untouched (frozen)
    assert bundle.on_store(logged["cfg"]).config.store.url == logged["cfg"].store.ref().url  # a config works too
    local = bundle.on_store(StoreRef(str(tmp_path / "s"), endpoint_url="http://ignored"))
    assert local.config.store.url == str(tmp_path / "s") and local.config.store.endpoint_url is None


def test_a_bad_model_uri_is_one_line_naming_it_and_the_tracking_uri(logged, tmp_path: Path) -> None:
    from raddiag.serve.bundle import LOGGED_MODEL_NAME, ModelBundle, ModelLoadError

    tracking_uri = logged["cfg"].tracking.resolved_uri()
    for uri in ("models:/bundletest@nosuchalias", "models:/nosuchmodel/1", f"runs:/{'0' * 32}/{LOGGED_MODEL_NAME}", "m-0123456789abcdef"):
        with pytest.raises(ModelLoadError) as failure:
            ModelBundle.load(uri, tracking_uri)
        message = str(failure.value)
        assert "\n" not in message and uri.removeprefix("models:/") in message and tracking_uri in message, message
    missing = f"sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}"
    with pytest.raises(ModelLoadError, match="no MLflow database at .*elsewhere/mlflow.db"):
        ModelBundle.load("models:/bundletest@champion", missing)
    assert not (tmp_path / "elsewhere").exists()  # nothing created where the user happened to be
    with pytest.raises(ModelLoadError, match=r"nowhere: not a model URI nor a model folder; expected models:/<name>@<alias>"):
        ModelBundle.load(str(tmp_path / "nowhere"))
    with pytest.raises(ModelLoadError, match="expected a folder with meta.json and best.pt"):
        ModelBundle.from_checkpoint(str(tmp_path))
    # and through the CLI: one line, exit 1, no traceback
    case = tmp_path / "case"
    case.mkdir()
    np.save(case / "ct.npy", np.random.default_rng(0).random((16, 16, 4)).astype(np.float32))
    result = run_cli("predict", str(case), "--model", f"runs:/{'0' * 32}/{LOGGED_MODEL_NAME}",
                     "--set", f"tracking.tracking_uri={tracking_uri}")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"runs:/{'0' * 32}/{LOGGED_MODEL_NAME}" in result.stderr and tracking_uri in result.stderr
