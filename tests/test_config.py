"""One typed config: YAML files + --set overrides; errors name the key, CLI misuse exits 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import REPO, run_cli
from raddiag.config import ConfigError, RadDiagConfig, load_config, parse_override, with_overrides


def test_defaults_are_valid_and_tiny() -> None:
    cfg = load_config()
    assert isinstance(cfg, RadDiagConfig)
    assert cfg.data.image_size <= 64 and cfg.train.num_workers == 1  # two single-worker runs side by side on 2 cores
    assert cfg.flat()["train.lr"] == cfg.train.lr


def test_yaml_files_merge_in_order_and_set_wins(tmp_path: Path) -> None:
    first = tmp_path / "a.yaml"
    second = tmp_path / "b.yaml"
    first.write_text("train:\n  lr: 0.1\n  epochs: 7\n")
    second.write_text("train:\n  lr: 0.2\n")
    cfg = load_config([first, second], ["train.batch_size=3", "loss.type=focal"])
    assert (cfg.train.lr, cfg.train.epochs, cfg.train.batch_size, cfg.loss.type) == (0.2, 7, 3, "focal")


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.lrr=1", "unknown config key 'train.lrr'"),
        ("nonsense.key=1", "unknown config key 'nonsense'"),
        ("train.lr=abc", "config key 'train.lr'"),
        ("train.epochs=0", "config key 'train.epochs'"),
        ("loss.type=hinge", "config key 'loss.type'"),
        ("model.embed_dim=30", "divisible"),
    ],
)
def test_bad_override_is_one_line_naming_the_key(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert expected in message and "\n" not in message


def test_override_syntax() -> None:
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("train.lr=3e-4")[1] == pytest.approx(3e-4)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("train.lr")


def test_bad_yaml_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config([path])
    with pytest.raises(ConfigError, match="not found"):
        load_config([tmp_path / "missing.yaml"])
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config([listed])


def test_search_space_is_validated() -> None:
    with pytest.raises(ConfigError, match="search_space"):
        load_config(None, ["sweep.search_space={train.lr: {uniform: [1, 0]}}"])
    with pytest.raises(ConfigError, match="search_space"):
        load_config(None, ["sweep.search_space={train.lr: {normal: [0, 1]}}"])


def test_trial_overrides_are_revalidated() -> None:
    cfg = load_config()
    assert with_overrides(cfg, {"loss.type": "asl", "loss.asl.gamma_neg": 3.0}).loss.asl.gamma_neg == 3.0
    with pytest.raises(ConfigError):
        with_overrides(cfg, {"loss.asl.gamma_neg": -1})


def test_every_job_spec_validates() -> None:
    specs = sorted((REPO / "jobs").glob("*.yaml"))
    assert specs
    for spec in specs:
        data = yaml.safe_load(spec.read_text())
        if isinstance(data, dict) and "entrypoint" in data:  # Ray Jobs submission spec
            continue
        load_config([spec])


def test_cli_unknown_key_exits_2_with_one_line() -> None:
    result = run_cli("train", "--set", "train.lrr=1")
    assert result.returncode == 2
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "train.lrr" in lines[0], result.stderr


def test_cli_bad_value_exits_2() -> None:
    result = run_cli("sweep", "--set", "sweep.num_samples=-1")
    assert result.returncode == 2 and "sweep.num_samples" in result.stderr


def test_cli_missing_config_file_exits_2(tmp_path: Path) -> None:
    result = run_cli("train", "--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "nope.yaml" in result.stderr


def test_cli_missing_store_is_one_line(tmp_path: Path) -> None:
    result = run_cli("evaluate", "--set", f"store.url={tmp_path / 'empty'}", "--set", f"tracking.tracking_uri=sqlite:///{tmp_path / 'm.db'}", "--model", "runs:/0/model")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr


def test_demo_job_spec_matches_embedded_defaults() -> None:
    assert load_config([REPO / "jobs" / "demo.yaml"]) == load_config()
