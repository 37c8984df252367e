"""Distributed ingest: cases processed as Ray tasks give the same dataset version, rows and
quarantine as the thread pool on one machine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def _sources(root: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(14):
        path = root / f"c{i}.npy"
        np.save(path, rng.normal(0, 100, (20, 18, 1 + i % 4)).astype(np.float32))
        rows.append({"case_id": f"case-{i:02d}", "path": str(path), "modality": "CT" if i % 4 else "X-ray",
                     "plane": "axial", "labels": ["Pneumonia", "Fracture", "Normal"][i % 3], "split": ""})
    (root / "broken.npy").write_bytes(b"not a numpy file")
    rows.append({"case_id": "case-bad", "path": str(root / "broken.npy"), "modality": "CT", "plane": "axial",
                 "labels": "Pneumonia", "split": ""})
    pd.DataFrame(rows).to_csv(root / "cases.csv", index=False)
    return root / "cases.csv"


def test_ray_ingest_publishes_the_same_version_as_threads(tmp_path: Path, ray_local) -> None:
    from raddiag.storage.ingest import run_ingest
    from raddiag.storage.preprocess import Plan
    from raddiag.storage.store import Store

    source = _sources(tmp_path)
    threads = run_ingest([source], Store(str(tmp_path / "a")), plan=Plan(16, 3), workers=2)
    seen = []
    on_ray = run_ingest([source], Store(str(tmp_path / "b")), plan=Plan(16, 3), on_ray=lambda: seen.append("up"),
                        task_cpus=0.5, progress=lambda done, total: seen.append(done))
    assert seen[0] == "up" and seen[-1] == 15  # Ray brought up after screening; progress per finished chunk
    assert on_ray.manifest.version == threads.manifest.version and on_ray.n_scans == threads.n_scans == 14
    assert on_ray.rejected.to_dict("records") == threads.rejected.to_dict("records")
    assert set(on_ray.rejected["case_id"]) == {"case-bad"}  # its file, then the case without a usable scan
    b = Store(str(tmp_path / "b"))
    for row in b.manifest().scans.itertuples(index=False):  # every scan written by a task is readable
        assert b.has_complete_scan(row.scan_id) and b.read_slices(row.scan_id, [row.depth - 1]).shape[0] == 1
