"""``raddiag ingest``: RP3D json and case-table sources, quarantine, idempotency, crash safety, S3."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, run_cli
from raddiag.config import SynthConfig
from raddiag.storage.ingest import load_vocabulary, resolve_in_root, run_ingest
from raddiag.storage.preprocess import Plan, normalise, resize_slices, select_slices
from raddiag.storage.store import Store
from raddiag.storage.synth import write_rp3d_source
from raddiag.storage.verify import verify_store
from storage_samples import PHI_STRINGS, write_bad_files, write_ct_series, write_mr_multiframe, write_secondary_capture

PLAN = Plan(image_size=24, max_depth=6)
SOURCE_CFG = SynthConfig(n_cases=16, n_labels=6, image_size=20, max_depth=5, seed=5)
DEID_KEY = "test-key-0123456789abcdef"
RP3D_DEMO = REPO.parent / "shared" / "rp3d-demo"


@pytest.fixture(scope="module")
def rp3d_source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("rp3d")
    return root, write_rp3d_source(SOURCE_CFG, root)


def ingest_rp3d(source: tuple[Path, list[Path]], store: Store):  # noqa: ANN201
    root, paths = source
    return run_ingest(paths, store, data_root=root, vocabulary=load_vocabulary(root / "disorder_label_dict.json"), plan=PLAN)


def s3_store(endpoint: str, name: str) -> Store:
    return Store(f"s3://raddiag-test/ingest/{name}-{time.time_ns()}", endpoint_url=endpoint)


def test_rp3d_json_keeps_splits_key_slices_and_resolves_foreign_paths(rp3d_source, tmp_path: Path) -> None:
    root, paths = rp3d_source
    result = ingest_rp3d(rp3d_source, Store(str(tmp_path / "s")))
    manifest = result.manifest
    assert result.rejected.empty and manifest is not None
    given = {}
    for path in paths:
        for url, case in json.loads(path.read_text()).items():
            given["rp3d-" + url.rsplit("/", 1)[-1]] = (path.stem, case)
    assert dict(zip(manifest.cases.case_id, manifest.cases.split)) == {k: v[0] for k, v in given.items()}
    assert len(manifest.scans) == sum(len(case["Samples"]) for _, case in given.values())
    scans = manifest.scans
    assert (scans.height == 24).all() and (scans.width == 24).all() and (scans.depth <= 6).all()
    xray = scans[scans.modality == "X-ray"]
    assert len(xray) and (xray.depth == 1).all()  # equal-channel RGB H×W×3 -> one grey slice
    assert all(list(shape) == [1, 20, 20] for shape in xray.orig_shape)
    assert ((scans.key_slice >= 0) & (scans.key_slice < scans.depth)).all()
    # stored pixels = min-max(resize(source)) of the file the foreign path names
    case_id = manifest.cases.case_id.iloc[0]
    sample = given[case_id][1]["Samples"][0]
    source = np.load(root / "data" / Path(sample["image_data_path"][0]).name)
    volume = source[..., :1] if sample["image_modality"][0] == "X-ray" else source
    expected = normalise(resize_slices(np.moveaxis(volume, -1, 0)[: PLAN.max_depth], 24))
    stored_ids = set(scans[scans.case_id == case_id].scan_id)
    if volume.shape[-1] <= PLAN.max_depth:
        assert any(np.array_equal(Store(str(tmp_path / "s")).read_slices(s), expected) for s in stored_ids)
    assert verify_store(Store(str(tmp_path / "s"))).ok


def test_key_slice_survives_depth_subsampling(tmp_path: Path) -> None:
    root = tmp_path / "src"
    (root / "data").mkdir(parents=True)
    volume = np.random.default_rng(0).random((16, 16, 40), dtype=np.float32)
    np.save(root / "data" / "v.npy", volume)
    np.save(root / "data" / "k.npy", np.array([33]))
    case = {"Anatomy": "Chest", "key_slice": [{"image_0": 5}], "Samples": [{
        "image_data_path": ["/elsewhere/data/v.npy"], "image_key_path": ["/elsewhere/data/k.npy"],
        "image_modality": ["CT"], "plane_projection": ["Axial"], "aux_modality": ["bone window"],
        "articles": ["Pneumonia"], "icd10s": ["J18"]}]}
    (root / "train.json").write_text(json.dumps({"https://radiopaedia.org/cases/x-1": case}))
    manifest = run_ingest([root / "train.json"], Store(str(tmp_path / "s")), data_root=root, plan=Plan(16, 8)).manifest
    row = manifest.scans.iloc[0]
    assert row.depth == 8 and list(row.orig_shape) == [40, 16, 16] and row.aux_modality == "bone window"
    indices, key = select_slices(40, 8, 33)
    assert key == int(row.key_slice) and indices[key] == 33  # the key file (33) wins over the json (5)
    expected = normalise(resize_slices(np.moveaxis(volume, -1, 0)[indices], 16))
    assert np.array_equal(Store(str(tmp_path / "s")).read_slices(row.scan_id), expected)


@pytest.mark.parametrize("backend", ["local", pytest.param("s3", marks=pytest.mark.slow)])
def test_ingesting_the_same_input_twice_yields_the_same_version(backend: str, rp3d_source, tmp_path: Path, request) -> None:
    store = Store(str(tmp_path / "s")) if backend == "local" else s3_store(request.getfixturevalue("s3_endpoint"), "idem")
    first = ingest_rp3d(rp3d_source, store).manifest
    again = ingest_rp3d(rp3d_source, Store(store.url, store.endpoint_url)).manifest
    assert again.version == first.version and again.info["created"] == first.info["created"]
    assert not again.scans.duplicated(["scan_id", "case_id"]).any() and again.cases.case_id.is_unique
    reopened = Store(store.url, store.endpoint_url)
    assert set(reopened.array_names()) == set(again.scans.scan_id)  # no duplicate arrays either
    assert reopened.manifest().version == first.version
    assert verify_store(reopened).ok


def test_given_splits_kept_and_missing_ones_stratified(tmp_path: Path) -> None:
    root = tmp_path / "src"
    root.mkdir()
    rng = np.random.default_rng(1)
    rows = []
    for index in range(30):
        np.save(root / f"{index}.npy", rng.random((8, 8, 1), dtype=np.float32))
        label = "Rare thing" if index < 2 else "Common thing"
        rows.append({"case_id": f"c{index:02d}", "path": f"{index}.npy", "modality": "X-ray", "plane": "frontal",
                     "labels": label, "split": "test" if index == 29 else ""})
    pd.DataFrame(rows).to_csv(root / "cases.csv", index=False)
    manifest = run_ingest([root / "cases.csv"], Store(str(tmp_path / "s")), plan=Plan(8, 4), seed=3).manifest
    split = dict(zip(manifest.cases.case_id, manifest.cases.split))
    assert split["c29"] == "test"
    assert "train" in {split["c00"], split["c01"]}  # the tail label reaches train
    assert set(split.values()) == {"train", "val", "test"}
    again = run_ingest([root / "cases.csv"], Store(str(tmp_path / "t")), plan=Plan(8, 4), seed=3).manifest
    assert dict(zip(again.cases.case_id, again.cases.split)) == split  # seeded


def test_resolve_in_root_refuses_escapes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    (root / "data" / "a.npy").write_bytes(b"x")
    (tmp_path / "outside.npy").write_bytes(b"x")
    (root / "link.npy").symlink_to(tmp_path / "outside.npy")
    assert resolve_in_root("data/a.npy", root) == (root / "data" / "a.npy", "")
    assert resolve_in_root("/authors/machine/DemoData/data/a.npy", root) == (root / "data" / "a.npy", "")
    assert resolve_in_root("../outside.npy", root)[1] == "path escapes the data root"
    assert resolve_in_root("link.npy", root)[1] == "path escapes the data root"
    assert resolve_in_root(str(tmp_path / "outside.npy"), root)[1] in ("path escapes the data root", "missing file")
    assert resolve_in_root("/x/../../etc/passwd", root)[1] == "path escapes the data root"
    assert resolve_in_root("data/missing.npy", root)[1] == "missing file"


# ---- a case table with every kind of good and bad input ---------------------------------------------------
@pytest.fixture(scope="module")
def table_source(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("table") / "root"
    rng = np.random.default_rng(2)
    np.save(root.parent / "outside.npy", rng.random((8, 8, 2), dtype=np.float32))
    (root / "good").mkdir(parents=True)
    np.save(root / "good" / "ct.npy", rng.random((20, 20, 5), dtype=np.float32) * 1000)
    import nibabel
    from PIL import Image

    nibabel.save(nibabel.Nifti1Image(rng.random((18, 18, 7), dtype=np.float32), np.diag([0.8, 0.8, 2.5, 1])), str(root / "good" / "mr.nii.gz"))
    Image.fromarray((rng.random((30, 20)) * 255).astype(np.uint8)).save(root / "good" / "xray.png")
    Image.fromarray((rng.random((30, 20, 3)) * 255).astype(np.uint8)).save(root / "good" / "photo.jpg")
    ct_expected = write_ct_series(root / "dicom" / "ct")
    mr_expected = write_mr_multiframe(root / "dicom" / "mr" / "multiframe.dcm")
    write_secondary_capture(root / "dicom" / "sc" / "sc.dcm")
    write_ct_series(root / "dicom" / "burned", n_slices=2, BurnedInAnnotation="YES",
                    StudyInstanceUID="1.2.3.4.5.6.7", SeriesInstanceUID="1.2.3.4.5.6.7.1")
    bad = write_bad_files(root / "bad")
    rows = [
        ("tab-good", "good/ct.npy", "CT", "axial", "Hip dislocation", "train"),
        ("tab-good", "good/mr.nii.gz", "MRI", "sagittal", "Hip dislocation", "train"),
        ("tab-good", "good/xray.png", "X-ray", "frontal", "Hip dislocation", "train"),
        ("tab-photo", "good/photo.jpg", "X-ray", "lateral", "Segond fracture", ""),
        ("", "dicom/ct", "", "", "Pneumonia", "train"),
        ("", "dicom/mr/multiframe.dcm", "", "", "Pneumonia", "train"),
        ("tab-sc", "dicom/sc/sc.dcm", "", "", "Normal", ""),
        ("tab-burned", "dicom/burned", "", "", "Normal", ""),
        *[("tab-bad", f"bad/{name}", "CT", "axial", "Segond fracture", "") for name in bad],
        ("tab-bad", "good/ct.npy", "CT", "axial", "Segond fracture", ""),
        ("tab-escape", "../outside.npy", "CT", "axial", "Normal", ""),
        ("tab-unknown", "good/ct.npy", "CT", "axial", "Not A Real Disorder", ""),
        ("tab-conflict", "good/xray.png", "X-ray", "frontal", "Normal", "train"),
        ("tab-conflict", "good/photo.jpg", "X-ray", "frontal", "Pneumonia", "test"),
        ("tab-missing", "good/nothing.npy", "CT", "axial", "Normal", ""),
    ]
    pd.DataFrame(rows, columns=["case_id", "path", "modality", "plane", "labels", "split"]).to_csv(root / "cases.csv", index=False)
    pd.DataFrame([rows[0]], columns=["case_id", "path", "modality", "plane", "labels", "split"]).to_csv(root / "more.csv", index=False)
    (root / "labels.txt").write_text("Normal\nHip dislocation\nSegond fracture\nPneumonia\n")
    return {"root": root, "bad": bad, "ct": ct_expected, "mr": mr_expected}


def ingest_table(source: dict, store: Store, **kwargs):  # noqa: ANN201
    root = source["root"]
    os.environ["RADDIAG_DEID_KEY"] = DEID_KEY
    return run_ingest([root / "cases.csv", root / "more.csv"], store, data_root=root,
                      vocabulary=load_vocabulary(root / "labels.txt"), plan=Plan(16, 8), **kwargs)


@pytest.fixture(scope="module")
def table_result(table_source, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    store = Store(str(tmp_path_factory.mktemp("table-store") / "s"))
    return store, ingest_table(table_source, store)


REJECTS = [
    ("tab-escape", "path escapes the data root"),
    ("tab-unknown", "unknown label name"),
    ("tab-conflict", "duplicate case id"),
    ("tab-good", "duplicate case id (first defined in cases.csv)"),
    ("tab-missing", "missing file"),
    ("tab-sc", "+secondary_capture: pixels may carry PHI"),
    ("tab-burned", "flagged burned_in_annotation"),
]


@pytest.mark.parametrize(("case_id", "reason"), REJECTS)
def test_bad_cases_are_quarantined_with_a_reason(table_result, case_id: str, reason: str) -> None:
    _, result = table_result
    rows = result.rejected[result.rejected.case_id == case_id]
    assert rows.reason.str.contains(reason, regex=False).any(), rows.to_string()


def test_each_bad_file_is_quarantined_and_the_rest_ingested(table_source, table_result) -> None:
    store, result = table_result
    rejected = result.rejected[result.rejected.case_id == "tab-bad"]
    for name, reason in table_source["bad"].items():
        row = rejected[rejected["item"] == f"bad/{name}"]
        assert len(row) == 1 and reason in row.reason.iloc[0], (name, rejected.to_string())
    manifest = result.manifest
    assert set(manifest.cases.case_id) >= {"tab-good", "tab-photo", "tab-bad"}
    assert (manifest.scans.case_id == "tab-bad").sum() == 1  # the one good file of that case
    assert not set(manifest.cases.case_id) & {c for c, _ in REJECTS if c != "tab-good"}
    assert store.rejected().equals(result.rejected.astype(str).reset_index(drop=True))
    assert verify_store(store).ok


def test_table_formats_and_dicom_series(table_source, table_result) -> None:
    store, result = table_result
    scans = result.manifest.scans
    good = scans[scans.case_id == "tab-good"].set_index("modality")
    assert list(good.loc["MRI", "orig_shape"]) == [7, 18, 18] and list(good.loc["MRI", "spacing"]) == pytest.approx([2.5, 0.8, 0.8])
    assert good.loc["CT", "depth"] == 5 and good.loc["X-ray", "depth"] == 1
    dicom = scans[scans.case_id.str.startswith("dcm-")]
    assert len(dicom) == 2 and dicom.case_id.nunique() == 1  # both series linked to one case by the study hash
    ct = dicom[dicom.modality == "CT"].iloc[0]
    assert ct.plane == "axial" and list(ct.spacing)[0] == pytest.approx(5.0) and list(ct.orig_shape) == [4, 128, 128]
    stored = store.read_slices(ct.scan_id)
    expected = normalise(resize_slices(table_source["ct"], 16))
    assert np.array_equal(stored, expected)  # ordered by position, rescaled (slope 2, intercept -1000)
    mr = dicom[dicom.modality == "MRI"].iloc[0]
    assert list(mr.orig_shape) == [3, 64, 64]  # multi-frame: every frame is a slice
    assert ct.patient_key == mr.patient_key and ct.study_key == mr.study_key and ct.series_key != mr.series_key


def test_flagged_dicom_kept_with_its_flag_when_asked(table_source, tmp_path: Path) -> None:
    result = ingest_table(table_source, Store(str(tmp_path / "s")), keep_flagged=True)
    flags = {case: list(f) for case, f in zip(result.manifest.scans["case_id"], result.manifest.scans["flags"]) if len(f)}
    assert flags == {"tab-sc": ["burned_in_risk:colour", "secondary_capture"], "tab-burned": ["burned_in_annotation"]}


def test_no_phi_in_store_manifest_or_logs(table_source, tmp_path: Path, capfd, caplog) -> None:
    caplog.set_level("DEBUG")
    store = Store(str(tmp_path / "s"))
    result = ingest_table(table_source, store, keep_flagged=True)
    out, err = capfd.readouterr()
    texts = [out, err, caplog.text, result.rejected.to_csv()]
    for path in (tmp_path / "s").rglob("*"):
        if path.is_file():
            texts.append(path.read_bytes().decode("latin-1"))
            if path.suffix == ".parquet":
                texts.append(pd.read_parquet(path).to_csv())
    joined = "\n".join(texts)
    for phi in PHI_STRINGS + ["1.2.826.0.1.3680043.2.1125", DEID_KEY]:
        assert phi not in joined, phi


@pytest.mark.slow
def test_bad_input_quarantined_on_s3(table_source, s3_endpoint: str) -> None:
    store = s3_store(s3_endpoint, "table")
    result = ingest_table(table_source, store)
    assert set(result.rejected.case_id) >= {c for c, _ in REJECTS}
    reopened = Store(store.url, store.endpoint_url)
    assert reopened.rejected().shape == result.rejected.shape
    assert verify_store(reopened).ok


# ---- the CLI ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigkill_midway_then_rerun_completes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    paths = write_rp3d_source(SynthConfig(n_cases=60, n_labels=6, image_size=64, max_depth=8, seed=9), src)
    store_dir = tmp_path / "store"
    args = [*map(str, paths), "--data-root", str(src), "--store", str(store_dir), "--workers", "1",
            "--set", "ingest.image_size=64", "--set", "ingest.max_depth=8"]
    exe = Path(sys.executable).with_name("raddiag")
    process = subprocess.Popen([str(exe), "ingest", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    arrays = store_dir / "scans.zarr"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if arrays.is_dir() and sum(1 for _ in arrays.glob("*/zarr.json")) >= 5:
            break
        time.sleep(0.005)
    assert process.poll() is None, "ingest finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (store_dir / "dataset.json").exists()  # killed mid-way: nothing published
    written = sum(1 for _ in arrays.glob("*/zarr.json"))
    assert written >= 5
    result = run_cli("ingest", *args, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    store = Store(str(store_dir))
    manifest = store.manifest()
    expected = sum(len(case["Samples"]) for path in paths for case in json.loads(path.read_text()).values())
    assert len(manifest.scans) == expected and not manifest.scans.duplicated(["scan_id", "case_id"]).any()
    fresh = run_ingest(paths, Store(str(tmp_path / "fresh")), data_root=src, plan=Plan(64, 8))
    assert fresh.manifest.version == manifest.version  # same content as an uninterrupted run
    report = verify_store(store)
    assert report.ok, report.problems


@pytest.mark.slow
def test_cli_exit_codes(tmp_path: Path) -> None:
    bad_root = tmp_path / "bad"
    names = write_bad_files(bad_root)
    pd.DataFrame([{"case_id": f"b{i}", "path": name, "modality": "CT", "plane": "axial", "labels": "Normal", "split": ""}
                  for i, name in enumerate(names)]).to_csv(bad_root / "cases.csv", index=False)
    nothing = run_cli("ingest", str(bad_root / "cases.csv"), "--store", str(tmp_path / "s"), cwd=REPO)
    assert nothing.returncode == 1 and "nothing could be ingested" in nothing.stderr
    assert "rejected" in nothing.stdout and "absurd dimensions" in nothing.stdout
    misuse = run_cli("ingest", str(tmp_path / "nope.json"), "--store", str(tmp_path / "s"), cwd=REPO)
    assert misuse.returncode == 2 and "no such source file" in misuse.stderr
    dicom = tmp_path / "dcm"
    write_ct_series(dicom / "ct", n_slices=2)
    pd.DataFrame([{"case_id": "", "path": "ct", "modality": "", "plane": "", "labels": "Normal", "split": ""}]).to_csv(dicom / "c.csv", index=False)
    env = {k: v for k, v in os.environ.items() if k != "RADDIAG_DEID_KEY"}
    nokey = subprocess.run([str(Path(sys.executable).with_name("raddiag")), "ingest", str(dicom / "c.csv"), "--store", str(tmp_path / "s")],
                           capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert nokey.returncode == 2 and "RADDIAG_DEID_KEY" in nokey.stderr


@pytest.mark.slow
@pytest.mark.skipif(not (RP3D_DEMO / "demoData.json").exists(), reason="../shared/rp3d-demo not present")
def test_ingest_the_real_rp3d_demo_reports_missing_volumes(tmp_path: Path) -> None:
    result = run_cli("ingest", str(RP3D_DEMO / "demoData.json"), "--labels", str(RP3D_DEMO / "disorder_label_dict.json"),
                     "--store", str(tmp_path / "s"), cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    for missing in ("123742", "123743", "127782", "127783"):
        assert missing in result.stdout
    manifest = Store(str(tmp_path / "s")).manifest()
    assert len(manifest.cases) == 2 and len(manifest.scans) == 4  # 4 shipped 2D scans; the AAA case had none
    assert set(manifest.label_names()) == {"Hip dislocation", "Anterior cruciate ligament tear", "Segond fracture"}
    assert (manifest.scans.height == 256).all() and (manifest.scans.depth == 1).all()
