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

SCAN_SUFFIXES = (".npy", ".nii", ".nii.gz", ".dcm", ".png", ".jpg", ".jpeg")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _as_dhw(array: np.ndarray, source: Path) -> np.ndarray:
    """H×W[×D] (channels-last, RP3D/NIfTI order) -> (D, H, W); equal-channel RGB -> one grey slice."""
    if array.ndim == 2:
        return array[None]
    if array.ndim == 3 and array.shape[-1] == 3 and np.allclose(array[..., 0], array[..., 1]) and np.allclose(array[..., 0], array[..., 2]):
        return array[..., 0][None]
    if array.ndim == 3:
        return np.moveaxis(array, -1, 0)
    if array.ndim == 4 and array.shape[-1] == 1:
        return np.moveaxis(array[..., 0], -1, 0)
    raise ValueError(f"{source}: expected a 2D image or a 3D volume, got shape {array.shape}")


def read_volume(path: Path) -> np.ndarray:
    """One scan file -> float32 (D, H, W)."""
    suffix = _suffix(path)
    if suffix == ".npy":
        array = np.load(path, allow_pickle=False)
    elif suffix in (".nii", ".nii.gz"):
        import nibabel

        array = np.asarray(nibabel.load(str(path)).dataobj, dtype=np.float32)
        if array.ndim == 3:
            return np.moveaxis(array, -1, 0).astype(np.float32)
    elif suffix in (".png", ".jpg", ".jpeg"):
        from PIL import Image

        array = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    else:
        raise ValueError(f"{path}: unsupported scan file (expected one of {', '.join(SCAN_SUFFIXES)})")
    if array.dtype.kind not in "fiub":
        raise ValueError(f"{path}: unsupported dtype {array.dtype}")
    volume = _as_dhw(np.asarray(array, dtype=np.float32), path)
    if not np.isfinite(volume).all():
        raise ValueError(f"{path}: contains NaN or Inf values")
    return volume


def read_dicom_series(paths: list[Path]) -> tuple[np.ndarray, str]:
    """DICOM files of one series -> (float32 (D, H, W) in rescaled units, modality)."""
    import pydicom

    datasets = [pydicom.dcmread(str(p)) for p in paths]

    def position(ds: Any) -> float:
        if hasattr(ds, "ImagePositionPatient"):
            return float(ds.ImagePositionPatient[2])
        return float(getattr(ds, "InstanceNumber", 0) or 0)

    datasets.sort(key=position)
    slices = []
    for ds in datasets:
        pixels = ds.pixel_array.astype(np.float32)
        pixels = pixels * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
        slices.append(pixels if pixels.ndim == 3 else pixels[None])
    return np.concatenate(slices).astype(np.float32), str(getattr(datasets[0], "Modality", "CT"))


def load_case_folder(folder: Path) -> list[dict[str, Any]]:
    """Scans of a case folder: [{name, volume (D, H, W) float32, modality, plane}]."""
    sidecar = folder / "case.json"
    described = json.loads(sidecar.read_text()).get("scans", {}) if sidecar.exists() else {}
    files = sorted(p for p in folder.iterdir() if p.is_file() and _suffix(p) in SCAN_SUFFIXES)
    scans = []
    dicoms = [p for p in files if _suffix(p) == ".dcm"]
    if dicoms:
        volume, modality = read_dicom_series(dicoms)
        scans.append({"name": "dicom-series", "volume": volume, "modality": modality, "plane": "axial"})
    for path in files:
        if _suffix(path) == ".dcm":
            continue
        volume = read_volume(path)
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
    return {k: case[k][None] for k in ("images", "scan_mask", "slice_mask", "modality_ids")}


def predict_case(model_uri: str, folder: Path, top_k: int = 5) -> list[dict[str, Any]]:
    """Top-k labels with probabilities for one case folder."""
    from raddiag.config import RadDiagConfig
    from raddiag.evaluate import load_pyfunc

    model, wrapper = load_pyfunc(model_uri)
    data_cfg = RadDiagConfig.model_validate(wrapper.meta["config"]).data
    frame = model.predict(case_arrays(load_case_folder(folder), data_cfg))
    probs = frame.iloc[0].sort_values(ascending=False)[:top_k]
    return [{"label": str(label), "probability": float(p)} for label, p in probs.items()]
