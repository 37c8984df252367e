"""Official RadDiag checkpoints -> our network (``raddiag import-checkpoint``, preset rp3d_reference).

The logits of an imported checkpoint are checked against an independent re-statement of the official
forward pass written here from its published semantics (torch functional ResNet-50 on the official
tensor names, post-attention residual without a norm, unbiased-std norm, official modality rows).
Parity against the official code itself was checked outside the repository (BENCHMARKS.md).
"""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import REPO, run_cli, tiny_overrides
from raddiag.tracking import Tags
from rp3d_layout import official_state_dict

WIDTH, DEPTH = 4, 6  # hid = 128, 6 slice positions


def _preset_config(*overrides: str):
    from raddiag.config import load_config
    from raddiag.reference import PRESET

    return load_config(None, list(overrides), base=PRESET)


# ------------------------------------------------------------------ the official forward, restated
def _bn(x: torch.Tensor, s: dict, p: str) -> torch.Tensor:
    return F.batch_norm(x, s[f"{p}.running_mean"], s[f"{p}.running_var"], s[f"{p}.weight"], s[f"{p}.bias"], False, 0.0, 1e-5)


def _resnet50(x: torch.Tensor, s: dict) -> torch.Tensor:
    """torchvision ResNet-50 (v1.5) on a 3-channel input, from the official ``resnet2D.*`` tensors."""
    x = F.relu(_bn(F.conv2d(x, s["resnet2D.conv1.weight"], stride=2, padding=3), s, "resnet2D.bn1"))
    x = F.max_pool2d(x, 3, 2, 1)
    for stage, blocks in enumerate([3, 4, 6, 3], start=1):
        for b in range(blocks):
            p = f"resnet2D.layer{stage}.{b}"
            stride = 2 if (b == 0 and stage > 1) else 1
            y = F.relu(_bn(F.conv2d(x, s[f"{p}.conv1.weight"]), s, f"{p}.bn1"))
            y = F.relu(_bn(F.conv2d(y, s[f"{p}.conv2.weight"], stride=stride, padding=1), s, f"{p}.bn2"))
            y = _bn(F.conv2d(y, s[f"{p}.conv3.weight"]), s, f"{p}.bn3")
            shortcut = _bn(F.conv2d(x, s[f"{p}.downsample.0.weight"], stride=stride), s, f"{p}.downsample.1") if b == 0 else x
            x = F.relu(y + shortcut)
    return x.mean(dim=(2, 3))


def _norm(x: torch.Tensor, s: dict, p: str) -> torch.Tensor:
    return s[f"{p}.a"] * (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-6) + s[f"{p}.b"]


def _encoder(x: torch.Tensor, real: torch.Tensor, s: dict, prefix: str, heads: int) -> torch.Tensor:
    """The official TransformerEncoder: per layer x += attn(x); x += ff(norm_1(x)); final norm."""
    base = f"{prefix}.transformer_encoder.encoder"
    n_layers = len({k.split(".")[4] for k in s if k.startswith(f"{base}.layers.")})
    b, length, dim = x.shape
    dk = dim // heads
    for i in range(n_layers):
        p = f"{base}.layers.{i}"
        q, k, v = (F.linear(x, s[f"{p}.self_attn.linears.{j}.weight"], s[f"{p}.self_attn.linears.{j}.bias"])
                   .view(b, length, heads, dk).transpose(1, 2) for j in range(3))
        scores = (q @ k.transpose(-2, -1) / math.sqrt(dk)).masked_fill(~real[:, None, None, :], -1e9)
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, length, dim)
        x = x + F.linear(out, s[f"{p}.self_attn.linears.3.weight"], s[f"{p}.self_attn.linears.3.bias"])
        h = _norm(x, s, f"{p}.sublayer.1.norm")
        ff = F.linear(F.relu(F.linear(h, s[f"{p}.feed_forward.w_1.weight"], s[f"{p}.feed_forward.w_1.bias"])),
                      s[f"{p}.feed_forward.w_2.weight"], s[f"{p}.feed_forward.w_2.bias"])
        x = x + ff
    return _norm(x, s, f"{base}.norm")


def official_logits(s: dict, images: torch.Tensor, slice_mask: torch.Tensor, official_mods: torch.Tensor) -> torch.Tensor:
    """Early fusion: every slot through the backbone, slice encoder per scan, fusion over mods != 0."""
    b, n, d, h, w = images.shape
    depth = s["attention1D.pos_emb"].shape[0] - 1
    padded = torch.zeros(b, n, depth, h, w)
    padded[:, :, :d] = images
    marks = torch.zeros(b, n, depth, dtype=torch.bool)
    marks[:, :, :d] = slice_mask
    feats = _resnet50(padded.reshape(-1, 1, h, w).repeat(1, 3, 1, 1), s).view(b * n, depth, -1)
    tokens = torch.cat([s["attention1D.cls_token"].expand(b * n, -1, -1), feats], 1) + s["attention1D.pos_emb"]
    real = torch.cat([torch.ones(b * n, 1, dtype=torch.bool), marks.view(b * n, depth)], 1)
    scans = _encoder(tokens, real, s, "attention1D", heads=1)[:, 0].view(b, n, -1)
    scans = scans + s["vitFuse.mod_embed"][official_mods]
    tokens = torch.cat([s["vitFuse.cls_token"].expand(b, -1, -1), scans], 1)
    real = torch.cat([torch.ones(b, 1, dtype=torch.bool), official_mods != 0], 1)
    case = _encoder(tokens, real, s, "vitFuse", heads=4)[:, 0]
    hidden = F.gelu(F.linear(case, s["fc.0.weight"], s["fc.0.bias"]))
    return F.linear(hidden, s["fc.2.weight"], s["fc.2.bias"])


def _batch(size: int = 32):
    gen = torch.Generator().manual_seed(3)
    fill = [[6, 3, 1], [2, 0, 0]]  # real slices per scan; 0 = padded scan
    ours_mod = torch.tensor([[1, 3, 7], [15, 0, 0]])  # CT axial, CT sagittal, X-ray; MRI (no plane)
    slice_mask = torch.zeros(2, 3, DEPTH, dtype=torch.bool)
    for i, row in enumerate(fill):
        for j, k in enumerate(row):
            slice_mask[i, j, :k] = True
    images = torch.rand(2, 3, DEPTH, size, size, generator=gen) * slice_mask[..., None, None]
    return images, slice_mask.any(-1), slice_mask, ours_mod


# ------------------------------------------------------------------ tests
def test_imported_checkpoint_reproduces_the_official_forward_pass(tmp_path: Path) -> None:
    from raddiag.reference import OFFICIAL_MODALITY_ROW, build_from_checkpoint

    state = official_state_dict(WIDTH, num_labels=7, depth=DEPTH, fuse="early", seed=1)
    torch.save(state, tmp_path / "pytorch_model.bin")
    cfg = _preset_config(f"data.depth={DEPTH}", "data.n_image=3")
    model, full, mapping, _ = build_from_checkpoint(cfg, tmp_path)  # the folder form
    assert (full.model.embed_dim, full.model.width, full.model.max_depth, full.model.fusion_layers) == (128, 4, DEPTH, 2)
    images, scan_mask, slice_mask, mods = _batch()
    with torch.no_grad():
        ours = model(images, scan_mask, slice_mask, mods)["logits"]
        official_mods = torch.tensor([[OFFICIAL_MODALITY_ROW[int(m)] for m in row] for row in mods])
        expected = official_logits(state, images, slice_mask, official_mods)
    assert ours.shape == (2, 7)
    assert float(expected.std()) > 0.1  # the comparison is not between two constants
    assert torch.allclose(ours, expected, atol=1e-4, rtol=0), float((ours - expected).abs().max())
    # the official ids matter: CT sagittal is official row 3, MRI without a plane official row 4
    with torch.no_grad():
        wrong = official_logits(state, images, slice_mask, mods)  # our ids fed as if they were official
    assert not torch.allclose(ours, wrong, atol=1e-3)

    unused = {(pattern, note) for pattern, _, note in mapping.summary()}
    assert {p for p, _ in unused} == {
        "resnet2D.fc.bias", "resnet2D.fc.weight",
        *(f"{enc}.transformer_encoder.encoder.layers.N.sublayer.0.norm.{ab}" for enc in ("attention1D", "vitFuse") for ab in "ab"),
        *(f"{enc}.transformer_encoder.{rest}" for enc in ("attention1D", "vitFuse") for rest in (
            "multi_headed_attention.linears.N.weight", "multi_headed_attention.linears.N.bias",
            "feed_forward.w_1.weight", "feed_forward.w_1.bias", "feed_forward.w_2.weight", "feed_forward.w_2.bias",
            "encoder_layer.self_attn.linears.N.weight", "encoder_layer.self_attn.linears.N.bias",
            "encoder_layer.feed_forward.w_1.weight", "encoder_layer.feed_forward.w_1.bias",
            "encoder_layer.feed_forward.w_2.weight", "encoder_layer.feed_forward.w_2.bias",
            "encoder_layer.sublayer.0.norm.a", "encoder_layer.sublayer.0.norm.b",
            "encoder_layer.sublayer.1.norm.a", "encoder_layer.sublayer.1.norm.b")),
    }
    assert all(note != "unknown key" for _, note in unused)
    assert len(mapping.rows) == len(state)


def test_late_fusion_checkpoint_maps_and_classifies_one_scan(tmp_path: Path) -> None:
    from raddiag.reference import build_from_checkpoint

    state = official_state_dict(WIDTH, num_labels=5, depth=DEPTH, fuse="late", seed=2)
    torch.save(state, tmp_path / "late.pt")
    model, full, _, _ = build_from_checkpoint(_preset_config(f"data.depth={DEPTH}"), tmp_path / "late.pt")
    assert full.model.fusion == "late"
    images, scan_mask, slice_mask, mods = _batch()
    with torch.no_grad():
        ours = model(images[:, :1], scan_mask[:, :1], slice_mask[:, :1], mods[:, :1])["logits"]
        feats = _resnet50(images[:, 0].reshape(-1, 1, 32, 32).repeat(1, 3, 1, 1), state).view(2, DEPTH, -1)
        tokens = torch.cat([state["attention1D.cls_token"].expand(2, -1, -1), feats], 1) + state["attention1D.pos_emb"]
        real = torch.cat([torch.ones(2, 1, dtype=torch.bool), slice_mask[:, 0]], 1)
        scan = _encoder(tokens, real, state, "attention1D", heads=1)[:, 0]
        expected = F.linear(F.gelu(F.linear(scan, state["fc.0.weight"], state["fc.0.bias"])), state["fc.2.weight"], state["fc.2.bias"])
    assert torch.allclose(ours, expected, atol=1e-4, rtol=0), float((ours - expected).abs().max())


def test_safetensors_without_shared_template_tensors_maps_too(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from raddiag.reference import build_from_checkpoint

    state = official_state_dict(WIDTH, num_labels=4, depth=DEPTH, seed=4)
    kept = {k: v for k, v in state.items() if ".encoder_layer." not in k}  # HF drops shared duplicates
    save_file(kept, str(tmp_path / "model.safetensors"))
    torch.save(state, tmp_path / "full.bin")
    cfg = _preset_config(f"data.depth={DEPTH}")
    a, _, _, _ = build_from_checkpoint(cfg, tmp_path / "model.safetensors")
    b, _, _, _ = build_from_checkpoint(cfg, tmp_path / "full.bin")
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_bad_checkpoints_fail_in_one_line_and_never_run_code(tmp_path: Path) -> None:
    from raddiag.reference import CheckpointError, build_from_checkpoint, read_checkpoint

    cfg = _preset_config(f"data.depth={DEPTH}")
    good = official_state_dict(WIDTH, num_labels=4, depth=DEPTH, seed=5)

    payload = _Payload()
    payload.marker = tmp_path / "pwned"
    torch.save({"resnet2D.conv1.weight": payload}, tmp_path / "evil.bin")  # a zip checkpoint whose pickle runs a command
    with open(tmp_path / "evil-legacy.bin", "wb") as handle:
        pickle.dump({"resnet2D.conv1.weight": payload}, handle)
    with pytest.raises(CheckpointError):
        read_checkpoint(tmp_path / "evil-legacy.bin")
    with pytest.raises(CheckpointError, match="holds objects other than tensors"):
        read_checkpoint(tmp_path / "evil.bin")
    assert not payload.marker.exists()

    torch.save(good, tmp_path / "full.bin")
    data = (tmp_path / "full.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.bin: not a readable PyTorch checkpoint"):
        read_checkpoint(tmp_path / "cut.bin")
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_checkpoint(tmp_path / "cut.safetensors")

    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.bin")
    with pytest.raises(CheckpointError, match="not an official RadDiag"):
        build_from_checkpoint(cfg, tmp_path / "other.bin")
    torch.save({**good, "fcke.weight": torch.zeros(128, 768)}, tmp_path / "ke.bin")
    with pytest.raises(CheckpointError, match="knowledge-enhanced"):
        build_from_checkpoint(cfg, tmp_path / "ke.bin")
    missing = {k: v for k, v in good.items() if "layers.0.feed_forward.w_2" not in k}
    torch.save(missing, tmp_path / "missing.bin")
    with pytest.raises(CheckpointError, match="no official counterpart"):
        build_from_checkpoint(cfg, tmp_path / "missing.bin")
    (tmp_path / "empty-dir").mkdir()
    with pytest.raises(CheckpointError, match="holds none of"):
        read_checkpoint(tmp_path / "empty-dir")

    result = run_cli("import-checkpoint", str(tmp_path / "cut.bin"), "--labels", str(tmp_path / "labels.txt"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr  # the label file is checked first
    (tmp_path / "labels.txt").write_text("a\nb\nc\nd\n")
    result = run_cli("import-checkpoint", str(tmp_path / "cut.bin"), "--labels", str(tmp_path / "labels.txt"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "cut.bin" in result.stderr, result.stderr


def test_preset_yaml_matches_the_embedded_preset() -> None:
    from raddiag.reference import PRESET

    job = yaml.safe_load((REPO / "jobs" / "rp3d_reference.yaml").read_text())
    for section, values in PRESET.items():
        assert {k: job[section][k] for k in values} == values, section
    cfg = _preset_config()
    assert (cfg.model.transformer, cfg.model.feature_proj, cfg.model.embed_dim, cfg.model.ff_ratio) == ("rp3d", False, 2048, 1.0)


@pytest.mark.slow
def test_import_then_finetune_then_evaluate(tmp_path: Path, ray_local, monkeypatch) -> None:
    """The chain a hospital runs: official weights -> registered model -> fine-tuned on its own labels -> evaluated."""
    from raddiag import tracking
    from raddiag.config import load_config
    from raddiag.evaluate import evaluate_model
    from raddiag.finetune import finetune
    from raddiag.storage.store import Store
    from raddiag.storage.synth import generate

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(None, tiny_overrides(tmp_path) + ["train.epochs=1", "train.num_workers=1", "train.name=from-official"])
    generate(cfg.synth, Store(cfg.store.url))
    state = official_state_dict(WIDTH, num_labels=6, depth=4, seed=6)
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "labels.json").write_text('{"Normal": 0, "A": 1, "B": 2, "C": 3, "D": 4, "E": 5}')
    uri = cfg.tracking.resolved_uri()
    result = run_cli(
        "import-checkpoint", str(tmp_path / "pytorch_model.bin"), "--labels", str(tmp_path / "labels.json"), "--json",
        "--name", "rp3d-official", "--set", f"tracking.tracking_uri={uri}", "--set", "tracking.experiment=tests",
        "--set", "data.depth=4", "--set", "data.image_size=16", "--set", "data.n_image=3",
    )
    assert result.returncode == 0, result.stderr
    imported = yaml.safe_load(result.stdout)
    assert imported["model"] == "models:/rp3d-official/1" and imported["num_labels"] == 6
    client = tracking.client(uri)
    version = client.get_model_version("rp3d-official", "1")
    assert version.tags[Tags.IMPORTED_FROM] == "pytorch_model.bin" and len(version.tags[Tags.SOURCE_SHA256]) == 64

    tuned = finetune(cfg, imported["model"])
    assert client.get_run(tuned.run_id).data.tags[Tags.FINETUNED_FROM] == imported["model"]
    evaluation = evaluate_model(f"runs:/{tuned.run_id}/model", cfg, split="test")
    assert evaluation.n_cases > 0 and 0.0 <= evaluation.report.summary["all"]["auc"] <= 1.0
    # the fine-tuned network kept the official architecture and started from the imported weights
    from raddiag.serve.bundle import ModelBundle, run_model_uri

    bundle = ModelBundle.load(run_model_uri(tuned.run_id))
    assert bundle.config.model.transformer == "rp3d" and bundle.network.num_labels == cfg.synth.n_labels
