"""Ingest against real DICOM written by others (pydicom-data, deid-data) and hostile inputs, through
the console script: exit 0, every good case stored, every bad row quarantined with its reason,
nothing hangs (a FIFO among the scans), nothing written outside the store, no rich markup or
terminal escape from a case id reaches the terminal."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, run_cli

pydicom_data = pytest.importorskip("data_store", reason="pydicom-data is a dev dependency (pip install pydicom-data)")
DATA = Path(pydicom_data.__file__).parent / "data"
DEID = Path(pytest.importorskip("deid_data", reason="deid-data is a dev dependency").__file__).parent / "data"

GOOD = {  # case id -> file(s): stored, with what the viewer shows
    "ct-j2k": ["693_J2KR.dcm"],
    "mr": ["MR2_UNCR.dcm"],
    "cr-mono1": ["RG1_UNCR.dcm"],
    "mr-jpeg-ls": ["emri_small_jpeg_ls_lossless.dcm"],
    "us-jpeg-lossless-no-text": ["JPGLosslessP14SV1_1s_1f_8b.dcm"],  # US, but BurnedInAnnotation: NO
    "enhanced-ct": ["eCT_Supplemental.dcm"],
}
PHI = {  # ultrasound / colour images without "BurnedInAnnotation: NO": quarantined as burned_in_risk
    "us-palette": (DATA, "OBXXXX1A.dcm"), "us-palette-rle": (DATA, "OBXXXX1A_rle.dcm"),
    "us-aloka": (DATA, "gdcm-US-ALOKA-16.dcm"), "us-rgb": (DATA, "US1_UNCR.dcm"),
    "deid-rgb-us": (DEID / "ultrasounds", "RGB_IMAGE.dcm"),
}


def _crafted_dicom(path: Path, **changes: bytes) -> None:
    """A real MR file with some tags' raw bytes replaced (values no conforming writer produces)."""
    import pydicom
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataelem import RawDataElement

    ds = pydicom.dcmread(DATA / "MR2_UNCR.dcm")
    for keyword, raw in changes.items():
        tag = tag_for_keyword(keyword)
        raw = raw + b" " * (len(raw) % 2)
        ds._dict[tag] = RawDataElement(tag, dictionary_VR(tag), len(raw), raw, 0, False, True)
    ds.save_as(path)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("hostile")
    root = base / "root"
    root.mkdir()
    rows = ["case_id,path,modality,plane,labels,split,key_slice"]
    for case, files in GOOD.items():
        (root / case).mkdir()
        for name in files:
            shutil.copy(DATA / name, root / case / name)
        rows.append(f"{case},{case},,,Normal;Pneumonia,,")
    for case, (folder, name) in PHI.items():
        shutil.copy(folder / name, root / f"{case}.dcm")
        rows.append(f"{case},{case}.dcm,,,Normal,,")
    shutil.copy(DATA / "liver.dcm", root / "seg.dcm")
    rows.append("seg-object,seg.dcm,,,Normal,,")
    # a folder with a README, a .zip and a symlink to a DICOM outside the data root: the good file is kept
    (root / "mixed").mkdir()
    shutil.copy(DATA / "MR2_UNCI.dcm", root / "mixed" / "a.dcm")
    (root / "mixed" / "README.txt").write_text("exported by PACS\n")
    (root / "mixed" / "export.zip").write_bytes(b"PK\x03\x04 not really")
    shutil.copy(DATA / "CT_small.dcm" if (DATA / "CT_small.dcm").exists() else DATA / "693_UNCI.dcm", base / "outside.dcm")
    os.symlink(base / "outside.dcm", root / "mixed" / "escape.dcm")
    rows.append("mixed-folder,mixed,,,Normal,,")
    _crafted_dicom(root / "orient.dcm", ImageOrientationPatient=b"abcd", ImagePositionPatient=b"1\\2")
    rows.append("bad-orientation,orient.dcm,,,Normal,,")  # kept: slice order falls back to InstanceNumber
    _crafted_dicom(root / "slope.dcm", RescaleSlope=b"n/a")
    rows.append("bad-slope,slope.dcm,,,Normal,,")
    (root / "text.dcm").write_text("this is not DICOM")
    rows.append("text-as-dcm,text.dcm,,,Normal,,")
    os.mkfifo(root / "x.npy")
    rows.append("fifo,x.npy,CT,axial,Normal,,")
    np.save(root / "vol.npy", np.random.default_rng(0).random((16, 16, 4), dtype=np.float32))
    rows.append("superscript-key,vol.npy,CT,axial,Normal,,²")  # kept, key slice ignored
    rows.append("[/oops]\x1b]0;pwned\x07[link=http://x]markup,vol.npy,CT,axial,Normal,,")  # kept, shown inert
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
    return {"root": root, "base": base}


def test_hostile_batch_is_quarantined_row_by_row(hostile: dict) -> None:
    root, base = hostile["root"], hostile["base"]
    before = {p for p in base.rglob("*")}
    store = base / "store"
    started = time.monotonic()
    result = run_cli(
        "ingest", str(root / "cases.csv"), str(root / "train_cases.json"), "--data-root", str(root), "--store", str(store),
        "--set", "ingest.image_size=32", "--set", "ingest.max_depth=4", cwd=REPO,
        env={"RADDIAG_DEID_KEY": "a-test-key-of-at-least-32-characters!!", "COLUMNS": "400"},
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert elapsed < 120  # the FIFO was not opened
    assert "\x1b]0;pwned" not in result.stdout and "\x1b" not in result.stdout.replace("\x1b[", "")  # no OSC escape

    from raddiag.storage.store import Store

    manifest = Store(str(store)).manifest()
    stored = set(manifest.cases["case_id"])
    expected = {*GOOD, "mixed-folder", "bad-orientation", "superscript-key", "rp3d-good-1"}
    assert expected <= stored, expected - stored
    assert any(c.startswith("[/oops]") for c in stored)  # the id is data, kept as given (escapes rendered inert)
    rejected = manifest_rejected = Store(str(store)).rejected()
    reasons = {}
    for row in manifest_rejected.itertuples(index=False):
        reasons.setdefault(row.case_id, []).append(row.reason)

    def reason(case: str) -> str:
        return " | ".join(reasons.get(case, []))

    for case in PHI:
        assert "burned_in_risk" in reason(case), (case, reason(case))
        assert case not in stored
    assert "not an image to train on (SEG object)" in reason("seg-object")
    assert "RescaleSlope/RescaleIntercept are not numbers" in reason("bad-slope")
    assert "not a readable DICOM file" in reason("text-as-dcm")
    assert "not a regular file" in reason("fifo")
    assert "longer than 256 characters" in reason("long-label")
    assert "absolute path outside the data root" in reason("absolute-outside")
    assert "articles must be a list of strings" in reason("rp3d-articles-int")
    assert "image_data_path must be a list of strings" in reason("rp3d-path-int")
    assert "key_slice nan is not a slice index" in reason("rp3d-key-nan")
    mixed = reason("mixed-folder")
    assert "README.txt" in mixed and "export.zip" in mixed and "escape.dcm: symlink" in mixed
    assert len(rejected) >= len(PHI) + 10

    # what a viewer shows: MONOCHROME1 inverted (its air is dark like MONOCHROME2's), enhanced CT has spacing
    import pydicom

    scans = manifest.scans.set_index("case_id")
    ct = scans.loc["enhanced-ct"]
    assert list(ct["spacing"])[1] == pytest.approx(float(pydicom.dcmread(DATA / "eCT_Supplemental.dcm", stop_before_pixels=True)
                                                         .SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing[0]))
    store_obj = Store(str(store))
    cr = store_obj.read_slices(scans.loc["cr-mono1", "scan_id"], [0])[0].astype(float)
    raw = pydicom.dcmread(DATA / "RG1_UNCR.dcm").pixel_array.astype(float)
    from PIL import Image

    small = np.asarray(Image.fromarray(raw).resize(cr.shape[::-1], Image.BILINEAR))
    assert np.corrcoef(cr.ravel(), small.ravel())[0, 1] < -0.9  # stored = the inverse of the raw values
    after = {p for p in base.rglob("*")}
    assert {p for p in after - before if store not in p.parents and p != store} == set()  # nothing outside the store


def test_trusted_pixel_kinds_are_kept_with_their_flag(hostile: dict, tmp_path: Path, monkeypatch) -> None:
    """ingest.trust_pixels is an explicit opt-in per kind; the flag stays on the stored scan."""
    from raddiag.storage.ingest import run_ingest
    from raddiag.storage.preprocess import Plan
    from raddiag.storage.store import Store

    monkeypatch.setenv("RADDIAG_DEID_KEY", "a-test-key-of-at-least-32-characters!!")
    table = tmp_path / "us.csv"
    table.write_text("case_id,path,modality,plane,labels,split\nus,us-palette.dcm,,,Normal,\nrgb,deid-rgb-us.dcm,,,Normal,\n")
    only_us = run_ingest([table], Store(str(tmp_path / "a")), data_root=hostile["root"], plan=Plan(16, 4), trust_pixels=("US",))
    assert only_us.n_cases == 0  # both are also colour images: trusting US alone is not enough
    both = run_ingest([table], Store(str(tmp_path / "b")), data_root=hostile["root"], plan=Plan(16, 4), trust_pixels=("US", "colour"))
    assert both.n_cases == 2
    assert all("burned_in_risk:US" in list(f) for f in both.manifest.scans["flags"])
