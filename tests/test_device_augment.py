"""Batched device augmentation: deterministic, padding untouched, and the same parameter
distributions as the per-scan MONAI reference it replaces (two-sample KS tests on statistics that
each transform's parameters drive)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

from raddiag.config import AugmentConfig
from raddiag.data.augment import augment_batch, augment_batch_reference

OFF = {"affine_p": 0.0, "noise_p": 0.0, "contrast_p": 0.0, "elastic_p": 0.0}


def _mixed_batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(3, 4, 6, 20, 20, generator=gen)
    slice_mask = torch.zeros(3, 4, 6, dtype=torch.bool)
    slice_mask[0, 0, :6] = True  # 3D
    slice_mask[0, 1, :1] = True  # 2D
    slice_mask[1, 0, :3] = True
    slice_mask[2, 2, :1] = True  # a real scan after a padded one
    images[~slice_mask] = 0.0
    return images, slice_mask


def test_batched_augmentation_is_seeded_keeps_padding_zero_and_stays_in_range() -> None:
    cfg = AugmentConfig(affine_p=1.0, noise_p=1.0, contrast_p=1.0, elastic_p=1.0)
    images, slice_mask = _mixed_batch()
    before = images.clone()
    out = augment_batch(images, slice_mask, cfg, seed=5)
    assert torch.equal(images, before)  # the input batch is not modified
    assert torch.equal(out, augment_batch(images, slice_mask, cfg, seed=5))
    assert not torch.allclose(out, augment_batch(images, slice_mask, cfg, seed=6))
    assert out.shape == images.shape and torch.all(out[~slice_mask] == 0)
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert not torch.allclose(out[slice_mask], before[slice_mask])
    # in-plane: every slice of a 3D scan moves the same way (affine + elastic only, on identical slices)
    warp = AugmentConfig(**{**OFF, "affine_p": 1.0, "elastic_p": 1.0})
    same = images.clone()
    same[0, 0] = same[0, 0, :1].expand(6, -1, -1)
    moved = augment_batch(same, slice_mask, warp, seed=1)
    assert torch.allclose(moved[0, 0], moved[0, 0, :1].expand(6, -1, -1), atol=1e-6)
    nothing = AugmentConfig(**OFF)
    assert augment_batch(images, slice_mask, nothing, seed=0) is images


def test_each_real_scan_draws_its_own_parameters() -> None:
    cfg = AugmentConfig(**{**OFF, "contrast_p": 1.0})
    ramp = torch.linspace(0.05, 0.95, 16 * 16).reshape(1, 1, 1, 16, 16).expand(1, 8, 1, 16, 16).contiguous()
    mask = torch.ones(1, 8, 1, dtype=torch.bool)
    out = augment_batch(ramp, mask, cfg, seed=0)
    assert len({round(float(out[0, n, 0, 8, 8]), 5) for n in range(8)}) == 8  # 8 different gammas


def _scans(n: int, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """n single-scan cases of ``image`` (K, H, W)."""
    images = image[None, None].expand(n, 1, *image.shape).contiguous()
    return images, torch.ones(n, 1, image.shape[0], dtype=torch.bool)


def _both(cfg: AugmentConfig, image: torch.Tensor, n: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    images, mask = _scans(n, image)
    ours = augment_batch(images, mask, cfg, seed=11)[:, 0]
    reference = augment_batch_reference(images.clone(), mask, cfg, seed=11)[:, 0]
    return ours, reference


def _same_distribution(a: np.ndarray, b: np.ndarray) -> None:
    result = ks_2samp(a, b)
    assert result.pvalue > 1e-3, (result, np.mean(a), np.mean(b), np.std(a), np.std(b))


def test_fire_rate_matches_the_probability() -> None:
    cfg = AugmentConfig(**{**OFF, "affine_p": 0.3})
    blob = torch.zeros(1, 24, 24)
    blob[0, 6:14, 8:20] = 1.0
    ours, reference = _both(cfg, blob, n=400)
    for out in (ours, reference):
        changed = (out - blob).abs().flatten(1).amax(1) > 1e-4
        assert abs(float(changed.float().mean()) - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 400)


def test_noise_std_matches_monai() -> None:
    cfg = AugmentConfig(**{**OFF, "noise_p": 1.0, "noise_std": 0.1})
    flat = torch.full((2, 24, 24), 0.5)
    ours, reference = _both(cfg, flat)
    _same_distribution((ours - 0.5).flatten(1).std(1).numpy(), (reference - 0.5).flatten(1).std(1).numpy())
    assert float((ours - 0.5).flatten(1).std(1).max()) <= 0.1 * 1.1  # std drawn in [0, noise_std]


def test_gamma_matches_monai() -> None:
    cfg = AugmentConfig(**{**OFF, "contrast_p": 1.0, "gamma": (0.5, 1.5)})
    ramp = torch.linspace(0.1, 0.9, 24 * 24).reshape(1, 24, 24)
    ours, reference = _both(cfg, ramp)
    x = float((ramp[0, 12, 12] - 0.1) / 0.8)

    def gammas(out: torch.Tensor) -> np.ndarray:
        y = ((out[:, 0, 12, 12] - 0.1) / 0.8).clamp(1e-6, 1).numpy()
        return np.log(y) / math.log(x)

    g_ours, g_ref = gammas(ours), gammas(reference)
    assert 0.49 < g_ours.min() and g_ours.max() < 1.51
    _same_distribution(g_ours, g_ref)


def _blob() -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    return torch.exp(-((yy - 12) ** 2 + (xx - 18) ** 2) / (2 * 4.0**2))[None]


def _centroid_shift(out: torch.Tensor, image: torch.Tensor) -> np.ndarray:
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")

    def centroid(v: torch.Tensor) -> torch.Tensor:
        mass = v.sum(dim=(-2, -1)).clamp(min=1e-6)
        return torch.stack([(v * yy).sum(dim=(-2, -1)) / mass, (v * xx).sum(dim=(-2, -1)) / mass], -1)

    return (centroid(out[:, 0]) - centroid(image[0])).norm(dim=-1).numpy()


def test_affine_matches_monai() -> None:
    cfg = AugmentConfig(**{**OFF, "affine_p": 1.0, "rotate": math.pi / 12, "translate": 3.0, "scale": 0.1, "shear": 0.2})
    image = _blob()
    ours, reference = _both(cfg, image)
    _same_distribution(_centroid_shift(ours, image), _centroid_shift(reference, image))
    mass = lambda out: (out.sum(dim=(-3, -2, -1)) / image.sum()).numpy()  # noqa: E731 - zoom and shear change it
    _same_distribution(mass(ours), mass(reference))


def test_elastic_matches_monai() -> None:
    cfg = AugmentConfig(**{**OFF, "elastic_p": 1.0, "elastic_sigma": (3.0, 4.0), "elastic_magnitude": (2.0, 4.0)})
    image = _blob()
    ours, reference = _both(cfg, image, n=200)
    _same_distribution((ours - image).abs().flatten(1).mean(1).numpy(), (reference - image).abs().flatten(1).mean(1).numpy())


def test_bad_ranges_are_refused() -> None:
    with pytest.raises(ValueError, match="gamma"):
        AugmentConfig(gamma=(1.5, 0.5))


def test_gpu_step_bench_runs_a_tiny_shape_on_cpu() -> None:
    import json
    import subprocess
    import sys

    from conftest import REPO

    result = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_step.py"), "--steps", "1", "--batch", "2"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    for fill in ("full", "realistic"):
        assert out[fill]["eager"]["ms_per_case"] > 0 and out[fill]["flop_per_step"] > 0
        assert out[fill]["augment"]["batched_ms_per_batch"] > 0
    assert out["full"]["flop_per_step"] > out["realistic"]["flop_per_step"]  # padding is skipped before the backbone
