"""Bring a decoded scan to training resolution: depth sampling (key slice kept), in-plane resize,
intensity normalisation to uint8/uint16. Pure numpy/PIL functions, shapes (D, H, W) throughout."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Plan:
    """The preprocessing recorded in ``dataset.json`` (nnU-Net's "plan" idea)."""

    image_size: int = 256
    max_depth: int = 64
    dtype: str = "uint8"
    ct_window: tuple[float, float] | None = None  # (centre, width) in HU, CT only

    def to_dict(self) -> dict[str, object]:
        """The plan as data (``dataset.json`` ``plan``, and a trained model's ``meta.json``)."""
        return {
            "image_size": self.image_size, "max_depth": self.max_depth, "dtype": self.dtype,
            "ct_window": list(self.ct_window) if self.ct_window else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> "Plan":
        window = data.get("ct_window")
        return cls(int(data["image_size"]), int(data["max_depth"]), str(data.get("dtype", "uint8")),
                   (float(window[0]), float(window[1])) if window else None)

    def describe(self) -> dict[str, object]:
        return {
            "image_size": self.image_size,
            "max_depth": self.max_depth,
            "dtype": self.dtype,
            "normalisation": "per-scan min-max" + (f" after CT window {list(self.ct_window)}" if self.ct_window else ""),
            "depth_sampling": "uniform, key slice kept",
            "resize": "bilinear with antialiasing (PIL), aspect not kept",
        }


def select_slices(depth: int, max_depth: int, key_slice: int) -> tuple[np.ndarray, int]:
    """Uniformly spaced slice indices (at most ``max_depth``) that include ``key_slice``.

    Returns (indices ascending, position of the key slice among them).
    """
    key = int(np.clip(key_slice, 0, depth - 1))
    if depth <= max_depth:
        return np.arange(depth), key
    indices = np.unique(np.round(np.linspace(0, depth - 1, max_depth)).astype(np.int64))
    if key not in indices:
        indices[int(np.argmin(np.abs(indices - key)))] = key
        indices = np.unique(indices)
    return indices, int(np.flatnonzero(indices == key)[0])


def resize_slices(volume: np.ndarray, size: int) -> np.ndarray:
    """(D, H, W) float32 -> (D, size, size) float32, bilinear with antialiasing per slice."""
    if volume.shape[1:] == (size, size):
        return volume.astype(np.float32, copy=False)
    from PIL import Image

    out = np.empty((volume.shape[0], size, size), dtype=np.float32)
    for index, plane in enumerate(volume):
        out[index] = np.asarray(Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32), mode="F").resize((size, size), Image.BILINEAR))
    return out


def normalise(volume: np.ndarray, dtype: str = "uint8", window: tuple[float, float] | None = None) -> np.ndarray:
    """Per-scan min-max to the full range of ``dtype`` (optionally after clipping to a CT window)."""
    vol = np.asarray(volume, dtype=np.float32)
    if window is not None:
        centre, width = window
        vol = np.clip(vol, centre - width / 2, centre + width / 2)
    top = 255.0 if dtype == "uint8" else 65535.0
    lo, hi = float(vol.min()), float(vol.max())
    if hi <= lo:
        return np.zeros(vol.shape, dtype=dtype)
    return np.round((vol - lo) * (top / (hi - lo))).astype(dtype)


def prepare(volume: np.ndarray, key_slice: int, plan: Plan, is_ct: bool = False) -> tuple[np.ndarray, int]:
    """(D, H, W) float32 at any size -> (stored volume (D', S, S) uint8/uint16, key slice in it).

    The one preprocessing contract: ``raddiag ingest`` stores scans with it, and ``predict`` /
    ``zeroshot`` apply it (with the plan recorded in the model) to scans they read from files."""
    indices, key = select_slices(volume.shape[0], plan.max_depth, key_slice)
    sampled = volume[indices]
    resized = resize_slices(sampled, plan.image_size)
    return normalise(resized, plan.dtype, plan.ct_window if is_ct else None), key
