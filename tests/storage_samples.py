"""Sample inputs for the storage tests: PHI-filled DICOM series (from pydicom's bundled files) and
deliberately bad files of every kind ingest must quarantine. Nothing here touches the network."""

from __future__ import annotations

import copy
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np

PHI = {
    "PatientName": "Doe^Jane^PHI",
    "PatientID": "MRN-PHI-998877",
    "PatientBirthDate": "19610203",
    "InstitutionName": "St PHI Hospital",
    "ReferringPhysicianName": "Dr^PHIReferrer",
    "AccessionNumber": "ACC-PHI-4242",
    "StudyDate": "20230405",
    "StudyID": "STUDY-PHI-77",
}
#: Strings that must never appear anywhere in a store, manifest or log.
PHI_STRINGS = ["Doe^Jane", "MRN-PHI-998877", "19610203", "St PHI Hospital", "PHIReferrer", "ACC-PHI-4242", "STUDY-PHI-77"]
STUDY_UID = "1.2.826.0.1.3680043.2.1125.999.1"


def _testfile(name: str) -> Path:
    import pydicom

    return Path(pydicom.__file__).parent / "data" / "test_files" / name  # bundled, never downloaded


def _with_phi(ds, series_uid: str, study_uid: str = STUDY_UID):  # noqa: ANN001, ANN202
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    return ds


def write_ct_series(folder: Path, n_slices: int = 4, slope: float = 2.0, intercept: float = -1000.0, **extra: str) -> np.ndarray:
    """CT_small.dcm as an ``n_slices`` series with PHI filled in, written in reverse file-name order.

    Each slice i holds the original pixels + 10*i (stored units); returns the expected
    rescaled (D, H, W) volume in position order.
    """
    import pydicom

    folder.mkdir(parents=True, exist_ok=True)
    base = pydicom.dcmread(_testfile("CT_small.dcm"))
    pixels = base.pixel_array.astype(np.int32)
    expected = []
    for i in range(n_slices):
        ds = _with_phi(copy.deepcopy(base), series_uid=STUDY_UID + ".1")
        slice_pixels = (pixels + 10 * i).astype(base.pixel_array.dtype)
        ds.PixelData = slice_pixels.tobytes()
        ds.ImagePositionPatient = [0.0, 0.0, 5.0 * i]
        ds.InstanceNumber = n_slices - i  # deliberately inconsistent: position must win
        ds.SOPInstanceUID = f"{STUDY_UID}.1.{i}"
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        for keyword, value in extra.items():
            setattr(ds, keyword, value)
        ds.save_as(folder / f"{n_slices - 1 - i:03d}.dcm")  # file order = reverse position order
        expected.append(slice_pixels.astype(np.float32) * slope + intercept)
    return np.stack(expected)


def write_mr_multiframe(path: Path, n_frames: int = 3) -> np.ndarray:
    """MR_small.dcm as one multi-frame file (same patient/study as the CT series); returns (D, H, W)."""
    import pydicom

    ds = _with_phi(pydicom.dcmread(_testfile("MR_small.dcm")), series_uid=STUDY_UID + ".2")
    frames = np.stack([ds.pixel_array.astype(np.int32) + 7 * f for f in range(n_frames)]).astype(ds.pixel_array.dtype)
    ds.NumberOfFrames = n_frames
    ds.PixelData = frames.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)
    return frames.astype(np.float32)


def write_secondary_capture(path: Path) -> None:
    import pydicom

    ds = _with_phi(pydicom.dcmread(_testfile("SC_rgb_small_odd.dcm")), series_uid=STUDY_UID + ".3")
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)


def png_bytes(width: int, height: int, idat: bytes | None = None) -> bytes:
    """A minimal 8-bit grey PNG; ``idat`` None = valid zero pixels (only sensible for small sizes)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    if idat is None:
        idat = zlib.compress(b"".join(b"\x00" + bytes(range(width)) for _ in range(height)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def write_bad_files(folder: Path) -> dict[str, str]:
    """One file per quarantine reason; returns {file name: expected reason fragment}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    good = rng.random((16, 16, 4), dtype=np.float32)
    np.save(folder / "truncated.npy", good)
    data = (folder / "truncated.npy").read_bytes()
    (folder / "truncated.npy").write_bytes(data[: len(data) // 2])
    (folder / "corrupt.png").write_bytes(png_bytes(16, 16)[:40] + b"garbage" * 10)
    nan = good.copy()
    nan[3, 3, 1] = np.nan
    np.save(folder / "nan.npy", nan)
    inf = good.copy()
    inf[0, 0, 0] = np.inf
    np.save(folder / "inf.npy", inf)
    np.save(folder / "constant.npy", np.full((16, 16, 2), 3.5, dtype=np.float32))
    header = {"descr": "<f4", "fortran_order": False, "shape": (200000, 200000, 64)}
    with open(folder / "bomb.npy", "wb") as handle:  # a header promising 10 TB, 1 KB of data
        np.lib.format.write_array_header_1_0(handle, header)
        handle.write(b"\x00" * 1024)
    (folder / "bomb.png").write_bytes(png_bytes(100000, 100000, idat=zlib.compress(b"\x00" * 1000)))
    np.save(folder / "object.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    (folder / "pickled.npy").write_bytes(pickle.dumps({"payload": "never unpickled"}))
    import nibabel

    nibabel.save(nibabel.Nifti1Image(good, np.eye(4)), str(folder / "truncated.nii.gz"))
    blob = (folder / "truncated.nii.gz").read_bytes()
    (folder / "truncated.nii.gz").write_bytes(blob[: len(blob) // 2])
    return {
        "truncated.npy": "truncated",
        "corrupt.png": "corrupt",
        "nan.npy": "NaN/Inf",
        "inf.npy": "NaN/Inf",
        "constant.npy": "constant image",
        "bomb.npy": "absurd dimensions",
        "bomb.png": "absurd dimensions",
        "object.npy": "object dtype",
        "pickled.npy": "pickles are never loaded",
        "truncated.nii.gz": "truncated",
    }
