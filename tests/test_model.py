"""Behavioural tests of RadDiagNet: invariances, masking, gradients, zero-shot labels, key-slice loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raddiag.config import ModelConfig, load_config
from raddiag.losses import key_slice_loss, key_slice_target
from raddiag.model import build_model

REPO = Path(__file__).resolve().parents[1]
SIZE = 16
FAST = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def tiny_cfg(**overrides) -> ModelConfig:
    base = dict(width=4, embed_dim=16, slice_heads=2, fusion_heads=2, vit_heads=2, vit_patch_size=4, max_depth=8, head="mlp")
    base.update(overrides)
    return ModelConfig(**base)


def make_batch(seed: int, b: int, n: int, d: int, size: int = SIZE) -> dict[str, torch.Tensor]:
    """Random batch with at least one real scan per case and a real-slice prefix per real scan."""
    g = torch.Generator().manual_seed(seed)
    n_real = torch.randint(1, n + 1, (b,), generator=g)
    scan_mask = torch.arange(n)[None] < n_real[:, None]
    depth = torch.randint(1, d + 1, (b, n), generator=g)
    slice_mask = (torch.arange(d)[None, None] < depth[..., None]) & scan_mask[..., None]
    images = torch.rand(b, n, d, size, size, generator=g) * slice_mask[..., None, None]
    modality_ids = torch.randint(1, 16, (b, n), generator=g) * scan_mask
    key_slice = (torch.rand(b, n, generator=g) * depth).long()
    return dict(images=images, scan_mask=scan_mask, slice_mask=slice_mask, modality_ids=modality_ids, key_slice=key_slice)


def run(model, batch):
    return model(batch["images"], batch["scan_mask"], batch["slice_mask"], batch["modality_ids"])


def label_table(c: int, t: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(c, t, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        enc: build_model(tiny_cfg(encoder=enc), 5).eval() for enc in ("resnet", "vit", "cnn3d")
    }


@FAST
@given(seed=st.integers(0, 10_000), b=st.integers(1, 3), n=st.integers(1, 4), d=st.integers(1, 6),
       encoder=st.sampled_from(["resnet", "vit", "cnn3d"]))
def test_scan_permutation_invariance(models, seed, b, n, d, encoder):
    model = models[encoder]
    batch = make_batch(seed, b, n, d)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    permuted = {k: v[:, perm] for k, v in batch.items()}
    with torch.no_grad():
        out, out_p = run(model, batch), run(model, permuted)
    torch.testing.assert_close(out_p["logits"], out["logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_p["slice_attention"], out["slice_attention"][:, perm], atol=1e-5, rtol=1e-5)


@FAST
@given(seed=st.integers(0, 10_000), b=st.integers(1, 3), n=st.integers(1, 4), d=st.integers(1, 6),
       encoder=st.sampled_from(["resnet", "vit", "cnn3d"]), train=st.booleans())
def test_padding_content_is_ignored(models, seed, b, n, d, encoder, train):
    model = models[encoder].train(train)
    batch = make_batch(seed, b, n, d)
    garbage = dict(batch)
    noise = torch.randn_like(batch["images"]) * 100
    garbage["images"] = torch.where(batch["slice_mask"][..., None, None], batch["images"], noise)
    garbage["modality_ids"] = torch.where(batch["scan_mask"], batch["modality_ids"], torch.randint(0, 16, batch["modality_ids"].shape))
    try:
        with torch.no_grad():
            out, out_g = run(model, batch), run(model, garbage)
    finally:
        model.eval()
    torch.testing.assert_close(out_g["logits"], out["logits"], atol=1e-5, rtol=1e-5)
    assert torch.all(out["slice_attention"][~batch["slice_mask"]] == 0)


def test_2d_and_3d_in_one_batch(models):
    model = models["resnet"]
    batch = make_batch(0, 2, 2, 8)
    batch["scan_mask"][0] = True
    batch["slice_mask"][0, :, 0] = True
    batch["slice_mask"][0, 1, 1:] = False  # case 0, scan 1 is a 2D image: one real slice
    batch["images"][0, 1, 1:] = 0
    with torch.no_grad():
        out = run(model, batch)
    assert out["logits"].shape == (2, 5) and torch.isfinite(out["logits"]).all()
    torch.testing.assert_close(out["slice_attention"][0, 1], torch.eye(8)[0])
    # a 2D-only case scores the same whether the batch depth is 8 (3D neighbours) or 1
    flat = {k: v[:1, 1:2] for k, v in batch.items()}
    flat_d1 = {k: (v[..., :1, :, :] if k == "images" else v[..., :1] if k == "slice_mask" else v) for k, v in flat.items()}
    with torch.no_grad():
        torch.testing.assert_close(run(model, flat)["logits"], run(model, flat_d1)["logits"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(encoder="resnet"),
        dict(encoder="vit"),
        dict(encoder="cnn3d"),
        dict(encoder="resnet", head="ke", fusion="late"),
        dict(encoder="resnet", backbone_depth=50, norm="group", slice_layers=2),
    ],
    ids=["resnet", "vit", "cnn3d", "ke-late", "resnet50-group"],
)
def test_gradients_reach_every_trainable_parameter(overrides):
    torch.manual_seed(0)
    cfg = tiny_cfg(**overrides)
    model = build_model(cfg, 5, label_embeddings=label_table(5) if cfg.head == "ke" else None).train()
    batch = make_batch(3, 3, 3, 4)
    out = run(model, batch)
    loss = out["logits"].square().mean() + key_slice_loss(
        out["slice_attention"], batch["key_slice"], batch["slice_mask"], batch["scan_mask"]
    )
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing, f"no gradient for {missing}"


def test_ke_head_scores_unseen_labels_zero_shot():
    torch.manual_seed(0)
    table = label_table(5)
    model = build_model(tiny_cfg(head="ke"), 5, label_embeddings=table).eval()
    batch = make_batch(1, 2, 2, 3)
    with torch.no_grad():
        before = run(model, batch)["logits"]
        new_table = torch.cat([label_table(6, seed=7), table[[3, 1]]])  # 6 unseen labels + 2 known ones
        model.set_label_embeddings(new_table)
        after = run(model, batch)["logits"]
    assert after.shape == (2, 8)
    torch.testing.assert_close(after[:, 6:], before[:, [3, 1]])
    assert abs(model.head.log_scale.exp().item() - 1 / 0.07) < 1e-3
    with pytest.raises(ValueError, match="dim"):
        model.set_label_embeddings(torch.randn(3, 7))


def test_ke_head_requires_label_embeddings_and_prior_bias():
    with pytest.raises(ValueError, match="label_embeddings"):
        build_model(tiny_cfg(head="ke"), 5)
    cfg = tiny_cfg(head="ke", ke={"prior_bias": True, "learn_temperature": False, "train_projection": False})
    prior = torch.tensor([0.5, 0.1, 0.1, 0.01, 0.001])
    model = build_model(cfg, 5, label_embeddings=label_table(5), label_prior=prior)
    trainable = {name for name, p in model.head.named_parameters() if p.requires_grad}
    assert trainable == {"bias"}  # text table, projection and scale frozen; the per-label bias still learns
    torch.testing.assert_close(model.head.log_prior, prior.log())


def test_late_fusion_eval_uses_first_real_scan():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(fusion="late"), 5).eval()
    batch = make_batch(2, 2, 3, 3)
    batch["scan_mask"][:] = True
    batch["slice_mask"][:, :, 0] = True
    other = dict(batch, images=batch["images"].clone())
    other["images"][:, 1:] = torch.rand_like(other["images"][:, 1:])
    with torch.no_grad():
        torch.testing.assert_close(run(model, other)["logits"], run(model, batch)["logits"])


def test_speed_flags_do_not_change_outputs():
    batch = make_batch(4, 2, 2, 3)
    outs = []
    for flags in ({}, {"channels_last": True, "activation_checkpointing": True}):
        torch.manual_seed(0)
        model = build_model(tiny_cfg(**flags), 5).train()
        out = run(model, batch)["logits"]
        out.sum().backward()
        outs.append((out.detach(), model.feature_proj.weight.grad.clone()))
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(outs[0][1], outs[1][1], atol=1e-5, rtol=1e-4)


def test_pretrained_weights_load_from_local_file(tmp_path):
    torch.manual_seed(0)
    source = build_model(tiny_cfg(), 5).eval()
    full, backbone = tmp_path / "full.pt", tmp_path / "backbone.pt"
    torch.save(source.state_dict(), full)
    torch.save({"state_dict": source.backbone.net.state_dict()}, backbone)
    batch = make_batch(5, 1, 2, 3)
    torch.manual_seed(1)
    loaded = build_model(tiny_cfg(pretrained_weights=str(full)), 5).eval()
    with torch.no_grad():
        torch.testing.assert_close(run(loaded, batch)["logits"], run(source, batch)["logits"])
    torch.manual_seed(2)
    partial = build_model(tiny_cfg(pretrained_weights=str(backbone)), 5)
    torch.testing.assert_close(partial.backbone.net.conv1.weight, source.backbone.net.conv1.weight)
    with pytest.raises(FileNotFoundError):
        build_model(tiny_cfg(pretrained_weights=str(tmp_path / "nope.pt")), 5)


def test_depth_beyond_position_table_is_a_clear_error(models):
    batch = make_batch(0, 1, 1, 9)
    with pytest.raises(ValueError, match="max_depth"):
        run(models["resnet"], batch)


@FAST
@given(seed=st.integers(0, 10_000), b=st.integers(1, 3), n=st.integers(1, 3), d=st.integers(1, 10))
def test_key_slice_loss_properties(seed, b, n, d):
    batch = make_batch(seed, b, n, d)
    logits = torch.randn(b, n, d, generator=torch.Generator().manual_seed(seed)) * 5
    attention = torch.softmax(logits.masked_fill(~batch["slice_mask"], -1e9), -1) * batch["slice_mask"]
    attention.requires_grad_(True)
    loss = key_slice_loss(attention, batch["key_slice"], batch["slice_mask"], batch["scan_mask"])
    assert torch.isfinite(loss) and loss.item() >= 0
    loss.backward()
    assert torch.isfinite(attention.grad).all()
    target = key_slice_target(batch["key_slice"], batch["slice_mask"])
    at_target = key_slice_loss(target, batch["key_slice"], batch["slice_mask"], batch["scan_mask"])
    assert at_target.item() < 1e-5


def test_key_slice_loss_without_qualifying_scans_is_zero_with_grad():
    attention = torch.rand(2, 2, 1, requires_grad=True)  # D = 1 everywhere: no scan qualifies
    loss = key_slice_loss(attention, torch.zeros(2, 2, dtype=torch.long), torch.ones(2, 2, 1, dtype=torch.bool),
                          torch.ones(2, 2, dtype=torch.bool))
    assert loss.item() == 0 and loss.requires_grad
    loss.backward()


def test_key_slice_loss_prefers_attention_at_the_key_slice():
    mask = torch.ones(1, 1, 16, dtype=torch.bool)
    key = torch.tensor([[5]])
    near = torch.softmax(-((torch.arange(16.0) - 5) ** 2), 0)[None, None]
    far = torch.softmax(-((torch.arange(16.0) - 12) ** 2), 0)[None, None]
    assert key_slice_loss(near, key, mask, mask[..., 0]) < key_slice_loss(far, key, mask, mask[..., 0])


@pytest.mark.slow
def test_paper_scale_config_runs_one_step_on_cpu():
    cfg = load_config([REPO / "jobs" / "paper.yaml"])
    assert cfg.model.activation_checkpointing
    torch.manual_seed(0)
    labels = 5569
    model = build_model(cfg.model, labels, label_embeddings=label_table(labels, cfg.model.ke.dim)).train()
    n, d, size = cfg.data.n_image, cfg.data.depth, cfg.data.image_size
    batch = make_batch(0, 1, n, d, size)
    # the paper's input shape (4 x 32 x 256²) with a light fill: padding never reaches the backbone, so
    # 2 real scans of 3 and 1 slices cost seconds where a full 128-slice step cost minutes on 2 cores
    batch["scan_mask"][:] = torch.tensor([[True, True, False, False]])
    batch["slice_mask"][:] = False
    batch["slice_mask"][0, 0, :3] = True
    batch["slice_mask"][0, 1, :1] = True
    batch["images"] *= batch["slice_mask"][..., None, None]
    batch["key_slice"][:] = 1
    out = run(model, batch)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out["logits"], torch.zeros(1, labels))
    loss = loss + cfg.loss.key_slice.weight * key_slice_loss(
        out["slice_attention"], batch["key_slice"], batch["slice_mask"], batch["scan_mask"],
        form=cfg.loss.key_slice.form, max_depth=cfg.model.max_depth,
    )
    loss.backward()
    assert out["logits"].shape == (1, labels) and torch.isfinite(loss)
    assert model.backbone.net.conv1.weight.grad is not None
