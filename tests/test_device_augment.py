"""Batched device augmentation: deterministic, padding untouched, and the same parameter
distributions as the per-scan MONAI reference it replaces (two-sample KS tests on statistics that
each transform's parameters drive)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import ks_2samp, kstest

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


def _probe(transform: str) -> tuple[dict, torch.Tensor]:
    """A configuration firing ``transform`` alone (p = 0.3) and an image it visibly changes."""
    yy, xx = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij")
    blob = torch.exp(-((yy - 10) ** 2 + (xx - 13) ** 2) / (2 * 3.0**2))[None]
    images = {"affine": blob, "elastic": blob, "noise": torch.full((1, 24, 24), 0.5),
              "contrast": torch.linspace(0.1, 0.9, 24 * 24).reshape(1, 24, 24)}
    return {**OFF, f"{transform}_p": 0.3}, images[transform]


@pytest.mark.parametrize("transform", ["affine", "elastic", "noise", "contrast"])
def test_fire_rate_matches_the_probability(transform: str) -> None:
    settings, image = _probe(transform)
    ours, reference = _both(AugmentConfig(**settings), image, n=400)
    bound = 4 * math.sqrt(0.3 * 0.7 / 400)  # binomial, 4 standard deviations
    for out in (ours, reference):
        changed = (out - image).abs().flatten(1).amax(1) > 1e-4
        assert abs(float(changed.float().mean()) - 0.3) < bound, (transform, float(changed.float().mean()))


def test_p_zero_is_identity_and_padded_only_batches_are_untouched() -> None:
    images, slice_mask = _mixed_batch()
    assert augment_batch(images, slice_mask, AugmentConfig(**OFF), seed=0) is images
    everything = AugmentConfig(affine_p=1.0, noise_p=1.0, contrast_p=1.0, elastic_p=1.0)
    empty = torch.zeros(2, 3, 4, dtype=torch.bool)
    padded = torch.zeros(2, 3, 4, 8, 8)
    assert augment_batch(padded, empty, everything, seed=0) is padded
    # a transform whose p is 0 never fires: noise alone leaves every pixel's expectation, contrast alone its rank order
    only_contrast = augment_batch(images, slice_mask, AugmentConfig(**{**OFF, "contrast_p": 1.0}), seed=3)
    real = images[0, 0][slice_mask[0, 0]].flatten()
    assert torch.equal(only_contrast[0, 0][slice_mask[0, 0]].flatten().argsort(stable=True), real.argsort(stable=True))


def test_noise_std_matches_monai() -> None:
    cfg = AugmentConfig(**{**OFF, "noise_p": 1.0, "noise_std": 0.1})
    flat = torch.full((2, 24, 24), 0.5)
    ours, reference = _both(cfg, flat)
    std_ours, std_ref = (ours - 0.5).flatten(1).std(1).numpy(), (reference - 0.5).flatten(1).std(1).numpy()
    _same_distribution(std_ours, std_ref)
    assert float(std_ours.max()) <= 0.1 * 1.1  # std drawn in [0, noise_std]
    for stds in (std_ours, std_ref):  # both: uniform on [0, noise_std] (1,152 pixels estimate each std within ~2%)
        assert kstest(stds, "uniform", args=(0.0, 0.1)).pvalue > 1e-3


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
    for g in (g_ours, g_ref):  # both: gamma uniform on the configured range
        assert kstest(g, "uniform", args=(0.5, 1.0)).pvalue > 1e-3


def _orientation(v: torch.Tensor) -> np.ndarray:
    """Angle of the principal axis of each (H, W) image's mass (second central moments), radians."""
    h, w = v.shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(float(h)), torch.arange(float(w)), indexing="ij")
    mass = v.sum(dim=(-2, -1))
    cy, cx = (v * yy).sum(dim=(-2, -1)) / mass, (v * xx).sum(dim=(-2, -1)) / mass
    dy, dx = yy - cy[..., None, None], xx - cx[..., None, None]
    mu20, mu02, mu11 = ((v * dx * dx).sum(dim=(-2, -1)), (v * dy * dy).sum(dim=(-2, -1)), (v * dx * dy).sum(dim=(-2, -1)))
    return (0.5 * torch.atan2(2 * mu11, mu20 - mu02)).numpy()


def test_rotation_angle_range_is_recovered() -> None:
    """Rotation alone: the angle recovered from an elongated blob at the image centre is uniform on
    [-rotate, rotate] for both the batched path and MONAI (sign conventions aside: the range is symmetric)."""
    rotate = 0.5
    cfg = AugmentConfig(**{**OFF, "affine_p": 1.0, "rotate": rotate, "translate": 0.0, "scale": 0.0, "shear": 0.0})
    yy, xx = torch.meshgrid(torch.arange(41.0), torch.arange(41.0), indexing="ij")
    needle = torch.exp(-((xx - 20) ** 2) / (2 * 5.0**2) - (yy - 20) ** 2 / (2 * 1.5**2))[None]
    assert abs(float(_orientation(needle[0]))) < 1e-4
    ours, reference = _both(cfg, needle)
    for angles in (_orientation(ours[:, 0]), _orientation(reference[:, 0])):
        assert np.abs(angles).max() < rotate + 0.02  # never beyond the range
        assert np.abs(angles).max() > 0.9 * rotate  # and reaches its ends
        assert kstest(angles, "uniform", args=(-rotate, 2 * rotate)).pvalue > 1e-3


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


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_properties_over_random_shapes_masks_and_strengths(data: st.DataObject) -> None:
    """Any shape, any (not necessarily prefix) slice mask, any probabilities, float32/64/bf16: the
    shape and dtype are kept, the input is not modified, padding is exactly 0, values stay in [0, 1],
    the same seed gives the same batch, and a batch where nothing can fire comes back as is."""
    b, n, d = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4)), data.draw(st.integers(1, 6))
    h, w = data.draw(st.integers(2, 17)), data.draw(st.integers(2, 17))
    bits = data.draw(st.lists(st.booleans(), min_size=b * n * d, max_size=b * n * d))
    p = [data.draw(st.sampled_from([0.0, 0.5, 1.0])) for _ in range(4)]
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
    seed = data.draw(st.integers(0, 2**31 - 1))
    cfg = AugmentConfig(affine_p=p[0], elastic_p=p[1], noise_p=p[2], contrast_p=p[3])
    slice_mask = torch.tensor(bits).reshape(b, n, d)
    images = (torch.rand(b, n, d, h, w, generator=torch.Generator().manual_seed(seed)) * slice_mask[..., None, None]).to(dtype)
    before = images.clone()
    out = augment_batch(images, slice_mask, cfg, seed=seed)
    assert torch.equal(images, before)
    if not cfg.enabled or not slice_mask.any():
        assert out is images
        return
    assert out.shape == images.shape and out.dtype == dtype
    assert torch.all(out[~slice_mask] == 0)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0 and not torch.isnan(out).any()
    assert torch.equal(out, augment_batch(images, slice_mask, cfg, seed=seed))


def test_gpu_step_bench_runs_a_tiny_shape_on_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    """bench/gpu_step.py in-process (CI imports and runs it at the tiny shape)."""
    import importlib.util
    import json

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("gpu_step", REPO / "bench" / "gpu_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--steps", "1", "--batch", "2", "--augment-repeats", "1", "--data-cases-per-core", "50"])
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(out))
    for fill in ("full", "realistic"):
        eager = out[fill]["eager"]
        assert eager["ms_per_case"] > 0 and out[fill]["flop_per_step"] > 0 and eager["tflop_per_s"] > 0
        assert 0 < eager["augment_over_step_batched"] and eager["cases_per_s_with_batched_augment"] < eager["cases_per_s"]
        for variant in ("configured", "all_fire"):
            assert out[fill]["augment"][variant]["batched_ms_per_batch"] > 0
            assert out[fill]["augment"][variant]["per_scan_reference_ms_per_batch"] > 0
    assert out["full"]["flop_per_step"] > out["realistic"]["flop_per_step"]  # padding is skipped before the backbone
    rate = out["realistic"]["eager"]["cases_per_s_with_batched_augment"]
    assert out["data"]["cores_per_gpu"] == pytest.approx(rate / 50)
    with pytest.raises(SystemExit) as exit_info:  # a bad input fails before any work, naming the flag
        bench.main(["--data-json", str(REPO / "no-such.json")])
    assert exit_info.value.code == 2 and "--data-json" in capsys.readouterr().err


def test_first_axis_recipe_is_kept_for_reproduction() -> None:
    """``affine_axes=first`` reproduces the earlier worker recipe (MONAI's reading of bare floats:
    translation on the first image axis only); the default moves both axes."""
    from raddiag.data.augment import build_augment

    image = _blob()[0].numpy()
    cols = np.arange(32.0)
    centroid_x = lambda v: float((v[0] * cols[None, :]).sum() / v[0].sum())  # noqa: E731
    shifts = {}
    for axes in ("first", "both"):
        cfg = AugmentConfig(**{**OFF, "affine_p": 1.0, "rotate": 0.0, "scale": 0.0, "translate": 4.0, "affine_axes": axes, "on": "workers"})
        shifts[axes] = [abs(centroid_x(build_augment(cfg, seed)(image[None])) - centroid_x(image[None])) for seed in range(12)]
    assert max(shifts["first"]) < 1e-3 and max(shifts["both"]) > 0.5


def test_the_first_axis_recipe_is_refused_off_the_workers() -> None:
    """``affine_axes=first`` exists only in the workers' MONAI pipeline: asking for it with the
    batched device path (the default) is a config error naming the fix, not a silent no-op."""
    with pytest.raises(ValueError, match="data.augment.on=workers"):
        AugmentConfig(affine_axes="first")
    assert AugmentConfig().on == "device" and AugmentConfig(affine_axes="first", on="workers").affine_axes == "first"
