"""``raddiag verify``: recomputed checksums and manifest <-> array consistency, locally and on S3."""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, run_cli
from raddiag.config import SynthConfig
from raddiag.storage.store import Store
from raddiag.storage.synth import generate
from raddiag.storage.verify import verify_store

SMALL = SynthConfig(n_cases=12, n_labels=6, image_size=16, max_depth=3, seed=4)


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("verify") / "s"
    generate(SMALL, Store(str(path)))
    return path


@pytest.fixture
def store_copy(clean_store: Path, tmp_path: Path) -> tuple[Path, Store]:
    target = tmp_path / "s"
    shutil.copytree(clean_store, target)
    store = Store(str(target))
    return target, store


def first_scan(store: Store) -> str:
    return str(store.manifest().scans.scan_id.iloc[0])


def test_a_clean_store_has_no_problems(store_copy) -> None:
    _, store = store_copy
    report = verify_store(store)
    assert report.ok, report.problems
    assert report.n_scans == len(store.manifest().scans) and report.version == store.manifest().version


def test_flipped_bytes_in_a_shard_are_found(store_copy) -> None:
    path, store = store_copy
    scan_id = first_scan(store)
    shard = next(p for p in (path / "scans.zarr" / scan_id).rglob("*") if p.is_file() and p.name != "zarr.json")
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0xFF
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    problems = verify_store(Store(str(path))).problems
    assert any(scan_id in p and ("checksum" in p or "unreadable" in p) for p in problems), problems


def test_missing_and_incomplete_arrays_are_found(store_copy) -> None:
    path, store = store_copy
    ids = list(dict.fromkeys(store.manifest().scans.scan_id))
    shutil.rmtree(path / "scans.zarr" / ids[0])
    meta_path = path / "scans.zarr" / ids[1] / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"].pop("checksum")
    meta_path.write_text(json.dumps(meta))
    problems = verify_store(Store(str(path))).problems
    assert any(ids[0] in p and "missing" in p for p in problems), problems
    assert any(ids[1] in p and "incomplete" in p for p in problems), problems


def test_edited_manifest_breaks_the_version_hash_and_counts(store_copy) -> None:
    path, store = store_copy
    manifest = store.manifest()
    scans_path = path / "versions" / manifest.version / "scans.parquet"
    scans = pd.read_parquet(scans_path)
    scans.loc[0, "key_slice"] = 99
    scans.to_parquet(scans_path, index=False)
    labels_path = path / "versions" / manifest.version / "labels.parquet"
    labels = pd.read_parquet(labels_path)
    labels.loc[0, "train_count"] += 5
    labels.to_parquet(labels_path, index=False)
    problems = verify_store(Store(str(path))).problems
    assert any("content hash" in p for p in problems), problems
    assert any("key_slice 99 outside depth" in p for p in problems), problems
    assert any("train_count" in p for p in problems), problems


def test_orphan_arrays_are_notes_not_problems(store_copy) -> None:
    import numpy as np

    _, store = store_copy
    store.write_scan(np.ones((2, 16, 16), dtype=np.uint8))
    report = verify_store(Store(store.url))
    assert report.ok and any("not in this version" in n for n in report.notes)


@pytest.mark.slow
def test_verify_cli_exit_codes(store_copy) -> None:
    path, store = store_copy
    ok = run_cli("verify", str(path), cwd=REPO)
    assert ok.returncode == 0 and "no problems" in ok.stdout, ok.stdout + ok.stderr
    shutil.rmtree(path / "scans.zarr" / first_scan(store))
    bad = run_cli("verify", str(path), cwd=REPO)
    assert bad.returncode == 1 and "array missing" in bad.stdout and "1 problem" in bad.stderr
    nothing = run_cli("verify", str(path / "nope"), cwd=REPO)
    assert nothing.returncode == 1 and "no dataset.json" in nothing.stdout


@pytest.mark.slow
def test_verify_on_s3_finds_a_corrupted_object(s3_endpoint: str) -> None:
    import boto3

    prefix = f"verify/{time.time_ns()}"
    store = Store(f"s3://raddiag-test/{prefix}", endpoint_url=s3_endpoint)
    generate(SMALL, store)
    assert verify_store(Store(store.url, s3_endpoint)).ok
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    scan_id = first_scan(store)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="raddiag-test", Prefix=f"{prefix}/scans.zarr/{scan_id}/")["Contents"]]
    shard = next(k for k in keys if not k.endswith("zarr.json"))
    body = bytearray(s3.get_object(Bucket="raddiag-test", Key=shard)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    s3.put_object(Bucket="raddiag-test", Key=shard, Body=io.BytesIO(bytes(body)))
    problems = verify_store(Store(store.url, s3_endpoint)).problems
    assert any(scan_id in p for p in problems), problems
