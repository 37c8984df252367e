"""MLflow params of a run name only what can affect it; runs carry the git commit of their code."""

from __future__ import annotations

import subprocess

from conftest import REPO


def test_run_params_drop_settings_the_run_does_not_use() -> None:
    from raddiag.config import load_config

    bce = load_config(None, ["loss.type=bce", "model.head=mlp"]).run_params()
    assert "loss.pos_weight" in bce and not any(k.startswith(("loss.focal_", "loss.asl_", "loss.cb_", "loss.ldam_")) for k in bce)
    assert not any(k.startswith(("model.ke.", "model.vit_", "synth.", "ingest.", "sweep.", "ablation.")) for k in bce)
    focal = load_config(None, ["loss.type=focal"]).run_params()
    assert "loss.focal_gamma" in focal and "loss.pos_weight" not in focal and "model.ke.dim" in focal
    cb = load_config(None, ["loss.type=cb", "loss.cb_base=focal"]).run_params()
    assert {"loss.cb_beta", "loss.focal_gamma"} <= set(cb)
    vit = load_config(None, ["model.encoder=vit"]).run_params()
    assert "model.vit_patch_size" in vit and "model.backbone_depth" not in vit
    assert "sweep.num_samples" in load_config().run_params("sweep")


def test_runs_are_tagged_with_the_git_commit_of_their_code() -> None:
    from raddiag.tracking import source_tags

    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    tags = source_tags()
    assert tags["mlflow.source.git.commit"] == head and tags["raddiag.git_dirty"] in ("true", "false")
