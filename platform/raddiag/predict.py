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


def load_case_folder(folder: Path) -> list[dict[str, Any]]:
    """Scans of a case folder: [{name, volume (D, H, W) float32, modality, plane}]."""
    sidecar = folder / "case.json"
    described = json.loads(sidecar.read_text()).get("scans", {}) if sidecar.exists() else {}
    files = sorted(p for p in folder.iterdir() if p.is_file() and suffix_of(p) in SCAN_SUFFIXES)
    scans = []
    dicoms = [p for p in files if suffix_of(p) == ".dcm"]
    try:
        if dicoms:
            volume, headers = read_dicom_series(dicoms)
            modality = canonical_modality(str(getattr(headers[0], "Modality", "CT") or "CT"))
            scans.append({"name": "dicom-series", "volume": volume, "modality": modality, "plane": "axial"})
        volumes = [(path, read_volume(path).data) for path in files if suffix_of(path) != ".dcm"]
    except BadInput as exc:
        raise ValueError(f"{folder}: {exc}") from None
    for path, volume in volumes:
        info = described.get(path.name, {})
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


def case_arrays(scans: list[dict[str, Any]], data_cfg: Any) -> dict[str, np.ndarray]:
    """Assemble loaded scans exactly as evaluation does (a batch of one case)."""
    from raddiag.data.assemble import assemble_case
    from raddiag.storage.store import to_uint8

    volumes = {scan["name"]: to_uint8(scan["volume"]) for scan in scans}
    record = {
        "case_id": "predict",
        "disorders": [],
        "icd10": [],
        "scans": [
            {"scan_id": s["name"], "modality": s["modality"], "plane": s["plane"], "depth": s["volume"].shape[0], "key_slice": s["volume"].shape[0] // 2}
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


def predict_case(model_uri: str, folder: Path, top_k: int = 5) -> list[dict[str, Any]]:
    """Top-k labels with probabilities for one case folder."""
    from raddiag.config import RadDiagConfig
    from raddiag.evaluate import load_pyfunc

    model, wrapper = load_pyfunc(model_uri)
    data_cfg = RadDiagConfig.model_validate(wrapper.meta["config"]).data
    frame = model.predict(case_arrays(load_case_folder(folder), data_cfg))
    probs = frame.iloc[0].sort_values(ascending=False)[:top_k]
    return [{"label": str(label), "probability": float(p)} for label, p in probs.items()]
