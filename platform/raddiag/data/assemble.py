"""Case assembly: scans of one case -> fixed-shape arrays (pure numpy/torch, testable without Ray).

Rules (design.md §1): at most 3 planes for CT/MRI, 2 X-ray views, 1 scan otherwise, at most
``n_image`` scans per case; depth is sampled to ``depth`` slices with a uniform stride (random
phase in training) that always keeps the key slice, whose new index is returned; shorter scans are
zero-padded with ``slice_mask`` False.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from raddiag.schema import canonical_modality, max_scans_for, modality_plane_id


def select_scans(scans: list[dict[str, Any]], n_image: int, rng: np.random.Generator | None) -> list[dict[str, Any]]:
    """Pick up to ``n_image`` scans honouring per-modality caps (random choice when ``rng`` is given)."""
    order = list(range(len(scans)))
    if rng is not None:
        rng.shuffle(order)
    taken: dict[str, int] = {}
    chosen = []
    for index in order:
        scan = scans[index]
        modality = canonical_modality(scan["modality"])
        if taken.get(modality, 0) >= max_scans_for(modality):
            continue
        taken[modality] = taken.get(modality, 0) + 1
        chosen.append(scan)
        if len(chosen) == n_image:
            break
    if rng is None:
        chosen.sort(key=lambda s: s["scan_id"])
    return chosen


def sample_depth(n_slices: int, depth: int, key_slice: int, rng: np.random.Generator | None) -> tuple[np.ndarray, int]:
    """Indices (sorted, <= ``depth`` of them) into a scan of ``n_slices`` slices, and the key slice's position.

    Uniform stride ``n_slices / depth`` with a random phase in training (``rng``) or the centre phase
    in evaluation; the sample point nearest the key slice is replaced by the key slice itself.
    """
    key = int(np.clip(key_slice, 0, n_slices - 1))
    if n_slices <= depth:
        return np.arange(n_slices), key
    stride = n_slices / depth
    phase = rng.uniform(0, stride) if rng is not None else stride / 2
    indices = np.minimum((phase + stride * np.arange(depth)).astype(np.int64), n_slices - 1)
    nearest = int(np.argmin(np.abs(indices - key)))
    indices[nearest] = key
    indices = np.sort(indices)
    return indices, int(np.searchsorted(indices, key))


def resize_slices(slices: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of (K, H, W) float32 slices to (K, size, size) (no-op when already that size)."""
    if slices.shape[1:] == (size, size):
        return slices
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(slices))[:, None]
    return F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()


def assemble_case(
    record: dict[str, Any],
    read_slices: Callable[[str, np.ndarray], np.ndarray],
    label_index: dict[str, int],
    *,
    n_image: int,
    depth: int,
    image_size: int,
    label_level: str = "disorder",
    rng: np.random.Generator | None = None,
    augment: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """One case record (see ``Manifest.case_records``) -> arrays of the batch schema without the B axis.

    ``read_slices(scan_id, indices) -> uint8 (K, H, W)``. Returns images (N, D, H, W) float32 in
    [0, 1], scan_mask (N,), slice_mask (N, D), modality_ids (N,), key_slice (N,), labels (C,).
    Labels not in ``label_index`` are ignored (they belong to another vocabulary).
    """
    images = np.zeros((n_image, depth, image_size, image_size), dtype=np.float32)
    scan_mask = np.zeros(n_image, dtype=bool)
    slice_mask = np.zeros((n_image, depth), dtype=bool)
    modality_ids = np.zeros(n_image, dtype=np.int64)
    key_slice = np.zeros(n_image, dtype=np.int64)
    for slot, scan in enumerate(select_scans(record["scans"], n_image, rng)):
        indices, key = sample_depth(int(scan["depth"]), depth, int(scan["key_slice"]), rng)
        raw = read_slices(scan["scan_id"], indices).astype(np.float32) / 255.0
        volume = resize_slices(raw, image_size)
        if augment is not None:
            volume = augment(volume)
        images[slot, : len(indices)] = volume
        scan_mask[slot] = True
        slice_mask[slot, : len(indices)] = True
        modality_ids[slot] = modality_plane_id(scan["modality"], scan["plane"])
        key_slice[slot] = key
    labels = np.zeros(len(label_index), dtype=np.float32)
    names = record["disorders"] if label_level == "disorder" else record["icd10"]
    for name in names:
        if name in label_index:
            labels[label_index[name]] = 1.0
    return {
        "images": images,
        "scan_mask": scan_mask,
        "slice_mask": slice_mask,
        "modality_ids": modality_ids,
        "key_slice": key_slice,
        "labels": labels,
    }


def stack_cases(cases: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack per-case dicts into a batch dict with a leading B axis."""
    return {key: np.stack([case[key] for case in cases]) for key in cases[0]}
