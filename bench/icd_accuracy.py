"""Label -> ICD-10-CM text matching: top-1 / top-3 category accuracy on hand-checked lists (#16).

The lists (``bench/data/icd_handcheck_{dev,heldout,heldout2,...,heldout15}.csv``; held-out 3-15 are seeded
random samples, see their headers; held-out 5-15 were written from the real FY2025 index; 3-9 sample the 1,500
most frequent names, 10-15 the names ranked 1,501-3,000, see ``icd_heldout10_pool.py``) give, for
radiology disorders spelled as in the RP3D vocabulary, the 3-character ICD-10-CM category a
coder reaches from the ICD-10-CM index (and defensible alternatives). A prediction is correct when
its code's category is the expected one or an alternative. Top-3 counts the three best *distinct*
categories. Intervals are Wilson 95% score intervals.

Two matchers are measured side by side: ``legacy`` (the matcher before #16's changes, kept verbatim
below) and ``current`` (:func:`raddiag.knowledge.labels.match_candidates`). With ``--vocab`` each
also maps the real 5,569-name RP3D vocabulary in a fresh subprocess: names at or above the 0.40
threshold, seconds (index fit + matching) and peak RSS.

    PYTHONPATH=platform .venv/bin/python bench/icd_accuracy.py --lists dev heldout heldout2 heldout3 heldout4 heldout5 heldout6 heldout7 --vocab \
        --output bench/data/icd_accuracy_round3.json

An earlier matcher is measured by pointing PYTHONPATH at its tree (``git archive <commit> platform``) with
``--matchers current``.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LISTS = {name: REPO / "bench" / "data" / f"icd_handcheck_{name}.csv" for name in ("dev", "heldout", "heldout2", "heldout3", "heldout4", "heldout5", "heldout6", "heldout7", "heldout8", "heldout9", "heldout10", "heldout11", "heldout12", "heldout13", "heldout14", "heldout15")}
VOCAB = REPO.parent / "shared" / "rp3d-demo" / "disorder_label_dict.json"
THRESHOLD = 0.4


@dataclass(frozen=True)
class HandCheck:
    """One hand-checked row: ``accepted`` = the expected category and its alternatives."""

    name: str
    category: str
    accepted: frozenset[str]
    code: str
    index_entry: str


def read_handcheck(path: str | Path) -> list[HandCheck]:
    """Rows of a hand-check CSV (``#`` lines are comments). Every problem is a ValueError naming the row."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such hand-check list (expected a CSV with name,category,alternatives,code,index_entry)")
    with path.open(newline="", encoding="utf-8") as handle:
        lines = [line for line in handle if not line.startswith("#")]
    reader = csv.DictReader(lines)
    needed = {"name", "category", "alternatives", "code", "index_entry"}
    if not reader.fieldnames or not needed <= set(reader.fieldnames):
        raise ValueError(f"{path}: expected columns {sorted(needed)} (got {reader.fieldnames})")
    rows, seen = [], set()
    for number, row in enumerate(reader, start=1):
        name, category = row["name"].strip(), row["category"].strip().upper()
        if not name or len(category) != 3:
            raise ValueError(f"{path}, data row {number}: needs a name and a 3-character category (got {name!r}, {category!r})")
        if name in seen:
            raise ValueError(f"{path}, data row {number}: {name!r} appears twice")
        seen.add(name)
        accepted = frozenset({category, *(c.strip().upper() for c in (row["alternatives"] or "").split() if c.strip())})
        rows.append(HandCheck(name, category, accepted, row["code"].strip(), row["index_entry"].strip()))
    return rows


def wilson(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion ``correct / n`` (95% by default)."""
    if n <= 0:
        return (0.0, 1.0)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def category(code: str) -> str:
    return code.replace(".", "")[:3].upper() if code else ""


def score_predictions(rows: list[HandCheck], ranked: list[list[str]], k: int = 3) -> dict:
    """Top-1 and top-``k`` category accuracy of ``ranked`` codes per row (best first; codes of any
    length, compared by category), with Wilson 95% intervals and the misses."""
    if len(rows) != len(ranked):
        raise ValueError(f"{len(ranked)} predictions for {len(rows)} rows")
    top1 = topk = 0
    misses = []
    for row, codes in zip(rows, ranked):
        categories = list(dict.fromkeys(category(c) for c in codes if c))
        hit1 = bool(categories) and categories[0] in row.accepted
        hitk = any(c in row.accepted for c in categories[:k])
        top1 += hit1
        topk += hitk
        if not hit1:
            misses.append({"name": row.name, "expected": sorted(row.accepted), "got": codes[0] if codes else "",
                           f"in_top{k}": hitk})
    n = len(rows)
    return {"n": n, "top1": top1, "top1_accuracy": round(top1 / n, 4) if n else 0.0, "top1_ci95": [round(x, 4) for x in wilson(top1, n)],
            f"top{k}": topk, f"top{k}_accuracy": round(topk / n, 4) if n else 0.0, f"top{k}_ci95": [round(x, 4) for x in wilson(topk, n)],
            "misses": misses}


# ---- the matcher before #16's text-matching changes, verbatim (its top-1 is the old match_text) ----


@functools.lru_cache(maxsize=1)
def _legacy_index():
    from sklearn.feature_extraction.text import TfidfVectorizer

    from raddiag.knowledge.icd import code_length, load_icd

    texts, codes = [], []
    for entry in load_icd():
        if entry.kind in ("category", "subcategory") and code_length(entry.code) <= 4:
            for text in (entry.description, *entry.synonyms):
                texts.append(text)
                codes.append(entry.code)
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True, dtype=np.float32)
    words = TfidfVectorizer(analyzer="word", token_pattern=r"(?u)\b\w+\b", sublinear_tf=True, dtype=np.float32)
    return chars, chars.fit_transform(texts), words, words.fit_transform(texts), texts, codes


def legacy_candidates(names: list[str], k: int = 3) -> list[list[tuple[str, str, float]]]:
    """The old score (mean of char 3-5-gram and word TF-IDF cosines) and its ``k`` best distinct categories."""
    chars, char_rows, words, word_rows, texts, codes = _legacy_index()
    scores = ((chars.transform(names) @ char_rows.T + words.transform(names) @ word_rows.T) * 0.5).tocsr()
    out = []
    for row in range(len(names)):
        line = scores.getrow(row)
        picked, seen = [], set()
        for position in np.argsort(-line.data, kind="stable"):
            best = int(line.indices[position])
            if category(codes[best]) not in seen:
                seen.add(category(codes[best]))
                picked.append((codes[best], texts[best], float(line.data[position])))
            if len(picked) == k:
                break
        out.append(picked)
    return out


def candidates(matcher: str, names: list[str], k: int = 3) -> list[list[tuple[str, str, float]]]:
    if matcher == "legacy":
        return legacy_candidates(names, k)
    from raddiag.knowledge.labels import match_candidates

    return match_candidates(names, k)


def measure_list(matcher: str, rows: list[HandCheck]) -> dict:
    ranked = candidates(matcher, [r.name for r in rows])
    result = score_predictions(rows, [[c for c, _, _ in picks] for picks in ranked])
    result["predictions"] = [{"name": r.name, "expected": r.category, "top3": [[c, t, round(s, 3)] for c, t, s in picks]}
                             for r, picks in zip(rows, ranked)]
    return result


def vocab_worker(matcher: str, threshold: float) -> dict:
    """In a fresh process: fit the index and match every RP3D vocabulary name; seconds and peak RSS."""
    names = list(json.loads(VOCAB.read_text()))
    import sklearn.feature_extraction.text  # noqa: F401  (imports are not part of the measured cost)

    import raddiag.knowledge.icd  # noqa: F401

    base_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    cpu = time.process_time()
    picks = candidates(matcher, names, k=1)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    scores = [p[0][2] if p else 0.0 for p in picks]
    return {"names": len(names), "above_threshold": int(sum(s >= threshold for s in scores)), "threshold": threshold,
            "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_after_imports_mb": round(base_mb, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lists", nargs="+", default=["dev"], choices=sorted(LISTS), help="which hand-check lists to score")
    parser.add_argument("--matchers", nargs="+", default=["legacy", "current"], choices=["legacy", "current"])
    parser.add_argument("--vocab", action="store_true", help="also map the 5,569 RP3D vocabulary names (subprocess per matcher)")
    parser.add_argument("--output", default="", help="write the JSON here")
    parser.add_argument("--vocab-worker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.vocab_worker:
        print(json.dumps(vocab_worker(args.vocab_worker, THRESHOLD)))
        return
    if args.vocab and not VOCAB.is_file():
        sys.exit(f"--vocab: {VOCAB} not found (the RP3D vocabulary of shared/rp3d-demo); run without --vocab")
    tables = {name: read_handcheck(LISTS[name]) for name in args.lists}  # bad lists fail before any slow work
    out: dict = {"threshold": THRESHOLD, "lists": {}, "vocab": {}}
    for name, rows in tables.items():
        out["lists"][name] = {matcher: measure_list(matcher, rows) for matcher in args.matchers}
        for matcher in args.matchers:
            r = out["lists"][name][matcher]
            print(f"{name:8s} {matcher:7s} n={r['n']:3d} top1 {r['top1_accuracy']:.3f} {r['top1_ci95']} "
                  f"top3 {r['top3_accuracy']:.3f} {r['top3_ci95']}")
    if args.vocab:
        for matcher in args.matchers:
            done = subprocess.run([sys.executable, __file__, "--vocab-worker", matcher], capture_output=True, text=True, check=True)
            out["vocab"][matcher] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"vocab    {matcher:7s} {out['vocab'][matcher]}")
    if args.output:
        Path(args.output).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
