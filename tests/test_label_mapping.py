"""Label knowledge from the data with a reviewed override: the mapping CSV is written for review,
a clinician-corrected CSV wins over data and text, and the text threshold is a config key."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, run_cli


def test_override_wins_over_data_and_text_and_the_csv_lists_every_label(tmp_path: Path) -> None:
    from raddiag.knowledge.labels import map_labels, read_mapping, write_mapping

    names = ["Renal cell carcinoma", "Pneumothorax", "Normal", "Zebra stripe sign"]
    codes = [None, "J93.9", None, None]
    automatic = {m.name: m for m in map_labels(names, codes, threshold=0.4)}
    assert automatic["Pneumothorax"].source == "given" and automatic["Normal"].source == "normal"
    (tmp_path / "reviewed.csv").write_text("name,code,note\nRenal cell carcinoma,C64,kidney\nPneumothorax,J93.0,spontaneous tension\n"
                                           "Zebra stripe sign,,no code\n")
    overrides = read_mapping(tmp_path / "reviewed.csv")
    fixed = {m.name: m for m in map_labels(names, codes, threshold=0.4, overrides=overrides)}
    assert (fixed["Renal cell carcinoma"].code, fixed["Renal cell carcinoma"].source) == ("C64", "override")
    assert fixed["Pneumothorax"].code == "J93.0" and fixed["Zebra stripe sign"].code is None  # wins over the data's code too
    assert "kidney" in fixed["Renal cell carcinoma"].description.lower()
    rows = list(csv.DictReader(io.StringIO(write_mapping(list(fixed.values())))))
    assert {r["name"] for r in rows} == set(names) and {"source", "score", "description", "alternatives"} <= set(rows[0])
    strict = {m.name: m for m in map_labels(["Clear cell renal cell carcinoma"], threshold=0.99, curated=False)}  # an inexact match (~0.85)
    assert strict["Clear cell renal cell carcinoma"].source == "unmatched"  # the threshold is honoured


def test_the_csv_lists_text_matches_weakest_first_with_alternatives_of_other_categories() -> None:
    import re

    from raddiag.knowledge.labels import map_labels, write_mapping

    names = ["Renal cell carcinoma", "Pneumothorax", "Normal", "Zebra stripe sign", "Acetabular labral tear", "Osteosarcoma"]
    mappings = map_labels(names, [None, "J93.9", None, None, None, None], threshold=0.4, curated=False)
    rows = list(csv.DictReader(io.StringIO(write_mapping(mappings))))
    text_rows = [r for r in rows if r["source"] in ("matched", "unmatched")]
    assert rows[: len(text_rows)] == text_rows  # what text matching decided comes first ...
    assert [float(r["score"]) for r in text_rows] == sorted(float(r["score"]) for r in text_rows)  # ... weakest first
    assert [r["source"] for r in rows[len(text_rows):]] == ["given", "normal"]
    for m in mappings:
        if m.source not in ("matched", "unmatched"):
            assert m.alternatives == ""
            continue
        others = re.findall(r"([A-Z]\d[0-9A-Z](?:\.[0-9A-Z]+)?) \((\d\.\d\d)\)", m.alternatives)
        assert len(others) == 2, m  # two next-best candidates, each of another category, none above the top 1
        categories = [c[:3] for c, _ in others]
        assert len(set(categories)) == 2 and (m.code or "")[:3] not in categories
        assert all(float(score) <= m.score + 0.005 for _, score in others)


def test_the_curated_table_codes_rp3d_names_after_overrides_and_the_data_before_text() -> None:
    """An RP3D name without a code from the data takes the bundled curated row (its index path shown to the
    reviewer); an override and a data code both win over it; ke.curated=false falls back to text matching."""
    from raddiag.knowledge.curated import curated_table, name_key
    from raddiag.knowledge.labels import map_labels, write_mapping

    names = ["Renal cell carcinoma", "  amyotrophic LATERAL sclerosis ", "Pneumothorax", "Normal", "Zebra stripe sign (not RP3D)"]
    assert name_key(names[1]) in curated_table() and name_key(names[4]) not in curated_table()
    mappings = {m.name: m for m in map_labels(names, [None, None, "J93.9", None, None], threshold=0.4)}
    rcc, als = mappings["Renal cell carcinoma"], mappings[names[1]]
    assert (rcc.source, rcc.code[:3], rcc.score) == ("curated", "C64", 1.0) and "kidney" in rcc.description.lower()  # its own index path
    assert rcc.matched_text  # the index path the coder followed
    assert (als.source, als.code[:3]) == ("curated", "G12")  # looked up case- and space-insensitively
    assert mappings["Pneumothorax"].source == "given" and mappings["Normal"].source == "normal"
    assert mappings[names[4]].source in ("matched", "unmatched")
    rows = list(csv.DictReader(io.StringIO(write_mapping(list(mappings.values())))))
    assert [r["source"] for r in rows] == [mappings[names[4]].source, "curated", "curated", "given", "normal"]
    overridden = {m.name: m for m in map_labels(names[:1], overrides={"Renal cell carcinoma": "C65"})}
    assert overridden["Renal cell carcinoma"].source == "override"
    assert map_labels(names[:1], ["C64.1"])[0].source == "given"
    assert map_labels(names[:1], curated=False)[0].source == "matched"


def test_the_bundled_curated_table_holds_valid_codes_and_unique_names() -> None:
    import gzip

    from raddiag.knowledge.curated import COLUMNS, CONFIDENCES, CURATED_FILE, curated_table, name_key, read_curated
    from raddiag.knowledge.icd import normalise_code

    table = curated_table()
    assert len(table) >= 1800
    for key, row in table.items():
        assert key == name_key(row.name) and normalise_code(row.code) == row.code, row
        assert all(len(a) == 3 and normalise_code(a) for a in row.alternatives.split()), row
        assert row.provenance and row.index_entry, row
    header = ",".join(COLUMNS)
    broken = gzip.compress(f"{header}\nA,C64.9,,x,y,index\na ,C65,,x,y,index\n".encode())
    with pytest.raises(ValueError, match="appears twice"):
        read_curated(broken)
    with pytest.raises(ValueError, match="confidence 'sure'"):
        read_curated(gzip.compress(f"{header}\nA,C64.9,,x,y,sure\n".encode()))
    assert {row.confidence for row in table.values()} <= set(CONFIDENCES)
    assert gzip.decompress(CURATED_FILE.read_bytes()).decode().startswith(header)


def test_a_bad_mapping_file_fails_in_one_line_naming_the_row(tmp_path: Path) -> None:
    from raddiag.knowledge.labels import read_mapping

    (tmp_path / "bad.csv").write_text("name,code\nPneumonia,J18.9\nFracture,NOTACODE\n")
    with pytest.raises(ValueError, match=r"bad.csv, row 3: 'NOTACODE' is not an ICD-10-CM code"):
        read_mapping(tmp_path / "bad.csv")
    (tmp_path / "cols.csv").write_text("label,icd\nx,J18\n")
    with pytest.raises(ValueError, match="columns name, code"):
        read_mapping(tmp_path / "cols.csv")
    (tmp_path / "labels.txt").write_text("Pneumonia\n")
    result = run_cli("knowledge", "build", "--labels", str(tmp_path / "labels.txt"), "--mapping", str(tmp_path / "bad.csv"),
                     "--no-track", "--set", f"store.url={tmp_path / 'store'}")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "row 3" in result.stderr, result.stderr


def test_knowledge_build_writes_the_reviewable_csv_and_takes_the_override(tmp_path: Path) -> None:
    from raddiag.config import KEConfig
    from raddiag.knowledge import build_knowledge

    cfg = KEConfig(encoder="tfidf", dim=8, cache_dir=str(tmp_path / "cache"))
    names = ["Pneumonia", "Renal cell carcinoma", "Normal"]
    table = build_knowledge(names, cfg, None, str(tmp_path / "store"))
    written = Path(table.uri.removeprefix("file://")) / "mapping.csv"
    assert written.is_file() and len(list(csv.DictReader(written.open()))) == 3
    (tmp_path / "reviewed.csv").write_text("name,code\nRenal cell carcinoma,C64\n")
    reviewed = build_knowledge(names, cfg.model_copy(update={"mapping": str(tmp_path / "reviewed.csv")}), None, str(tmp_path / "store"))
    assert reviewed.version != table.version  # a reviewed mapping is a new table, never a stale cache hit
    assert {m.name: m.source for m in reviewed.mappings}["Renal cell carcinoma"] == "override"


def test_review_curve_of_the_icd_review_bench_against_a_direct_count() -> None:
    """bench/icd_review.py: accuracy after reviewing the first m rows (least confident first), by brute force."""
    import sys

    sys.path.insert(0, str(REPO / "bench"))
    try:
        import icd_review
    finally:
        sys.path.remove(str(REPO / "bench"))
    rng = np.random.default_rng(0)
    correct = rng.random(50) < 0.8
    confidence = np.round(rng.random(50), 1)  # ties: kept in list order
    order = icd_review.review_order(confidence)
    assert list(order) == sorted(range(50), key=lambda i: (confidence[i], i))
    curve = icd_review.accuracy_after(correct, order)
    for m in range(51):
        reviewed = set(order[:m].tolist())
        assert curve[m] == pytest.approx(np.mean([True if i in reviewed else correct[i] for i in range(50)]))
    target = float(curve[20])
    assert icd_review.reviewed_for(curve, target) == min(m for m in range(51) if curve[m] >= target) / 50
    assert icd_review.margin([]) == 0.0
    assert icd_review.margin([("C64", "a", 0.9)]) == 0.9
    assert icd_review.margin([("C64", "a", 0.9), ("C65", "b", 0.6)]) == pytest.approx(0.3)


def test_intercoder_agreement_of_the_icd_intercoder_bench_on_a_worked_example(tmp_path: Path) -> None:
    """bench/icd_intercoder.py: a recoding is scored exactly as the matcher (category in the first list's accepted
    set), a SKIP counts as a disagreement, and the matcher is split by whether the coders agree."""
    import sys

    sys.path.insert(0, str(REPO / "bench"))
    try:
        import icd_intercoder
        from icd_accuracy import HandCheck
    finally:
        sys.path.remove(str(REPO / "bench"))
    first = {
        "a": HandCheck("a", "K44", frozenset({"K44", "Q79"}), "K44.9", ""),
        "b": HandCheck("b", "G93", frozenset({"G93"}), "G93.0", ""),
        "c": HandCheck("c", "I77", frozenset({"I77"}), "I77.81", ""),
        "d": HandCheck("d", "S32", frozenset({"S32"}), "S32.8", ""),
    }
    path = tmp_path / "recode.csv"
    path.write_text("# a recoding\nname,category,alternatives,code,index_entry\n"
                    "a,Q79,,Q79.0,x\nb,Q04,G93,Q04.6,x\nc,I71,,I71.9,x\nd,SKIP,,,no entry\n")
    second = icd_intercoder.read_recode(path)
    assert second["b"] == ("Q04", frozenset({"Q04", "G93"})) and second["d"] == ("SKIP", frozenset())
    result = icd_intercoder.agreement(first, second, {"a": "K44", "b": "G93", "c": "I77", "d": "S32"})
    assert result["second_coder_vs_first"]["hits"] == 1 and result["second_coder_vs_first"]["n"] == 4  # a only; d skipped
    assert result["first_coder_vs_second"]["hits"] == 1 and result["first_coder_vs_second"]["n"] == 3  # b only
    assert result["strict_same_category"]["hits"] == 0
    assert result["coders_agree_either_way"]["hits"] == 2  # a and b
    assert result["matcher_vs_first"]["hits"] == 4 and result["matcher_vs_second"]["hits"] == 1  # b (G93 is b's alternative)
    assert result["matcher_on_names_coders_agree_on"]["n"] == 2 and result["matcher_on_names_coders_disagree_on"]["n"] == 2
    assert sorted(d["name"] for d in result["disagreements"]) == ["c", "d"]
    path.write_text("name,category,alternatives,code,index_entry\na,K4,,K4,x\n")
    with pytest.raises(ValueError, match="not 3 characters"):
        icd_intercoder.read_recode(path)


def test_the_bundled_curated_table_is_what_its_committed_sources_assemble_to() -> None:
    """scripts/build_curated_icd.py rebuilds the table byte for byte from bench/data (no edited source left unbuilt)."""
    import gzip
    import sys

    from raddiag.knowledge.curated import CURATED_FILE

    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import build_curated_icd
    finally:
        sys.path.remove(str(REPO / "scripts"))
    rows, report = build_curated_icd.assemble()
    assert not report["invalid"]
    assert gzip.decompress(CURATED_FILE.read_bytes()) == gzip.decompress(build_curated_icd.render(rows))
    assert build_curated_icd.valid_code("S82.0-") == "S82.0" and build_curated_icd.valid_code("K44.99") == "K44.9" and build_curated_icd.valid_code("Z9Z") is None
    assert build_curated_icd.confidence("no pilomyxoid term; Astrocytoma - pilocytic") == "judgement"
    assert build_curated_icd.confidence("Hernia - diaphragm - congenital Q79.0 [rows 1]") == "index"
