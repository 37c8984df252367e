"""Label name -> ICD-10-CM text matching (the fallback when the data carries no code).

Radiology names ("Renal cell carcinoma", "Subdural haemorrhage", "Pancoast tumour") and the
ICD-10-CM tabular list ("Malignant neoplasm of kidney, except renal pelvis", "Nontraumatic subdural
hemorrhage") rarely share their wording. Both sides are normalised the same way before TF-IDF:

* British -> American spelling (haem -> hem, oedema -> edema, tumour -> tumor, -ise -> -ize ...),
  possessives, hyphens, plurals, and words that carry no meaning for matching (NOS, overview ...);
* organ adjectives gain their organ noun (renal -> kidney, hepatic -> liver, pulmonary -> lung), so
  "renal" finds "kidney"; morphology words gain the index's neoplasm wording (carcinoma ->
  "malignant neoplasm", metastases -> "secondary malignant neoplasm", adenoma -> "benign neoplasm"),
  as the ICD-10-CM index sends them to the Neoplasm table;
* ICD texts: descriptions, inclusion terms, "includes" notes, every note that names a code
  ("amyotrophic lateral sclerosis (G12.21)"), each also without its parenthesised nonessential
  modifiers, and the index terms of :mod:`raddiag.knowledge.index_terms` that the tabular lacks.

The score is the mean of the character 3-5-gram and the word TF-IDF cosines (as before); the best
candidates are then re-ranked: a candidate naming a different organ than the label ("Liver cell
carcinoma" for "Renal cell carcinoma") is penalised, and so is one restricted to a context the label
does not name (congenital, newborn, pregnancy, poisoning, sequelae, in situ, malignant ...); one
naming no organ when the label names one ("Cancer NOS" for "Prostate cancer") a little. Names are matched in
batches, so memory stays flat for any vocabulary size.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np

from raddiag.knowledge.icd import code_length, load_icd
from raddiag.knowledge.index_terms import INDEX_TERMS

ANATOMY_PENALTY = 0.6  # score factor when the candidate names only organs the label does not
SITELESS_PENALTY = 0.75  # score factor when the label names an organ and the candidate none ("Cancer NOS" for "Prostate cancer")
CONTEXT_PENALTY = 0.8  # score factor per context word (congenital, newborn ...) the label does not name
UNSPECIFIED_BONUS = 0.02  # the index's default ("unspecified", "NOS") wins a near tie
SHORTLIST = 40  # candidates re-ranked per name
BATCH = 512  # names per sparse product

_SPELLING = (  # British -> American, applied to lower-case text, longest patterns first
    ("oesophag", "esophag"), ("oedem", "edem"), ("oestr", "estr"), ("haem", "hem"), ("aemia", "emia"),
    ("aemic", "emic"), ("paed", "ped"), ("caec", "cec"), ("faec", "fec"), ("gynaec", "gynec"), ("foet", "fet"),
    ("rrhoea", "rrhea"), ("coeli", "celi"), ("phaeo", "pheo"), ("tumour", "tumor"), ("ischaem", "ischem"),
    ("leukaem", "leukem"), ("anaem", "anem"), ("sulph", "sulf"), ("behaviour", "behavior"), ("fibre", "fiber"),
    ("centre", "center"), ("orthopaed", "orthoped"), ("dyspnoea", "dyspnea"), ("ureteric", "ureteral"),
    ("sialadenitis", "sialoadenitis"), ("aesthe", "esthe"),
)
_IZE = re.compile(r"\b(\w{3,})is(e|ed|es|ing|ation|ations)\b")  # generalised -> generalized (not "disease")
_IZE_KEEP = {"disease", "diseases", "diseased", "praise", "raise", "raised", "noise", "poise", "exercise", "promise", "paradise",
             "otherwise", "precise", "concise", "arise", "arising", "wise", "demise", "franchise", "expertise", "premise", "excise",
             "excised", "incise", "incised", "circumcise", "circumcised", "bruise", "bruised", "bruises", "bruising", "chemise", "crise",
             "rise", "cerise", "treatise", "revise", "compromise", "compromised", "supervise", "advise", "devise", "surprise", "enterprise"}
_DROP = {"nos", "overview", "summary", "staging", "grading", "classification", "differential", "nomenclature", "manifestation",
         "the", "of", "and", "with", "without", "in", "a", "an", "or", "to", "by", "other", "unspecified", "site", "sites", "type", "disorder"}
_PLURAL_KEEP = ("ss", "us", "is", "ous", "ics", "ies", "sis", "itis", "osis", "axis", "pubis", "iris", "pelvis", "testis", "thorax")
_IRREGULAR = {"metastases": "metastasis", "metastasis": "metastasis", "metastatic": "metastasis", "calculi": "calculus", "diverticula":
              "diverticulum", "vertebrae": "vertebra", "bullae": "bulla", "fistulae": "fistula", "testes": "testis", "ovaries": "ovary",
              "arteries": "artery", "bodies": "body", "cavities": "cavity", "anomalies": "anomaly", "injuries": "injury", "lungs": "lung",
              "kidneys": "kidney", "labral": "labrum", "leukodystrophies": "leukodystrophy", "glands": "gland", "lesions": "lesion", "tumors": "tumor"}
ORGAN_WORDS = {  # adjective or noun -> organ (the noun ICD-10-CM uses); an organ names itself too
    "renal": "kidney", "nephric": "kidney", "kidney": "kidney", "hepatic": "liver", "hepatocellular": "liver", "liver": "liver",
    "pulmonary": "lung", "lung": "lung", "bronchial": "bronchus", "bronchus": "bronchus", "cerebral": "brain", "intracerebral": "brain",
    "brain": "brain", "cerebellar": "cerebellum", "cerebellum": "cerebellum", "gastric": "stomach", "stomach": "stomach",
    "esophageal": "esophagus", "esophagus": "esophagus", "colonic": "colon", "colon": "colon", "colorectal": "colon", "rectal": "rectum",
    "rectum": "rectum", "osseous": "bone", "bone": "bone", "splenic": "spleen", "spleen": "spleen", "pancreatic": "pancreas",
    "pancreas": "pancreas", "uterine": "uterus", "uterus": "uterus", "ovarian": "ovary", "ovary": "ovary", "testicular": "testis",
    "testis": "testis", "testicle": "testis", "acetabular": "hip", "acetabulum": "hip", "hip": "hip", "vesical": "bladder",
    "bladder": "bladder", "prostatic": "prostate", "prostate": "prostate", "cardiac": "heart", "heart": "heart", "myocardial": "heart",
    "adrenal": "adrenal", "biliary": "bile", "bile": "bile", "gallbladder": "gallbladder", "duodenal": "duodenum",
    "duodenum": "duodenum", "ileal": "ileum", "ileum": "ileum", "jejunal": "jejunum", "jejunum": "jejunum", "cecal": "cecum",
    "cecum": "cecum", "appendiceal": "appendix", "appendix": "appendix", "humeral": "humerus", "humerus": "humerus", "femoral": "femur",
    "femur": "femur", "tibial": "tibia", "tibia": "tibia", "fibular": "fibula", "fibula": "fibula", "meniscal": "meniscus",
    "meniscus": "meniscus", "patellar": "patella", "patella": "patella", "knee": "knee", "shoulder": "shoulder", "glenoid": "shoulder",
    "vertebral": "vertebra", "vertebra": "vertebra", "orbital": "orbit", "orbit": "orbit", "ocular": "eye", "eye": "eye",
    "retinal": "retina", "retina": "retina", "thyroid": "thyroid", "mammary": "breast", "breast": "breast", "pleural": "pleura",
    "pleura": "pleura", "pericardial": "pericardium", "pericardium": "pericardium", "peritoneal": "peritoneum",
    "peritoneum": "peritoneum", "aortic": "aorta", "aorta": "aorta", "mesenteric": "mesentery", "mesentery": "mesentery",
    "ureteral": "ureter", "ureter": "ureter", "urethral": "urethra", "urethra": "urethra", "nasal": "nose", "nose": "nose",
    "laryngeal": "larynx", "larynx": "larynx", "pharyngeal": "pharynx", "pharynx": "pharynx", "tracheal": "trachea",
    "trachea": "trachea", "cutaneous": "skin", "skin": "skin", "perineal": "perineum", "perineum": "perineum", "scapular": "scapula",
    "scapula": "scapula", "clavicular": "clavicle", "clavicle": "clavicle", "calcaneal": "calcaneus", "calcaneus": "calcaneus",
    "sacral": "sacrum", "sacrum": "sacrum", "intestinal": "intestine", "intestine": "intestine", "bowel": "intestine",
    "salivary": "salivary", "parotid": "salivary", "pituitary": "pituitary", "spleno": "spleen", "vaginal": "vagina", "vagina": "vagina",
    "vulvar": "vulva", "vulva": "vulva", "penile": "penis", "penis": "penis", "scrotal": "scrotum", "scrotum": "scrotum",
    "lip": "lip", "tongue": "tongue", "jaw": "jaw", "mandibular": "jaw", "mandible": "jaw", "maxillary": "jaw", "ear": "ear",
    "otic": "ear", "tonsillar": "tonsil", "tonsil": "tonsil", "thymic": "thymus", "thymus": "thymus", "wrist": "wrist", "ankle": "ankle",
    "elbow": "elbow", "foot": "foot", "hand": "hand", "finger": "finger", "toe": "toe", "radial": "radius", "radius": "radius",
    "ulnar": "ulna", "ulna": "ulna", "skull": "skull", "spinal": "spine", "spine": "spine",
}
_REGION = {  # organs that count as agreeing with each other (one region)
    "intestine": "bowel", "colon": "bowel", "rectum": "bowel", "cecum": "bowel", "ileum": "bowel", "jejunum": "bowel",
    "duodenum": "bowel", "appendix": "bowel", "lung": "lung", "bronchus": "lung", "trachea": "lung", "pleura": "lung",
    "knee": "knee", "meniscus": "knee", "patella": "knee", "tibia": "knee", "fibula": "knee", "hip": "hip", "femur": "hip",
    "shoulder": "shoulder", "humerus": "shoulder", "scapula": "shoulder", "clavicle": "shoulder", "brain": "brain",
    "cerebellum": "brain", "spine": "spine", "vertebra": "spine", "sacrum": "spine", "bile": "bile", "gallbladder": "bile",
    "eye": "eye", "retina": "eye", "orbit": "eye", "jaw": "jaw", "lip": "mouth", "tongue": "mouth", "wrist": "hand", "hand": "hand",
    "finger": "hand", "radius": "forearm", "ulna": "forearm", "elbow": "forearm", "ankle": "foot", "foot": "foot", "toe": "foot",
    "calcaneus": "foot", "heart": "heart", "pericardium": "heart",
}
_MALIGNANT = {"carcinoma", "cancer", "adenocarcinoma", "sarcoma", "malignancy", "carcinomatosis", "cystadenocarcinoma"}
_SECONDARY = {"metastasis"}  # ("secondary" alone is not: secondary syphilis, secondary hypertension)
_BENIGN = {"adenoma", "cystadenoma", "macroadenoma", "microadenoma"}
_SEE_ALSO = {"tear": "sprain"}  # Index "Tear, ligament - see Sprain"
_CONTEXT = ("malignant", "neoplasm", "situ", "congenital", "newborn", "neonatal", "perinatal", "fetus", "fetal", "pregnancy", "puerperium", "puerperal", "childbirth",
            "abortion", "obstetric", "labor", "delivery", "history", "sequela", "sequelae", "screening", "poisoning", "toxic",
            "adverse", "underdosing", "postprocedural", "intraoperative", "birth", "family", "personal", "encounter", "complication")
_CODE_NOTE = re.compile(r"^(?P<term>[^()]*(?:\([^()]*\)[^()]*)*?)\s*\((?P<code>[A-Z][0-9][0-9A-Z](?:\.[0-9A-Z]{1,4})?)[-.]*(?:[,;\s][^()]*)?\)\s*$")
_PARENS = re.compile(r"\s*[\(\[][^()\[\]]*[\)\]]")
_TOKEN = re.compile(r"[a-z0-9]+")


def _stem(word: str) -> str:
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith("s") and not word.endswith(_PLURAL_KEEP):
        return word[:-1]
    return word


def normalise_name(text: str) -> str:
    """Lower case, American spelling, no possessives/hyphens/punctuation, singular words, the
    words that never help matching dropped; organ nouns and the index's neoplasm wording added."""
    text = text.lower().replace("'s", "").replace("’s", "").replace("ö", "o").replace("ü", "u").replace("é", "e").replace("è", "e")
    for old, new in _SPELLING:
        text = text.replace(old, new)
    text = _IZE.sub(lambda m: m.group(0) if m.group(0) in _IZE_KEEP else f"{m.group(1)}iz{m.group(2)}", text)
    words = [_stem(w) for w in _TOKEN.findall(text)]
    words = [w for w in words if w not in _DROP]
    extra = []
    organs = {ORGAN_WORDS[w] for w in words if w in ORGAN_WORDS}
    extra.extend(sorted(o for o in organs if o not in words))
    extra.extend(_SEE_ALSO[w] for w in words if w in _SEE_ALSO)
    present = set(words)
    if present & _SECONDARY:
        extra += ["secondary", "malignant", "neoplasm"]
    elif present & _MALIGNANT or any(w.endswith(("carcinoma", "sarcoma")) for w in words):
        extra += ["malignant", "neoplasm"]
    elif present & _BENIGN:
        extra += ["benign", "neoplasm"]
    return " ".join(words + [w for w in extra if w not in present])


def organs_of(normalised: str) -> frozenset[str]:
    """The organs a normalised text names."""
    return frozenset(ORGAN_WORDS[w] for w in normalised.split() if w in ORGAN_WORDS)


def anatomy_disagrees(name_organs: frozenset[str], text_organs: frozenset[str]) -> bool:
    """True when both name organs and they share neither an organ nor a region ("kidney" vs "liver")."""
    if not name_organs or not text_organs or name_organs & text_organs:
        return False
    return not ({_REGION.get(o, o) for o in name_organs} & {_REGION.get(o, o) for o in text_organs})


_IMPLIES = {"developmental": "congenital"}  # a label word that names a context in other words


def context_words(normalised: str) -> frozenset[str]:
    words = normalised.split()
    return frozenset(w for w in words if w in _CONTEXT) | {_IMPLIES[w] for w in words if w in _IMPLIES}


def note_terms(note: str) -> tuple[str, str] | None:
    """``"amyotrophic lateral sclerosis (G12.21)"`` -> ``("amyotrophic lateral sclerosis", "G12.21")``;
    None when the note names no single code (ranges, blocks, plain text)."""
    found = _CODE_NOTE.match(note.strip())
    if not found or not found.group("term").strip():
        return None
    return found.group("term").strip(" ,;:"), found.group("code")


@dataclass(frozen=True)
class MatchIndex:
    chars: object
    char_rows: object
    words: object
    word_rows: object
    texts: list[str]  # the original wording shown to reviewers
    codes: list[str]
    organs: list[frozenset[str]]
    context: list[frozenset[str]]
    unspecified: np.ndarray  # bool per text


def _icd_texts() -> tuple[list[str], list[str]]:
    """(text, code) pairs: descriptions, inclusion terms, includes notes and code-naming notes of
    every category/subcategory up to 5 characters (laterality variants left out: they add no wording),
    plus the supplementary index terms. External causes (V00-Y99) are not disorders and are left out."""
    import simple_icd_10_cm as cm

    lateral = re.compile(r"\b(right|left|bilateral)\b", re.I)
    valid = set()
    pairs: list[tuple[str, str]] = []
    for entry in load_icd():
        if entry.kind not in ("category", "subcategory") or entry.code[0] in "VWXY":
            continue
        valid.add(entry.code)
        if code_length(entry.code) > 5 or (code_length(entry.code) == 5 and lateral.search(entry.description)):
            continue
        pairs.append((entry.description, entry.code))
        pairs.extend((text, entry.code) for text in entry.synonyms)
        pairs.extend((text, entry.code) for text in cm.get_includes(entry.code))
        for note in (*entry.excludes, *cm.get_includes(entry.code), *entry.synonyms):
            named = note_terms(note)
            if named:
                pairs.append(named)
    pairs.extend((term, code) for term, code in INDEX_TERMS)
    out_texts, out_codes, seen = [], [], set()
    for text, code in pairs:
        if code not in valid or code[0] in "VWXY":
            continue
        for variant in (text, _PARENS.sub("", text)):
            key = (variant.lower(), code)
            if variant.strip() and key not in seen:
                seen.add(key)
                out_texts.append(variant.strip())
                out_codes.append(code)
    return out_texts, out_codes


@functools.lru_cache(maxsize=1)
def match_index() -> MatchIndex:
    """The fitted TF-IDF index over every normalised ICD-10-CM text (a few seconds, once per process)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts, codes = _icd_texts()
    normalised = [normalise_name(t) for t in texts]
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True, dtype=np.float32)
    words = TfidfVectorizer(analyzer="word", token_pattern=r"(?u)\b\w+\b", sublinear_tf=True, dtype=np.float32)
    unspecified = np.array([bool(re.search(r"\b(unspecified|NOS)\b", t)) for t in texts])
    return MatchIndex(chars, chars.fit_transform(normalised), words, words.fit_transform(normalised), texts, codes,
                      [organs_of(n) for n in normalised], [context_words(n) for n in normalised], unspecified)


def rerank(name_norm: str, candidates: list[tuple[int, float]], index: MatchIndex) -> list[tuple[int, float]]:
    """Apply the anatomy and context penalties (and the default-code bonus) to ``(text, score)`` pairs; best first."""
    name_organs, name_context = organs_of(name_norm), context_words(name_norm)
    out = []
    for position, score in candidates:
        if anatomy_disagrees(name_organs, index.organs[position]):
            score *= ANATOMY_PENALTY
        elif name_organs and not index.organs[position]:
            score *= SITELESS_PENALTY
        score *= CONTEXT_PENALTY ** len(index.context[position] - name_context)
        if index.unspecified[position]:
            score += UNSPECIFIED_BONUS
        out.append((position, score))
    return sorted(out, key=lambda item: (-item[1], item[0]))  # the bonus may lift a score past 1: callers clip


def match_candidates(names: list[str], k: int = 3) -> list[list[tuple[str, str, float]]]:
    """Up to ``k`` best ``(code, matched text, score)`` per name, one per ICD-10-CM category, best first."""
    index = match_index()
    out: list[list[tuple[str, str, float]]] = []
    for start in range(0, len(names), BATCH):
        batch = [normalise_name(n) for n in names[start:start + BATCH]]
        scores = ((index.chars.transform(batch) @ index.char_rows.T + index.words.transform(batch) @ index.word_rows.T) * 0.5).tocsr()
        for row, name_norm in enumerate(batch):
            begin, end = scores.indptr[row], scores.indptr[row + 1]
            data, cols = scores.data[begin:end], scores.indices[begin:end]
            if len(data) > SHORTLIST:
                keep = np.argpartition(-data, SHORTLIST)[:SHORTLIST]
                data, cols = data[keep], cols[keep]
            picked, seen = [], set()
            for position, score in rerank(name_norm, list(zip(cols.tolist(), data.tolist())), index):
                category = index.codes[position][:3]
                if category in seen:
                    continue
                seen.add(category)
                picked.append((index.codes[position], index.texts[position], min(float(score), 1.0)))
                if len(picked) == k:
                    break
            out.append(picked)
    return out
