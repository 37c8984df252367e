"""Assemble the bundled curated RP3D name -> ICD-10-CM table (platform/raddiag/knowledge/data/rp3d_icd10cm_curated.csv.gz).

Sources, by precedence (a name takes the row of the first source that codes it):
1. the hand-check lists written from the real FY2025 index (``bench/data/icd_handcheck_heldout{5..15}.csv``);
2. the curation codings (``bench/data/icd_curation/*.csv``), written from the same index by the same rules;
3. the early hand-check lists written from memory of the index (``icd_handcheck_{dev,heldout,heldout2..4}.csv``),
   only for names no source above codes.
Rows marked SKIP are left out: those labels fall back to text matching. Each code is checked against the bundled
ICD-10-CM tabular list. An incomplete code (``S82.0-``) or one that is not a tabular item is cut back to its longest
valid prefix. A name whose category is not valid is left out and reported. The output is deterministic: sorted by
name, and gzip with no timestamp.

    PYTHONPATH=platform .venv/bin/python scripts/build_curated_icd.py [--vocab ../shared/rp3d-demo/disorder_label_dict.json]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import re
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "bench" / "data"
INDEX_LISTS = [f"heldout{n}" for n in range(5, 16)]
EARLY_LISTS = ["dev", "heldout", "heldout2", "heldout3", "heldout4"]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        lines = [line for line in handle if not line.startswith("#")]
    return list(csv.DictReader(lines))


def valid_code(raw: str) -> str | None:
    """The longest valid ICD-10-CM item that ``raw`` starts with (at least its 3-character category), or None."""
    from raddiag.knowledge.icd import normalise_code

    text = raw.strip().upper().rstrip("-").rstrip(".")
    while len(text.replace(".", "")) >= 3:
        code = normalise_code(text)
        if code:
            return code
        text = text[:-1].rstrip(".")
    return None


JUDGEMENT = re.compile(r"\bunsure\b|\bno\b[^;]{0,80}?\b(term|entry|subterm)\b|^\s*(group|sign of)\b|near-synonym", re.I)


def confidence(index_entry: str) -> str:
    """"judgement" when the coder says the row rests on a near-synonym, a group, a sign's disorder or is unsure."""
    return "judgement" if JUDGEMENT.search(index_entry) else "index"


def sources() -> list[tuple[str, Path]]:
    out = [(name, DATA / f"icd_handcheck_{name}.csv") for name in INDEX_LISTS]
    out += [(f"curation/{path.stem}", path) for path in sorted((DATA / "icd_curation").glob("*.csv"))]
    out += [(name, DATA / f"icd_handcheck_{name}.csv") for name in EARLY_LISTS]
    return out


def assemble() -> tuple[list[dict[str, str]], dict]:
    from raddiag.knowledge.curated import COLUMNS, name_key

    chosen: dict[str, dict[str, str]] = {}
    report: dict = {"skipped": Counter(), "invalid": [], "cut_back": 0, "by_source": Counter()}
    for provenance, path in sources():
        for row in _rows(path):
            name = " ".join((row.get("name") or "").split())
            category = (row.get("category") or "").strip().upper()
            if not name or name_key(name) in chosen:
                continue
            if category == "SKIP" or not category:
                report["skipped"][provenance] += 1
                continue
            raw = (row.get("code") or "").strip() or category
            code = valid_code(raw)
            if code is None or code[:3] != category[:3]:
                code = valid_code(category)
            if code is None:
                report["invalid"].append(f"{provenance}: {name!r} -> {raw!r}")
                continue
            report["cut_back"] += code.replace(".", "") != raw.upper().replace(".", "").rstrip("-")
            alternatives = " ".join(sorted({a.strip().upper() for a in (row.get("alternatives") or "").split()
                                            if a.strip() and a.strip().upper() != category and valid_code(a)}))
            entry = " ".join((row.get("index_entry") or "").split())
            chosen[name_key(name)] = dict(zip(COLUMNS, (name, code, alternatives, entry, provenance, confidence(entry))))
            report["by_source"][provenance.split("/")[0] if provenance.startswith("curation") else provenance] += 1
    rows = sorted(chosen.values(), key=lambda r: name_key(r["name"]))
    return rows, report


def render(rows: list[dict[str, str]]) -> bytes:
    """The table file's bytes: CSV in :data:`~raddiag.knowledge.curated.COLUMNS` order, gzip with no timestamp."""
    from raddiag.knowledge.curated import COLUMNS

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return gzip.compress(buffer.getvalue().encode("utf-8"), mtime=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", default=str(REPO.parent / "shared" / "rp3d-demo" / "disorder_label_dict.json"))
    args = parser.parse_args()
    from raddiag.knowledge.curated import CURATED_FILE, name_key

    rows, report = assemble()
    CURATED_FILE.write_bytes(render(rows))
    judged = sum(r["confidence"] == "judgement" for r in rows)
    print(f"{CURATED_FILE.relative_to(REPO)}: {len(rows)} names ({judged} judgement rows); by source {dict(report['by_source'])}; "
          f"SKIP rows left out {sum(report['skipped'].values())}; codes cut back to a valid prefix {report['cut_back']}")
    for line in report["invalid"]:
        print(f"  left out (no valid category): {line}", file=sys.stderr)
    vocab = Path(args.vocab)
    if vocab.is_file():
        names = list(json.loads(vocab.read_text()))
        keys = {name_key(r["name"]) for r in rows}
        covered = sum(name_key(n) in keys for n in names)
        print(f"RP3D vocabulary: {covered} of {len(names)} names curated ({covered / len(names):.1%})")


if __name__ == "__main__":
    main()
