"""A batch of real DICOM written by others (pydicom-data, deid-data) and hostile inputs, for
tests/test_ingest_robustness.py and bench/ingest_robustness.py: ``build(base)`` writes it under
``base/root`` and returns what a correct ingest must do with each case."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np


def data_dirs() -> tuple[Path, Path]:
    """(pydicom-data's folder, deid-data's folder); ImportError when they are not installed."""
    import data_store
    import deid_data

    return Path(data_store.__file__).parent / "data", Path(deid_data.__file__).parent / "data"


GOOD = {  # case id -> file(s): stored, with what the viewer shows
    "ct-j2k": ["693_J2KR.dcm"],
    "mr": ["MR2_UNCR.dcm"],
    "cr-mono1": ["RG1_UNCR.dcm"],
    "mr-jpeg-ls": ["emri_small_jpeg_ls_lossless.dcm"],
    "us-jpeg-lossless-no-text": ["JPGLosslessP14SV1_1s_1f_8b.dcm"],  # US, but BurnedInAnnotation: NO
    "enhanced-ct": ["eCT_Supplemental.dcm"],
}
#: ultrasound / colour images without "BurnedInAnnotation: NO": quarantined as burned_in_risk
PHI = {
    "us-palette": ("pydicom", "OBXXXX1A.dcm"), "us-palette-rle": ("pydicom", "OBXXXX1A_rle.dcm"),
    "us-aloka": ("pydicom", "gdcm-US-ALOKA-16.dcm"), "us-rgb": ("pydicom", "US1_UNCR.dcm"),
    "deid-rgb-us": ("deid", "ultrasounds/RGB_IMAGE.dcm"),
}
MARKUP_ID = "[/oops]\x1b]0;pwned\x07[link=http://x]markup"
MARKUP_REJECTED = "[red]x[/oops]\x1b]0;pwned\x07rejected"  # a quarantined row shows it: inert
#: case id -> the reason (substring) its quarantine row must give
REASONS = {
    **{case: "burned_in_risk" for case in PHI},
    "seg-object": "not an image to train on (SEG object)",
    "bad-slope": "RescaleSlope/RescaleIntercept are not numbers",
    "text-as-dcm": "not a readable DICOM file",
    "fifo": "not a regular file",
    "long-label": "longer than 256 characters",
    "absolute-outside": "absolute path outside the data root",
    "rp3d-articles-int": "articles must be a list of strings",
    "rp3d-path-int": "image_data_path must be a list of strings",
    "rp3d-key-nan": "key_slice nan is not a slice index",
    MARKUP_REJECTED: "missing file",
}
#: stored: the good files, a folder with junk beside its DICOM, malformed-but-usable tags, a key
#: slice of "²" (ignored), a case id full of rich markup and terminal escapes (data, shown inert)
STORED = {*GOOD, "mixed-folder", "bad-orientation", "superscript-key", MARKUP_ID, "rp3d-good-1"}


def _crafted_dicom(source: Path, path: Path, **changes: bytes) -> None:
    """A real MR file with some tags' raw bytes replaced (values no conforming writer produces)."""
    import pydicom
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataelem import RawDataElement

    ds = pydicom.dcmread(source)
    for keyword, raw in changes.items():
        tag = tag_for_keyword(keyword)
        raw = raw + b" " * (len(raw) % 2)
        ds._dict[tag] = RawDataElement(tag, dictionary_VR(tag), len(raw), raw, 0, False, True)
    ds.save_as(path)


def build(base: Path) -> Path:
    """Write the batch under ``base/root`` (``cases.csv`` + ``train_cases.json``); returns the root."""
    data, deid = data_dirs()
    folders = {"pydicom": data, "deid": deid}
    root = base / "root"
    root.mkdir(parents=True)
    rows = ["case_id,path,modality,plane,labels,split,key_slice"]
    for case, files in GOOD.items():
        (root / case).mkdir()
        for name in files:
            shutil.copy(data / name, root / case / name)
        rows.append(f"{case},{case},,,Normal;Pneumonia,,")
    for case, (where, name) in PHI.items():
        shutil.copy(folders[where] / name, root / f"{case}.dcm")
        rows.append(f"{case},{case}.dcm,,,Normal,,")
    shutil.copy(data / "liver.dcm", root / "seg.dcm")
    rows.append("seg-object,seg.dcm,,,Normal,,")
    # a folder with a README, a .zip and a symlink to a DICOM outside the data root: the good file is kept
    (root / "mixed").mkdir()
    shutil.copy(data / "MR2_UNCI.dcm", root / "mixed" / "a.dcm")
    (root / "mixed" / "README.txt").write_text("exported by PACS\n")
    (root / "mixed" / "export.zip").write_bytes(b"PK\x03\x04 not really")
    shutil.copy(data / "693_UNCI.dcm", base / "outside.dcm")
    os.symlink(base / "outside.dcm", root / "mixed" / "escape.dcm")
    rows.append("mixed-folder,mixed,,,Normal,,")
    _crafted_dicom(data / "MR2_UNCR.dcm", root / "orient.dcm", ImageOrientationPatient=b"abcd", ImagePositionPatient=b"1\\2")
    rows.append("bad-orientation,orient.dcm,,,Normal,,")  # kept: slice order falls back to InstanceNumber
    _crafted_dicom(data / "MR2_UNCR.dcm", root / "slope.dcm", RescaleSlope=b"n/a")
    rows.append("bad-slope,slope.dcm,,,Normal,,")
    (root / "text.dcm").write_text("this is not DICOM")
    rows.append("text-as-dcm,text.dcm,,,Normal,,")
    os.mkfifo(root / "x.npy")
    rows.append("fifo,x.npy,CT,axial,Normal,,")
    np.save(root / "vol.npy", np.random.default_rng(0).random((16, 16, 4), dtype=np.float32))
    rows.append("superscript-key,vol.npy,CT,axial,Normal,,²")
    rows.append(f"{MARKUP_ID},vol.npy,CT,axial,Normal,,")
    rows.append(f"{MARKUP_REJECTED},no-such-file.npy,CT,axial,Normal,,")
    rows.append(f"long-label,vol.npy,CT,axial,{'x' * 300},,")
    rows.append(f"absolute-outside,{base / 'outside.dcm'},,,Normal,,")
    (root / "cases.csv").write_text("\n".join(rows) + "\n")

    np.save(root / "rp.npy", np.random.default_rng(1).random((16, 16, 3), dtype=np.float32))
    good = {"Samples": [{"articles": ["Pneumonia"], "image_data_path": ["rp.npy"], "image_modality": ["CT"]}]}
    rp3d = {
        "https://radiopaedia.org/cases/good-1": good,
        "https://radiopaedia.org/cases/articles-int": {"Samples": [{"articles": 5, "image_data_path": ["rp.npy"]}]},
        "https://radiopaedia.org/cases/path-int": {"Samples": [{"articles": ["Normal"], "image_data_path": 5}]},
        "https://radiopaedia.org/cases/key-nan": {**good, "key_slice": [{"image_0": float("nan")}]},
    }
    (root / "train_cases.json").write_text(json.dumps(rp3d))  # NaN as JSON's non-standard literal, as exports have it
    return root


def dicom_inputs(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.dcm") if p.is_file() and not p.is_symlink())


def phi_values(paths: list[Path]) -> set[str]:
    """Identifying header values of ``paths`` (names, ids, institution, dates, UIDs): none of them
    may appear anywhere in the store or in what ingest prints."""
    import pydicom

    keywords = ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "ReferringPhysicianName",
                "StudyDate", "AccessionNumber", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    values = set()
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        for keyword in keywords:
            value = str(ds.get(keyword, "") or "").strip()
            if len(value) >= 6:
                values.add(value)
    return values
