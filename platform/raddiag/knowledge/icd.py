"""ICD-10-CM knowledge base, built offline from the ``simple-icd-10-cm`` package.

Each :class:`IcdEntry` holds a code's description, inclusion terms (synonyms), its parent in the
hierarchy chapter -> block -> category -> subcategory, and its excludes notes.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "simple_icd_10_cm"


class _LazyModule:
    """``simple_icd_10_cm`` imported on first use: it parses its 10 MB XML on import (~4 s), and a run whose
    label table is cached (:mod:`raddiag.knowledge.cache`) needs none of it."""

    def __getattr__(self, name: str):
        return getattr(importlib.import_module(PACKAGE), name)


cm = _LazyModule()


@dataclass(frozen=True)
class IcdEntry:
    """One ICD-10-CM item. ``kind`` is chapter/block/category/subcategory; ``level`` 0 = chapter."""

    code: str
    kind: str
    description: str
    synonyms: tuple[str, ...] = ()
    parent: str | None = None
    excludes: tuple[str, ...] = field(default=())

    @property
    def level(self) -> int:
        return {"chapter": 0, "block": 1, "category": 2}.get(self.kind, 2 + len(self.code.replace(".", "")) - 3)


def _kind(code: str) -> str:
    if cm.is_chapter(code):
        return "chapter"
    if cm.is_block(code):
        return "block"
    if cm.is_category(code):
        return "category"
    return "subcategory"


def code_length(code: str) -> int:
    """Characters of a category/subcategory code without the dot (``"J18.9"`` -> 4); 0 for chapters/blocks."""
    return 0 if cm.is_chapter_or_block(code) else len(code.replace(".", ""))


@functools.lru_cache(maxsize=4)
def load_icd(max_code_len: int = 5) -> tuple[IcdEntry, ...]:
    """All chapters, blocks and codes of at most ``max_code_len`` characters (7-character injury
    extensions are left out by default: they only add encounter variants)."""
    entries = []
    for code in cm.get_all_codes(True):
        if code_length(code) > max_code_len:
            continue
        entries.append(
            IcdEntry(
                code=code,
                kind=_kind(code),
                description=cm.get_description(code),
                synonyms=tuple(cm.get_inclusion_term(code)),
                parent=cm.get_parent(code) or None,
                excludes=tuple(cm.get_excludes1(code)) + tuple(cm.get_excludes2(code)),
            )
        )
    return tuple(entries)


@functools.lru_cache(maxsize=1)
def icd_version() -> str:
    """Short fingerprint of the installed ICD-10-CM data (part of every cache key): a hash of the package's data
    files, read without importing the package (~30 ms for 10 MB, against ~4 s to parse them)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"{PACKAGE} is not installed; reinstall raddiag (make install)")
    digest = hashlib.sha256()
    for path in sorted((Path(spec.origin).parent / "data").glob("*")):
        if path.is_file() and path.suffix in (".txt", ".xml"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:10]


def normalise_code(code: str | None) -> str | None:
    """``"j189"`` / ``"J18.9"`` -> ``"J18.9"`` if it is a valid ICD-10-CM item, else ``None``."""
    if not code or not str(code).strip():
        return None
    text = str(code).strip().upper()
    if "." not in text and len(text) > 3 and text.isalnum():
        text = f"{text[:3]}.{text[3:]}"
    try:
        return text if cm.is_valid_item(text) else None
    except ValueError:
        return None


def description(code: str) -> str:
    return cm.get_description(code)


def icd_corpus(entries: tuple[IcdEntry, ...]) -> list[str]:
    """Texts to fit text encoders on: descriptions, inclusion terms, and "description ; parent" pairs."""
    by_code = {entry.code: entry for entry in entries}
    corpus = []
    for entry in entries:
        corpus.append(entry.description)
        corpus.extend(entry.synonyms)
        parent = by_code.get(entry.parent) if entry.parent else None
        if parent is not None:
            corpus.append(f"{entry.description} ; {parent.description}")
    return corpus
