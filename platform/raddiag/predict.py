"""``raddiag predict``: read one case folder of scans, assemble it like training, score it.

Supported files: ``.npy`` (RP3D float32 H×W×D, never unpickled), ``.nii``/``.nii.gz`` (nibabel),
``.dcm`` (pydicom; all files of one series form one volume, ordered by position), ``.png``/``.jpg``.
An optional ``case.json`` (``{"scans": {"file": {"modality": "CT", "plane": "axial"}}}``) names each
scan's modality/plane; otherwise 3D volumes count as CT axial and 2D images as X-ray.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from raddiag.schema import canonical_modality
from raddiag.storage.readers import SCAN_SUFFIXES, BadInput, read_dicom_series, read_volume, suffix_of


def _sidecar(folder: Path) -> dict[str, Any]:
    """``case.json``'s ``scans`` mapping (file name -> {modality, plane}); ValueError naming the file."""
    sidecar = folder / "case.json"
    if not sidecar.exists():
        return {}
    try:
        data = json.loads(sidecar.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{sidecar}: not readable JSON ({type(exc).__name__}); expected {{\"scans\": {{\"file\": {{\"modality\": \"CT\", \"plane\": \"axial\"}}}}}}") from None
    scans = data.get("scans", {}) if isinstance(data, dict) else None
    if not isinstance(scans, dict) or not all(isinstance(v, dict) for v in scans.values()):
        raise ValueError(f"{sidecar}: expected {{\"scans\": {{\"<file>\": {{\"modality\": ..., \"plane\": ...}}}}}}")
    return scans


def load_case_folder(folder: Path) -> list[dict[str, Any]]:
    """Scans of a case folder: [{name, volume (D, H, W) float32, modality, plane}]. Every problem
    (not a folder, no scan, an unreadable scan or case.json) is a ValueError naming the input —
    raised before any model is loaded."""
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a directory (expected a case folder of scans)")
    described = _sidecar(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and suffix_of(p) in SCAN_SUFFIXES)
    scans = []
    dicoms = [p for p in files if suffix_of(p) == ".dcm"]
    try:
        if dicoms:
            volume, headers = read_dicom_series(dicoms)
            modality = canonical_modality(str(getattr(headers[0], "Modality", "CT") or "CT"))
            scans.append({"name": "dicom-series", "volume": volume, "modality": modality, "plane": "axial"})
    except BadInput as exc:  # the reason names the DICOM file
        raise ValueError(f"{folder}: {exc}") from None
    volumes = []
    for path in files:
        if suffix_of(path) == ".dcm":
            continue
        try:
            volumes.append((path, read_volume(path).data))
        except BadInput as exc:
            raise ValueError(f"{path}: {exc}") from None
        except (OSError, MemoryError) as exc:
            raise ValueError(f"{path}: cannot be read ({type(exc).__name__})") from None
    for path, volume in volumes:
        info = {k: str(v) for k, v in described.get(path.name, {}).items()}
        default_modality = "CT" if volume.shape[0] > 1 else "X-ray"
        scans.append(
            {
                "name": path.name,
                "volume": volume,
                "modality": info.get("modality", default_modality),
                "plane": info.get("plane", "axial" if volume.shape[0] > 1 else "frontal"),
            }
        )
    if not scans:
        raise ValueError(f"{folder}: no scan files ({', '.join(SCAN_SUFFIXES)})")
    return scans


def case_arrays(scans: list[dict[str, Any]], data_cfg: Any, plan: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Assemble loaded scans exactly as training saw its store (a batch of one case).

    ``plan`` is the training store's preprocessing (``meta["plan"]`` of the model, from the store's
    ``dataset.json``): each scan goes through :func:`raddiag.storage.preprocess.prepare` with it — the
    same slice sampling, resize, CT window and normalisation ingest applied — and then through the
    same case assembly as a training batch. Without a plan (models trained before plans were
    recorded) the scans are min-max scaled to uint8 as they are."""
    from raddiag.data.assemble import assemble_case
    from raddiag.schema import canonical_modality
    from raddiag.storage.preprocess import Plan, prepare
    from raddiag.storage.store import to_uint8

    volumes: dict[str, np.ndarray] = {}
    keys: dict[str, int] = {}
    for scan in scans:
        volume = np.asarray(scan["volume"], dtype=np.float32)
        key = volume.shape[0] // 2
        if plan is not None:
            volume, key = prepare(volume, key, Plan.from_dict(plan), is_ct=canonical_modality(scan["modality"]) == "CT")
            volumes[scan["name"]] = (volume >> 8).astype(np.uint8) if volume.dtype == np.uint16 else volume  # as SliceReader
        else:
            volumes[scan["name"]] = to_uint8(volume)
        keys[scan["name"]] = key
    record = {
        "case_id": "predict",
        "disorders": [],
        "icd10": [],
        "scans": [
            {"scan_id": s["name"], "modality": s["modality"], "plane": s["plane"], "depth": volumes[s["name"]].shape[0],
             "key_slice": keys[s["name"]]}
            for s in scans
        ],
    }
    case = assemble_case(
        record,
        lambda scan_id, indices: volumes[scan_id][np.asarray(indices)],
        {},
        n_image=data_cfg.n_image,
        depth=data_cfg.depth,
        image_size=data_cfg.image_size,
    )
    from raddiag.schema import MODEL_INPUTS

    return {k: case[k][None] for k in MODEL_INPUTS}


def predict_case(model_uri: str, folder: Path, top_k: int = 5, scans: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Top-k labels with probabilities for one case folder (read first: a bad case fails before
    the model is loaded; pass ``scans`` from :func:`load_case_folder` to read it yourself)."""
    from raddiag.serve.bundle import ModelBundle

    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    scans = scans if scans is not None else load_case_folder(folder)
    bundle = ModelBundle.load(model_uri)
    frame = bundle.predict(bundle.case_inputs(scans))
    probs = frame.iloc[0].sort_values(ascending=False)[:top_k]
    return [{"label": str(label), "probability": float(p)} for label, p in probs.items()]
