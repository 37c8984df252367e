"""Serving a registered model to a client that has scan files: ``mlflow models serve`` (a real HTTP
server) scores base64 scan files through the training store's preprocessing plan, exactly as
``raddiag predict`` scores the same files in-process."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import _free_port


def _tiny_model_dir(tmp_path: Path) -> Path:
    from raddiag.config import load_config
    from raddiag.model import build_model
    from raddiag.storage.preprocess import Plan

    cfg = load_config(None, ["data.image_size=16", "data.depth=4", "data.n_image=3", "model.width=4", "model.embed_dim=32",
                             "model.head=mlp"])
    names = ["Normal", "Pneumonia", "Fracture"]
    torch.manual_seed(0)
    model = build_model(cfg.model, len(names), label_prior=torch.full((3,), 0.2))
    with torch.no_grad():
        model.head.net[-1].weight.mul_(20)  # spread the probabilities so that a wrong input shows
    directory = tmp_path / "checkpoint"
    directory.mkdir()
    meta = {"config": cfg.model_dump(mode="json"), "label_names": names, "train_counts": [10, 5, 3], "label_embeddings": None,
            "dataset_version": "test", "metric": "val_auc_macro", "plan": Plan(20, 6, ct_window=(40.0, 400.0)).to_dict()}
    (directory / "meta.json").write_text(json.dumps(meta))
    torch.save(model.state_dict(), directory / "best.pt")
    return directory


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@pytest.mark.slow
def test_served_model_scores_scan_files_as_predict_does(tmp_path: Path, monkeypatch) -> None:
    import mlflow
    import mlflow.pyfunc
    import pandas as pd

    from raddiag import tracking
    from raddiag.config import RadDiagConfig, TrackingConfig, load_config
    from raddiag.predict import case_arrays, load_case_folder
    from raddiag.serve.bundle import ModelBundle
    from raddiag.serve.pyfunc import log_pyfunc, scan_rows

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.setup(TrackingConfig(tracking_uri=uri, experiment="serving"))
    checkpoint = _tiny_model_dir(tmp_path)
    example = case_arrays([{"name": "x.npy", "volume": np.random.default_rng(1).random((3, 16, 16), dtype=np.float32),
                            "modality": "CT", "plane": "axial"}], load_config().data)
    with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name("serving").experiment_id):
        info = log_pyfunc(str(checkpoint), example)
    model_uri = info.model_uri

    rng = np.random.default_rng(2)
    case = tmp_path / "case"
    case.mkdir()
    ct = rng.normal(40, 400, (30, 26, 9)).astype(np.float32)  # HU, (H, W, D) as RP3D stores .npy
    xray = (rng.random((40, 36)) * 4000).astype(np.float32)
    np.save(case / "ct.npy", ct)
    np.save(case / "xray.npy", xray)
    (case / "case.json").write_text(json.dumps({"scans": {"ct.npy": {"modality": "CT"}, "xray.npy": {"modality": "X-ray", "plane": "frontal"}}}))

    model = mlflow.pyfunc.load_model(model_uri)
    bundle = ModelBundle.load(model_uri)
    data_cfg = RadDiagConfig.model_validate(bundle.meta["config"]).data
    expected = model.predict(case_arrays(load_case_folder(case), data_cfg, bundle.plan))  # what raddiag predict does
    rows = scan_rows("case-1", [("ct.npy", (case / "ct.npy").read_bytes(), "CT", "axial"),
                                ("xray.npy", (case / "xray.npy").read_bytes(), "X-ray", "frontal")])
    rows = pd.concat([rows, scan_rows("case-2", [("b.npy", _npy(xray[None] / 2), "X-ray", "frontal")])])
    in_process = model.predict(rows)
    assert list(in_process["case_id"]) == ["case-1", "case-2"]
    assert np.allclose(in_process.iloc[0][bundle.label_names].to_numpy(float), expected.iloc[0].to_numpy(float), atol=1e-6)

    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # uvicorn
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.time() + 240
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"mlflow models serve did not start: {server.stderr.read()[-2000:] if server.stderr else ''}") from None
                time.sleep(1)
        payload = {"dataframe_split": {
            "columns": ["case_id", "name", "data", "modality", "plane"],
            "data": [[r["case_id"], r["name"], base64.b64encode(r["data"]).decode("ascii"), r["modality"], r["plane"]]
                     for r in rows.to_dict("records")],
        }}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        served = json.loads(urllib.request.urlopen(request, timeout=120).read())["predictions"]
        assert [row["case_id"] for row in served] == ["case-1", "case-2"]
        for row, (_, local) in zip(served, in_process.iterrows()):
            assert np.allclose([row[n] for n in bundle.label_names], local[bundle.label_names].to_numpy(float), atol=1e-6)
        bad = {"dataframe_split": {"columns": ["case_id", "name", "data", "modality"], "data": [["c", "x.npy", "bm90IGFuIG5weQ==", "CT"]]}}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(bad).encode(),
                                         headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as failure:
            urllib.request.urlopen(request, timeout=60)
        assert "scan table row 0 (c/x.npy)" in failure.value.read().decode()
    finally:
        server.terminate()
        server.wait(timeout=30)
