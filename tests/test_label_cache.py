"""The local cache of label tables (raddiag.knowledge.cache): a reused table equals a fresh build bit for bit,
its key moves with every input, reuse needs neither the ICD-10-CM package nor scikit-learn, the labels text
matching decided are still reported, and a damaged entry is rebuilt."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from raddiag.config import KEConfig
from raddiag.knowledge.cache import KEEP_DAYS, cached_label_embeddings, prune, table_key
from raddiag.knowledge.labels import embed_labels, map_labels

NAMES = ["Pneumonia", "Pleural effusion", "Hip fracture", "Normal", "Zebra stripe sign of the kidney"]
CODES = ["J18.9", "J90", None, None, None]  # two from the data, one curated or matched, "normal", one text match


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "raddiag-cache"  # test_knowledge's session cache: the TF-IDF fit is shared


def _cfg(cache: Path, **update) -> KEConfig:
    return KEConfig(cache_dir=str(cache), **update)


def _seed_encoder(shared: Path, cache: Path) -> None:
    """Give a fresh cache the TF-IDF encoder the shared cache already fitted (no second fit)."""
    for fitted in shared.glob("tfidf-*.joblib"):
        shutil.copy(fitted, cache / fitted.name)


def test_reused_table_equals_a_fresh_build_and_its_mapping(shared: Path) -> None:
    cfg = _cfg(shared)
    table, mappings, reused = cached_label_embeddings(NAMES, cfg, CODES)
    assert not reused or (shared / "label-tables" / table_key(NAMES, cfg, CODES)).is_dir()
    again, mappings_again, reused_again = cached_label_embeddings(NAMES, cfg, CODES)
    assert reused_again and (shared / "label-tables" / table_key(NAMES, cfg, CODES) / "labels.json").is_file()
    direct = embed_labels(NAMES, cfg, codes=CODES)
    assert table.dtype == again.dtype == np.float32 and table.shape == (len(NAMES), cfg.dim)
    np.testing.assert_array_equal(again, direct)
    np.testing.assert_array_equal(table, direct)
    assert mappings_again == mappings == map_labels(NAMES, CODES, threshold=cfg.match_threshold)


def test_the_key_moves_with_every_input(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    base = table_key(NAMES, cfg, CODES)
    assert table_key(NAMES, cfg, CODES) == base
    mapping = tmp_path / "reviewed.csv"
    mapping.write_text("name,code\nHip fracture,S72\n")
    variants = [
        table_key(NAMES[::-1], cfg, CODES[::-1]),  # the label order is the table's row order
        table_key(NAMES, cfg, ["J18.9", "J91", None, None, None]),
        table_key(NAMES, cfg, None),
        table_key(NAMES, cfg.model_copy(update={"template": "{name}"}), CODES),
        table_key(NAMES, cfg.model_copy(update={"dim": 64}), CODES),
        table_key(NAMES, cfg.model_copy(update={"curated": False}), CODES),
        table_key(NAMES, cfg.model_copy(update={"match_threshold": 0.5}), CODES),
        table_key(NAMES, cfg.model_copy(update={"mapping": str(mapping)}), CODES),
    ]
    assert len({base, *variants}) == len(variants) + 1
    mapping.write_text("name,code\nHip fracture,S73\n")  # the reviewed file's content, not its path
    assert table_key(NAMES, cfg.model_copy(update={"mapping": str(mapping)}), CODES) != variants[-1]


def test_reuse_reports_text_matches_again(shared: Path, caplog) -> None:
    cfg = _cfg(shared)
    cached_label_embeddings(NAMES, cfg, CODES)
    with caplog.at_level(logging.WARNING, logger="raddiag.knowledge.labels"):
        _, mappings, reused = cached_label_embeddings(NAMES, cfg, CODES)
    assert reused
    text_rows = [m for m in mappings if m.source in ("matched", "unmatched")]
    assert text_rows and "Zebra stripe sign of the kidney" in {m.name for m in text_rows}
    assert "by text" in caplog.text and "'Zebra stripe sign of the kidney'" in caplog.text


def test_a_damaged_entry_is_rebuilt(shared: Path, tmp_path: Path, caplog) -> None:
    cfg = _cfg(tmp_path)
    _seed_encoder(shared, tmp_path)
    table, _, _ = cached_label_embeddings(NAMES, cfg, CODES)
    entry = tmp_path / "label-tables" / table_key(NAMES, cfg, CODES)
    np.save(entry / "embeddings.npy", np.array([{"not": "an array"}], dtype=object), allow_pickle=True)  # never unpickled
    with caplog.at_level(logging.WARNING, logger="raddiag.knowledge.cache"):
        rebuilt, _, reused = cached_label_embeddings(NAMES, cfg, CODES)
    assert not reused and "ignoring unreadable label table" in caplog.text
    np.testing.assert_array_equal(rebuilt, table)
    (entry / "embeddings.npy").write_bytes(b"\x93NUMPY truncated")
    again, _, reused = cached_label_embeddings(NAMES, cfg, CODES)
    assert not reused
    np.testing.assert_array_equal(again, table)
    assert cached_label_embeddings(NAMES, cfg, CODES)[2]  # and the rebuilt entry is reused
    assert not list((tmp_path / "label-tables").glob("*.tmp-*"))  # no temporary folder left behind


def test_an_encoder_directory_is_never_cached(tmp_path: Path) -> None:
    """A table embedded by an encoder in a directory is built every time: the files behind the path can change."""
    from raddiag.knowledge.encoder import TextTrainConfig, train_text_encoder
    from raddiag.knowledge.icd import load_icd

    tiny = TextTrainConfig(dim=16, hidden=32, vocab_size=400, char_features=4000, word_features=2000, steps=5,
                           groups=8, group_size=3, synonym_codes=16, random_codes=16)
    train_text_encoder(tiny, entries=tuple(e for e in load_icd() if e.code.startswith("J"))).save(tmp_path / "enc")
    cfg = KEConfig(encoder="trained", encoder_path=str(tmp_path / "enc"), dim=16, cache_dir=str(tmp_path))
    first = cached_label_embeddings(NAMES[:2], cfg, CODES[:2])
    second = cached_label_embeddings(NAMES[:2], cfg, CODES[:2])
    assert not first[2] and not second[2] and not (tmp_path / "label-tables").exists()
    np.testing.assert_array_equal(first[0], second[0])


def test_reuse_imports_neither_the_icd_package_nor_sklearn(shared: Path) -> None:
    """What a training driver saves: a fresh interpreter gets a cached table without ~7 s of imports."""
    cached_label_embeddings(NAMES, _cfg(shared), CODES)
    script = (
        "import sys\n"
        "from raddiag.config import load_config\n"
        "from raddiag.train.trainer import label_embeddings\n"
        f"cfg = load_config(None, ['model.head=ke', 'model.ke.cache_dir={shared}'])\n"
        f"table = label_embeddings(cfg, {NAMES!r}, {CODES!r})\n"
        "print(len(table), sorted(m for m in ('simple_icd_10_cm', 'sklearn', 'joblib') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == f"{len(NAMES)} []", result.stdout
    assert "'Zebra stripe sign of the kidney'" in result.stderr  # the text match is still reported


def test_icd_version_hashes_the_data_without_importing_it() -> None:
    import importlib.util

    from raddiag.knowledge.icd import icd_version

    data = Path(importlib.util.find_spec("simple_icd_10_cm").origin).parent / "data"
    digest = hashlib.sha256()
    for path in sorted(p for p in data.iterdir() if p.suffix in (".txt", ".xml")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    assert icd_version() == digest.hexdigest()[:10]
    result = subprocess.run(
        [sys.executable, "-c", "import sys\nfrom raddiag.knowledge.icd import icd_version\nicd_version()\n"
         "print('simple_icd_10_cm' in sys.modules)"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.stdout.strip() == "False", result.stderr[-2000:]


def test_knowledge_build_leaves_the_table_a_training_driver_reuses(shared: Path, tmp_path: Path) -> None:
    """`raddiag knowledge build` goes through the same cache: the store's table and the driver's are one table."""
    from raddiag.knowledge import build_knowledge

    cfg = _cfg(shared, dim=24)  # a table no other test built
    built = build_knowledge(NAMES, cfg, CODES, str(tmp_path / "store"))
    assert built.meta["local_cache"] is False and sum(built.meta["mapping_counts"].values()) == len(NAMES)
    table, mappings, reused = cached_label_embeddings(NAMES, cfg, CODES)
    assert reused
    np.testing.assert_array_equal(table, built.embeddings)
    assert mappings == built.mappings
    stored = np.load(Path(built.uri.removeprefix("file://")) / "embeddings.npy", allow_pickle=False)
    np.testing.assert_array_equal(stored, table)


def test_reuse_touches_an_entry_and_a_write_prunes_the_unused_ones(shared: Path, tmp_path: Path) -> None:
    cfg = _cfg(shared)
    cached_label_embeddings(NAMES, cfg, CODES)
    entry = shared / "label-tables" / table_key(NAMES, cfg, CODES)
    long_ago = time.time() - (KEEP_DAYS + 5) * 86400
    os.utime(entry, (long_ago, long_ago))
    assert cached_label_embeddings(NAMES, cfg, CODES)[2]
    assert time.time() - entry.stat().st_mtime < 3600  # used again: kept by the next prune

    root = tmp_path / "label-tables"
    ages = {"old": KEEP_DAYS + 1, "recent": KEEP_DAYS - 1, "new": 0, "abc.tmp-1-ff": 2, "abc.tmp-2-ee": 0.5}
    for name, days in ages.items():
        (root / name).mkdir(parents=True)
        (root / name / "labels.json").write_text("[]")
        stamp = time.time() - days * 86400
        os.utime(root / name, (stamp, stamp))
    (root / "a-file").write_text("not an entry")
    os.utime(root / "a-file", (long_ago, long_ago))
    assert sorted(prune(root, keep="new")) == ["abc.tmp-1-ff", "old"]
    assert sorted(p.name for p in root.iterdir()) == ["a-file", "abc.tmp-2-ee", "new", "recent"]
    assert prune(tmp_path / "missing") == []

    _seed_encoder(shared, tmp_path)
    (root / "old").mkdir()
    os.utime(root / "old", (long_ago, long_ago))
    assert not cached_label_embeddings(NAMES, _cfg(tmp_path), CODES)[2]  # a write prunes
    assert not (root / "old").exists() and (root / "recent").is_dir()
