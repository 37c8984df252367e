"""Config keys: the nested per-loss sections, the old flat loss keys (read with one warning line),
and search-space / ablation-arm keys and values checked when the config loads."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from conftest import REPO, run_cli, tiny_overrides
from raddiag.config import ConfigError, RadDiagConfig, legacy_key, load_config, with_overrides

OLD_YAML = """
loss:
  type: cb
  focal_gamma: 1.5
  cb_base: focal
  key_slice_weight: 0.01
sweep:
  search_space:
    loss.type: {choice: [focal, asl]}
    loss.focal_gamma: {uniform: [0.5, 3.0], when: {loss.type: focal}}
    loss.asl_clip: {uniform: [0.0, 0.2], when: {loss.type: asl}}
ablation:
  arms:
    plain: {loss.type: bce}
    focal: {loss.type: focal, loss.focal_alpha: null}
"""

NEW_YAML = """
loss:
  type: cb
  focal: {gamma: 1.5}
  cb: {base: focal}
  key_slice: {weight: 0.01}
sweep:
  search_space:
    loss.type: {choice: [focal, asl]}
    loss.focal.gamma: {uniform: [0.5, 3.0], when: {loss.type: focal}}
    loss.asl.clip: {uniform: [0.0, 0.2], when: {loss.type: asl}}
ablation:
  arms:
    plain: {loss.type: bce}
    focal: {loss.type: focal, loss.focal.alpha: null}
"""


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "raddiag.config" and r.levelno == logging.WARNING]


def _error(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------- nested keys, old names


def test_nested_loss_keys_from_set_and_yaml(tmp_path: Path) -> None:
    cfg = load_config(None, ["loss.type=focal", "loss.focal.gamma=1.5", "loss.key_slice.form=official"])
    assert (cfg.loss.focal.gamma, cfg.loss.key_slice.form, cfg.loss.focal.alpha) == (1.5, "official", 0.25)
    (tmp_path / "new.yaml").write_text(NEW_YAML)
    cfg = load_config([tmp_path / "new.yaml"])
    assert cfg.loss.sections() == ("cb", "focal") and cfg.loss.key_slice.weight == 0.01
    with pytest.raises(ConfigError, match="loss.focal.gamma"):
        load_config(None, ["loss.focal.gamma=11"])  # same bounds as before (<= 10)


def test_old_flat_keys_are_translated_with_one_warning_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "old.yaml").write_text(OLD_YAML)
    (tmp_path / "new.yaml").write_text(NEW_YAML)
    new = load_config([tmp_path / "new.yaml"])
    assert not _warnings(caplog)
    old = load_config([tmp_path / "old.yaml"])
    assert old == new  # loss section, search space (keys and when) and arms all read as the new names
    (line,) = _warnings(caplog)
    assert "old.yaml" in line and "\n" not in line
    for before, after in [("loss.focal_gamma", "loss.focal.gamma"), ("loss.asl_clip", "loss.asl.clip"), ("loss.focal_alpha", "loss.focal.alpha")]:
        assert f"{before} -> {after}" in line
    caplog.clear()
    assert load_config(None, ["loss.type=focal", "loss.focal_gamma=0.5"]).loss.focal.gamma == 0.5
    (line,) = _warnings(caplog)
    assert line.startswith("--set loss.focal_gamma:") and "loss.focal.gamma" in line


def test_later_sources_win_across_old_and_new_names(tmp_path: Path) -> None:
    (tmp_path / "old.yaml").write_text("loss: {focal_gamma: 1.5}\n")
    assert load_config([tmp_path / "old.yaml"], ["loss.focal.gamma=2.5"]).loss.focal.gamma == 2.5
    assert load_config(None, ["loss.focal.gamma=2.5", "loss.focal_gamma=0.5"]).loss.focal.gamma == 0.5


def test_old_and_new_name_in_one_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "both.yaml").write_text("loss: {focal_gamma: 1.5, focal: {gamma: 2.0}}\n")
    with pytest.raises(ConfigError, match=r"both.yaml: loss.focal_gamma \(old name\) and loss.focal.gamma are both set"):
        load_config([tmp_path / "both.yaml"])


def test_configs_stored_with_old_runs_still_load(caplog: pytest.LogCaptureFixture) -> None:
    stored = RadDiagConfig().model_dump(mode="json")
    stored["loss"] = {"type": "asl", "asl_gamma_neg": 3.0, "asl_clip": 0.1, "pos_weight": 2.0, "key_slice_form": "official"}
    stored["sweep"]["search_space"] = {"loss.type": {"choice": ["bce", "asl"]}, "loss.asl_gamma_neg": {"uniform": [2, 6], "when": {"loss.type": "asl"}}}
    cfg = RadDiagConfig.model_validate(stored)  # what serving/scoring do with a model's stored config
    assert (cfg.loss.asl.gamma_neg, cfg.loss.asl.clip, cfg.loss.bce.pos_weight, cfg.loss.key_slice.form) == (3.0, 0.1, 2.0, "official")
    assert "loss.asl.gamma_neg" in cfg.sweep.search_space and not _warnings(caplog)
    assert with_overrides(cfg, {"loss.asl_clip": 0.2}).loss.asl.clip == 0.2
    assert legacy_key("loss.key_slice_weight") == "loss.key_slice.weight" and legacy_key("train.lr") is None


def test_jobs_use_the_nested_names(caplog: pytest.LogCaptureFixture) -> None:
    for path in sorted((REPO / "jobs").glob("*.yaml")):
        if "entrypoint" not in yaml.safe_load(path.read_text()):
            load_config([path])
    assert not _warnings(caplog)


# ----------------------------------------------------------------------------- search space and arms checked at load


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ("{loss.focal.gama: {uniform: [1, 2]}}", "sweep.search_space: unknown config key 'loss.focal.gama' (did you mean 'loss.focal.gamma'?)"),
        ("{train.lr: {loguniform: [1.0e-4, 1]}, model.hed: {choice: [mlp, ke]}}", "unknown config key 'model.hed' (did you mean 'model.head'?)"),
        ("{loss.type: {choice: [bce, foo]}}", "sweep.search_space['loss.type']: choice value 'foo' is not valid for loss.type: Input should be"),
        ("{train.lr: {uniform: [-1, 1]}}", "sweep.search_space['train.lr']: uniform bound -1 is not valid for train.lr: Input should be greater than 0"),
        ("{loss.cb.beta: {choice: [0.9, 1.0]}}", "choice value 1.0 is not valid for loss.cb.beta"),
        ("{train.epochs: {uniform: [1, 4]}}", "train.epochs is an integer; sample it with {int: [low, high]}"),
        ("{loss.type: {choice: [bce, focal]}, loss.focal.gamma: {uniform: [1, 2], when: {loss.typ: focal}}}",
         "sweep.search_space['loss.focal.gamma'].when: unknown config key 'loss.typ' (did you mean 'loss.type'?)"),
        ("{loss.focal.gamma: {uniform: [1, 2], when: {loss.type: focal}}}", "'loss.type' is not sampled above 'loss.focal.gamma'"),
        ("{loss.type: {choice: [bce, asl]}, loss.focal.gamma: {uniform: [1, 2], when: {loss.type: focal}}}",
         "loss.type='focal' is never sampled"),
        ("{loss.type: {choice: [bce, focal]}, loss.focal.gamma: {uniform: [1, 20], when: {loss.type: focal}}}",
         "uniform bound 20 is not valid for loss.focal.gamma: Input should be less than or equal to 10"),
    ],
)
def test_search_space_keys_and_values_are_checked_at_load(space: str, expected: str) -> None:
    assert expected in _error([f"sweep.search_space={space}"])


def test_valid_search_spaces_load() -> None:
    conditional = "{loss.type: {choice: [bce, cb]}, loss.cb.base: {choice: [bce, focal], when: {loss.type: cb}}, train.epochs: {int: [1, 3]}}"
    assert load_config(None, [f"sweep.search_space={conditional}"]).sweep.search_space["loss.cb.base"]["when"] == {"loss.type": "cb"}
    # A cross-field check another sampled key can satisfy is left to the trial (embed_dim and heads vary together).
    pair = "{model.embed_dim: {choice: [36, 40]}, model.slice_heads: {choice: [3, 4]}}"
    load_config(None, ["model.embed_dim=36", "model.slice_heads=3", f"sweep.search_space={pair}"])
    alone = _error(["sweep.search_space={model.embed_dim: {choice: [64, 30]}}"])  # nothing else sampled could fix it
    assert "choice value 30 is not valid for model.embed_dim: model.embed_dim (30) must be divisible by model.slice_heads" in alone
    dicts = "{train.resources_per_worker.accel: {choice: [0.5, 1]}}"  # an entry of a dict-typed key
    load_config(None, [f"sweep.search_space={dicts}"])


def test_ablation_arm_keys_and_values_are_checked_at_load() -> None:
    message = _error(["ablation.arms={a: {model.fusion: late}, b: {model.fusoin: transformer}}"])
    assert message == "--set: ablation.arms.b: unknown config key 'model.fusoin' (did you mean 'model.fusion'?)"
    message = _error(["ablation.arms={a: {loss.type: cb, loss.cb.beta: 1.5}}"])
    assert message.startswith("--set: ablation.arms.a: config key 'loss.cb.beta': Input should be less than 1") and "(got 1.5)" in message


def test_sweep_dry_run_with_a_typo_exits_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "sweep.yaml").write_text("sweep:\n  search_space:\n    loss.focal.gama: {uniform: [0.5, 3.0]}\n")
    result = run_cli("sweep", "--dry-run", "-c", str(tmp_path / "sweep.yaml"), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "loss.focal.gama" in lines[0] and "did you mean 'loss.focal.gamma'" in lines[0]
    assert not (tmp_path / ".raddiag").exists()  # nothing started, nothing written


@pytest.mark.slow  # a real one-trial Ray Tune sweep (~45 s on 2 cores): the nested keys go through Optuna, Tune and MLflow
def test_a_sweep_samples_nested_loss_keys_and_logs_only_the_active_loss(tmp_path: Path, tiny_store, ray_local) -> None:
    from raddiag import tracking
    from raddiag.tune.sweep import run_sweep

    store_cfg, _ = tiny_store
    space = ("{loss.type: {choice: [focal]}, loss.focal_gamma: {uniform: [1.0, 2.0], when: {loss.type: focal}},"  # old name: translated
             " loss.key_slice.weight: {loguniform: [1.0e-4, 1.0e-2]}}")
    cfg = load_config(None, [*tiny_overrides(tmp_path), f"store.url={store_cfg.store.url}", "train.epochs=1", "train.num_workers=1",
                             "sweep.num_samples=1", "sweep.scheduler=none", "sweep.name=nested-loss", f"sweep.search_space={space}"])
    result = run_sweep(cfg)
    (trial,) = result.trials
    params = tracking.client(cfg.tracking.resolved_uri()).get_run(trial["run_id"]).data.params
    assert params["loss.type"] == "focal" and 1.0 <= float(params["loss.focal.gamma"]) <= 2.0
    assert 1e-4 <= float(params["loss.key_slice.weight"]) <= 1e-2
    assert {k.split(".")[1] for k in params if k.startswith("loss.")} == {"type", "focal", "key_slice"}  # no bce/asl/cb/... keys
