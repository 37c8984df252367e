"""MONAI augmentations for one scan volume (K, H, W) in [0, 1] (K = 1 for a 2D image).

The slices are treated as channels of a 2D image, so every in-plane transform (affine, elastic)
moves all slices of a 3D scan identically and the same code path serves 2D and 3D scans.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from raddiag.config import AugmentConfig


def build_augment(cfg: AugmentConfig, seed: int) -> Callable[[np.ndarray], np.ndarray] | None:
    """A seeded callable ``volume (K, H, W) float32 -> same shape`` or None when every p is 0."""
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

    def apply(volume: np.ndarray) -> np.ndarray:
        out = pipeline(volume)
        return np.asarray(out, dtype=np.float32)

    return apply
