"""The CLI's edge, as a new user meets it: fast --help, --version, one-line errors for bad case
folders before any model is loaded, nothing created outside the project, missing models named
with the tracking URI searched."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli


def test_help_imports_no_heavy_framework() -> None:
    """`raddiag --help` must not import mlflow, torch or ray (each costs seconds at start-up)."""
    code = (
        "import sys\nsys.argv = ['raddiag', '--help']\nfrom raddiag.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', sorted(m for m in ('mlflow', 'torch', 'ray', 'pandas', 'zarr') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "Usage: raddiag" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "HEAVY []", result.stdout[-500:]


def test_version() -> None:
    from raddiag import __version__

    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"raddiag {__version__}"


def _cases(root: Path) -> dict[str, Path]:
    cases = {name: root / name for name in ("empty", "corrupt-npy", "text-dcm", "bad-case-json", "not-a-folder")}
    for name, path in cases.items():
        if name != "not-a-folder":
            path.mkdir()
    (cases["corrupt-npy"] / "scan.npy").write_bytes(b"\x93NUMPY garbage")
    (cases["text-dcm"] / "a.dcm").write_text("not DICOM at all")
    np.save(cases["bad-case-json"] / "a.npy", np.random.default_rng(0).random((8, 8, 2), dtype=np.float32))
    (cases["bad-case-json"] / "case.json").write_text('{"scans": ')
    cases["not-a-folder"].write_text("x")
    return cases


EXPECTED = {
    "empty": "no scan files", "corrupt-npy": "scan.npy", "text-dcm": "a.dcm: not a readable DICOM file",
    "bad-case-json": "case.json: not readable JSON", "not-a-folder": "not a directory",
}


@pytest.mark.parametrize("verb", ["predict", "zeroshot"])
def test_bad_case_folders_fail_in_one_line_before_any_model(verb: str, tmp_path: Path) -> None:
    cases = _cases(tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    for name, path in cases.items():
        args = [verb, str(path)] + (["--labels", "Pneumonia"] if verb == "zeroshot" else [])
        result = run_cli(*args, cwd=work)  # no model anywhere: the case must be refused first
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and EXPECTED[name] in lines[0], (name, result.stderr[-800:])
    assert not (work / ".raddiag").exists()  # nothing created where the user happened to be


def test_missing_model_names_the_tracking_uri(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # in-process tests before this one export theirs
    np.save(tmp_path / "a.npy", np.random.default_rng(0).random((8, 8, 2), dtype=np.float32))
    case = tmp_path / "case"
    case.mkdir()
    (tmp_path / "a.npy").rename(case / "a.npy")
    work = tmp_path / "elsewhere"
    work.mkdir()
    result = run_cli("predict", str(case), cwd=work)
    assert result.returncode == 2 and f"no MLflow database at {work / '.raddiag' / 'mlflow.db'}" in result.stderr
    assert not (work / ".raddiag").exists()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    from raddiag import tracking
    from raddiag.config import TrackingConfig

    tracking.setup(TrackingConfig(tracking_uri=uri))  # an existing, empty registry
    result = run_cli("predict", str(case), "--set", f"tracking.tracking_uri={uri}", cwd=work)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == f"Error: models:/raddiag@champion: not found in the MLflow registry at {uri} (promote a model first: raddiag promote)"
    result = run_cli("predict", str(case), "--top-k", "-3", cwd=work)
    assert result.returncode == 2 and "--top-k -3" in result.stderr


def test_known_failures_are_matched_by_class_without_importing_them() -> None:
    from mlflow.exceptions import MlflowException, RestException

    from raddiag.cli import known_failure
    from raddiag.config import ConfigError
    from raddiag.storage.store import StoreError

    assert known_failure(ConfigError("x")) and known_failure(StoreError("x")) and known_failure(MlflowException("x"))
    assert known_failure(RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "m"}))  # a subclass
    assert not known_failure(ValueError("x")) and not known_failure(KeyError("x"))
