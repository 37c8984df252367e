"""A local cache of label tables: the KE head's label embeddings, keyed by everything they depend on.

Mapping a vocabulary to ICD-10-CM and embedding it costs every run seconds to minutes before training starts:
importing the ICD-10-CM package (~4 s) and scikit-learn (~3 s), loading the TF-IDF encoder (~3 s), and for
labels the data gives no code, fitting the text matcher (~30 s). The result depends only on the label names and
codes, the ``model.ke`` settings, the ICD-10-CM data and the knowledge code, so a run reuses the table an
earlier run built: ``<cache_root>/label-tables/<key>/{embeddings.npy, labels.json}``.

The key is :func:`~raddiag.knowledge.build.knowledge_version` (names, codes, settings, the curated table, a
reviewed mapping's content, the ICD-10-CM data) plus a hash of this package's code and data, so a changed
matcher never serves a stale table. A table whose text encoder lives in a directory (``ke.encoder_path``) is
not cached: the files behind the path can change. Entries are written to a temporary folder and renamed into
place (concurrent drivers never read half an entry), read with ``allow_pickle=False``, and an unreadable
entry is rebuilt. The labels text matching decided are logged again on reuse, as on a build.

Reuse touches an entry; each write removes the entries nobody used for :data:`KEEP_DAYS` days (every upgrade of
the knowledge code starts new keys) and temporary folders a killed driver left behind.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import numpy as np

from raddiag.config import KEConfig
from raddiag.knowledge.build import knowledge_version
from raddiag.knowledge.labels import LabelMapping, embed_and_map, log_text_matches
from raddiag.knowledge.tfidf import cache_root

log = logging.getLogger(__name__)
PACKAGE_DIR = Path(__file__).resolve().parent
CACHE_FORMAT = 1
KEEP_DAYS = 30  # an entry unused this long is removed when another is written


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of the knowledge package's modules and bundled data (~1 MB): the matcher and its tables."""
    digest = hashlib.sha256(f"label-table-cache-v{CACHE_FORMAT}".encode())
    files = sorted([*PACKAGE_DIR.glob("*.py"), *(PACKAGE_DIR / "data").glob("*")])
    for path in files:
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def table_key(names: list[str], cfg: KEConfig, codes: list[str | None] | None = None) -> str:
    """The cache key of a label table (:mod:`raddiag.knowledge.cache`)."""
    version = knowledge_version(list(names), list(codes) if codes is not None else None, cfg)
    return f"{version}-{code_fingerprint()}"


def cached_label_embeddings(
    names: list[str], cfg: KEConfig, codes: list[str | None] | None = None
) -> tuple[np.ndarray, list[LabelMapping], bool]:
    """``(embeddings (C, dim) float32, mappings, reused)``: equal to :func:`~raddiag.knowledge.labels.embed_labels`
    and its mapping, from the local cache when an earlier run built the same table."""
    if cfg.encoder_path:
        table, mappings = embed_and_map(names, cfg, codes)
        return table, mappings, False
    key = table_key(names, cfg, codes)
    folder = cache_root(cfg.cache_dir or None) / "label-tables" / key
    found = _read(folder, list(names), cfg.dim)
    if found is not None:
        table, mappings = found
        _touch(folder)
        log.info("label table %s reused from %s", key, folder)
        log_text_matches(mappings, cfg.match_threshold)
        return table, mappings, True
    table, mappings = embed_and_map(names, cfg, codes)
    _write(folder, table, mappings)
    prune(folder.parent, keep=folder.name)
    return table, mappings, False


def prune(root: Path, keep: str = "", max_age_days: float = KEEP_DAYS) -> list[str]:
    """Remove the entries under ``root`` unused for ``max_age_days`` (and temporary folders older than a day);
    returns the names removed. Never fails a run."""
    now = time.time()
    removed = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for entry in entries:
        limit = 86400.0 if ".tmp-" in entry.name else max_age_days * 86400.0
        try:
            if entry.name != keep and entry.is_dir() and now - entry.stat().st_mtime > limit:
                shutil.rmtree(entry)
                removed.append(entry.name)
        except OSError as exc:  # another driver removed it first, or no permission: leave it
            log.debug("could not prune %s (%s)", entry, exc)
    if removed:
        log.info("removed %d label table(s) unused for %g days from %s", len(removed), max_age_days, root)
    return removed


def _touch(folder: Path) -> None:
    try:
        os.utime(folder)
    except OSError:  # a read-only cache still serves its tables
        pass


def _read(folder: Path, names: list[str], dim: int) -> tuple[np.ndarray, list[LabelMapping]] | None:
    if not (folder / "labels.json").is_file():
        return None
    try:
        table = np.load(folder / "embeddings.npy", allow_pickle=False)
        mappings = [LabelMapping(**row) for row in json.loads((folder / "labels.json").read_text(encoding="utf-8"))]
        if table.dtype != np.float32 or table.shape != (len(names), dim) or [m.name for m in mappings] != names:
            raise ValueError(f"holds {table.dtype} {table.shape} for {len(mappings)} labels")
        return table, mappings
    except Exception as exc:  # a damaged entry is rebuilt, never fatal
        log.warning("ignoring unreadable label table %s (%s); rebuilding it", folder, exc)
        shutil.rmtree(folder, ignore_errors=True)
        return None


def _write(folder: Path, table: np.ndarray, mappings: list[LabelMapping]) -> None:
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir(parents=True)
        np.save(tmp / "embeddings.npy", table)
        (tmp / "labels.json").write_text(json.dumps([asdict(m) for m in mappings], indent=1), encoding="utf-8")
        os.rename(tmp, folder)  # atomic; fails if another driver got there first, with the same table
    except OSError as exc:
        if not (folder / "labels.json").is_file():
            log.warning("could not cache the label table at %s (%s); the run goes on without it", folder, exc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
