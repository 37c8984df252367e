"""Ingest against real DICOM written by others (pydicom-data, deid-data) and hostile inputs, through
the console script: exit 0, every good case stored, every bad row quarantined with its reason,
nothing hangs (a FIFO among the scans), nothing written outside the store, no PHI value in the
store or the output, no rich markup or terminal escape from a case id reaches the terminal."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, run_cli

hostile_inputs = pytest.importorskip("hostile_inputs")
try:
    DATA, DEID = hostile_inputs.data_dirs()
except ImportError:
    pytest.skip("pydicom-data and deid-data are dev dependencies (pip install -e '.[dev]')", allow_module_level=True)
KEY = "a-test-key-of-at-least-32-characters!!"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("hostile")
    return {"root": hostile_inputs.build(base), "base": base}


def test_hostile_batch_is_quarantined_row_by_row(hostile: dict) -> None:
    root, base = hostile["root"], hostile["base"]
    before = {p for p in base.rglob("*")}
    store = base / "store"
    started = time.monotonic()
    result = run_cli(
        "ingest", str(root / "cases.csv"), str(root / "train_cases.json"), "--data-root", str(root), "--store", str(store),
        "--set", "ingest.image_size=32", "--set", "ingest.max_depth=4", cwd=REPO, env={"RADDIAG_DEID_KEY": KEY, "COLUMNS": "400"},
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert elapsed < 120  # the FIFO was not opened
    output = result.stdout + result.stderr
    assert "\x1b]" not in output and "\x07" not in output  # no OSC escape from the case id reached the terminal
    assert "[/oops]" in output  # ... which is shown, inert

    from raddiag.storage.store import Store

    manifest = Store(str(store)).manifest()
    stored = set(manifest.cases["case_id"])
    assert hostile_inputs.STORED <= stored, hostile_inputs.STORED - stored
    rejected = Store(str(store)).rejected()
    reasons: dict[str, list[str]] = {}
    for row in rejected.itertuples(index=False):
        reasons.setdefault(row.case_id, []).append(row.reason)
    for case, expected in hostile_inputs.REASONS.items():
        assert case not in stored and any(expected in r for r in reasons.get(case, [])), (case, reasons.get(case))
    mixed = " | ".join(reasons["mixed-folder"])
    assert "README.txt" in mixed and "export.zip" in mixed and "escape.dcm: symlink" in mixed

    phi = hostile_inputs.phi_values(hostile_inputs.dicom_inputs(root))
    assert len(phi) > 20
    blobs = [path.read_bytes() for path in store.rglob("*") if path.is_file()] + [output.encode()]
    leaked = {value for value in phi if any(value.encode() in blob for blob in blobs)}
    assert not leaked, sorted(leaked)[:5]

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

    monkeypatch.setenv("RADDIAG_DEID_KEY", KEY)
    table = tmp_path / "us.csv"
    table.write_text("case_id,path,modality,plane,labels,split\nus,us-palette.dcm,,,Normal,\nrgb,deid-rgb-us.dcm,,,Normal,\n")
    only_us = run_ingest([table], Store(str(tmp_path / "a")), data_root=hostile["root"], plan=Plan(16, 4), trust_pixels=("US",))
    assert only_us.n_cases == 0  # both are also colour images: trusting US alone is not enough
    both = run_ingest([table], Store(str(tmp_path / "b")), data_root=hostile["root"], plan=Plan(16, 4), trust_pixels=("US", "colour"))
    assert both.n_cases == 2
    assert all("burned_in_risk:US" in list(f) for f in both.manifest.scans["flags"])


def test_unparseable_sources_and_huge_label_rows_fail_cleanly(tmp_path: Path) -> None:
    """A json nested 200k deep cannot be parsed by anyone: one line naming the file (the run's
    source is unreadable), not a RecursionError; 5 million labels on one row: quarantined quickly."""
    from raddiag.storage.ingest import IngestError, parse_rp3d, run_ingest
    from raddiag.storage.preprocess import Plan
    from raddiag.storage.store import Store

    deep = tmp_path / "deep.json"
    deep.write_text('{"https://radiopaedia.org/cases/x": ' + "[" * 200_000 + "]" * 200_000 + "}")
    with pytest.raises(IngestError, match="deep.json: not a readable RP3D json"):
        parse_rp3d(deep, tmp_path)
    np.save(tmp_path / "v.npy", np.random.default_rng(0).random((8, 8, 2), dtype=np.float32))
    labels = ";".join(f"l{i}" for i in range(5_000_000))
    (tmp_path / "t.csv").write_text(f"case_id,path,modality,plane,labels,split\nmany,v.npy,CT,axial,{labels},\nok,v.npy,CT,axial,Normal,\n")
    started = time.monotonic()
    result = run_ingest([tmp_path / "t.csv"], Store(str(tmp_path / "s")), plan=Plan(8, 2))
    assert time.monotonic() - started < 30
    assert result.n_cases == 1
    reason = result.rejected.set_index("case_id").loc["many", "reason"]
    assert "5000000 labels on one case" in reason
