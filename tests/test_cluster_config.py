"""ray_cluster.yaml / ray_cluster.local.yaml against Ray's own schema, their capacity for
jobs/sweep.yaml, the IAM policies they reference, and the job-spec format of `raddiag submit`."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from conftest import REPO, run_cli


def _sweep_job_config(extra: list[str] | None = None):
    """The config `jobs/sweep.job.yaml` runs: its entrypoint's -c files and --set overrides."""
    from raddiag.config import load_config
    from raddiag.submit import load_job_spec

    spec = load_job_spec(REPO / "jobs" / "sweep.job.yaml", overrides=extra)
    command = spec.entrypoint.split("&&")[-1]
    words = shlex.split(command)
    assert words[:2] == ["raddiag", "sweep"]
    files = [REPO / words[i + 1] for i, w in enumerate(words) if w == "-c"]
    sets = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
    return load_config(files, sets)


def test_ray_cluster_yaml_passes_rays_schema_validation() -> None:
    from raddiag.cluster import validate_cluster_yaml

    prepared = validate_cluster_yaml(REPO / "ray_cluster.yaml")
    types = prepared["available_node_types"]
    assert prepared["provider"]["type"] == "aws"
    head = types[prepared["head_node_type"]]
    assert "GPU" not in head["resources"] and head["max_workers"] == 0
    gpu = [t for t in types.values() if t["resources"].get("GPU")]
    assert gpu and all(t["min_workers"] == 0 for t in gpu)
    assert re.match(r"(g5|p4d|p5|g6)\.", gpu[0]["node_config"]["InstanceType"])
    cpu_workers = [n for n, t in types.items() if n != prepared["head_node_type"] and not t["resources"].get("GPU")]
    assert cpu_workers, "a CPU data-worker type"
    assert prepared["idle_timeout_minutes"] > 0
    assert any("pip install" in c and "raddiag" in c for c in prepared["setup_commands"])


def test_local_fake_multinode_yaml_passes_schema_validation() -> None:
    from raddiag.cluster import validate_cluster_yaml

    prepared = validate_cluster_yaml(REPO / "ray_cluster.local.yaml")
    assert prepared["provider"]["type"] == "fake_multinode"
    workers = [t for n, t in prepared["available_node_types"].items() if n != prepared["head_node_type"]]
    assert workers[0]["min_workers"] == 0 and workers[0]["max_workers"] >= 2


def test_every_knob_of_ray_cluster_yaml_is_commented() -> None:
    lines = (REPO / "ray_cluster.yaml").read_text().splitlines()
    uncommented = []
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z_][\w.]*):", line)
        if not match or "#" in line:
            continue
        previous = next((l for l in reversed(lines[:number]) if l.strip()), "")
        parent_commented = previous.strip().startswith("#")
        if not parent_commented and len(match.group(1)) <= 4:
            uncommented.append(line.strip())
    allowed = {"provider:", "auth:", "available_node_types:", "node_config:", "head:", "gpu_worker:", "data_worker:",
               "min_workers: 0", "max_workers: 0", "IamInstanceProfile:", "BlockDeviceMappings:"}
    assert [u for u in uncommented if u not in allowed] == []


def test_cluster_can_run_a_trial_of_the_sweep_job(tmp_path) -> None:
    from raddiag.cluster import capacity_problems, load_cluster_yaml, max_concurrent_trials
    from raddiag.config import load_config

    cluster = load_cluster_yaml(REPO / "ray_cluster.yaml")
    on_gpus = _sweep_job_config()
    assert on_gpus.train.use_gpu, "the cluster sweep job trains on GPUs"
    assert capacity_problems(cluster, on_gpus) == []
    assert max_concurrent_trials(cluster, on_gpus) >= 2
    plain = load_config([REPO / "jobs" / "sweep.yaml"])
    assert capacity_problems(cluster, plain) == []
    too_big = load_config([REPO / "jobs" / "sweep.yaml"], ["train.use_gpu=true", "train.num_workers=64"])
    assert any("Train workers" in p for p in capacity_problems(cluster, too_big))


def test_instance_profiles_reference_least_privilege_policies() -> None:
    text = (REPO / "ray_cluster.yaml").read_text()
    for name in re.findall(r"storage/iam/([\w-]+\.json)", text):
        assert (REPO / "storage" / "iam" / name).exists(), name
    train = json.loads((REPO / "storage" / "iam" / "training-read.json").read_text())
    actions = {a for s in train["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    assert actions <= {"s3:GetObject", "s3:ListBucket"}, "training reads only"
    ingest = json.loads((REPO / "storage" / "iam" / "ingest-write.json").read_text())
    ingest_actions = {a for s in ingest["Statement"] for a in s["Action"]}
    assert {"s3:PutObject", "s3:GetObject"} <= ingest_actions and "s3:*" not in ingest_actions
    config = yaml.safe_load(text)
    profiles = {n: t["node_config"]["IamInstanceProfile"]["Arn"] for n, t in config["available_node_types"].items()}
    assert profiles["gpu_worker"].endswith("/raddiag-train") and profiles["data_worker"].endswith("/raddiag-ingest")


def test_job_spec_overrides_reach_every_raddiag_command() -> None:
    from raddiag.submit import with_overrides

    entry = with_overrides("raddiag synth -c a.yaml && raddiag sweep -c b.yaml", ["store.url=/tmp/x y"])
    assert entry == "raddiag synth -c a.yaml --set 'store.url=/tmp/x y' && raddiag sweep -c b.yaml --set 'store.url=/tmp/x y'"


def test_a_config_yaml_becomes_a_raddiag_verb_entrypoint() -> None:
    from raddiag.submit import load_job_spec

    spec = load_job_spec(REPO / "jobs" / "train.yaml", overrides=["train.epochs=1"])
    assert spec.entrypoint.startswith("raddiag train -c ") and spec.entrypoint.endswith("--set train.epochs=1")


def test_runtime_env_has_working_dir_excludes_and_no_secrets(monkeypatch) -> None:
    from raddiag.config import ConfigError
    from raddiag.submit import load_job_spec, runtime_env

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "never-sent")
    spec = load_job_spec(REPO / "jobs" / "sweep.job.yaml")
    env = runtime_env(spec, base=REPO)
    assert env["working_dir"] == str(REPO)
    assert {".venv", ".git", ".raddiag", "tests"} <= set(env["excludes"])
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert "never-sent" not in json.dumps(env)
    assert Path(env["py_modules"][0], "cli.py").exists()
    with pytest.raises(ConfigError, match="AWS_SECRET_ACCESS_KEY"):
        runtime_env(spec, extra_env={"AWS_SECRET_ACCESS_KEY": "x"}, base=REPO)


def test_submit_cli_misuse_exits_2_with_one_line(tmp_path) -> None:
    spec = tmp_path / "nothing.yaml"
    spec.write_text("train: {epochs: 1}\n")
    result = run_cli("submit", str(spec), "--address", "http://127.0.0.1:9")
    assert result.returncode == 2
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "--verb" in lines[0], result.stderr
    result = run_cli("submit", "jobs/sweep.job.yaml", "--env", "GITHUB_TOKEN=abc", "--address", "http://127.0.0.1:9", cwd=REPO)
    assert result.returncode == 2 and "GITHUB_TOKEN" in result.stderr and "abc" not in result.stderr


def test_every_job_spec_with_an_entrypoint_validates() -> None:
    from raddiag.config import JobSpec

    specs = [p for p in (REPO / "jobs").glob("*.yaml") if "entrypoint" in (yaml.safe_load(p.read_text()) or {})]
    assert specs
    for path in specs:
        JobSpec.model_validate(yaml.safe_load(path.read_text()))
