"""StoreRef: a store URL normalised once, picklable into Ray tasks, the only way code outside
``storage/`` opens a store."""

from __future__ import annotations

import ast
import os
import pickle
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import REPO
from raddiag.storage.ref import StoreRef, normalise_url


def test_local_paths_become_absolute_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert StoreRef("store").url == str(tmp_path / "store")
    assert StoreRef("./store/").url == str(tmp_path / "store")
    assert StoreRef("sub/../store//").url == str(tmp_path / "store")
    assert StoreRef(f"file://{tmp_path}/store/").url == str(tmp_path / "store")
    assert StoreRef("~/data/store").url == str(tmp_path / "home" / "data" / "store")
    local = StoreRef("store", endpoint_url="http://127.0.0.1:9000")
    assert not local.is_remote and local.endpoint_url is None and local.storage_options() == {}
    assert StoreRef("store") == StoreRef(str(tmp_path / "store") + "/") == StoreRef(f"file://{tmp_path}/store")


def test_remote_urls_keep_their_scheme_and_endpoint() -> None:
    ref = StoreRef("s3://bucket/prefix/", endpoint_url="http://127.0.0.1:9000")
    assert ref.url == "s3://bucket/prefix" and ref.is_remote
    assert ref.storage_options() == {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}
    assert StoreRef("s3://bucket/prefix").storage_options() == {}  # AWS itself: no endpoint, no credentials
    assert ref.with_url("s3://bucket/other/") == StoreRef("s3://bucket/other", "http://127.0.0.1:9000")
    assert str(ref) == "s3://bucket/prefix"
    with pytest.raises(ValueError, match="store url ''"):
        StoreRef("")


@given(st.lists(st.sampled_from(["a", "b", "..", ".", "c d", "é"]), min_size=1, max_size=5),
       st.sampled_from(["", "/", "//"]), st.sampled_from(["", "file://", "s3://", "gs://"]))
def test_normalising_is_idempotent_and_survives_pickle(parts: list[str], tail: str, scheme: str) -> None:
    raw = scheme + ("/" if scheme == "file://" else "") + "/".join(parts) + tail
    ref = StoreRef(raw, "http://e:1")
    assert normalise_url(ref.url) == ref.url
    assert StoreRef(ref.url, ref.endpoint_url) == ref
    assert not ref.url.endswith("/") or ref.url == "/"
    assert ref.is_remote == (scheme in ("s3://", "gs://"))
    assert ref.is_remote or os.path.isabs(ref.url)
    assert pickle.loads(pickle.dumps(ref)) == ref


def test_ref_from_config_opens_the_store(tiny_store) -> None:
    cfg, manifest = tiny_store
    ref = StoreRef.from_config(cfg)
    assert ref == cfg.store.ref() == StoreRef.from_config(cfg.store)
    assert ref.manifest().version == manifest.version
    assert ref.open().url == ref.url
    assert len(pickle.dumps(ref)) < 300  # two strings: cheap to ship with every read task


def test_ref_of_an_s3_store(s3_endpoint: str) -> None:
    ref = StoreRef("s3://raddiag-test/ref-test/", endpoint_url=s3_endpoint)
    fs, root = ref.filesystem()
    fs.pipe(f"{root}/probe.txt", b"ok")
    again = pickle.loads(pickle.dumps(ref))
    fs2, root2 = again.filesystem()
    assert root2 == "raddiag-test/ref-test" and fs2.cat(f"{root2}/probe.txt") == b"ok"
    assert again.open().url == "s3://raddiag-test/ref-test"


def test_a_ray_task_opens_the_store_from_a_ref(tiny_store, ray_local) -> None:
    import ray

    cfg, manifest = tiny_store

    @ray.remote(num_cpus=0.1)
    def version_of(ref: StoreRef) -> tuple[str, str]:
        return ref.url, ref.manifest().version

    assert ray.get(version_of.remote(cfg.store.ref())) == (cfg.store.ref().url, manifest.version)


def _store_constructions(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        node.lineno for node in ast.walk(tree)
        if isinstance(node, ast.Call) and (
            (isinstance(node.func, ast.Name) and node.func.id == "Store")
            or (isinstance(node.func, ast.Attribute) and node.func.attr == "Store")
        )
    ]


def test_stores_are_constructed_only_in_storage() -> None:
    """Outside ``raddiag/storage`` a store is opened through a StoreRef (``cfg.store.ref()``), so its
    URL is normalised in one place; and nothing imports storage's private helpers."""
    package = REPO / "platform" / "raddiag"
    offenders = []
    for path in sorted(package.rglob("*.py")):
        if path.parent.name == "storage":
            continue
        offenders += [f"{path.relative_to(REPO)}:{line}" for line in _store_constructions(path)]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("raddiag.storage"):
                offenders += [f"{path.relative_to(REPO)}:{node.lineno} imports {a.name}" for a in node.names if a.name.startswith("_")]
    assert offenders == [], f"Store(...) built (or storage privates imported) outside storage/: {offenders}"
    assert _store_constructions(package / "storage" / "ref.py"), "the check must see StoreRef.open's Store(...)"
