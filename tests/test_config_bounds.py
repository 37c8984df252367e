"""Hostile configuration: alias bombs refused fast, echoed values bounded, names that would escape
``train.storage_path`` or break an MLflow filter refused, filter literals quoted."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import pytest

from conftest import REPO, run_cli


def _bomb(levels: int) -> str:
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + f"\ntrain: {{lr: *l{levels - 1}}}\n"


def test_alias_bomb_is_refused_in_bounded_time_and_memory(tmp_path: Path) -> None:
    from raddiag.config import ConfigError, load_config

    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb(9))  # 1 KB that expands to 9^9 = 387 million values
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with pytest.raises(ConfigError, match="expands to more than") as caught:
        load_config([path])
    assert time.monotonic() - started < 2 and len(str(caught.value)) < 200
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 100_000  # KB: no expansion happened
    many = tmp_path / "aliases.yaml"
    many.write_text("a: &a 1\nb: [" + ", ".join(["*a"] * 150) + "]\n")
    with pytest.raises(ConfigError, match="more than 100 YAML aliases"):
        load_config([many])
    flow = "{" + ", ".join(line.replace(": ", ": ", 1) for line in _bomb(9).splitlines()[:-1]) + "}"
    with pytest.raises(ConfigError, match="expands to more than"):
        load_config(None, [f"train.lr={flow}"])  # the same bomb as one --set value


def test_echoed_values_are_cut(tmp_path: Path) -> None:
    from raddiag.config import ConfigError, load_config

    for override in ("train.lr=" + "x" * 100_000, "train.lr=" + "[" * 60 + "1" + "]" * 60, "k" * 5000):
        with pytest.raises(ConfigError) as caught:
            load_config(None, [override])
        assert len(str(caught.value)) < 400, str(caught.value)[:500]


@pytest.mark.parametrize("name", ["../../x", "O'Brien run", "a/b", "x" * 101, "-lead", "tab\tname"])
def test_unsafe_run_names_are_refused(name: str) -> None:
    from raddiag.config import ConfigError, load_config

    for key in ("train.name", "sweep.name", "ablation.name"):
        with pytest.raises(ConfigError, match="use 1-100 letters"):
            load_config(None, [f"{key}={name}"])


def test_a_refused_name_exits_2_before_anything_starts(tmp_path: Path) -> None:
    result = run_cli("train", "--set", "train.name=../../escape", "--set", f"train.storage_path={tmp_path / 'ray'}", cwd=REPO)
    assert result.returncode == 2 and "train.name" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "escape").exists() and not (tmp_path / "ray").exists()


def test_filter_literals_are_quoted_for_mlflow(tmp_path: Path) -> None:
    from raddiag import tracking

    client = tracking.client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("quoting")
    for value in ("O'Brien run", 'say "hi"', "plain"):
        client.create_run(experiment, tags={"who": value})
    for value in ("O'Brien run", 'say "hi"', "plain"):
        found = client.search_runs([experiment], filter_string=f"tags.who = {tracking.quoted(value)}")
        assert [r.data.tags["who"] for r in found] == [value]
    with pytest.raises(ValueError, match="both quote characters"):
        tracking.quoted("""it's "both\"""")
