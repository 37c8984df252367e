"""The curated RP3D vocabulary -> ICD-10-CM table bundled with raddiag (#16).

Text matching gets about 80% of unseen RP3D names to the right ICD-10-CM category. A coder who picks the main term
from clinical knowledge and then follows the index gets nearly all of them (two blind recodings agreed with the
held-out lists on 198 of 200 names, ``bench/icd_intercoder.py``). This table holds such codings for the names of the
real RP3D vocabulary (``disorder_label_dict.json``, 5,569 names). Each row cites the ICD-10-CM index path it came
from, so a reviewer can check it. It is read-only data. :func:`raddiag.knowledge.labels.map_labels` uses it for a
label that has neither a reviewed override nor a code from the data, before text matching (``ke.curated``).

Provenance. The rows were written by helper sessions of an AI model acting as coders, not by certified coders. They
worked only from the bundled FY2025 index and Table of Neoplasms, under the written rules quoted in each source
file's header (``bench/data/icd_handcheck_*.csv`` and ``bench/data/icd_curation/*.csv``). The table is assembled from
those files by ``scripts/build_curated_icd.py``. ``mapping.csv`` lists curated rows with source ``curated`` and their
index path, and a reviewed ``ke.mapping`` overrides any of them.
"""

from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

CURATED_FILE = Path(__file__).parent / "data" / "rp3d_icd10cm_curated.csv.gz"
COLUMNS = ("name", "code", "alternatives", "index_entry", "provenance", "confidence")
#: ``confidence``: "index" = the index path of the name itself; "judgement" = a near-synonym entry, a group, the
#: disorder a sign names, or a row its coder marked unsure (the reviewer's first curated rows).
CONFIDENCES = ("index", "judgement")


@dataclass(frozen=True)
class CuratedCode:
    """One curated row: ``code`` (a valid ICD-10-CM item), ``alternatives`` (other defensible 3-character
    categories, space-separated), ``index_entry`` (the index path, with RowIDs), ``provenance`` (source list),
    ``confidence`` (one of :data:`CONFIDENCES`)."""

    name: str
    code: str
    alternatives: str
    index_entry: str
    provenance: str
    confidence: str = "index"


def name_key(name: str) -> str:
    """How curated names are looked up: case-folded, runs of white space as one space, trimmed."""
    return " ".join(str(name).split()).casefold()


def read_curated(data: bytes) -> dict[str, CuratedCode]:
    """Parse the gzipped CSV ``data`` into ``{name_key: row}``; a malformed file raises ValueError naming the row."""
    text = gzip.decompress(data).decode("utf-8")
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != COLUMNS:
        raise ValueError(f"{CURATED_FILE.name}: expected columns {COLUMNS}, got {reader.fieldnames}")
    table: dict[str, CuratedCode] = {}
    for number, row in enumerate(reader, start=2):
        key = name_key(row["name"])
        if not key or not row["code"]:
            raise ValueError(f"{CURATED_FILE.name}, row {number}: a name and a code are required")
        if key in table:
            raise ValueError(f"{CURATED_FILE.name}, row {number}: {row['name']!r} appears twice")
        if row["confidence"] not in CONFIDENCES:
            raise ValueError(f"{CURATED_FILE.name}, row {number}: confidence {row['confidence']!r} is not one of {CONFIDENCES}")
        table[key] = CuratedCode(*(row[c] for c in COLUMNS))
    return table


@functools.lru_cache(maxsize=1)
def curated_table() -> dict[str, CuratedCode]:
    """The bundled table, ``{name_key(name): CuratedCode}`` (read once per process)."""
    return read_curated(CURATED_FILE.read_bytes())


@functools.lru_cache(maxsize=1)
def curated_version() -> str:
    """Fingerprint of the bundled table (part of every knowledge-table version)."""
    return hashlib.sha256(CURATED_FILE.read_bytes()).hexdigest()[:10]


def lookup(names: list[str]) -> list[CuratedCode | None]:
    """The curated row of each name, or None."""
    table = curated_table()
    return [table.get(name_key(name)) for name in names]
