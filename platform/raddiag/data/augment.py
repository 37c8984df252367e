"""MONAI augmentations for one scan volume (K, H, W) in [0, 1] (K = 1 for a 2D image).

The slices are treated as channels of a 2D image, so every in-plane transform (affine, elastic)
moves all slices of a 3D scan identically and the same code path serves 2D and 3D scans. Why not a
3D affine on 3D scans: the D slices are a strided, jittered sample of the scan (not a regular grid)
and the key slice's index must stay valid, so a through-plane rotation would interpolate between
non-adjacent slices and move the key slice. Padded slices are never augmented.

Where: in the Ray Data tasks (``data.augment.on=workers``, numpy per scan, before batching) or on
the training device (``on=device``: :func:`augment_batch` on the torch batch, after the uint8 ->
float conversion), which frees the data CPUs when a GPU has spare capacity.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from raddiag.config import AugmentConfig


def _pipeline(cfg: AugmentConfig, seed: int) -> Any:
    """The seeded MONAI ``Compose`` (channel-first 2D: a (K, H, W) volume is K channels), or None."""
    from monai.transforms import (
        Compose,
        Rand2DElastic,
        RandAdjustContrast,
        RandAffine,
        RandGaussianNoise,
        ScaleIntensityRange,
    )

    steps = []
    if cfg.affine_p > 0:
        steps.append(
            RandAffine(prob=cfg.affine_p, rotate_range=0.2, scale_range=0.1, translate_range=2, padding_mode="zeros")
        )
    if cfg.elastic_p > 0:
        steps.append(Rand2DElastic(prob=cfg.elastic_p, spacing=(8, 8), magnitude_range=(0.5, 1.5), padding_mode="zeros"))
    if cfg.noise_p > 0:
        steps.append(RandGaussianNoise(prob=cfg.noise_p, std=0.03))
    if cfg.contrast_p > 0:
        steps.append(RandAdjustContrast(prob=cfg.contrast_p, gamma=(0.7, 1.5)))
    if not steps:
        return None
    steps.append(ScaleIntensityRange(a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True))
    pipeline = Compose(steps)
    pipeline.set_random_state(seed=seed)
    return pipeline


def build_augment(cfg: AugmentConfig, seed: int) -> Callable[[np.ndarray], np.ndarray] | None:
    """A seeded callable ``volume (K, H, W) float32 -> same shape`` or None when every p is 0."""
    pipeline = _pipeline(cfg, seed)
    if pipeline is None:
        return None

    def apply(volume: np.ndarray) -> np.ndarray:
        out = pipeline(volume)
        return np.asarray(out, dtype=np.float32)

    return apply


def augment_batch(images: Any, slice_mask: Any, cfg: AugmentConfig, seed: int) -> Any:
    """Augment a torch batch in place on its device: images (B, N, D, H, W) float in [0, 1],
    slice_mask (B, N, D) bool. Each real scan's real slices get their own random draw; padded
    scans and slices stay 0. Returns ``images``."""
    import torch

    pipeline = _pipeline(cfg, seed)
    if pipeline is None:
        return images
    real = slice_mask.sum(dim=-1).tolist()
    with torch.no_grad():
        for b, scans in enumerate(real):
            for n, k in enumerate(scans):
                if k:
                    out = pipeline(images[b, n, :k])
                    images[b, n, :k] = torch.as_tensor(out, device=images.device, dtype=images.dtype)
    return images
