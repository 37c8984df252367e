"""The ICD-10-CM Index to Diseases and Injuries (FY2025) as ``(text, code)`` pairs for the text matcher (#16, round 4).

The tabular list names diseases by site and behaviour; the alphabetic index is where a coder starts: main terms
(the condition, eponyms, morphologies), indented subterms (site, type, cause) and "see" cross-references
("Collapse, lung - see Atelectasis"). Each indexed path with a code becomes one text, written the way the index
prints it ("Fracture, traumatic - vertebra - cervical - first"), its nonessential modifiers in parentheses (the
matcher also indexes the wording without them); a "see" reference takes the code of the entry it names when that
entry carries one.

Source (bundled, read at run time, never downloaded): ``data/icd10cm_index_2025.csv.gz``, the CDC's
``icd10cm-table-index-April-2025.zip`` (``icd-10-cm-index-2025.xml``, public domain, US Government work) flattened
to CSV (RowID, Letter, Level, Term, See, SeeAlso, NonEssModif, Code) by ``ICD10CM/icd-10-cm-index.py`` of
github.com/wbdill/Python-sandbox01 (commit 6418224, 2025-03-02); sha256 of the CSV
ed46c243bb91ca24ef9da6ad50cf8f204f2c97f2d69632f34ff0f8081a0609ed. The flattening keeps a title's text before
its first nested element, one code per entry and the first "see"; manifestation codes in brackets and
"see" references nested under "with" are lost. The Table of Neoplasms is bundled beside it
(``icd10cm_neoplasm_2025.csv.gz``, same source, sha256 3105cf75708d...): a reference to a named site ("Elastofibroma -
see Neoplasm, connective tissue, benign") takes the table's code; "by site" references are left to the tabular's
by-site texts and :mod:`raddiag.knowledge.morphology`.

Index conventions applied: a main term listing word forms ("Hypoplasia, hypoplastic") is written with its first
form; a "see" to an entry without a code of its own brings that entry's subterms under the referring term
("Nonrotation - see Malrotation" gives "Nonrotation - intestine" Q43.3).
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
import re
from pathlib import Path

INDEX_FILE = Path(__file__).with_name("data") / "icd10cm_index_2025.csv.gz"
NEOPLASM_FILE = Path(__file__).with_name("data") / "icd10cm_neoplasm_2025.csv.gz"
INDEX_VERSION = "ICD-10-CM index FY2025 (CDC, April 2025)"
MAX_DEPTH = 2  # main term + 1 subterm (depths 3 and 4 scored no better on the development lists and cost more)


def _code(raw: str) -> str:
    """The code as printed, without the trailing "-" that marks a code needing more characters."""
    return raw.strip().rstrip("-").rstrip(".")


_BEHAVIOUR_COLUMN = {"malignant": "MalignantPrimary", "secondary": "MalignantSecondary", "in situ": "CaInSitu",
                     "benign": "Benign", "uncertain behavior": "UncertainBehavior", "unspecified behavior": "UnspecifiedBehavior"}


_GLUED_CODE = re.compile(r"(?<=[a-z)\s])([A-Z][0-9][0-9A-Z](?:\.[0-9A-Z]{1,4})?-*)$")  # "angiomatousD18.00", "knee M97.1--"


@functools.lru_cache(maxsize=2)
def _rows(path: Path = INDEX_FILE) -> list[dict[str, str]]:
    """The CSV's rows (parsed once per process; callers do not modify them); a code the flattening left at the end
    of the term (7 rows) is moved to the code column."""
    with gzip.open(path, "rb") as handle:
        rows = list(csv.DictReader(io.TextIOWrapper(handle, encoding="utf-8")))
    for row in rows:
        glued = _GLUED_CODE.search(row["Term"].strip()) if "Code" in row and not row["Code"] else None
        if glued:
            row["Term"], row["Code"] = row["Term"].strip()[: glued.start()].strip(), glued.group(1)
    return rows


def _key(term: str) -> str:
    return " ".join(term.lower().replace(",", " ").split())


_PARENTHESISED = re.compile(r"\([^()]*\)")


def _bare(term: str) -> str:
    """``term`` without its parenthesised non-essential modifiers, spaces collapsed."""
    return " ".join(_PARENTHESISED.sub(" ", term).split())


def _aliases(term: str) -> list[str]:
    """The keys a "see" target may use for an index term: the term itself, without its parenthesised
    non-essential modifiers, without a trailing "NEC", and its first word form ("Anomaly, anomalous (congenital)"
    -> "anomaly anomalous", "anomaly"; "secondary NEC" -> "secondary"; "juvenile, juvenilis" -> "juvenile")."""
    bare = _bare(term)
    keys = [_key(term), _key(bare)]
    if keys[-1].endswith(" nec"):
        keys.append(keys[-1][:-4])
    first = bare.split(",")[0]
    if "," in bare and main_term_wording(bare) == first.strip():
        keys.append(_key(first))
    return list(dict.fromkeys(k for k in keys if k))


def main_term_wording(term: str) -> str:
    """A main term's first word form when its comma parts are forms of one word ("Hypoplasia, hypoplastic" ->
    "Hypoplasia"; "Abdomen, abdominal" -> "Abdomen"); other commas stay ("Fracture, traumatic")."""
    parts = [part.strip() for part in term.split(",")]
    first = parts[0].lower()
    if len(parts) > 1 and len(first) >= 4 and all(part.lower()[:4] == first[:4] for part in parts[1:]):
        return parts[0]
    return term.strip()


@functools.lru_cache(maxsize=1)
def _neoplasm_sites() -> dict[str, dict[str, str]]:
    """Table of Neoplasms, first-level sites by key (also without a trailing "NEC"/"NOS")."""
    sites: dict[str, dict[str, str]] = {}
    for row in _rows(NEOPLASM_FILE):
        if row["Level"] == "1":
            key = _key(row["Term"])
            sites.setdefault(key, row)
            sites.setdefault(key.removesuffix(" nec").removesuffix(" nos"), row)
    return sites


def neoplasm_code(target: str) -> str:
    """The code of a "see Neoplasm, <site>, <behaviour>" reference ("" for "by site" or an unknown site)."""
    parts = [_key(part) for part in target.split(",") if part.strip()]
    if len(parts) != 3 or parts[0] != "neoplasm" or parts[2] not in _BEHAVIOUR_COLUMN:
        return ""
    row = _neoplasm_sites().get(parts[1])
    code = _code(row[_BEHAVIOUR_COLUMN[parts[2]]]) if row else ""
    return "" if code in ("", "-") else code


_BY_SITE = frozenset({"by site", "by type"})


def _resolve(target: str, main_terms: dict[str, int], children: dict[int, dict[str, int]],
             first_parts: dict[int, dict[str, int]] | None = None) -> int | None:
    """The row a "see" target names: its longest main-term prefix, then each further comma part as a subterm
    ("Displacement, intervertebral disc" -> Displacement / intervertebral disc). A part no subterm is spelled as may
    name the first of a subterm's comma-separated alternatives (``first_parts``): "Mastoiditis, acute" is the
    subterm "acute, subacute"."""
    parts = [_bare(p) for p in target.split(",")]
    parts = [p for p in parts if p]
    for split in range(len(parts), 0, -1):
        row = main_terms.get(_key(", ".join(parts[:split])))
        if row is None:
            continue
        for part in parts[split:]:
            child = children.get(row, {}).get(_key(part))
            if child is None and first_parts is not None:
                child = first_parts.get(row, {}).get(_key(part))
            if child is None and _key(part) in _BY_SITE:  # "Fracture, pathological, by site": the site is the label's
                continue
            if child is None:
                return None
            row = child
        return row
    return None


@functools.lru_cache(maxsize=1)
def index_entries(max_depth: int = MAX_DEPTH) -> tuple[tuple[str, str], ...]:
    """``(text, code)`` for every index path of at most ``max_depth`` terms that leads to a code, directly or
    through one "see" reference; codes as printed (may be longer or shorter than the matcher's codes)."""
    rows = _rows()
    main_terms: dict[str, int] = {}
    children: dict[int, dict[str, int]] = {}
    first_parts: dict[int, dict[str, int]] = {}  # a subterm by its first comma part, used only where no subterm is spelled so
    paths: list[list[str]] = []
    stack: list[int] = []
    for position, row in enumerate(rows):
        level = int(row["Level"] or 0)
        del stack[level:]
        if level == 0:
            for key in _aliases(row["Term"]):
                main_terms.setdefault(key, position)
        elif stack:
            for key in _aliases(row["Term"]):
                children.setdefault(stack[-1], {}).setdefault(key, position)
            bare = _bare(row["Term"])
            if "," in bare:
                first_parts.setdefault(stack[-1], {}).setdefault(_key(bare.split(",")[0]), position)
        paths.append([*(rows[i]["Term"] for i in stack), row["Term"]])
        stack.append(position)
    out: list[tuple[str, str]] = []
    for position, row in enumerate(rows):
        path = paths[position]
        if len(path) > max_depth:
            continue
        text = " - ".join([main_term_wording(path[0]), *(term.strip() for term in path[1:])])
        modifiers = row["NonEssModif"].strip()
        code = _code(row["Code"])
        target = _resolve(row["See"], main_terms, children, first_parts) if not code and row["See"] else None
        if target is not None and not _code(rows[target]["Code"]):  # graft the target's subterms
            for child in children.get(target, {}).values():
                if _code(rows[child]["Code"]) and len(path) < max_depth:
                    out.append((f"{text} - {rows[child]['Term'].strip()}", _code(rows[child]["Code"])))
            continue
        if target is not None:
            code = _code(rows[target]["Code"])
        elif not code and row["See"].lstrip().startswith("Neoplasm"):
            code = neoplasm_code(row["See"])
        if code:
            out.append((f"{text} {modifiers}" if modifiers else text, code))
    return tuple(out)


#: the tabular's wording of each behaviour column of the Table of Neoplasms (a label's morphology adds the same words)
_BEHAVIOUR_WORDING = {"MalignantPrimary": "Malignant neoplasm", "MalignantSecondary": "Secondary malignant neoplasm",
                      "CaInSitu": "Carcinoma in situ", "Benign": "Benign neoplasm",
                      "UncertainBehavior": "Neoplasm of uncertain behavior", "UnspecifiedBehavior": "Neoplasm of unspecified behavior"}


NEOPLASM_DEPTH = 1  # first-level sites only: depth 2 ("skin - squamous cell carcinoma") lost names on the development lists


@functools.lru_cache(maxsize=2)
def neoplasm_entries(max_depth: int = NEOPLASM_DEPTH) -> tuple[tuple[str, str], ...]:
    """``(text, code)`` for the Table of Neoplasms: each site path of at most ``max_depth`` terms under "Neoplasm" and
    each behaviour column that has a code, worded as the tabular does ("Malignant neoplasm - lung" C34.9-, "Benign
    neoplasm - nerve - cranial" D33.3). The index sends every by-site morphology here ("Carcinoma, squamous cell - see
    Neoplasm, by site, malignant"): a label naming a morphology and a site finds its code in this table."""
    out: list[tuple[str, str]] = []
    stack: list[str] = []
    for row in _rows(NEOPLASM_FILE):
        if not row["Level"].isdigit() or row["Level"] == "0":
            continue
        level = int(row["Level"])
        del stack[level - 1:]
        stack.append(main_term_wording(row["Term"]) if level == 1 else row["Term"].strip())
        if level > max_depth:
            continue
        site = " - ".join(stack)
        for column, wording in _BEHAVIOUR_WORDING.items():
            code = _code(row.get(column) or "")
            if code and code != "-":
                out.append((f"{wording} - {site}", code))
    return tuple(out)


@functools.lru_cache(maxsize=4)
def own_categories(words: tuple[str, ...]) -> dict[str, str]:
    """Of the morphology ``words``, those the index codes in a category of their own whatever the site: the main
    term carries a code and no reference to the Table of Neoplasms ("Hemangioma D18.00", "Lipoma D17.9",
    "Melanoma (malignant) C43.9"), directly or through one "see" ("Myelolipoma - see Lipoma"). Word -> category."""
    main: dict[str, dict[str, str]] = {}
    for row in _rows():
        if row["Level"] == "0":
            main.setdefault(main_term_wording(row["Term"]).lower(), row)
    out: dict[str, str] = {}
    for word in words:
        row = main.get(word)
        if row is not None and not row["Code"] and row["See"] and "neoplasm" not in row["See"].lower():
            row = main.get(row["See"].split(",")[0].strip().lower())
        if row is not None and row["Code"] and "neoplasm" not in (row["See"] + row["SeeAlso"]).lower():
            out[word] = row["Code"][:3]
    return out


#: the behaviour words of a "see Neoplasm, <site>, <behaviour>" target -> :mod:`raddiag.knowledge.morphology`'s names
_SEE_BEHAVIOUR = {"malignant": "malignant", "secondary": "secondary", "in situ": "in situ", "benign": "benign",
                  "uncertain behavior": "uncertain", "unspecified behavior": "unspecified"}


@functools.lru_cache(maxsize=4)
def modifier_behaviours(words: tuple[str, ...]) -> dict[tuple[str, str], str]:
    """Of the morphology ``words``, the subterms the index sends to a behaviour column of the Table of
    Neoplasms, directly ("Meningioma - atypical - see Neoplasm, meninges, uncertain behavior", "Tumor - yolk sac -
    see Neoplasm, malignant, by site") or through their "specified site" ("Ependymoma - myxopapillary - specified
    site - see Neoplasm, uncertain behavior, by site"): ``(morphology, modifier) -> behaviour`` ("atypical
    meningioma" is D42, not the benign D32); a main term sent to one column as a whole has the modifier ""
    ("Neurocytoma - see Neoplasm, benign, by site": ``("neurocytoma", "")``)."""
    wanted = set(words)
    out: dict[tuple[str, str], str] = {}
    current = modifier = ""
    for row in _rows():
        level = row["Level"]
        if level == "0":
            current, modifier = main_term_wording(row["Term"]).lower(), ""
            parts = [_key(part) for part in row["See"].split(",")]
            if current in wanted and not row["Code"] and len(parts) == 3 and parts[0] == "neoplasm" and parts[2] == "by site":
                behaviour = _SEE_BEHAVIOUR.get(parts[1], "")  # "Neurocytoma - see Neoplasm, benign, by site"
                if behaviour:
                    out.setdefault((current, ""), behaviour)
            continue
        if current not in wanted or level not in ("1", "2"):
            continue
        term = row["Term"].strip().lower()
        parts = [_key(part) for part in row["See"].split(",")]
        if level == "1":
            modifier = _bare(term)  # "yolk sac", "leydig cell"
        elif term != "specified site":  # "Ependymoma - myxopapillary - specified site - see Neoplasm, uncertain behavior, by site"
            continue
        behaviour = ""
        if len(parts) == 3 and parts[0] == "neoplasm":
            behaviour = _SEE_BEHAVIOUR.get(parts[2]) or (_SEE_BEHAVIOUR.get(parts[1], "") if parts[2] == "by site" else "")
        if modifier and behaviour:
            out.setdefault((current, modifier), behaviour)
    return out
