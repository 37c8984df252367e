"""Shared vocabulary: the modality/plane id table and the batch dictionary every stage exchanges.

A training batch is a ``dict[str, torch.Tensor]`` with these keys (B cases, N scans, D slices):

============== ================= =======================================================
key            shape / dtype     meaning
============== ================= =======================================================
images         (B, N, D, H, W)   float32 in [0, 1]; padded scans/slices are 0
scan_mask      (B, N) bool       True for a real scan
slice_mask     (B, N, D) bool    True for a real slice (False on padded scans too)
modality_ids   (B, N) int64      id from :data:`MODALITY_PLANE_IDS`; 0 = padding
key_slice      (B, N) int64      index of the key slice within the D sampled slices
labels         (B, C) float32    multi-hot targets at the configured label level
============== ================= =======================================================
"""

from __future__ import annotations

BATCH_KEYS = ("images", "scan_mask", "slice_mask", "modality_ids", "key_slice", "labels")
#: The batch keys the network (and the served pyfunc) takes as input, in forward() order.
MODEL_INPUTS = BATCH_KEYS[:4]

#: The paper's 16-entry modality/plane embedding table; 0 is padding.
MODALITY_PLANE_IDS: dict[tuple[str, str], int] = {
    ("CT", "axial"): 1,
    ("CT", "coronal"): 2,
    ("CT", "sagittal"): 3,
    ("MRI", "axial"): 4,
    ("MRI", "coronal"): 5,
    ("MRI", "sagittal"): 6,
    ("X-ray", "*"): 7,
    ("Ultrasound", "*"): 8,
    ("Fluoroscopy", "*"): 9,
    ("DSA", "*"): 10,
    ("Nuclear medicine", "*"): 11,
    ("Mammography", "*"): 12,
    ("Barium", "*"): 13,
    ("CT", "*"): 14,
    ("MRI", "*"): 15,
}
NUM_MODALITY_IDS = 16

_MODALITY_ALIASES = {
    "ct": "CT",
    "mri": "MRI",
    "mr": "MRI",
    "x-ray": "X-ray",
    "xray": "X-ray",
    "cr": "X-ray",
    "dx": "X-ray",
    "ultrasound": "Ultrasound",
    "us": "Ultrasound",
    "fluoroscopy": "Fluoroscopy",
    "rf": "Fluoroscopy",
    "dsa": "DSA",
    "dsa (angiography)": "DSA",
    "xa": "DSA",
    "nuclear medicine": "Nuclear medicine",
    "nm": "Nuclear medicine",
    "pt": "Nuclear medicine",
    "mammography": "Mammography",
    "mg": "Mammography",
    "barium": "Barium",
}


def canonical_modality(name: str | None) -> str:
    """Normalise a modality name (``"MR"`` -> ``"MRI"``); unknown names are returned title-cased."""
    if not name:
        return "unknown"
    return _MODALITY_ALIASES.get(name.strip().lower(), name.strip())


def modality_plane_id(modality: str | None, plane: str | None) -> int:
    """Id in the 16-entry table for a (modality, plane) pair; unknown pairs fall back per modality.

    Returns 14/15 for CT/MRI with an unknown plane and 7 (X-ray) for an unknown modality.
    """
    mod = canonical_modality(modality)
    pl = (plane or "").strip().lower()
    return MODALITY_PLANE_IDS.get((mod, pl)) or MODALITY_PLANE_IDS.get((mod, "*")) or MODALITY_PLANE_IDS[("X-ray", "*")]


def max_scans_for(modality: str) -> int:
    """The paper's per-case cap by modality: 3 planes for CT/MRI, 2 X-ray views, 1 otherwise."""
    mod = canonical_modality(modality)
    return 3 if mod in ("CT", "MRI") else 2 if mod == "X-ray" else 1
