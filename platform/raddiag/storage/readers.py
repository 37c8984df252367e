"""Scan file readers: ``.npy`` (RP3D float32 H×W×D), NIfTI, DICOM series, PNG/JPEG -> float32 (D, H, W).

One implementation for ``raddiag ingest`` and ``raddiag predict``. Every reader is defensive: it
checks the declared dimensions *before* allocating (a decompression-bomb guard), never unpickles,
and raises :class:`BadInput` with a one-line reason for anything it refuses. Callers quarantine on
:class:`BadInput`; any other exception is a bug.

Axis conventions: RP3D ``.npy`` and NIfTI arrays are H×W×D (slices last) and become (D, H, W) by
moving the last axis first; an RGB image whose three channels are equal is one grey slice (D = 1).
DICOM slices are ordered by their position along the slice normal. Spacing is returned in the
(D, H, W) order of the volume, in millimetres where the format records it (empty when unknown).
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SCAN_SUFFIXES = (".npy", ".nii", ".nii.gz", ".dcm", ".png", ".jpg", ".jpeg")


class BadInput(ValueError):
    """A scan file that cannot be ingested; ``str(exc)`` is the quarantine reason (no PHI in it)."""


@dataclass(frozen=True)
class Limits:
    """Decompression-bomb guard: dimensions are checked from headers before any pixel is decoded."""

    max_side: int = 8192
    max_depth: int = 4096
    max_voxels: int = 2**28  # 1 GiB as float32
    max_bytes: int = 2**31  # working memory one scan may take while it is decoded (see BYTES_PER_VOXEL)


#: Peak working memory per voxel while a scan is decoded and prepared (float32 decode + one
#: reordered copy; measured ~7.6 B/voxel for a 67 M-voxel NIfTI), with headroom.
BYTES_PER_VOXEL = 12


@dataclass
class Volume:
    """A decoded scan: ``data`` float32 (D, H, W), spacing (D, H, W) in mm or empty, plus metadata."""

    data: np.ndarray
    spacing: list[float] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def suffix_of(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def check_shape(shape: tuple[int, ...], limits: Limits, what: str = "image") -> None:
    """Raise :class:`BadInput` for absurd declared dimensions (checked before decoding)."""
    dims = [int(s) for s in shape]
    if not dims or any(d <= 0 for d in dims):
        raise BadInput(f"empty {what}: shape {tuple(dims)}")
    spatial = sorted(dims, reverse=True)
    if spatial[0] > max(limits.max_side, limits.max_depth) or (len(spatial) > 1 and spatial[1] > limits.max_side):
        raise BadInput(f"absurd dimensions {tuple(dims)} (limits: side {limits.max_side}, depth {limits.max_depth})")
    voxels = int(np.prod(np.asarray(dims, dtype=np.float64)))
    if voxels > limits.max_voxels:
        raise BadInput(f"absurd dimensions {tuple(dims)}: more than {limits.max_voxels} voxels")
    if voxels * BYTES_PER_VOXEL > limits.max_bytes:
        raise BadInput(
            f"{tuple(dims)} needs ~{voxels * BYTES_PER_VOXEL // 2**20} MB to decode, over the memory budget per worker "
            f"({limits.max_bytes // 2**20} MB: raise ingest.memory_mb or lower --workers)"
        )


def as_dhw(array: np.ndarray) -> np.ndarray:
    """H×W[×D] (channels/slices last, RP3D/NIfTI order) -> (D, H, W); equal-channel RGB -> one grey slice."""
    if array.ndim == 2:
        return array[None]
    if array.ndim == 3 and array.shape[-1] in (3, 4) and _equal_channels(array[..., :3]):
        return array[..., 0][None]
    if array.ndim == 3:
        return np.moveaxis(array, -1, 0)
    if array.ndim == 4 and array.shape[-1] == 1:
        return np.moveaxis(array[..., 0], -1, 0)
    raise BadInput(f"expected a 2D image or a 3D volume, got shape {array.shape}")


def _equal_channels(rgb: np.ndarray) -> bool:
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]))


def check_values(volume: np.ndarray) -> None:
    """NaN/Inf voxels and constant images are refused (min-max normalisation would be meaningless)."""
    finite = np.isfinite(volume)
    if not finite.all():
        raise BadInput(f"{int(volume.size - finite.sum())} NaN/Inf voxels")
    lo, hi = float(volume.min()), float(volume.max())
    if hi <= lo:
        raise BadInput(f"constant image (every voxel = {lo:g})")


# ---- .npy -----------------------------------------------------------------------------------------
def read_npy(path: Path, limits: Limits = Limits()) -> Volume:
    """A numeric ``.npy`` (never unpickled: object dtypes and pickles are refused from the header)."""
    from numpy.lib import format as npy_format

    with open(path, "rb") as handle:
        try:
            version = npy_format.read_magic(handle)
        except ValueError:
            raise BadInput("not a .npy file (bad magic; pickles are never loaded)") from None
        try:
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(handle)
            else:
                shape, fortran, dtype = npy_format.read_array_header_2_0(handle)
        except (ValueError, SyntaxError) as exc:
            raise BadInput(f"corrupt .npy header ({type(exc).__name__})") from None
        if dtype.hasobject:
            raise BadInput(f"object dtype {dtype} (pickled .npy refused, never unpickled)")
        if dtype.kind not in "fiub":
            raise BadInput(f"unsupported dtype {dtype}")
        check_shape(shape, limits)
        count = int(np.prod(shape))
        expected = count * dtype.itemsize
        available = os.fstat(handle.fileno()).st_size - handle.tell()
        if available < expected:
            raise BadInput(f"truncated .npy: {available} of {expected} data bytes")
        flat = np.fromfile(handle, dtype=dtype, count=count)
    array = flat.reshape(shape, order="F" if fortran else "C")
    volume = as_dhw(array.astype(np.float32, copy=False))
    return Volume(np.ascontiguousarray(volume), [], {})


# ---- NIfTI ----------------------------------------------------------------------------------------
def read_nifti(path: Path, limits: Limits = Limits()) -> Volume:
    """``.nii``/``.nii.gz`` via nibabel; (X, Y, Z) -> (Z, X, Y) like the RP3D npy convention."""
    import nibabel

    try:
        image = nibabel.load(str(path))
        shape = tuple(int(s) for s in image.header.get_data_shape())
        zooms = [float(z) for z in image.header.get_zooms()]
    except Exception as exc:  # nibabel raises many types for a bad header
        raise BadInput(f"corrupt NIfTI header ({type(exc).__name__})") from None
    check_shape(shape, limits)
    if len(shape) == 4 and shape[3] != 1:
        raise BadInput(f"4D NIfTI with {shape[3]} volumes (expected one 3D volume)")
    try:
        array = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as exc:  # truncated/corrupt data block (EOFError, zlib.error, ValueError, ...)
        raise BadInput(f"corrupt or truncated NIfTI data ({type(exc).__name__})") from None
    if array.ndim == 4:
        array = array[..., 0]
    if array.ndim == 2:
        return Volume(array[None].copy(), [1.0, *zooms[:2]], {})
    if array.ndim != 3:
        raise BadInput(f"expected a 2D or 3D NIfTI, got shape {array.shape}")
    spacing = [zooms[2], zooms[0], zooms[1]] if len(zooms) >= 3 else []
    return Volume(np.ascontiguousarray(np.moveaxis(array, -1, 0)), spacing, {})


# ---- PNG / JPEG -----------------------------------------------------------------------------------
def read_image(path: Path, limits: Limits = Limits()) -> Volume:
    """A PNG/JPEG as one grey slice (equal-channel RGB -> grey; colour -> luminance)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
            check_shape((height, width), limits)
            image.load()
            if image.mode in ("RGB", "RGBA"):
                rgb = np.asarray(image.convert("RGB"))
                array = rgb[..., 0] if _equal_channels(rgb) else np.asarray(image.convert("L"))
            elif image.mode in ("I;16", "I;16B", "I", "F", "L"):
                array = np.asarray(image)
            else:
                array = np.asarray(image.convert("L"))
    except BadInput:
        raise
    except Image.DecompressionBombError:
        raise BadInput("absurd dimensions (PIL decompression-bomb guard)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadInput(f"corrupt or truncated image ({type(exc).__name__})") from None
    return Volume(np.asarray(array, dtype=np.float32)[None].copy(), [], {})


# ---- DICOM ----------------------------------------------------------------------------------------
def _quiet_pydicom() -> None:
    """pydicom warnings can quote tag values (PHI): they never reach our logs."""
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)


def read_dicom_headers(paths: list[Path]) -> list[tuple[Path, Any]]:
    """(path, dataset without pixels) for every readable DICOM file; unreadable files raise BadInput."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    _quiet_pydicom()
    headers = []
    for path in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                headers.append((path, pydicom.dcmread(str(path), stop_before_pixels=True)))
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, AttributeError) as exc:
            raise BadInput(f"{path.name}: not a readable DICOM file ({type(exc).__name__})") from None
    return headers


def group_series(headers: list[tuple[Path, Any]]) -> dict[str, list[Path]]:
    """Files grouped by SeriesInstanceUID (files without one form their own series), in path order."""
    series: dict[str, list[Path]] = {}
    for path, ds in headers:
        uid = str(getattr(ds, "SeriesInstanceUID", "") or f"no-series:{path}")
        series.setdefault(uid, []).append(path)
    return series


def _instance_number(ds: Any) -> float:
    try:
        return float(getattr(ds, "InstanceNumber", 0) or 0)
    except (TypeError, ValueError):
        return 0.0


def slice_position(ds: Any) -> float:
    """Position along the slice normal (ImagePositionPatient · normal); InstanceNumber when either
    tag is absent or malformed (not numbers, wrong count)."""
    try:
        orientation = getattr(ds, "ImageOrientationPatient", None)
        position = getattr(ds, "ImagePositionPatient", None)
        if orientation is not None and position is not None and len(orientation) == 6 and len(position) == 3:
            row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
            value = float(np.dot(np.cross(row, col), np.asarray(position, float)))
            if np.isfinite(value):
                return value
    except (TypeError, ValueError):
        pass
    return _instance_number(ds)


def _rescale(ds: Any) -> tuple[float, float]:
    slope = getattr(ds, "RescaleSlope", None)
    intercept = getattr(ds, "RescaleIntercept", None)
    if slope is None and "SharedFunctionalGroupsSequence" in ds:  # enhanced multi-frame
        shared = ds.SharedFunctionalGroupsSequence[0]
        if "PixelValueTransformationSequence" in shared:
            transform = shared.PixelValueTransformationSequence[0]
            slope, intercept = transform.get("RescaleSlope"), transform.get("RescaleIntercept")
    try:
        values = float(slope if slope not in (None, "") else 1.0), float(intercept if intercept not in (None, "") else 0.0)
    except (TypeError, ValueError):
        raise BadInput("RescaleSlope/RescaleIntercept are not numbers") from None
    if not all(np.isfinite(values)) or values[0] == 0:
        raise BadInput("RescaleSlope/RescaleIntercept out of range (slope 0 or not finite)")
    return values


#: SOP classes that hold no image to train on (segmentations, structured reports, presentation
#: states, RT objects, raw data, encapsulated documents), and their Modality codes.
NON_IMAGE_SOP_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.66",   # raw data, spatial registration, fiducials, segmentation (.66.4)
    "1.2.840.10008.5.1.4.1.1.88",   # structured reports, key object selection
    "1.2.840.10008.5.1.4.1.1.11",   # presentation states
    "1.2.840.10008.5.1.4.1.1.481",  # RT structure sets, plans, doses, records
    "1.2.840.10008.5.1.4.1.1.104",  # encapsulated PDF/CDA
    "1.2.840.10008.5.1.4.1.1.9",    # waveforms (ECG, audio)
)
NON_IMAGE_MODALITIES = frozenset({"SEG", "SR", "PR", "KO", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "REG", "DOC", "ECG", "AU"})


def check_image_object(ds: Any) -> None:
    """Refuse DICOM objects that are not images (a SEG is a mask, an SR a document)."""
    sop = str(getattr(ds, "SOPClassUID", "") or "")
    modality = str(getattr(ds, "Modality", "") or "").upper()
    if sop.startswith(NON_IMAGE_SOP_PREFIXES) or modality in NON_IMAGE_MODALITIES:
        what = modality or sop
        raise BadInput(f"not an image to train on ({what} object); only image SOP classes are ingested")


def _to_grey(ds: Any, raw: np.ndarray) -> np.ndarray:
    """Pixels as a viewer shows them, grey, float32: PALETTE COLOR through its LUT, colour to
    luminance, MONOCHROME1 inverted (its lowest value is displayed white)."""
    photometric = str(getattr(ds, "PhotometricInterpretation", "") or "").upper()
    pixels = raw
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        pixels = apply_color_lut(raw, ds)
    pixels = pixels.astype(np.float32)
    if photometric.startswith(("RGB", "YBR", "PALETTE")) and pixels.shape[-1] == 3:
        pixels = pixels[..., 0] if _equal_channels(pixels) else pixels @ np.array([0.299, 0.587, 0.114], np.float32)
    if photometric == "MONOCHROME1":
        bits = int(getattr(ds, "BitsStored", 0) or 0)
        signed = int(getattr(ds, "PixelRepresentation", 0) or 0) == 1
        pixels = ((2.0**bits - 1) - pixels) if bits and not signed else -pixels
    return pixels


def read_dicom_series(paths: list[Path], limits: Limits = Limits()) -> tuple[np.ndarray, list[Any]]:
    """DICOM files of ONE series -> (float32 (D, H, W) in rescaled units, headers in slice order).

    Slices are sorted by position along the normal; multi-frame files contribute all their frames;
    RescaleSlope/Intercept (also from enhanced functional groups) are applied per file. The
    returned headers are for :mod:`raddiag.storage.deid` only, which keeps an allow-list of them.
    """
    import pydicom

    headers = read_dicom_headers(paths)
    for _, ds in headers:
        check_image_object(ds)
    try:
        rows = {int(getattr(ds, "Rows", 0) or 0) for _, ds in headers}
        cols = {int(getattr(ds, "Columns", 0) or 0) for _, ds in headers}
        frames = sum(int(getattr(ds, "NumberOfFrames", 1) or 1) for _, ds in headers)
    except (TypeError, ValueError):
        raise BadInput("Rows/Columns/NumberOfFrames are not numbers") from None
    if len(rows) != 1 or len(cols) != 1:
        raise BadInput(f"series mixes image sizes {sorted(rows)}x{sorted(cols)}")
    check_shape((frames, rows.pop(), cols.pop()), limits, "DICOM series")
    headers.sort(key=lambda item: (slice_position(item[1]), _instance_number(item[1])))
    slices = []
    for path, header in headers:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(str(path))
                raw = ds.pixel_array
        except Exception as exc:  # missing/truncated pixel data, unsupported transfer syntax
            raise BadInput(f"{path.name}: {_undecodable(header, exc)}") from None
        try:
            pixels = _to_grey(ds, raw)
        except (AttributeError, KeyError, TypeError, ValueError, IndexError) as exc:  # e.g. a broken palette
            raise BadInput(f"{path.name}: cannot render its pixels ({type(exc).__name__})") from None
        slope, intercept = _rescale(ds)
        pixels = pixels * slope + intercept
        slices.append(pixels if pixels.ndim == 3 else pixels[None])
    return np.ascontiguousarray(np.concatenate(slices).astype(np.float32)), [ds for _, ds in headers]


def _undecodable(ds: Any, exc: Exception) -> str:
    """Why pixel data could not be decoded; names the missing decoder for a compressed syntax."""
    syntax = getattr(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None), "name", "")
    text = str(exc)
    if syntax and any(word in text.lower() for word in ("plugin", "decoder", "no pixel data handler", "missing required dependencies")):
        return f"no decoder for {syntax} here (install pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg)"
    return f"undecodable DICOM pixel data{f' ({syntax})' if syntax else ''} ({type(exc).__name__})"


# ---- dispatch ---------------------------------------------------------------------------------------
def read_volume(path: Path, limits: Limits = Limits()) -> Volume:
    """One non-DICOM scan file -> :class:`Volume` (float32 (D, H, W)), values checked."""
    suffix = suffix_of(path)
    if suffix == ".npy":
        volume = read_npy(path, limits)
    elif suffix in (".nii", ".nii.gz"):
        volume = read_nifti(path, limits)
    elif suffix in (".png", ".jpg", ".jpeg"):
        volume = read_image(path, limits)
    else:
        raise BadInput(f"unsupported scan file {path.name!r} (expected one of {', '.join(SCAN_SUFFIXES)})")
    check_values(volume.data)
    return volume
