"""Case assembly: scans of one case -> fixed-shape arrays (pure numpy/torch, testable without Ray).

Rules (design.md §1): at most 3 planes for CT/MRI, 2 X-ray views, 1 scan otherwise, at most
``n_image`` scans per case; depth is sampled to ``depth`` slices with a uniform stride (random
phase in training) that always keeps the key slice, whose new index is returned; shorter scans are
zero-padded with ``slice_mask`` False. Case mixing (training option): a case of another anatomy
fills the last scan slots and the labels are the union.
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass
class CasePlan:
    """What to read for one case: ``scans[i]`` with sorted slice ``indices[i]`` and the key slice's
    position ``keys[i]`` among them; the case's labels at both levels (a mixed case: the union)."""

    scans: list[dict[str, Any]]
    indices: list[np.ndarray]
    keys: list[int]
    disorders: list[str]
    icd10: list[str]

    def requests(self) -> list[tuple[str, np.ndarray]]:
        return [(scan["scan_id"], idx) for scan, idx in zip(self.scans, self.indices)]


def _union(first: list[str], second: list[str]) -> list[str]:
    """Labels of a mixed case: the union, without "Normal" when a disorder is present."""
    names = list(dict.fromkeys([*first, *second]))
    return [n for n in names if n != "Normal"] if len(names) > 1 and "Normal" in names else names


def plan_case(
    record: dict[str, Any],
    *,
    n_image: int,
    depth: int,
    rng: np.random.Generator | None = None,
    partner: dict[str, Any] | None = None,
) -> CasePlan:
    """Choose scans and slices for one case record (see ``Manifest.case_records``).

    With a ``partner`` (case mixing) the case keeps at most ``n_image - 1`` of its own scans and
    fills the remaining slots with the partner's (each case's per-modality caps apply to its own
    scans); the labels are the union of both cases'.
    """
    own_slots = n_image - 1 if partner is not None and n_image > 1 else n_image
    scans = select_scans(record["scans"], own_slots, rng)
    disorders, icd10 = list(record["disorders"]), list(record["icd10"])
    if partner is not None and n_image > len(scans):
        scans = scans + select_scans(partner["scans"], n_image - len(scans), rng)
        disorders, icd10 = _union(disorders, list(partner["disorders"])), _union(icd10, list(partner["icd10"]))
    indices, keys = [], []
    for scan in scans:
        idx, key = sample_depth(int(scan["depth"]), depth, int(scan["key_slice"]), rng)
        indices.append(idx)
        keys.append(key)
    return CasePlan(scans, indices, keys, disorders, icd10)


def multi_hot(names: list[str], label_index: dict[str, int]) -> np.ndarray:
    """(C,) float32 0/1 over ``label_index``; names outside it are ignored (another vocabulary)."""
    labels = np.zeros(len(label_index), dtype=np.float32)
    for name in names:
        if name in label_index:
            labels[label_index[name]] = 1.0
    return labels


def to_uint8(volume: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint8 [0, 255] (rounded, clipped)."""
    return np.clip(np.rint(volume * 255.0), 0, 255).astype(np.uint8)


def case_fields(
    plan: CasePlan,
    label_index: dict[str, int],
    *,
    n_image: int,
    depth: int,
    label_level: str = "disorder",
    vocabularies: dict[str, dict[str, int]] | None = None,
) -> dict[str, np.ndarray]:
    """Everything of a case but its images: scan_mask (N,), slice_mask (N, D), modality_ids (N,),
    key_slice (N,), labels (C,) at ``label_level`` and ``<level>_labels`` per level in ``vocabularies``."""
    scan_mask = np.zeros(n_image, dtype=bool)
    slice_mask = np.zeros((n_image, depth), dtype=bool)
    modality_ids = np.zeros(n_image, dtype=np.int64)
    key_slice = np.zeros(n_image, dtype=np.int64)
    for slot, (scan, idx, key) in enumerate(zip(plan.scans, plan.indices, plan.keys)):
        scan_mask[slot] = True
        slice_mask[slot, : len(idx)] = True
        modality_ids[slot] = modality_plane_id(scan["modality"], scan["plane"])
        key_slice[slot] = key
    names = plan.disorders if label_level == "disorder" else plan.icd10
    out = {
        "scan_mask": scan_mask,
        "slice_mask": slice_mask,
        "modality_ids": modality_ids,
        "key_slice": key_slice,
        "labels": multi_hot(names, label_index),
    }
    for level, index in (vocabularies or {}).items():
        out[f"{level}_labels"] = multi_hot(plan.disorders if level == "disorder" else plan.icd10, index)
    return out


def build_case(
    plan: CasePlan,
    volumes: list[np.ndarray],
    label_index: dict[str, int],
    *,
    n_image: int,
    depth: int,
    image_size: int,
    label_level: str = "disorder",
    augment: Callable[[np.ndarray], np.ndarray] | None = None,
    vocabularies: dict[str, dict[str, int]] | None = None,
    image_dtype: str = "float32",
) -> dict[str, np.ndarray]:
    """Fixed-shape arrays of one case from its plan and the read ``volumes`` (uint8 (K, H, W) each).

    Returns :func:`case_fields` plus images (N, D, H, W): float32 in [0, 1], or uint8 0..255 when
    ``image_dtype="uint8"`` (4x fewer bytes between processes; the pipeline converts on the device).
    """
    as_uint8 = image_dtype == "uint8"
    images = np.zeros((n_image, depth, image_size, image_size), dtype=np.uint8 if as_uint8 else np.float32)
    for slot, raw in enumerate(volumes):
        k = len(raw)
        if as_uint8 and augment is None and raw.shape[1:] == (image_size, image_size):
            images[slot, :k] = raw
        else:
            volume = resize_slices(raw.astype(np.float32) / 255.0, image_size)
            if augment is not None:
                volume = augment(volume)
            images[slot, :k] = to_uint8(volume) if as_uint8 else volume
    fields = case_fields(plan, label_index, n_image=n_image, depth=depth, label_level=label_level, vocabularies=vocabularies)
    return {"images": images, **fields}


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
    partner: dict[str, Any] | None = None,
    vocabularies: dict[str, dict[str, int]] | None = None,
) -> dict[str, np.ndarray]:
    """One case record -> arrays of the batch schema without the B axis (float32 images).

    ``read_slices(scan_id, indices) -> uint8 (K, H, W)``; see :func:`plan_case` and
    :func:`build_case` (the pipeline uses those two directly, reading a whole block concurrently).
    """
    plan = plan_case(record, n_image=n_image, depth=depth, rng=rng, partner=partner)
    volumes = [read_slices(scan_id, idx) for scan_id, idx in plan.requests()]
    return build_case(
        plan, volumes, label_index, n_image=n_image, depth=depth, image_size=image_size,
        label_level=label_level, augment=augment, vocabularies=vocabularies,
    )


def stack_cases(cases: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack per-case dicts into a batch dict with a leading B axis."""
    return {key: np.stack([case[key] for case in cases]) for key in cases[0]}
