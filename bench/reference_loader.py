"""Baseline loader for ``bench/data_pipeline.py``: what the RadDiag reference implementation does.

Per case: for each chosen scan (the same scan choice as ``raddiag.data``), load the whole float32
``.npy`` (H×W×D; a 2D X-ray as H×W×3 RGB, like RP3D-DiagDS) from local disk, per-scan min-max to
[0, 1], resample (depth > 32 uniformly subsampled to 32, H×W resized to 256 with bilinear
interpolation — a no-op size here but the reference always runs it), zero-pad to 32 slices.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

DEPTH, SIZE, N_IMAGE = 32, 256, 4


def write_npy(volume: np.ndarray, modality: str, path: Path) -> str:
    """Store a (D, H, W) synthetic volume as the reference keeps it: float32 H×W×D (X-ray: RGB)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.moveaxis(volume, 0, -1).astype(np.float32)
    if modality == "X-ray":
        array = np.repeat(array, 3, axis=-1)
    np.save(path, array)
    return str(path)


def load_scan(path: str, is_2d: bool) -> tuple[np.ndarray, np.ndarray]:
    """-> (images (DEPTH, SIZE, SIZE) float32, slice_mask (DEPTH,))."""
    import torch
    import torch.nn.functional as F

    array = np.load(path)  # the whole volume, float32
    if is_2d:
        array = array[..., :1]  # equal-channel RGB -> grey
    lo, hi = float(array.min()), float(array.max())
    array = (array - lo) / (hi - lo) if hi > lo else np.zeros_like(array)
    depth = array.shape[-1]
    if depth > DEPTH:
        array = array[..., np.linspace(0, depth - 1, DEPTH).round().astype(np.int64)]
    volume = torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, -1, 0)))[:, None]
    volume = F.interpolate(volume, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[:, 0]
    out = np.zeros((DEPTH, SIZE, SIZE), dtype=np.float32)
    out[: volume.shape[0]] = volume.numpy()
    mask = np.zeros(DEPTH, dtype=bool)
    mask[: volume.shape[0]] = True
    return out, mask


def load_case(record: dict, npy: dict[str, str]) -> tuple[dict[str, np.ndarray], int]:
    """One case -> ({images (N, D, H, W), slice_mask (N, D)}, bytes read from disk)."""
    from raddiag.data.assemble import select_scans

    images = np.zeros((N_IMAGE, DEPTH, SIZE, SIZE), dtype=np.float32)
    mask = np.zeros((N_IMAGE, DEPTH), dtype=bool)
    n_bytes = 0
    for slot, scan in enumerate(select_scans(record["scans"], N_IMAGE, rng=None)):
        path = npy[scan["scan_id"]]
        n_bytes += os.path.getsize(path)
        images[slot], mask[slot] = load_scan(path, int(scan["depth"]) == 1)
    return {"images": images, "slice_mask": mask}, n_bytes
