"""Ingest robustness: a mixed batch of good and hostile inputs through `raddiag ingest`.

    .venv/bin/python bench/ingest_robustness.py [--json out.json]

The batch is tests/hostile_inputs.py (real DICOM from pydicom-data and deid-data: CT/MR/CR/US/NM,
JPEG Lossless/JPEG-LS/JPEG 2000/RLE, MONOCHROME1, palette colour, enhanced CT/MR, a SEG object,
burned-in-text ultrasound; crafted: malformed tags, a FIFO named x.npy, a symlink leaving a DICOM
folder, junk in a DICOM folder, rich markup and terminal escapes in a case id, a 300-character
label, an absolute path outside the root, malformed RP3D json fields) plus two memory bombs: .nii.gz
files of a few MB that decompress to exactly ``ingest.max_voxels`` voxels (int16). Reported: inputs
tried, stored as expected, quarantined with the expected reason, crashed (non-zero exit or a
traceback), hung (the run exceeding its time bound), PHI values found in the store or the output,
files written outside the store, peak RSS of the ingest process against its memory budget.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "platform"))

TIME_BOUND_S = 300
MAX_VOXELS = 2**28


def _bombs(root: Path) -> list[str]:
    import nibabel

    rows = []
    side = int(round((MAX_VOXELS / 512) ** 0.5))  # 724 x 724 x 512 ~= max_voxels
    volume = np.zeros((side, side, MAX_VOXELS // (side * side)), np.int16)
    volume[::97, ::89, ::7] = 1000
    for i in range(2):
        nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), str(root / f"bomb{i}.nii.gz"))
        rows.append(f"bomb-{i},bomb{i}.nii.gz,CT,axial,Normal,,")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-mb", type=int, default=4096)
    args = parser.parse_args()

    import hostile_inputs
    from raddiag.storage.store import Store

    with tempfile.TemporaryDirectory() as directory:
        base = Path(directory)
        root = hostile_inputs.build(base)
        bomb_rows = _bombs(root)
        with open(root / "cases.csv", "a") as handle:
            handle.write("\n".join(bomb_rows) + "\n")
        bomb_bytes = sum((root / f"bomb{i}.nii.gz").stat().st_size for i in range(2))
        before = {p for p in base.rglob("*")}
        store = base / "store"
        exe = str(Path(sys.executable).with_name("raddiag"))
        command = [exe, "ingest", str(root / "cases.csv"), str(root / "train_cases.json"), "--data-root", str(root),
                   "--store", str(store), "--workers", str(args.workers), "--set", "ingest.image_size=64",
                   "--set", "ingest.max_depth=16", "--set", f"ingest.memory_mb={args.memory_mb}",
                   "--set", f"ingest.max_voxels={MAX_VOXELS}"]
        env = {**os.environ, "RADDIAG_DEID_KEY": "a-bench-key-of-at-least-32-characters!!", "COLUMNS": "300"}
        started = time.monotonic()
        hung = False
        try:
            result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=TIME_BOUND_S)
            code, output = result.returncode, result.stdout + result.stderr
        except subprocess.TimeoutExpired as exc:
            hung, code, output = True, None, str(exc.stdout or "") + str(exc.stderr or "")
        seconds = time.monotonic() - started
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

        stored, reasons = set(), {}
        if store.exists() and code == 0:
            manifest = Store(str(store)).manifest()
            stored = set(manifest.cases["case_id"])
            for row in Store(str(store)).rejected().itertuples(index=False):
                reasons.setdefault(row.case_id, []).append(row.reason)
        expected_reasons = {**hostile_inputs.REASONS, "bomb-0": "over the memory budget", "bomb-1": "over the memory budget"}
        quarantined_ok = sorted(c for c, r in expected_reasons.items() if c not in stored and any(r in x for x in reasons.get(c, [])))
        stored_ok = sorted(hostile_inputs.STORED & stored)
        phi = hostile_inputs.phi_values(hostile_inputs.dicom_inputs(root))
        blobs = [p.read_bytes() for p in store.rglob("*") if p.is_file()] + [output.encode()]
        leaked = sorted(v for v in phi if any(v.encode() in b for b in blobs))
        outside = sorted(str(p) for p in {p for p in base.rglob("*")} - before if store not in p.parents and p != store)
        crashed = bool(code not in (0, None) or "Traceback" in output)

    inputs = len(hostile_inputs.STORED) + len(expected_reasons)
    report = {
        "benchmark": "ingest_robustness", "inputs": inputs, "expected_stored": len(hostile_inputs.STORED),
        "stored_as_expected": len(stored_ok), "expected_quarantined": len(expected_reasons),
        "quarantined_with_expected_reason": len(quarantined_ok),
        "missed": sorted((hostile_inputs.STORED - stored) | (set(expected_reasons) - set(quarantined_ok))),
        "crashed": crashed, "exit_code": code, "hung": hung, "seconds": round(seconds, 1), "time_bound_s": TIME_BOUND_S,
        "phi_values_checked": len(phi), "phi_found": leaked, "files_outside_store": outside,
        "peak_rss_mb": round(peak_mb), "memory_budget_mb": args.memory_mb, "workers": args.workers,
        "memory_bombs": {"files": 2, "compressed_mb": round(bomb_bytes / 2**20, 1), "voxels_each": MAX_VOXELS},
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
