"""The repository layout promises of design.md §2."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_platform_dir_is_not_a_package() -> None:
    assert not (REPO / "platform" / "__init__.py").exists()


def test_stdlib_platform_still_works_with_repo_root_first_on_path() -> None:
    code = "import sys; sys.path.insert(0, sys.argv[1]); import platform; print(platform.system())"
    out = subprocess.run([sys.executable, "-c", code, str(REPO)], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() in {"Linux", "Darwin", "Windows"}


def test_required_top_level_entries_exist() -> None:
    for name in ("pyproject.toml", "Makefile", "README.md", "ray_cluster.yaml", ".ci/run", "jobs", "storage", "dashboards", "bench", "tests"):
        assert (REPO / name).exists(), name


def test_ci_runs_make_test() -> None:
    assert "make test" in (REPO / ".ci" / "run").read_text()
