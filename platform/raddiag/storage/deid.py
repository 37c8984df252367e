"""DICOM de-identification: the only code that looks at DICOM header values.

Nothing from a DICOM header reaches the store, the manifest, logs or MLflow except:

- the fields of :data:`STORED_FIELDS` (modality, plane, spacing, orientation), derived from the
  tags of :data:`ALLOWED_TAGS` only;
- keyed hashes (HMAC-SHA256 with a secret key that is never stored) of :data:`LINK_TAGS`, so the
  scans of one patient/study stay linked without revealing the identifiers;
- :data:`FLAG_TAGS`-derived flags: burned-in annotation and secondary capture (pixel data that may
  carry PHI); ingest quarantines flagged scans unless told to keep them (they keep the flag).

Pixel data is the only other thing stored. The key comes from an environment variable (default
``RADDIAG_DEID_KEY``); without it DICOM ingest refuses to run, because unkeyed hashes of short
identifiers (MRNs) can be reversed by brute force.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raddiag.schema import canonical_modality

#: What a de-identified scan keeps (the manifest columns filled from DICOM).
STORED_FIELDS = ("modality", "plane", "spacing", "orientation")

#: Tags read to derive :data:`STORED_FIELDS` (values are not PHI).
ALLOWED_TAGS = (
    "Modality",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
    "ViewPosition",
)

#: Tags whose values are replaced by keyed hashes (never stored in clear).
LINK_TAGS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID")

#: Tags read to flag pixel data that may contain burned-in PHI.
FLAG_TAGS = ("BurnedInAnnotation", "SOPClassUID", "ConversionType")

#: Secondary Capture SOP classes (screenshots, scanned documents: often burned-in text).
SECONDARY_CAPTURE_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.7",
        "1.2.840.10008.5.1.4.1.1.7.1",
        "1.2.840.10008.5.1.4.1.1.7.2",
        "1.2.840.10008.5.1.4.1.1.7.3",
        "1.2.840.10008.5.1.4.1.1.7.4",
    }
)

DEFAULT_KEY_ENV = "RADDIAG_DEID_KEY"


class DeidKeyMissing(RuntimeError):
    """DICOM input without a de-identification key (a CLI misuse: exit code 2)."""


@dataclass
class DicomMeta:
    """What survives de-identification of one series."""

    modality: str
    plane: str
    spacing: list[float]
    orientation: list[float]
    patient_key: str
    study_key: str
    series_key: str
    flags: list[str] = field(default_factory=list)

    def stored(self) -> dict[str, Any]:
        """Exactly :data:`STORED_FIELDS` (plus the keyed hashes and flags)."""
        return {
            "modality": self.modality, "plane": self.plane, "spacing": self.spacing, "orientation": self.orientation,
            "patient_key": self.patient_key, "study_key": self.study_key, "series_key": self.series_key,
            "flags": list(self.flags),
        }


def deid_key(env_name: str = DEFAULT_KEY_ENV) -> bytes:
    """The secret HMAC key from ``$env_name``; raises :class:`DeidKeyMissing` naming the fix."""
    value = os.environ.get(env_name, "")
    if len(value) < 16:
        raise DeidKeyMissing(
            f"DICOM input needs a de-identification key: export {env_name}=<secret of >= 16 characters> "
            "(keep it out of the store; the same key keeps re-ingests linked)"
        )
    return value.encode()


def keyed_hash(value: str, key: bytes, kind: str) -> str:
    """HMAC-SHA256 of ``kind:value`` (16 hex chars); empty value -> empty hash."""
    if not value:
        return ""
    return hmac.new(key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()[:16]


def plane_from_orientation(orientation: list[float]) -> str:
    """axial / coronal / sagittal from ImageOrientationPatient (the dominant axis of the normal)."""
    if len(orientation) != 6:
        return ""
    normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]


def _floats(value: Any) -> list[float]:
    """A DICOM DS/multi-value as a list of floats (empty when absent or malformed)."""
    if value is None or (isinstance(value, (str, bytes)) and not value):
        return []
    items = list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
    try:
        return [float(v) for v in items]
    except (TypeError, ValueError):
        return []


#: Photometric interpretations of colour images: screen captures, ultrasound and photographs, which
#: commonly carry burned-in text (patient name, dates, institution) in their pixels.
COLOUR_PHOTOMETRICS = ("RGB", "YBR", "PALETTE")


def flags_of(ds: Any) -> list[str]:
    """Why the pixels of ``ds`` may show PHI (empty when nothing suggests it).

    - ``burned_in_annotation``: the header says ``BurnedInAnnotation: YES``;
    - ``secondary_capture``: a secondary-capture SOP class or a ``ConversionType`` (screenshots);
    - ``burned_in_risk:US`` / ``burned_in_risk:colour``: ultrasound, or a colour/palette image, whose
      header does not state ``BurnedInAnnotation: NO`` — the usual carriers of burned-in text.
      Only the header is read: the pixels are not searched for text (no OCR).
    """
    flags = []
    burned = str(getattr(ds, "BurnedInAnnotation", "")).strip().upper()
    if burned == "YES":
        flags.append("burned_in_annotation")
    sop_class = str(getattr(ds, "SOPClassUID", ""))
    if sop_class in SECONDARY_CAPTURE_SOP_CLASSES or getattr(ds, "ConversionType", None):
        flags.append("secondary_capture")
    if burned != "NO":
        if str(getattr(ds, "Modality", "") or "").upper() == "US" or sop_class.startswith(US_SOP_CLASS_PREFIXES):
            flags.append("burned_in_risk:US")
        if str(getattr(ds, "PhotometricInterpretation", "") or "").upper().startswith(COLOUR_PHOTOMETRICS):
            flags.append("burned_in_risk:colour")
    return flags


#: Ultrasound image storage SOP classes (single and multi-frame, retired versions included).
US_SOP_CLASS_PREFIXES = ("1.2.840.10008.5.1.4.1.1.6", "1.2.840.10008.5.1.4.1.1.3")


def deidentify(headers: list[Any], key: bytes, depth: int) -> DicomMeta:
    """The allow-listed, de-identified metadata of one series (``headers`` in slice order).

    Spacing is (D, H, W) in mm: the distance between consecutive slice positions (else
    SpacingBetweenSlices / SliceThickness), then PixelSpacing (row, column).
    """
    first = headers[0]
    code = str(getattr(first, "Modality", "") or "").upper()
    orientation = _floats(getattr(first, "ImageOrientationPatient", None))
    measures = _shared_pixel_measures(first)  # enhanced CT/MR: spacing lives in the functional groups
    pixel = _floats(getattr(first, "PixelSpacing", None))[:2] or _floats(measures.get("PixelSpacing"))[:2]
    slice_spacing = (
        _slice_gap(headers) or _floats(getattr(first, "SpacingBetweenSlices", None))[:1]
        or _floats(getattr(first, "SliceThickness", None))[:1]
        or _floats(measures.get("SpacingBetweenSlices"))[:1] or _floats(measures.get("SliceThickness"))[:1]
    )
    spacing = (slice_spacing[:1] or [0.0]) + (pixel if len(pixel) == 2 else [0.0, 0.0]) if (pixel or slice_spacing) else []
    modality = canonical_modality(code)
    if depth > 1 or modality in ("CT", "MRI"):
        plane = plane_from_orientation(orientation) or "axial"
    else:
        view = str(getattr(first, "ViewPosition", "") or "").upper()
        plane = "lateral" if view.startswith(("LL", "RL", "LAT")) else "frontal"
    flags = sorted({flag for ds in headers for flag in flags_of(ds)})
    return DicomMeta(
        modality=modality,
        plane=plane,
        spacing=spacing,
        orientation=orientation,
        patient_key=keyed_hash(str(getattr(first, "PatientID", "") or ""), key, "patient"),
        study_key=keyed_hash(str(getattr(first, "StudyInstanceUID", "") or ""), key, "study"),
        series_key=keyed_hash(str(getattr(first, "SeriesInstanceUID", "") or ""), key, "series"),
        flags=flags,
    )


def _shared_pixel_measures(ds: Any) -> Any:
    """``SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]`` of an enhanced (multi-frame)
    image, else of its first frame's per-frame groups; ``{}`` when absent."""
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        try:
            group = getattr(ds, groups)[0]
            return group.PixelMeasuresSequence[0]
        except (AttributeError, IndexError, KeyError, TypeError):
            continue
    return {}


def _slice_gap(headers: list[Any]) -> list[float]:
    if len(headers) < 2:
        return []
    from raddiag.storage.readers import slice_position

    positions = np.asarray([slice_position(ds) for ds in headers], float)
    gaps = np.diff(positions)
    return [float(np.median(np.abs(gaps)))] if gaps.size and np.all(np.isfinite(gaps)) else []
