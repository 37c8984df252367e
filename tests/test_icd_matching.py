"""Label -> ICD-10-CM text matching (#16): the issue's failure cases, the anatomy-disagreement
penalty, the supplementary index terms, and the hand-check benchmark's scoring."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("name", "categories"), [
    ("Renal cell carcinoma", {"C64"}),  # was C22.0 (liver cell carcinoma, 0.71)
    ("Amyotrophic lateral sclerosis", {"G12"}),  # was K74.1 (hepatic sclerosis)
    ("Pancoast syndrome", {"C34"}),  # was N05 (nephritic syndrome)
    ("Pancoast tumour", {"C34"}),
    ("Acetabular labral tear", {"S73", "M24"}),  # was O90.1 (perineal tear)
])
def test_the_issues_failure_cases_map_to_the_index_category(name: str, categories: set[str]) -> None:
    from raddiag.knowledge.labels import MATCH_THRESHOLD, map_labels

    (mapping,) = map_labels([name], curated=False)
    assert mapping.source == "matched" and mapping.score >= MATCH_THRESHOLD, mapping
    assert mapping.code[:3] in categories, mapping


def test_a_candidate_naming_another_organ_is_penalised() -> None:
    from raddiag.knowledge.textmatch import (
        ANATOMY_PENALTY,
        NEOPLASM_ANATOMY_PENALTY,
        SITELESS_PENALTY,
        MatchIndex,
        anatomy_disagrees,
        normalise_name,
        organs_of,
        rerank,
    )

    kidney = organs_of(normalise_name("Renal cell carcinoma"))
    assert kidney == {"kidney"}
    assert anatomy_disagrees(kidney, organs_of(normalise_name("Liver cell carcinoma")))
    assert not anatomy_disagrees(kidney, organs_of(normalise_name("Malignant neoplasm of kidney, except renal pelvis")))
    assert not anatomy_disagrees(kidney, frozenset())  # a text without an organ is not contradicted
    assert not anatomy_disagrees(organs_of(normalise_name("Colonic diverticulitis")), organs_of(normalise_name("Diverticulitis of intestine")))
    texts = ["Liver cell carcinoma", "Malignant neoplasm of kidney", "Merkel cell carcinoma"]
    normalised = [normalise_name(t) for t in texts]
    index = MatchIndex(None, None, None, None, texts, ["C22.0", "C64", "C4A"], [organs_of(n) for n in normalised],
                       [frozenset()] * 3, np.zeros(3, dtype=bool))
    ranked = dict(rerank(normalise_name("Renal cell carcinoma"), [(0, 0.7), (1, 0.6), (2, 0.5)], index))
    assert ranked[0] == pytest.approx(0.7 * NEOPLASM_ANATOMY_PENALTY) and ranked[1] == pytest.approx(0.6)  # a neoplasm's site decides
    cyst = MatchIndex(None, None, None, None, ["Liver cyst"], ["K76.89"], [frozenset({"liver"})], [frozenset()], np.zeros(1, dtype=bool))
    assert dict(rerank(normalise_name("Renal cyst"), [(0, 0.7)], cyst))[0] == pytest.approx(0.7 * ANATOMY_PENALTY)  # not a neoplasm
    assert ranked[2] == pytest.approx(0.5 * SITELESS_PENALTY)  # names no organ where the label names one: a smaller penalty
    context = MatchIndex(None, None, None, None, ["Congenital hydronephrosis", "Hydronephrosis"], ["Q62.0", "N13.3"], [frozenset()] * 2,
                         [frozenset({"congenital"}), frozenset()], np.zeros(2, dtype=bool))
    assert rerank("hydronephrosis", [(0, 0.9), (1, 0.85)], context)[0][0] == 1  # "congenital" not named: the plain code wins


def test_spelling_organ_words_and_index_terms() -> None:
    import simple_icd_10_cm as cm

    from raddiag.knowledge.eponyms import EPONYMS
    from raddiag.knowledge.index_terms import INDEX_TERMS
    from raddiag.knowledge.textmatch import normalise_name, note_terms

    assert normalise_name("Subdural haemorrhage") == normalise_name("subdural hemorrhage")
    assert normalise_name("Oesophageal tumour") == "esophageal tumor esophagus neoplasm"  # Index "Tumor - see also Neoplasm"
    assert normalise_name("Hepatic metastases").split()[-4:] == ["liver", "secondary", "malignant", "neoplasm"]
    assert note_terms("amyotrophic lateral sclerosis (G12.21)") == ("amyotrophic lateral sclerosis", "G12.21")
    assert note_terms("hiatus hernia (K44.-)") == ("hiatus hernia", "K44") and note_terms("cerebrovascular diseases (I60-I69)") is None
    bad = [(term, code) for term, code in (*INDEX_TERMS, *EPONYMS) if not cm.is_valid_item(code)]
    assert not bad, f"index terms with codes missing from the bundled table: {bad}"
    assert len({term for term, _ in EPONYMS}) == len(EPONYMS) and all(code[0] in "MS" for _, code in EPONYMS)  # injuries


@pytest.mark.parametrize(("name", "categories"), [  # round 2: one development-list failure per rule (#16)
    ("Endometrial carcinoma", {"C54"}),  # organ table: endometrial -> endometrium (was C80.1 "Carcinoma unspecified site")
    ("Large bowel obstruction", {"K56"}),  # head word: "Crohn's disease of large bowel" shares only the site
    ("Lymph node enlargement", {"R59"}),  # organ table: lymph node (was H05.34 "Enlargement of orbit")
    ("Calcaneal fracture", {"S92"}),  # head word: "Calcaneal spur" shares only the site
    ("Pancreatic pseudocyst", {"K86"}),  # "pancreas" is not a plural (was E16.9)
    ("Mature cystic ovarian teratoma", {"D27"}),  # Index "Teratoma, mature - see Neoplasm, benign"
    ("Sigmoid volvulus", {"K56"}),  # small and large bowel are different regions (not K31.5 "Volvulus of duodenum")
    ("Septic arthritis", {"M00"}),  # index cross-reference "Arthritis, septic - see Arthritis, pyogenic"
    ("Subdural empyema", {"G06"}),  # "Empyema, subdural - see Abscess, subdural"
    ("Disc herniation", {"M50", "M51"}),  # "Herniation, intervertebral disc - see Displacement"
])
def test_round_two_rules_on_development_failures(name: str, categories: set[str]) -> None:
    from raddiag.knowledge.labels import MATCH_THRESHOLD, map_labels

    (mapping,) = map_labels([name], curated=False)
    assert mapping.source == "matched" and mapping.score >= MATCH_THRESHOLD, mapping
    assert mapping.code[:3] in categories, mapping


def test_anatomy_table_covers_every_neoplasm_site_word() -> None:
    import re

    from raddiag.knowledge.icd import code_length, load_icd
    from raddiag.knowledge.textmatch import _NOT_ORGAN, ORGAN_WORDS, normalise_name

    sites = set()
    for entry in load_icd():
        if entry.kind in ("category", "subcategory") and code_length(entry.code) <= 4 and "C00" <= entry.code[:3] <= "D36":
            found = re.search(r"neoplasm of (.*)", entry.description, re.I)
            sites.update(normalise_name(found.group(1)).split() if found else ())  # spelling and plurals as matched
    assert sites, "no neoplasm site words found"
    missing = sorted(sites - set(ORGAN_WORDS) - _NOT_ORGAN)
    assert not missing, f"site words neither in the organ table nor listed as not an organ: {missing}"
    assert not set(ORGAN_WORDS) & _NOT_ORGAN


def test_head_word_penalty_and_stems() -> None:
    from raddiag.knowledge.textmatch import HEAD_PENALTY, MatchIndex, head_words, normalise_name, organs_of, rerank, same_stem

    assert head_words(normalise_name("Large bowel obstruction")) == {"obstruction"}
    assert head_words(normalise_name("Lymph node enlargement")) == {"enlargement"}
    assert same_stem("enlargement", "enlarged") and same_stem("cyst", "cystic") and same_stem("diverticulitis", "diverticular")
    assert not same_stem("pneumonia", "pneumothorax") and not same_stem("hemorrhage", "hematoma")
    texts = ["Crohn's disease of large bowel", "Other and unspecified intestinal obstruction"]
    normalised = [normalise_name(t) for t in texts]
    index = MatchIndex(None, None, None, None, texts, ["K50.1", "K56.6"], [organs_of(n) for n in normalised], [frozenset()] * 2,
                       np.zeros(2, dtype=bool))
    ranked = dict(rerank(normalise_name("Large bowel obstruction"), [(0, 0.7), (1, 0.55)], index))
    assert ranked[0] == pytest.approx(0.7 * HEAD_PENALTY) and ranked[1] == pytest.approx(0.55)


def test_head_word_columns_equal_the_text_test() -> None:
    from raddiag.knowledge.textmatch import _HeadColumns, head_words, match_index, normalise_name, shares_head

    index = match_index()
    heads = _HeadColumns(index)
    for name in ("Large bowel obstruction", "Calcaneal fracture", "Lymph node enlargement", "Colonic diverticulitis", "Renal cyst"):
        head = head_words(normalise_name(name))
        columns = heads.of(head)
        for position in range(0, len(index.texts), 997):
            expected = shares_head(head, set(normalise_name(index.texts[position]).split()))
            assert heads.shared(columns, position) == expected, (name, index.texts[position])


def test_new_normalisation_rules() -> None:
    from raddiag.knowledge.textmatch import _WITHOUT, anatomy_disagrees, normalise_name, organs_of

    assert "colon" in normalise_name("Large bowel obstruction").split()  # the tabular's "large intestine" is the colon
    assert normalise_name("Pseudocyst of pancreas") == "pseudocyst pancreas"  # not stemmed to "pancrea"
    assert normalise_name("Pelviureteric junction obstruction") == normalise_name("Ureteropelvic junction obstruction")
    assert normalise_name("Mature cystic teratoma").endswith("benign neoplasm")
    assert normalise_name("Teratoma").endswith("neoplasm uncertain behavior")
    assert anatomy_disagrees(organs_of(normalise_name("Sigmoid volvulus")), organs_of(normalise_name("Volvulus of duodenum")))
    assert not anatomy_disagrees(organs_of(normalise_name("Sigmoid volvulus")), organs_of(normalise_name("Intestinal volvulus")))
    assert _WITHOUT.sub("", "Umbilical hernia without obstruction or gangrene") == "Umbilical hernia"
    assert _WITHOUT.sub("", "Umbilical hernia with obstruction, without gangrene") == "Umbilical hernia with obstruction"


def _bench():
    spec = importlib.util.spec_from_file_location("icd_accuracy", REPO / "bench" / "icd_accuracy.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_handcheck_scoring_on_a_tiny_fixed_table(tmp_path: Path) -> None:
    bench = _bench()
    (tmp_path / "list.csv").write_text(
        "# a comment line\nname,category,alternatives,code,index_entry\n"
        "Renal cell carcinoma,C64,,C64.9,Carcinoma - renal cell C64.-\n"
        "Subdural haemorrhage,I62,S06,I62.00,Hemorrhage - subdural I62.00\n"
        "Pneumonia,J18,,J18.9,Pneumonia J18.9\n"
        "Gallstones,K80,,K80.20,Gallstone - see Calculus K80.20\n")
    rows = bench.read_handcheck(tmp_path / "list.csv")
    assert [r.accepted for r in rows][1] == {"I62", "S06"}
    ranked = [["C22.0", "C64.9"], ["S06.5"], ["P23", "J12.9", "J18.0", "J18.9"], []]
    result = bench.score_predictions(rows, ranked)
    # top-1: C22 miss, S06 (alternative) hit, P23 miss, nothing miss; top-3 by distinct category: C64 hit, S06 hit, J18 3rd hit
    assert (result["n"], result["top1"], result["top3"]) == (4, 1, 3)
    assert result["top1_ci95"] == [round(x, 4) for x in bench.wilson(1, 4)]
    assert bench.wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4) and bench.wilson(0, 5)[0] == 0.0
    assert [m["name"] for m in result["misses"]] == ["Renal cell carcinoma", "Pneumonia", "Gallstones"]
    (tmp_path / "bad.csv").write_text("name,category\nX,C64\n")
    with pytest.raises(ValueError, match="bad.csv: expected columns"):
        bench.read_handcheck(tmp_path / "bad.csv")


# ---- round 3 (#16): morphology behaviour and default site, primary vs secondary, chapter context, causes ----


def test_morphology_table_covers_every_oma_word_of_the_vocabulary() -> None:
    import json
    import re

    from raddiag.knowledge.morphology import MORPHOLOGY, NOT_DECIDED, morphology_of
    from raddiag.knowledge.textmatch import ORGAN_WORDS, normalise_name

    assert all(m.site in ORGAN_WORDS for m in MORPHOLOGY.values() if m.site), "a default site that is no organ word"
    assert not set(MORPHOLOGY) & NOT_DECIDED
    vocab = REPO.parent / "shared" / "rp3d-demo" / "disorder_label_dict.json"
    if not vocab.is_file():
        pytest.skip("RP3D vocabulary (shared/rp3d-demo) not present")
    words = {w for name in json.loads(vocab.read_text()) for w in normalise_name(name).split() if re.fullmatch(r"[a-z]+oma", w)}
    missing = sorted(w for w in words if morphology_of(w) is None and w not in NOT_DECIDED)  # listed, or by a listed suffix
    assert not missing, f"-oma words neither in the morphology table nor listed as not decided: {missing}"


def test_morphology_lookup_and_code_behaviour() -> None:
    from raddiag.knowledge.morphology import (
        BENIGN,
        IN_SITU,
        MALIGNANT,
        SECONDARY,
        UNCERTAIN,
        UNSPECIFIED,
        Morphology,
        code_behaviour,
        label_morphology,
        morphology_of,
    )

    assert morphology_of("xanthoastrocytoma") == morphology_of("astrocytoma")  # longest listed suffix
    assert morphology_of("paraganglioma").behaviour == UNCERTAIN  # not "glioma" (malignant)
    assert morphology_of("hematoma") is None and morphology_of("granuloma") is None  # not neoplasms
    assert label_morphology(["metastasis", "adenocarcinoma"]).behaviour == SECONDARY  # secondary wins
    assert label_morphology(["carcinoma", "situ"]).behaviour == IN_SITU
    assert label_morphology(["mature", "teratoma"]).behaviour == BENIGN
    assert label_morphology(["malignant", "meningioma"]) == Morphology(MALIGNANT, "meninges")  # Index "Meningioma, malignant"
    assert label_morphology(["tumor"]).behaviour == UNSPECIFIED and label_morphology(["fracture"]) is None
    assert [code_behaviour(c) for c in ("C41.2", "C4A.9", "C79.51", "C7B.00", "D06.9", "D32.9", "D3A.00", "D44.5", "D49.6")] == [
        MALIGNANT, MALIGNANT, SECONDARY, SECONDARY, IN_SITU, BENIGN, BENIGN, UNCERTAIN, UNSPECIFIED]
    assert code_behaviour("D50.9") is None and code_behaviour("K76.0") is None


def test_morphology_wording_and_default_site() -> None:
    from raddiag.knowledge.textmatch import normalise_name, organs_of

    assert normalise_name("Pineocytoma") == "pineocytoma pineal neoplasm uncertain behavior"
    assert organs_of(normalise_name("Retinoblastoma")) == {"retina"}
    assert organs_of(normalise_name("Renal retinoblastoma")) == {"kidney"}  # a named site wins over the default
    assert normalise_name("Cardiac myxoma").endswith("heart benign neoplasm")


@pytest.mark.parametrize(("name", "categories"), [  # round 3: development-list (held-out 3) failures, one or two per rule
    ("Pineocytoma", {"D44"}),  # /1 morphology, default site pineal -> uncertain behaviour D37-D48
    ("Subependymoma", {"D43"}),  # /1 morphology, default site brain
    ("Pineoblastoma", {"C75"}),  # /3, default site pineal
    ("Retinoblastoma", {"C69"}),  # /3, default site retina
    ("Cardiac myxoma", {"D15"}),  # /0 at a named site (was I21 "cardiac infarction")
    ("Ovarian fibrothecoma", {"D27"}),
    ("Krukenberg tumour", {"C79"}),  # eponym morphology: secondary, ovary (was H18.05 "Krukenberg's spindle")
    ("Linitis plastica", {"C16"}),  # eponym morphology: malignant, stomach
    ("Vertebral metastases", {"C79"}),  # secondary: C77-C79, "bone" covers "vertebra" (was C41.2 primary)
    ("Adenocarcinoma of the lung", {"C34"}),  # primary: organ of origin named (was C78.00 secondary)
    ("Carcinoma of the cervix", {"C53"}),  # malignant, not in situ (was D06.9)
    ("Renal lymphoma", {"C83", "C85"}),  # lymphoma: C81-C96 whatever the site (not C64/C65)
    ("Diabetes mellitus", {"E08", "E09", "E10", "E11", "E13"}),  # not O24: the pregnancy chapter's note
    ("Splenic abscess", {"D73"}),  # not A06.89 "Amebic splenic abscess"
    ("Charcot joint", {"M14"}),  # accents stripped: "Charcôt's joint"
])
def test_round_three_rules_on_development_failures(name: str, categories: set[str]) -> None:
    from raddiag.knowledge.labels import MATCH_THRESHOLD, map_labels

    (mapping,) = map_labels([name], curated=False)
    assert mapping.source == "matched" and mapping.score >= MATCH_THRESHOLD, mapping
    assert mapping.code[:3] in categories, mapping


def test_behaviour_penalty_metastases_and_primaries() -> None:
    from raddiag.knowledge.textmatch import BEHAVIOUR_PENALTY, HEAD_PENALTY, MatchIndex, normalise_name, organs_of, rerank

    texts = ["Malignant neoplasm of bone", "Secondary malignant neoplasm of bone", "Neoplasm of uncertain behavior of bone",
             "Osteitis of bone"]
    normalised = [normalise_name(t) for t in texts]
    index = MatchIndex(None, None, None, None, texts, ["C41.9", "C79.51", "D48.0", "M86.9"], [organs_of(n) for n in normalised],
                       [frozenset()] * 4, [False] * 4)
    candidates = [(0, 0.8), (1, 0.7), (2, 0.6), (3, 0.5)]
    secondary = dict(rerank(normalise_name("Bone metastases"), candidates, index))
    assert secondary[1] == pytest.approx(0.7) and secondary[0] == pytest.approx(0.8 * BEHAVIOUR_PENALTY)
    assert secondary[3] == pytest.approx(0.5 * BEHAVIOUR_PENALTY * HEAD_PENALTY)  # no neoplasm at all (and no head word)
    primary = dict(rerank(normalise_name("Osteosarcoma"), candidates, index))
    assert primary[0] == pytest.approx(0.8) and primary[1] == pytest.approx(0.7 * BEHAVIOUR_PENALTY)
    uncertain = rerank(normalise_name("Hemangiopericytoma of bone"), candidates, index)
    assert uncertain[0][0] == 2  # a /1 morphology at a site: the D37-D48 category
    unspecified = dict(rerank(normalise_name("Bone tumour"), candidates[:3], index))  # "tumour" alone: no behaviour penalty
    assert unspecified == pytest.approx(dict(candidates[:3]))


def test_whole_organ_covers_its_parts_only_one_way() -> None:
    from raddiag.knowledge.textmatch import anatomy_disagrees

    assert not anatomy_disagrees(frozenset({"vertebra"}), frozenset({"bone"}))
    assert not anatomy_disagrees(frozenset({"skull"}), frozenset({"bone"}))
    assert anatomy_disagrees(frozenset({"bone"}), frozenset({"femur"}))
    assert anatomy_disagrees(frozenset({"vertebra"}), frozenset({"femur"}))


def test_chapter_context_and_cause_penalties() -> None:
    from raddiag.knowledge.textmatch import (
        CAUSE_PENALTY,
        CONTEXT_PENALTY,
        MatchIndex,
        chapter_context,
        context_words,
        names_other_cause,
        normalise_name,
        organs_of,
        rerank,
    )

    assert chapter_context("O24.9") == {"@pregnancy"} and chapter_context("P35.1") == {"@perinatal"} and not chapter_context("E11.9")
    assert "@pregnancy" in context_words(normalise_name("Placental abruption"))
    assert "@perinatal" in context_words(normalise_name("Neonatal jaundice"))
    texts = ["diabetes mellitus", "Type 2 diabetes mellitus"]
    index = MatchIndex(None, None, None, None, texts, ["O24", "E11"], [frozenset()] * 2,
                       [context_words(normalise_name(t)) | chapter_context(c) for t, c in zip(texts, ["O24", "E11"])], [False] * 2)
    ranked = dict(rerank(normalise_name("Diabetes mellitus"), [(0, 1.0), (1, 0.9)], index))
    assert ranked[0] == pytest.approx(CONTEXT_PENALTY) and ranked[1] == pytest.approx(0.9)
    assert dict(rerank(normalise_name("Gestational diabetes mellitus"), [(0, 1.0)], index))[0] == pytest.approx(1.0)
    assert names_other_cause(frozenset({"amebic"}), ["splenic", "abscess", "spleen"])
    assert not names_other_cause(frozenset({"amebic"}), ["amebic", "liver", "abscess"])
    assert not names_other_cause(frozenset({"amebiasis"}), ["amebic", "colitis"])  # same first five letters
    texts = ["Amebic splenic abscess", "Abscess of spleen"]
    normalised = [normalise_name(t) for t in texts]
    index = MatchIndex(None, None, None, None, texts, ["A06.89", "D73.3"], [organs_of(n) for n in normalised], [frozenset()] * 2,
                       [False] * 2, [frozenset({"amebic"}), frozenset()])
    ranked = dict(rerank(normalise_name("Splenic abscess"), [(0, 0.84), (1, 0.77)], index))
    assert ranked[0] == pytest.approx(0.84 * CAUSE_PENALTY) and ranked[1] == pytest.approx(0.77)


def test_accents_and_note_fragments() -> None:
    from raddiag.knowledge.textmatch import is_fragment, normalise_name, note_terms

    assert normalise_name("Charcôt's joint") == normalise_name("Charcot joint")
    assert normalise_name("Sjögren syndrome") == normalise_name("Sjogren syndrome")
    assert note_terms("tuberculous (A17.81)") is None and is_fragment("cerebral") and is_fragment("spine")
    assert not is_fragment("asthma") and not is_fragment("tuberculous arthritis")
    assert note_terms("asthma (J45.-)") == ("asthma", "J45")


def test_bundled_index_is_the_recorded_file_and_reads_its_conventions() -> None:
    """The FY2025 index CSV is the file the provenance note names; its paths, word forms, "see" references
    (to a coded entry, to an entry whose subterms carry the codes, to the Table of Neoplasms) give codes."""
    import gzip
    import hashlib

    from raddiag.knowledge import cm_index

    for path, digest in ((cm_index.INDEX_FILE, "ed46c243bb91ca24"), (cm_index.NEOPLASM_FILE, "3105cf75708d5d3d")):
        assert hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest().startswith(digest), path
    assert cm_index.main_term_wording("Hypoplasia, hypoplastic") == "Hypoplasia"
    assert cm_index.main_term_wording("Abdomen, abdominal") == "Abdomen"
    assert cm_index.main_term_wording("Fracture, traumatic") == "Fracture, traumatic"
    assert cm_index.neoplasm_code("Neoplasm, connective tissue, benign") == "D21.9"
    assert cm_index.neoplasm_code("Neoplasm,  bone, malignant") == "C41.9"
    assert cm_index.neoplasm_code("Neoplasm, malignant, by site") == ""  # left to the tabular and the morphology table
    entries = dict(cm_index.index_entries())
    assert {row["RowID"]: row["Code"] for row in cm_index._rows() if row["RowID"] in ("57407", "37893")} == {
        "57407": "D18.00", "37893": "M97.1--"}  # codes the flattening glued to the term ("angiomatousD18.00")
    assert entries["Pineocytoma"] == "D44.5"  # a main term with its own code
    assert entries["Elastofibroma"] == "D21.9"  # see Neoplasm, connective tissue, benign
    assert entries["Nonrotation - intestine"] == "Q43.3"  # see Malrotation: its subterms under the referring term
    assert entries["Hypoplasia - pulmonary (not associated with short  gestation)"] == "Q33.6"  # first word form
    assert not any(text.startswith("Fracture, traumatic - vertebra - cervical") for text in entries)  # deeper than MAX_DEPTH
    assert all(not code.endswith(("-", ".")) for code in entries.values())


def test_index_codes_are_cut_back_to_the_table_and_index_terms_match() -> None:
    from raddiag.knowledge.textmatch import _known_prefix, match_candidates

    assert _known_prefix("S12.000", {"S12", "S12.0", "S12.00"}) == "S12.00"
    assert _known_prefix("J98.11", {"J98", "J98.1", "J98.11"}) == "J98.11"
    assert _known_prefix("Q99.9", {"Q99"}) == "Q99"
    for name, category in (("Pineocytoma", "D44"), ("Elastofibroma", "D21"), ("Malrotation of the intestine", "Q43")):
        assert match_candidates([name], k=1)[0][0][0][:3] == category, name


def test_round_five_morphologies_with_a_category_of_their_own_and_index_sites() -> None:
    """Morphologies the index codes whatever the site keep their category (Hemangioma D18, Lipoma D17, "Myelolipoma -
    see Lipoma"); lymphoma keeps its C81-C96 range; an index path naming no organ takes its category's site."""
    from raddiag.knowledge.cm_index import own_categories
    from raddiag.knowledge.textmatch import _category_organs, _own_categories, match_candidates, own_category

    assert own_categories(("hemangioma", "lipoma", "myelolipoma", "meningioma", "carcinoma")) == {
        "hemangioma": "D18", "lipoma": "D17", "myelolipoma": "D17"}  # meningioma, carcinoma: see Neoplasm, by site
    assert "lymphoma" not in _own_categories() and _own_categories()["melanoma"] == "C43"
    from raddiag.knowledge.morphology import label_morphology

    words = ["vertebral", "hemangioma"]
    assert own_category(words, label_morphology(words)) == "D18"
    words = ["malignant", "pineocytoma"]  # upgraded by "malignant": the site's malignant category, not D44
    assert own_category(words, label_morphology(words)) is None
    assert _category_organs("C44") == frozenset({"skin"})
    for name, category in (("Vertebral haemangioma", "D18"), ("Splenic haemangioma", "D18"), ("Intracranial lipoma", "D17"),
                           ("Tuberculosis", "A15")):  # a label that is an index main term: its own code, not a note's
        assert match_candidates([name], k=1)[0][0][0][:3] == category, name


def test_round6_infections_are_coded_by_organism() -> None:
    """An infectious-chapter text whose every pathology word the label names is not penalised for naming no
    site (the chapter codes by organism); a label naming an organism word only that chapter uses penalises
    candidates of every other chapter."""
    from raddiag.knowledge.textmatch import CAUSE_PENALTY, SITELESS_PENALTY, MatchIndex, normalise_name, rerank

    texts = ["Disease - hydatid", "Infection - spleen", "Tumor - hydatid"]
    index = MatchIndex(None, None, None, None, texts, ["B67.90", "D73.89", "B67.90"], [frozenset(), frozenset({"spleen"}), frozenset()],
                       [frozenset()] * 3, np.zeros(3, dtype=bool), [frozenset()] * 3)
    ranked = dict(rerank(normalise_name("Splenic hydatid infection"), [(0, 0.6), (1, 0.6)], index))
    assert ranked[0] == pytest.approx(0.6) and ranked[1] == pytest.approx(0.6)
    # "tumor" is not named by the label: an ordinary siteless candidate ("Ampullary tumour" is no hydatid)
    assert dict(rerank(normalise_name("Splenic hydatid cyst"), [(2, 0.6)], index))[2] == pytest.approx(0.6 * SITELESS_PENALTY)
    tb = MatchIndex(None, None, None, None, ["Arthropathy", "Arthritis - tuberculous"], ["M12.9", "A18.02"], [frozenset()] * 2,
                    [frozenset()] * 2, np.zeros(2, dtype=bool), [frozenset(), frozenset({"tuberculous"})], None, frozenset({"tuberculous"}))
    ranked = dict(rerank(normalise_name("Tuberculous arthropathy"), [(0, 0.7), (1, 0.6)], tb))
    assert ranked[0] == pytest.approx(0.7 * CAUSE_PENALTY) and ranked[1] == pytest.approx(0.6)


def test_round6_combining_forms_and_the_table_of_neoplasms() -> None:
    from raddiag.knowledge.cm_index import neoplasm_entries
    from raddiag.knowledge.textmatch import match_candidates, normalise_name

    assert "ovary" not in normalise_name("Benign neoplasm - utero-ovarian").split()  # a junction, not the ovary
    assert normalise_name("Proximal radio-ulnar synostosis") == normalise_name("Proximal radioulnar synostosis")
    assert "sickle cell" in normalise_name("Sickle-cell disease")  # only combining forms (-o-) are joined
    entries = set(neoplasm_entries(1))
    assert {("Malignant neoplasm - lung", "C34.9"), ("Benign neoplasm - ovary", "D27"),
            ("Secondary malignant neoplasm - liver", "C78.7")} <= entries, sorted(e for e in entries if "lung" in e[0])
    expected = {"Squamous cell carcinoma of the lung": "C34", "Squamous cell carcinoma of the cervix": "C53",
                "Hepatic hydatid infection": "B67", "Tuberculous arthropathy": "A18", "Proximal radio-ulnar synostosis": "Q74"}
    got = {name: found[0][0][:3] for name, found in zip(expected, match_candidates(list(expected), k=1))}
    assert got == expected


def test_round6_partial_head_words_sites_and_contexts() -> None:
    """A candidate sharing fewer of the label's head words scores lower by PARTIAL_HEAD_PENALTY to the missed share;
    a two-word site ("basal ganglia") is a site, not a head word; a COVID text is a context the label must name;
    an eponym the index lacks reaches its injury's code."""
    from raddiag.knowledge.textmatch import (
        PARTIAL_HEAD_PENALTY,
        _HeadColumns,
        context_words,
        head_words,
        match_candidates,
        match_index,
        normalise_name,
        organs_of,
        rerank,
    )

    assert head_words(normalise_name("Basal ganglia haemorrhage")) == {"hemorrhage"}
    assert organs_of(normalise_name("Basal ganglia haemorrhage")) == {"brain"}
    assert "covid" in context_words(normalise_name("Suprascapular nerve - post COVID-19"))
    index = match_index()
    heads = _HeadColumns(index)
    name = normalise_name("Middle cerebral artery infarct")
    both = index.texts.index("Cerebral infarction due to thrombosis of middle cerebral artery")
    one = index.texts.index("Middle cerebral artery syndrome")
    ranked = dict(rerank(name, [(both, 0.7), (one, 0.7)], index, heads))
    assert head_words(name) == {"middle", "artery", "infarct"}
    assert ranked[both] == pytest.approx(0.7)  # every head word (infarct ~ infarction)
    assert ranked[one] == pytest.approx(0.7 * PARTIAL_HEAD_PENALTY ** (1 / 3))  # misses "infarct"
    names = ["Jefferson fracture", "Hangman fracture", "Segond fracture", "Suprascapular neuropathy"]
    got = [found[0][0][:3] for found in match_candidates(names, k=1)]
    assert got[:3] == ["S12", "S12", "S82"] and got[3] != "U09", got


def test_round7_chapters_lobes_defaults_and_modifiers() -> None:
    """A newborn's label keeps to chapter P (and counts as naming "congenital"); "upper/middle/lower lobe" is the
    lung; "Unspecified ..." texts get the default bonus and an index main term worded like a tabular text is still
    the main term; a morphology's one-word index subterm changes its behaviour ("atypical meningioma": uncertain)."""
    from raddiag.knowledge.cm_index import modifier_behaviours
    from raddiag.knowledge.morphology import MORPHOLOGY, UNCERTAIN
    from raddiag.knowledge.textmatch import (
        CONTEXT_PENALTY,
        MatchIndex,
        context_words,
        label_chapters,
        label_morphology,
        match_candidates,
        match_index,
        normalise_name,
        organs_of,
        rerank,
    )

    assert organs_of(normalise_name("Left upper lobe collapse")) == {"lung"}
    assert organs_of(normalise_name("Zygomaticomaxillary complex fracture")) == {"jaw"}  # S02.4 malar, maxillary and zygoma
    assert organs_of(normalise_name("Anterior inferior iliac spine avulsion")) == {"ilium", "spine"}
    assert label_chapters(normalise_name("Neonatal pneumothorax").split()) == {"P"}
    assert label_chapters(normalise_name("Pneumothorax").split()) == frozenset()
    assert "congenital" in context_words(normalise_name("Neonatal pneumothorax"))
    texts = ["Pneumothorax, unspecified", "Pneumothorax NOS - congenital"]
    index = MatchIndex(None, None, None, None, texts, ["J93.9", "P25.1"], [frozenset()] * 2,
                       [frozenset(), frozenset({"congenital"})], np.zeros(2, dtype=bool), [frozenset()] * 2)
    ranked = dict(rerank(normalise_name("Neonatal pneumothorax"), [(0, 0.8), (1, 0.7)], index))
    assert ranked[0] == pytest.approx(0.8 * CONTEXT_PENALTY) and ranked[1] == pytest.approx(0.7)
    real = match_index()
    assert real.unspecified[real.texts.index("Unspecified appendicitis")]
    modifiers = modifier_behaviours(tuple(sorted(MORPHOLOGY)))
    assert modifiers[("meningioma", "atypical")] == UNCERTAIN  # "see Neoplasm, meninges, uncertain behavior"
    assert modifiers[("ependymoma", "myxopapillary")] == UNCERTAIN  # through "specified site - see Neoplasm, uncertain behavior, by site"
    assert label_morphology(normalise_name("Atypical meningioma").split()).behaviour == UNCERTAIN
    assert label_morphology(normalise_name("Meningioma").split()).behaviour != UNCERTAIN
    names = {"Appendicitis": "K37", "Neonatal pneumothorax": "P25", "Atypical meningioma": "D42", "Left upper lobe collapse": "J98"}
    got = {name: found[0][0][:3] for name, found in zip(names, match_candidates(list(names), k=1))}
    assert got == names


def test_round7_the_injury_chapter_is_a_context_the_label_must_name() -> None:
    """Every S-chapter text carries the injury context: "Perimesencephalic subarachnoid haemorrhage" is not the
    traumatic S06.6, while a label naming a fracture, tear or trauma keeps its S code."""
    from raddiag.knowledge.textmatch import chapter_context, context_words, match_candidates, normalise_name

    assert chapter_context("S06.6") == {"@injury"} and chapter_context("I60.9") == frozenset()
    assert "@injury" in context_words(normalise_name("Anterior cruciate ligament tear"))
    assert "@injury" not in context_words(normalise_name("Orbital infection"))
    names = {"Perimesencephalic subarachnoid haemorrhage": "I60", "Orbital infection": "H05", "Anterior cruciate ligament tear": "S83",
             "Jefferson fracture": "S12"}
    got = {name: found[0][0][:3] for name, found in zip(names, match_candidates(list(names), k=1))}
    assert got == names


def test_round8_see_targets_resolve_through_word_forms_modifiers_nec_and_by_site() -> None:
    """A "see" target names an entry by its first word form, without its parenthesised modifiers and "NEC", and may
    end in "by site" ("Fracture, insufficiency - see Fracture, pathological, by site"); each resolves to the entry."""
    from raddiag.knowledge.cm_index import _aliases, index_entries

    assert _aliases("Anomaly, anomalous (congenital)") == ["anomaly anomalous (congenital)", "anomaly anomalous", "anomaly"]
    assert _aliases("secondary NEC") == ["secondary nec", "secondary"]
    assert _aliases("Fracture, traumatic") == ["fracture traumatic"]  # two terms, not two word forms
    entries = dict(index_entries())
    assert entries["Preiser's disease"] == "M87.24"  # Osteonecrosis - secondary NEC - due to - trauma - metacarpus
    assert entries["Fracture, insufficiency - femur"] == "M84.45"  # through "by site" to Fracture, pathological - femur


def test_a_see_target_may_name_the_first_of_a_subterms_alternatives() -> None:
    """"Bezold's abscess - see Mastoiditis, acute": the subterm is spelled "acute, subacute" (H70.00-). The first
    part is a fallback only: a subterm spelled exactly as the target still wins."""
    from raddiag.knowledge.cm_index import _resolve, index_entries
    from raddiag.knowledge.labels import match_candidates

    entries = dict(index_entries())
    assert entries["Bezold's abscess"] == "H70.00"
    assert match_candidates(["Bezold abscess"], 1)[0][0][0].startswith("H70")
    main_terms = {"x": 0}
    children = {0: {"acute": 1, "acute subacute": 2}}
    first_parts = {0: {"acute": 2, "chronic": 3}}
    assert _resolve("X, acute", main_terms, children, first_parts) == 1
    assert _resolve("X, chronic", main_terms, children, first_parts) == 3
    assert _resolve("X, chronic", main_terms, children) is None


def test_round8_grammatical_head_non_prefix_and_exact_index_paths() -> None:
    """The pathology word a label is about must be in the candidate ("Middle cerebral artery syndrome" is not an
    infarct); "non-" joins its word as the index spells it; an index path naming the label's words and nothing else
    wins, and one naming all of them overrides the morphology's behaviour ("Fibroma - bone (nonossifying)" M89.8)."""
    from raddiag.knowledge.textmatch import (
        GRAMMAR_HEAD_PENALTY,
        MatchIndex,
        grammatical_head,
        match_candidates,
        normalise_name,
        organs_of,
        rerank,
    )

    assert grammatical_head("Middle cerebral artery (MCA) infarct") == "infarct"
    assert grammatical_head("Fracture of the scaphoid") == "fracture"
    assert grammatical_head("Preiser disease") == "preiser"  # "disease" names no pathology
    assert grammatical_head("Right") is None
    assert "nonossifying" in normalise_name("Non-ossifying fibroma").split()
    assert "nonunion" in normalise_name("Scaphoid non-union").split()
    texts = ["Middle cerebral artery syndrome", "Cerebral infarction due to middle cerebral artery occlusion"]
    index = MatchIndex(None, None, None, None, texts, ["G46.0", "I63.5"], [organs_of(normalise_name(t)) for t in texts],
                       [frozenset()] * 2, np.zeros(2, dtype=bool), [frozenset()] * 2)
    name = "Middle cerebral artery infarct"
    without = dict(rerank(normalise_name(name), [(0, 0.8), (1, 0.7)], index))
    with_head = dict(rerank(normalise_name(name), [(0, 0.8), (1, 0.7)], index, name=name))
    assert with_head[0] == pytest.approx(without[0] * GRAMMAR_HEAD_PENALTY) and with_head[1] == pytest.approx(without[1])
    assert max(without, key=without.get) == 0 and max(with_head, key=with_head.get) == 1  # the infarct wins
    names = {"Non-ossifying fibroma": "M89", "Preiser disease": "M87", "Middle cerebral artery (MCA) infarct": "I63",
             "Omental infarction": "K55", "Insufficiency fracture": "M84", "Pulmonary arteriovenous malformation": "Q25"}
    got = {name: found[0][0][:3] for name, found in zip(names, match_candidates(list(names), k=1))}
    assert got == names


def test_round9_the_index_behaviour_of_a_morphology_and_of_tumor_subterms() -> None:
    """A morphology the index sends to one behaviour column as a whole ("Neurocytoma - see Neoplasm, benign, by
    site") or through a multi-word subterm ("Tumor - yolk sac - see Neoplasm, malignant, by site") takes it."""
    from raddiag.knowledge.cm_index import modifier_behaviours
    from raddiag.knowledge.morphology import BENIGN, MALIGNANT, UNCERTAIN, UNSPECIFIED
    from raddiag.knowledge.textmatch import label_morphology, match_candidates, normalise_name

    modifiers = modifier_behaviours(("neurocytoma", "tumor"))
    assert modifiers[("neurocytoma", "")] == BENIGN and modifiers[("tumor", "yolk sac")] == MALIGNANT
    assert modifiers[("tumor", "leydig cell")] == UNCERTAIN

    def behaviour(name: str) -> str:
        return label_morphology(normalise_name(name, label=True).split()).behaviour

    assert behaviour("Central neurocytoma") == BENIGN and behaviour("Testicular yolk sac tumour") == MALIGNANT
    assert behaviour("Leydig cell tumour of the testis") == UNCERTAIN and behaviour("Bone tumour") == UNSPECIFIED
    names = {"Testicular yolk sac tumour": "C62", "Ovarian yolk sac tumour": "C56", "Central neurocytoma": "D33"}
    assert {name: found[0][0][:3] for name, found in zip(names, match_candidates(list(names), k=1))} == names


def test_round9_prefixes_vessels_extra_organs_and_the_encounter_chapter() -> None:
    """A label's position prefix names the organ or context behind it (an index text keeps its own); a vein is not an
    artery; a by-site neoplasm's candidate naming another organ scores lower; chapter Z is a context the label names."""
    from raddiag.knowledge.textmatch import (
        _stem,
        chapter_context,
        context_words,
        match_candidates,
        normalise_name,
        organs_of,
        vessels_of,
    )

    assert organs_of(normalise_name("Superficial infrapatellar bursitis", label=True)) == {"patella"}
    assert organs_of(normalise_name("Malignant neoplasm - perirectal")) == frozenset()  # an index text: not the rectum
    assert "@pregnancy" in context_words(normalise_name("Retroplacental haemorrhage", label=True))
    assert "@pregnancy" not in context_words(normalise_name("Retroplacental haemorrhage"))
    assert _stem("exostoses") == "exostosis" and _stem("diseases") == "disease"
    assert "congenital" in context_words(normalise_name("Hereditary multiple exostoses", label=True))
    assert vessels_of("Occlusion and stenosis of cerebral arteries") == {"artery"} and vessels_of("Cortical vein thrombosis") == {"vein"}
    assert vessels_of("Arteriovenous malformation") == frozenset()
    assert chapter_context("Z36.4") == {"@encounter"} and "@encounter" in context_words(normalise_name("History of stroke"))
    names = {"Deep cerebral vein thrombosis": ("I67", "G08"), "Orbital meningioma": ("D31", "D32"), "Pulmonary laceration": ("S27",),
             "Superficial infrapatellar bursitis": ("M70",), "Breast implant rupture": ("T85",),
             "External auditory canal exostoses": ("H61",),
             "Adenocarcinoma of the cervix": ("C53",)}  # not "Adenocarcinoma - cervix, in situ": the label names no in situ
    got = {name: found[0][0][:3] for name, found in zip(names, match_candidates(list(names), k=1))}
    assert all(got[name] in allowed for name, allowed in names.items()), got
