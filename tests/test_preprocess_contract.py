"""One preprocessing contract from ingest to predict: a scan file given to ``predict`` reaches the
model exactly as the same file reached it in training (ingested with the store's plan, read back
through the training data path)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd


def _sorted_scans(batch: dict) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(modality id, images, slice mask) of each real scan of case 0, in a fixed order."""
    rows = []
    for n in range(batch["scan_mask"].shape[1]):
        if batch["scan_mask"][0, n]:
            rows.append((int(batch["modality_ids"][0, n]), np.asarray(batch["images"][0, n]), np.asarray(batch["slice_mask"][0, n])))
    return sorted(rows, key=lambda row: (row[0], float(row[1].sum())))


def test_predict_prepares_a_file_exactly_as_ingest_stored_it(tmp_path: Path) -> None:
    from raddiag.config import load_config
    from raddiag.data.pipeline import local_batches
    from raddiag.predict import case_arrays, load_case_folder
    from raddiag.storage.ingest import run_ingest
    from raddiag.storage.preprocess import Plan
    from raddiag.storage.store import Store

    rng = np.random.default_rng(0)
    case = tmp_path / "case"
    case.mkdir()
    hu = rng.normal(40.0, 400.0, (30, 26, 11)).astype(np.float32)  # CT in HU, beyond the window on both sides
    hu[:, :, 3] = -1000.0  # air
    np.save(case / "ct.npy", hu)
    np.save(case / "xray.npy", (rng.random((40, 36, 1)) * 4000).astype(np.float32))
    (case / "case.json").write_text(json.dumps({"scans": {"ct.npy": {"modality": "CT", "plane": "axial"},
                                                          "xray.npy": {"modality": "X-ray", "plane": "frontal"}}}))
    rows = [
        {"case_id": "c1", "path": str(case / "ct.npy"), "modality": "CT", "plane": "axial", "labels": "Pneumonia", "split": "test"},
        {"case_id": "c1", "path": str(case / "xray.npy"), "modality": "X-ray", "plane": "frontal", "labels": "Pneumonia", "split": "test"},
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "cases.csv", index=False)
    plan = Plan(image_size=24, max_depth=5, ct_window=(40.0, 400.0))
    store = Store(str(tmp_path / "store"))
    result = run_ingest([tmp_path / "cases.csv"], store, plan=plan)
    assert result.manifest is not None and result.manifest.info["plan"] == plan.to_dict()

    cfg = load_config(None, [f"store.url={tmp_path / 'store'}", "data.n_image=3", "data.depth=4", "data.image_size=16"])
    manifest = store.manifest()
    trained = next(iter(local_batches(manifest.case_records("test"), cfg, manifest.label_names("disorder"), 1)))
    scans = load_case_folder(case)
    served = case_arrays(scans, cfg.data, manifest.info["plan"])
    expected, got = _sorted_scans(trained), _sorted_scans(served)
    assert [row[0] for row in got] == [row[0] for row in expected] and len(got) == 2
    for (_, want, want_mask), (_, have, have_mask) in zip(expected, got):
        assert np.array_equal(want_mask, have_mask)
        assert np.array_equal(want, have)  # bit for bit: same window, sampling, resize and scaling
    # without the plan (the old path) the CT differs: the window and the stored resolution are skipped
    unplanned = _sorted_scans(case_arrays(scans, cfg.data))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(expected, unplanned))
