"""How often two coders agree: a second, blind coding of held-out names, scored like the matcher (#16).

The 90% top-1 target of #16 is scored against one coder's reading of the ICD-10-CM index. This measures what a
second coder, working by the same written protocol from the same index files and blind to the first coder's list and
to the matcher, gets when scored exactly as the matcher is: right when the second coder's category is the first
coder's category or one of its alternatives. That is the human reference for the matcher's figure on the same names.

Sample (drawn before any recoding, ``sample``): 50 accepted names from each of held-outs 12-15 (seeded), shuffled and
split into two halves, one per recoder. Measurement (``measure``), once, after both recodings are committed:

- second coder vs first: right when the recoder's category is in the first list's accepted set (category +
  alternatives); a name the recoder skipped counts as wrong (the matcher must answer every name) and is reported;
- the reverse direction (first coder's category in the recoder's accepted set) and strict agreement (same category);
- the matcher (``raddiag.knowledge.labels.match_candidates``, top 1) on the same names against the first list, against
  the recoder's, against either (a category accepted by either coder), and on the names the two coders agree on.

    PYTHONPATH=platform .venv/bin/python bench/icd_intercoder.py sample --out /tmp/recode
    PYTHONPATH=platform .venv/bin/python bench/icd_intercoder.py measure bench/data/icd_recode_A.csv bench/data/icd_recode_B.csv \
        --output bench/data/icd_intercoder.json

The same check of the curated table (``raddiag.knowledge.curated``), whose rows were coded at a much faster pace:
``sample --curated`` draws 25 coded (non-SKIP) rows of each curation file (``bench/data/icd_curation/curated_[1-8].csv``),
and ``measure --reference curated`` scores the blind recodings against those rows instead of the held-out lists.
``measure --reference early`` scores the curation helpers' recodings of the early lists' names (written from memory of the
index, before it was bundled: ``curated_e1.csv``, ``curated_e2.csv``) against those early lists.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

from icd_accuracy import LISTS, HandCheck, candidates, category, read_handcheck, wilson

SOURCES = ("heldout12", "heldout13", "heldout14", "heldout15")
PER_LIST = 50
SEED = 20261207
SKIP = "SKIP"
CURATION = Path(__file__).resolve().parent / "data" / "icd_curation"
CURATED_FILES = [f"curated_{k}" for k in range(1, 9)]
EARLY = ("dev", "heldout", "heldout2", "heldout3", "heldout4")  # written from memory of the index, before it was bundled
PER_CURATED_FILE = 25


def sample() -> tuple[list[str], list[str]]:
    """Two halves of 100 names: PER_LIST accepted names of each source list, drawn and shuffled with ``SEED``."""
    rng = random.Random(SEED)
    names: list[str] = []
    for source in SOURCES:
        rows = read_handcheck(LISTS[source])
        names += [row.name for row in rng.sample(rows, PER_LIST)]
    rng.shuffle(names)
    return names[0::2], names[1::2]


def originals() -> dict[str, HandCheck]:
    """The first coder's row of every name of the source lists, by name."""
    return {row.name: row for source in SOURCES for row in read_handcheck(LISTS[source])}


def early_rows() -> dict[str, HandCheck]:
    """The rows of the early lists (written from memory of the index), by name (the first list wins)."""
    out: dict[str, HandCheck] = {}
    for source in EARLY:
        for row in read_handcheck(LISTS[source]):
            out.setdefault(row.name, row)
    return out


def _curated_file(stem: str) -> dict[str, HandCheck]:
    """The coded (non-SKIP) rows of one curation file, by name, as hand-check rows."""
    return {name: HandCheck(name, coded, accepted, "", "")
            for name, (coded, accepted) in read_recode(CURATION / f"{stem}.csv").items() if coded != SKIP}


def curated_rows() -> dict[str, HandCheck]:
    """The coded (non-SKIP) rows of the curation files, by name."""
    return {name: row for stem in CURATED_FILES for name, row in _curated_file(stem).items()}


def sample_curated() -> tuple[list[str], list[str]]:
    """Two halves of PER_CURATED_FILE coded rows of each curation file, drawn and shuffled with ``SEED``."""
    rng = random.Random(SEED)
    names: list[str] = []
    for stem in CURATED_FILES:
        names += rng.sample(sorted(_curated_file(stem)), PER_CURATED_FILE)
    rng.shuffle(names)
    return names[0::2], names[1::2]


def read_recode(path: str | Path) -> dict[str, tuple[str, frozenset[str]]]:
    """``name -> (category or SKIP, accepted set)`` of a recoding (columns name,category,alternatives,code,index_entry;
    ``#`` lines are comments; category ``SKIP`` = no category reached, reason in index_entry)."""
    out: dict[str, tuple[str, frozenset[str]]] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        lines = [line for line in handle if not line.startswith("#")]
    for number, row in enumerate(csv.DictReader(lines), start=2):
        name, category = (row.get("name") or "").strip(), (row.get("category") or "").strip().upper()
        if not name or not category:
            raise ValueError(f"{path}: data row {number} lacks a name or a category")
        if category != SKIP and len(category) != 3:
            raise ValueError(f"{path}: data row {number} ({name}): category {category!r} is not 3 characters or {SKIP}")
        if name in out:
            raise ValueError(f"{path}: {name!r} is coded twice")
        alternatives = {a.strip().upper() for a in (row.get("alternatives") or "").split() if a.strip()}
        out[name] = (category, frozenset() if category == SKIP else frozenset({category} | alternatives))
    return out


def _rate(hits: int, n: int) -> dict:
    low, high = wilson(hits, n)
    return {"hits": hits, "n": n, "rate": round(hits / n, 4) if n else None, "ci95": [round(low, 4), round(high, 4)]}


def agreement(first: dict[str, HandCheck], second: dict[str, tuple[str, frozenset[str]]], predicted: dict[str, str]) -> dict:
    """The figures of the module docstring for the names both codings cover; ``predicted``: name -> matcher category."""
    names = sorted(second)
    missing = [n for n in names if n not in first]
    if missing:
        raise ValueError(f"recoded names not in the reference rows: {missing[:5]}")
    coded = [n for n in names if second[n][0] != SKIP]
    second_right = [n for n in names if second[n][0] in first[n].accepted]
    reverse = [n for n in coded if first[n].category in second[n][1]]
    strict = [n for n in coded if first[n].category == second[n][0]]
    agree = [n for n in coded if second[n][0] in first[n].accepted or first[n].category in second[n][1]]
    matcher_first = [n for n in names if predicted[n] in first[n].accepted]
    matcher_second = [n for n in coded if predicted[n] in second[n][1]]
    matcher_either = [n for n in names if predicted[n] in first[n].accepted | second[n][1]]
    on_agreed = [n for n in agree if predicted[n] in first[n].accepted]
    disagree = [n for n in names if n not in set(agree)]
    on_disagreed = [n for n in disagree if predicted[n] in first[n].accepted]
    return {
        "n_names": len(names), "recoder_skipped": len(names) - len(coded),
        "second_coder_vs_first": _rate(len(second_right), len(names)),
        "second_coder_vs_first_coded_only": _rate(len([n for n in coded if n in set(second_right)]), len(coded)),
        "first_coder_vs_second": _rate(len(reverse), len(coded)),
        "strict_same_category": _rate(len(strict), len(coded)),
        "coders_agree_either_way": _rate(len(agree), len(coded)),
        "matcher_vs_first": _rate(len(matcher_first), len(names)),
        "matcher_vs_second": _rate(len(matcher_second), len(coded)),
        "matcher_vs_either": _rate(len(matcher_either), len(names)),
        "matcher_on_names_coders_agree_on": _rate(len(on_agreed), len(agree)),
        "matcher_on_names_coders_disagree_on": _rate(len(on_disagreed), len(disagree)),
        "disagreements": [
            {"name": n, "first": sorted(first[n].accepted), "first_code": first[n].code, "second": second[n][0],
             "second_accepted": sorted(second[n][1]), "matcher": predicted[n]}
            for n in disagree
        ],
    }


def matcher_categories(names: list[str]) -> dict[str, str]:
    """The current matcher's top-1 category of each name."""
    return {name: (category(found[0][0]) if found else "") for name, found in zip(names, candidates("current", names, k=1))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    draw = sub.add_parser("sample", help="write the two halves to recode (names only, one per line)")
    draw.add_argument("--out", required=True)
    draw.add_argument("--curated", action="store_true", help="sample the curation files instead of held-outs 12-15")
    measure = sub.add_parser("measure", help="score the recodings against the first lists and the matcher")
    measure.add_argument("recoded", nargs="+")
    measure.add_argument("--reference", choices=("heldouts", "curated", "early"), default="heldouts",
                         help="score against held-outs 12-15 (default), the curation files, or the early lists written from memory")
    measure.add_argument("--output", default="")
    args = parser.parse_args()
    if args.command == "sample":
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for letter, half in zip("AB", sample_curated() if args.curated else sample()):
            (out / f"names_{letter}.txt").write_text("\n".join(half) + "\n", encoding="utf-8")
            print(f"names_{letter}.txt: {len(half)} names")
        return
    second: dict[str, tuple[str, frozenset[str]]] = {}
    for path in args.recoded:
        for name, value in read_recode(path).items():
            if name in second:
                raise SystemExit(f"{path}: {name!r} is also in another recoding")
            second[name] = value
    references = {"heldouts": (originals, list(SOURCES)), "curated": (curated_rows, CURATED_FILES), "early": (early_rows, list(EARLY))}
    rows, names = references[args.reference]
    result = agreement(rows(), second, matcher_categories(sorted(second)))
    result["reference"], result["sources"] = args.reference, names
    result["recoded"] = [str(p) for p in args.recoded]
    for key, value in result.items():
        if isinstance(value, dict):
            print(f"{key:40s} {value['hits']}/{value['n']} = {value['rate']} {value['ci95']}")
    print(f"recoder skipped {result['recoder_skipped']} of {result['n_names']}")
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
