"""``raddiag score``: Ray Data batch inference over a store split into Parquet — the same scores as
``evaluate``, resumable by chunk, refusing a folder that holds another job."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, run_cli


@pytest.fixture(scope="module")
def registered(tiny_store, tmp_path_factory):
    """A tiny untrained model of the tiny store, logged as a pyfunc and registered as scoretest@champion."""
    import mlflow
    import torch

    from raddiag import tracking
    from raddiag.config import load_config
    from raddiag.model import build_model
    from raddiag.serve.pyfunc import log_pyfunc
    from raddiag.storage.store import Store

    store_cfg, _ = tiny_store
    tmp = tmp_path_factory.mktemp("score")
    cfg = load_config(None, [
        f"store.url={store_cfg.store.url}", "data.image_size=16", "data.depth=4", "model.embed_dim=32", "model.width=4",
        "model.head=mlp", f"tracking.tracking_uri=sqlite:///{tmp / 'mlflow.db'}", "tracking.experiment=score-tests",
        "tracking.registered_model=scoretest", f"train.storage_path={tmp / 'ray'}",
    ])
    manifest = Store(cfg.store.url).manifest()
    names = manifest.label_names("disorder")
    torch.manual_seed(0)
    network = build_model(cfg.model, len(names))
    checkpoint = tmp / "checkpoint"
    checkpoint.mkdir()
    torch.save(network.state_dict(), checkpoint / "best.pt")
    meta = {"config": cfg.model_dump(mode="json"), "label_names": names, "train_counts": manifest.train_counts("disorder").tolist(),
            "label_embeddings": None, "dataset_version": manifest.version}
    (checkpoint / "meta.json").write_text(json.dumps(meta))
    example = {
        "images": np.zeros((1, cfg.data.n_image, 4, 16, 16), np.float32), "scan_mask": np.ones((1, cfg.data.n_image), bool),
        "slice_mask": np.ones((1, cfg.data.n_image, 4), bool), "modality_ids": np.ones((1, cfg.data.n_image), np.int64),
    }
    experiment = tracking.setup(cfg.tracking)
    with mlflow.start_run(experiment_id=experiment):
        info = log_pyfunc(str(checkpoint), example, registered_model="scoretest")
    client = tracking.client(cfg.tracking.resolved_uri())
    client.set_registered_model_alias("scoretest", "champion", info.registered_model_version)
    return cfg, manifest


def test_score_equals_evaluate_and_resumes_by_chunk(registered, ray_local, tmp_path: Path) -> None:
    import mlflow.pyfunc

    from raddiag.evaluate import score_split
    from raddiag.score import ScoreError, part_name, read_scores, run_score
    from raddiag.serve.bundle import ModelBundle

    cfg, manifest = registered
    uri = "models:/scoretest@champion"
    out = tmp_path / "scores"
    result = run_score(cfg, uri, "test", str(out), actors=2, cpus_per_actor=0.5, chunk_cases=4, embeddings=True)
    records = manifest.case_records("test")
    assert result.n_cases == len(records) and result.n_chunks == -(-len(records) // 4) and result.skipped_chunks == 0
    assert result.model_uri == "models:/scoretest/1"  # the alias, resolved once for the whole job
    scored = read_scores(str(out))
    assert scored.case_ids == [r["case_id"] for r in records]

    bundle = ModelBundle.load(uri).on_store(cfg.store.ref())
    labels, scores = score_split(bundle, manifest, "test")  # what evaluate scores
    np.testing.assert_allclose(scored.scores, scores, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(scored.labels, labels.astype(np.uint8))
    # and what the served pyfunc model answers for the same assembled batches
    from raddiag.data.pipeline import local_batches
    from raddiag.schema import MODEL_INPUTS

    model = mlflow.pyfunc.load_model(uri)
    served = np.concatenate([
        model.predict({k: batch[k] for k in MODEL_INPUTS})[bundle.label_names].to_numpy()
        for batch in local_batches(records, bundle.config, bundle.label_names, 8)
    ])
    np.testing.assert_allclose(scored.scores, served, rtol=0, atol=1e-6)
    assert scored.embedding is not None and scored.embedding.shape == (len(records), cfg.model.embed_dim)
    assert np.isfinite(scored.embedding).all() and scored.embedding.std() > 0

    (out / part_name(1)).unlink()  # a lost chunk (e.g. an actor killed mid-job): only it is redone
    resumed = run_score(cfg, uri, "test", str(out), actors=1, cpus_per_actor=0.5, chunk_cases=4, embeddings=True)
    assert resumed.skipped_chunks == result.n_chunks - 1
    again = read_scores(str(out))
    assert again.case_ids == scored.case_ids
    np.testing.assert_array_equal(again.scores, scored.scores)

    with pytest.raises(ScoreError, match="differs in split"):
        run_score(cfg, uri, "val", str(out), chunk_cases=4, embeddings=True)


def test_score_refuses_bad_input_before_ray(registered, tmp_path: Path) -> None:
    from raddiag.score import ScoreError, read_scores, run_score

    cfg, _ = registered
    with pytest.raises(ScoreError, match="split 'holdout' is not in store"):
        run_score(cfg, "models:/scoretest@champion", "holdout", str(tmp_path / "a"))
    with pytest.raises(ScoreError, match="chunk-cases"):
        run_score(cfg, "models:/scoretest@champion", "test", str(tmp_path / "b"), chunk_cases=0)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "part-00000.parquet").write_bytes(b"not ours")
    with pytest.raises(ScoreError, match="no _job.json"):
        run_score(cfg, "models:/scoretest@champion", "test", str(tmp_path / "c"))
    with pytest.raises(ScoreError, match="has not finished"):
        read_scores(str(tmp_path / "c"))
    sets = ["--set", f"store.url={cfg.store.url}", "--set", f"tracking.tracking_uri={cfg.tracking.tracking_uri}"]
    bad = run_cli("score", "--output", str(tmp_path / "d"), "--actors", "0", *sets, cwd=REPO)
    assert bad.returncode == 2 and "--actors" in bad.stderr, bad.stderr
    split = run_cli("score", "--output", str(tmp_path / "d"), "--split", "nope", *sets, cwd=REPO)
    assert split.returncode == 2 and "--split 'nope'" in split.stderr, split.stderr
