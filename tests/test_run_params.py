"""MLflow params of a run name only what can affect it; runs carry the git commit of their code."""

from __future__ import annotations

import subprocess

from conftest import REPO
from raddiag.tracking import Tags


def test_run_params_drop_settings_the_run_does_not_use() -> None:
    from raddiag.config import load_config

    def loss_keys(params: dict) -> set[str]:
        return {key for key in params if key.startswith("loss.")}

    key_slice = {"loss.type", "loss.key_slice.weight", "loss.key_slice.form"}
    bce = load_config(None, ["loss.type=bce", "model.head=mlp"]).run_params()
    assert loss_keys(bce) == key_slice | {"loss.bce.pos_weight"}  # no loss.focal.gamma on a BCE run
    assert not any(k.startswith(("model.ke.", "model.vit_", "synth.", "ingest.", "sweep.", "ablation.")) for k in bce)
    focal = load_config(None, ["loss.type=focal"]).run_params()
    assert loss_keys(focal) == key_slice | {"loss.focal.gamma", "loss.focal.alpha"} and "model.ke.dim" in focal
    cb = load_config(None, ["loss.type=cb", "loss.cb.base=focal"]).run_params()
    assert loss_keys(cb) == key_slice | {"loss.cb.beta", "loss.cb.base", "loss.focal.gamma", "loss.focal.alpha"}
    cb_bce = load_config(None, ["loss.type=cb"]).run_params()
    assert loss_keys(cb_bce) == key_slice | {"loss.cb.beta", "loss.cb.base"}
    vit = load_config(None, ["model.encoder=vit"]).run_params()
    assert "model.vit_patch_size" in vit and "model.backbone_depth" not in vit
    assert "sweep.num_samples" in load_config().run_params("sweep")


def test_runs_are_tagged_with_the_git_commit_of_their_code() -> None:
    from raddiag.tracking import source_tags

    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    tags = source_tags()
    assert tags[Tags.SOURCE_GIT_COMMIT] == head and tags[Tags.GIT_DIRTY] in ("true", "false")
