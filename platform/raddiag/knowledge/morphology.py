"""Tumour morphology -> ICD-O behaviour and default site, and the behaviour of ICD-10-CM neoplasm codes (#16, round 3).

The ICD-10-CM index sends a morphology term to the Neoplasm table: "Pineocytoma - see Neoplasm, uncertain behavior,
by site; unspecified site D44.5". The tabular list only has the by-site half ("Neoplasm of uncertain behavior of pineal
gland"), so a label needs its morphology's *behaviour* (ICD-O's fifth digit: /0 benign, /1 uncertain, /2 in situ, /3
malignant, /6 secondary) and, when it names no site, the morphology's default site (ICD-O's topography for site-specific
morphologies: retinoblastoma -> retina, nephroblastoma -> kidney).

How the table was chosen (not from any evaluation list): every word ending in "-oma" in the 5,569 RP3D vocabulary names
(153 words), each given its ICD-O-3 behaviour and, where ICD-O ties the morphology to one site, that site, written from
memory; words that are not neoplasms (haematoma, granuloma ...) or whose behaviour or index path depends on a qualifier the
word does not carry (hamartoma, neuroma: Morton's neuroma is a nerve lesion ...) are listed in ``NOT_DECIDED`` and decide
nothing (tests/test_icd_matching.py checks that every such word is in one of the two). Added to these: the non-"-oma"
morphology words the matcher already knew (carcinoma, cancer, metastasis ...), leukaemia, and tumour eponyms with a
morphology of their own (Krukenberg, linitis plastica, Wilms, Brenner, Warthin, Ewing).
A compound word takes its longest listed suffix (xanthoastrocytoma -> astrocytoma, ganglioneuroblastoma -> neuroblastoma).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

BENIGN, UNCERTAIN, IN_SITU, MALIGNANT, SECONDARY, UNSPECIFIED = "benign", "uncertain", "in situ", "malignant", "secondary", "unspecified"
WORDING = {  # the tabular's wording of each behaviour (added to a label's normalised text)
    BENIGN: ("benign", "neoplasm"), UNCERTAIN: ("neoplasm", "uncertain", "behavior"), IN_SITU: ("neoplasm",),
    MALIGNANT: ("malignant", "neoplasm"), SECONDARY: ("secondary", "malignant", "neoplasm"), UNSPECIFIED: ("neoplasm",),
}


@dataclass(frozen=True)
class Morphology:
    """``behaviour`` of the morphology; ``site``: the organ word of its default site (or ""); ``by_site``: False where
    ICD-10-CM codes the morphology whatever the site (lymphoma, myeloma, leukaemia: C81-C96)."""

    behaviour: str
    site: str = ""
    by_site: bool = True


def _m(behaviour: str, site: str = "", by_site: bool = True) -> Morphology:
    return Morphology(behaviour, site, by_site)


B, U, M = BENIGN, UNCERTAIN, MALIGNANT
MORPHOLOGY: dict[str, Morphology] = {  # keys in the matcher's normalised spelling (American, singular)
    # malignant (/3)
    "carcinoma": _m(M), "cancer": _m(M), "malignancy": _m(M), "sarcoma": _m(M), "blastoma": _m(M), "carcinosarcoma": _m(M),
    "glioma": _m(M, "brain"), "glioblastoma": _m(M, "brain"), "astrocytoma": _m(M, "brain"), "oligodendroglioma": _m(M, "brain"),
    "ependymoma": _m(M, "brain"), "gliosarcoma": _m(M, "brain"), "medulloblastoma": _m(M, "cerebellum"),
    "pineoblastoma": _m(M, "pineal"), "retinoblastoma": _m(M, "retina"), "neuroblastoma": _m(M, "adrenal"),
    "esthesioneuroblastoma": _m(M, "nose"), "nephroblastoma": _m(M, "kidney"), "hepatoblastoma": _m(M, "liver"),
    "cholangiocarcinoma": _m(M, "bile"), "cholangiohepatoma": _m(M, "liver"), "cystadenocarcinoma": _m(M, "ovary"),
    "osteosarcoma": _m(M, "bone"), "chondrosarcoma": _m(M, "bone"), "adamantinoma": _m(M, "bone"), "chordoma": _m(M),
    "melanoma": _m(M, "skin"), "dermatofibrosarcoma": _m(M, "skin"), "mesothelioma": _m(M), "seminoma": _m(M, "testis"),
    "dysgerminoma": _m(M, "ovary"), "germinoma": _m(M), "choriocarcinoma": _m(M, "placenta"),
    "lymphoma": _m(M, by_site=False), "myeloma": _m(M, by_site=False), "plasmacytoma": _m(M, by_site=False),
    "chloroma": _m(M, by_site=False), "leukemia": _m(M, by_site=False),
    "linitis": _m(M, "stomach"), "wilms": _m(M, "kidney"), "wilm": _m(M, "kidney"), "ewing": _m(M, "bone"),
    # secondary (/6)
    "metastasis": _m(SECONDARY), "carcinomatosis": _m(SECONDARY), "krukenberg": _m(SECONDARY, "ovary"),
    # uncertain (/1)
    "teratoma": _m(U), "paraganglioma": _m(U), "ganglioglioma": _m(U, "brain"), "subependymoma": _m(U, "brain"),
    "neurocytoma": _m(U, "brain"), "pineocytoma": _m(U, "pineal"), "pituicytoma": _m(U, "pituitary"),
    "hemangioblastoma": _m(U), "hemangiopericytoma": _m(U), "hemangioendothelioma": _m(U), "melanocytoma": _m(U),
    "craniopharyngioma": _m(U),
    # benign (/0)
    "adenoma": _m(B), "macroadenoma": _m(B, "pituitary"), "microadenoma": _m(B, "pituitary"), "cystadenoma": _m(B),
    "fibroadenoma": _m(B, "breast"), "adenofibroma": _m(B), "cystadenofibroma": _m(B), "adenomyoma": _m(B), "papilloma": _m(B),
    "oncocytoma": _m(B), "insulinoma": _m(B, "pancreas"), "pheochromocytoma": _m(B, "adrenal"), "dermoid": _m(B),
    "meningioma": _m(B, "meninges"), "schwannoma": _m(B), "neurilemmoma": _m(B), "neurofibroma": _m(B),
    "ganglioneuroma": _m(B), "gangliocytoma": _m(B, "brain"),
    "lipoma": _m(B), "angiolipoma": _m(B), "angiomyolipoma": _m(B), "myelolipoma": _m(B), "myolipoma": _m(B),
    "osteolipoma": _m(B), "thymolipoma": _m(B, "thymus"), "lipoblastoma": _m(B), "hibernoma": _m(B),
    "leiomyoma": _m(B), "lipoleiomyoma": _m(B), "leiomyolipoma": _m(B), "angioleiomyoma": _m(B), "rhabdomyoma": _m(B),
    "fibroma": _m(B), "myofibroma": _m(B), "elastofibroma": _m(B), "fibroelastoma": _m(B), "angiofibroma": _m(B),
    "fibromyxoma": _m(B), "myxoma": _m(B), "thecoma": _m(B, "ovary"), "fibrothecoma": _m(B, "ovary"), "brenner": _m(B, "ovary"),
    "warthin": _m(B, "salivary"),
    "angioma": _m(B), "hemangioma": _m(B), "glomangioma": _m(B), "lymphangioma": _m(B), "cavernoma": _m(B),
    "osteoma": _m(B, "bone"), "osteochondroma": _m(B, "bone"), "chondroma": _m(B, "bone"), "enchondroma": _m(B, "bone"),
    "osteoblastoma": _m(B, "bone"), "chondroblastoma": _m(B, "bone"), "cementoblastoma": _m(B, "jaw"),
    "ameloblastoma": _m(B, "jaw"), "odontoma": _m(B, "jaw"), "pilomatricoma": _m(B, "skin"), "trichilemmoma": _m(B, "skin"),
    "pneumocytoma": _m(B, "lung"), "nephroma": _m(B, "kidney"),
}
NOT_DECIDED = frozenset(  # "-oma" words of the vocabulary that are no neoplasm, or whose behaviour/index path the word does not fix
    "hematoma cephalohematoma granuloma xanthogranuloma tuberculoma cryptococcoma aspergilloma mycetoma rhinoscleroma "
    "cholesteatoma endometrioma urinoma biloma seroma fecaloma gossypiboma coloboma xanthoma pseudolipoma amyloidoma "
    "hygroma hamartoma neuroma histiocytoma fibroxanthoma angiomyxoma pecoma gastrinoma vipoma parachordoma "
    "ganglioneurocytoma chorioangioma pseudomyxoma liponeurocytoma".split())
_BENIGN_TERATOMA = frozenset({"mature", "cystic", "adult", "benign", "dermoid"})  # Index "Teratoma - adult (cystic), mature - see benign"


@functools.lru_cache(maxsize=65536)
def morphology_of(word: str) -> Morphology | None:
    """The morphology a normalised word names: itself, else its longest listed suffix of 5+ letters
    (xanthoastrocytoma -> astrocytoma); None for any other word and for the words of ``NOT_DECIDED``."""
    if word in MORPHOLOGY:
        return MORPHOLOGY[word]
    if word in NOT_DECIDED:
        return None
    return next((MORPHOLOGY[word[i:]] for i in range(1, len(word) - 4) if word[i:] in MORPHOLOGY), None)


def label_morphology(words: list[str]) -> Morphology | None:
    """The neoplasm a normalised label names: a secondary word (metastasis) wins over any morphology
    ("Metastatic adenocarcinoma"), "in situ" gives in situ, "malignant" makes a benign or uncertain morphology
    malignant (Index "Meningioma, malignant - see Neoplasm, malignant"), a mature/cystic teratoma is benign; a label
    saying only "tumor"/"neoplasm" has unspecified behaviour unless it says benign or malignant. None for no neoplasm."""
    found = [m for m in (morphology_of(w) for w in words) if m is not None]
    present = set(words)
    if any(m.behaviour == SECONDARY for m in found):
        return next(m for m in found if m.behaviour == SECONDARY)
    if found:
        first = found[0]
        if "situ" in present and first.behaviour == MALIGNANT:
            return Morphology(IN_SITU, first.site, first.by_site)
        if "malignant" in present and first.behaviour in (BENIGN, UNCERTAIN):
            return Morphology(MALIGNANT, first.site, first.by_site)
        if first.behaviour == UNCERTAIN and "teratoma" in present and present & _BENIGN_TERATOMA:
            return Morphology(BENIGN)
        return first
    if present & {"tumor", "neoplasm"}:
        return Morphology(MALIGNANT if "malignant" in present else BENIGN if "benign" in present else UNSPECIFIED)
    return None


@functools.lru_cache(maxsize=131072)
def code_behaviour(code: str) -> str | None:
    """The behaviour of an ICD-10-CM code's category: C00-C76, C4A, C7A, C80-C96 malignant (primary); C77-C79, C7B
    secondary; D00-D09 in situ; D10-D36, D3A benign; D37-D48 uncertain; D49 unspecified; None outside C00-D49."""
    category = code.replace(".", "")[:3].upper()
    if category in ("C7B",) or "C77" <= category <= "C79":
        return SECONDARY
    if category[0] == "C":  # C4A (Merkel cell), C7A (neuroendocrine) included
        return MALIGNANT
    if category == "D3A":
        return BENIGN
    if category[0] != "D" or not category[1:].isdigit():
        return None
    number = int(category[1:])
    return IN_SITU if number <= 9 else BENIGN if number <= 36 else UNCERTAIN if number <= 48 else UNSPECIFIED if number == 49 else None


def behaviour_agrees(label: Morphology, code: str) -> bool:
    """True when the candidate ``code`` has the label's behaviour (lymphoma, myeloma, leukaemia: lies in C81-C96).
    A label of unspecified behaviour ("tumour" alone, also used for non-neoplasms: brown tumour) agrees with every
    code; otherwise a code outside C00-D49 disagrees."""
    if label.behaviour == UNSPECIFIED:
        return True
    if not label.by_site:  # Index "Lymphoma (...) C85.9-": C81-C96 whatever the site, never the site's own category
        return "C81" <= code.replace(".", "")[:3].upper() <= "C96"
    return code_behaviour(code) == label.behaviour
