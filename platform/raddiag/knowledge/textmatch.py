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

The score is the mean of the character 3-5-gram and the word TF-IDF cosines (as before; one product over
the stacked features); the best candidates are then re-ranked: a candidate naming a different organ than
the label ("Liver cell carcinoma" for "Renal cell carcinoma") is penalised, and so is one restricted to a
context the label does not name (congenital, newborn, pregnancy, poisoning, sequelae, in situ, malignant ...);
one naming no organ when the label names one ("Cancer NOS" for "Prostate cancer") a little; one sharing no
pathology ("head") word with the label, only its site or modifiers ("Crohn's disease of large bowel" for
"Large bowel obstruction", "Calcaneal spur" for "Calcaneal fracture"). Names are matched in batches, so
memory stays flat for any vocabulary size.

Round 2 of #16 added: the organ table built from the anatomy words of the neoplasm categories (every site
word is an organ word or listed in ``_NOT_ORGAN``; ambiguous words such as "cervical" decide nothing), small
and large bowel as separate regions, "large intestine"/"large bowel" -> colon, the head-word penalty, the
index's neoplasm wording for tumour/teratoma/dermoid, a variant of each "X without Y" text as "X" (the index
default), and index cross-references in :mod:`raddiag.knowledge.index_terms`.

Round 3 of #16 added: tumour morphology (:mod:`raddiag.knowledge.morphology`: ICD-O behaviour and default site of every
"-oma" word of the RP3D vocabulary, plus eponyms) gives a label the tabular's neoplasm wording and, when it names no
site, the morphology's site; a candidate whose code has another behaviour (C00-C76 primary, C77-C79 secondary, D00-D09
in situ, D10-D36 benign, D37-D48 uncertain, or no neoplasm at all) is penalised, so metastases go to C77-C79 and an
organ-named carcinoma to its primary category; lymphoma, myeloma and leukaemia go to C81-C96 whatever the site. A text
naming a whole organ ("bone") agrees with a label naming its part ("vertebra"). Every text of the pregnancy (O) and
perinatal (P) chapters carries that context, whatever its wording; an infectious-chapter text naming an organism the
label does not name ("Amebic splenic abscess") is penalised. Accents are stripped (Charcôt) and one-word note fragments
("tuberculous (A17.81)") are not texts.

Rounds 4-5: the paths of the real ICD-10-CM index (:mod:`raddiag.knowledge.cm_index`) are texts too; an index path naming
no organ takes its category's site; a morphology the index codes whatever the site keeps its category (hemangioma D18);
a label that is an index main term takes that term's own code.

Rounds 6-7: infections are coded by organism (an A/B text the label names every pathology word of is not penalised for
naming no site; a label naming an organism word only A/B uses penalises other chapters); the Table of Neoplasms' sites
are texts per behaviour column, and a by-site neoplasm naming another organ is penalised harder; combining-form hyphens
are joined ("utero-ovarian" is no ovary); trauma eponyms the index lacks (:mod:`raddiag.knowledge.eponyms`); a partial
head-word penalty; COVID as a context, and the injury chapter (S) as one the label must name (a fracture, tear,
trauma ...); brain parts, "basal ganglia" and the lung lobes as sites; a label naming a newborn
or a pregnancy keeps to chapter P or O; "Unspecified ..." texts get the default bonus; a morphology's one-word index
subterm sets its behaviour ("Meningioma - atypical": uncertain).
"""

from __future__ import annotations

import bisect
import functools
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from raddiag.knowledge.cm_index import index_entries, modifier_behaviours, neoplasm_entries, own_categories
from raddiag.knowledge.eponyms import EPONYMS
from raddiag.knowledge.icd import code_length, description, load_icd
from raddiag.knowledge.index_terms import INDEX_TERMS
from raddiag.knowledge.morphology import MORPHOLOGY, UNSPECIFIED, WORDING, Morphology, behaviour_agrees, morphology_of
from raddiag.knowledge.morphology import label_morphology as _morphology_alone

ANATOMY_PENALTY = 0.6  # score factor when the candidate names only organs the label does not
NEOPLASM_ANATOMY_PENALTY = 0.36  # the same for a by-site neoplasm label: the site decides its category ("Squamous cell carcinoma of the lung" is not C44)
EXTRA_ORGAN_PENALTY = 0.9  # score factor when a by-site neoplasm's candidate names an organ the label does not ("orbital bone" for "Orbital meningioma")
SITELESS_PENALTY = 0.75  # score factor when the label names an organ and the candidate none ("Cancer NOS" for "Prostate cancer")
PARTIAL_HEAD_PENALTY = 0.85  # score factor to the power of the share of the label's head words a candidate misses
GRAMMAR_HEAD_PENALTY = 0.85  # score factor when the candidate misses the label's grammatical head ("Middle cerebral artery syndrome" for "MCA infarct")
HEAD_PENALTY = 0.7  # score factor when the candidate shares no pathology word with the label ("Crohn's disease of large bowel" for "Large bowel obstruction")
CONTEXT_PENALTY = 0.8  # score factor per context word (congenital, newborn ...) the label does not name
BEHAVIOUR_PENALTY = 0.6  # score factor when the label names a neoplasm and the candidate's code has another behaviour
CAUSE_PENALTY = 0.8  # score factor when an infectious-chapter candidate names an organism the label does not ("Amebic splenic abscess")
UNSPECIFIED_BONUS = 0.02  # the index's default ("unspecified", "NOS") wins a near tie
INDEX_PATH_BONUS = 0.05  # an index path that names every word of the label ("Laceration - lung" for "Pulmonary laceration")
MAIN_TERM_BONUS = 0.05  # a label that is an index main term takes the main term's own code, the index's default ("Tuberculosis" A15.9)
SHORTLIST = 40  # candidates re-ranked per name
BATCH = 512  # names per sparse product

_SPELLING = (  # British -> American, applied to lower-case text, longest patterns first
    ("pelviureteric", "ureteropelvic"),
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
_ANATOMY = {  # organ (the noun ICD-10-CM uses) -> its adjectives and synonyms; an organ names itself too.
    # Systematic: every site word of the neoplasm categories (C00-D36 "... neoplasm of <site>", tests/test_icd_matching.py)
    # is here or in _NOT_ORGAN, plus the common radiology adjectives of the same organs. A word naming organs of two
    # regions (cervical: cervix or neck; temporal: bone or lobe; choroid: eye or plexus) is left out: it decides nothing.
    "kidney": ("renal", "nephric", "perirenal", "perinephric"), "liver": ("hepatic", "hepatocellular", "intrahepatic"),
    "lung": ("pulmonary", "bronchiolar"), "bronchus": ("bronchial", "endobronchial"),
    "brain": ("cerebral", "intracerebral", "cerebrum", "intracranial", "hypothalamic", "hypothalamus", "thalamic", "thalamus",
              "mesencephalic", "perimesencephalic", "periventricular", "subependymal", "putamen", "putaminal", "caudate",
              "brainstem", "pontine", "pons", "midbrain", "callosal", "callosum", "hippocampal", "hippocampus", "supratentorial",
              "infratentorial"),
    "cerebellum": ("cerebellar",), "meninges": ("meningeal", "meninx", "leptomeningeal", "dural", "dura", "subdural", "epidural",
                                                "extradural", "subarachnoid", "arachnoid"),
    "stomach": ("gastric", "pyloric", "pylorus", "cardia"), "esophagus": ("esophageal", "gastroesophageal"),
    "colon": ("colonic", "colorectal", "sigmoid", "rectosigmoid"), "rectum": ("rectal", "anorectal"), "anus": ("anal", "perianal"),
    "bone": ("osseous", "intraosseous"), "spleen": ("splenic", "spleno"), "pancreas": ("pancreatic",),
    "uterus": ("uterine", "myometrial", "myometrium", "intrauterine"), "endometrium": ("endometrial",), "cervix": ("endocervical", "endocervix", "exocervix"),
    "ovary": ("ovarian",), "fallopian": ("tubal", "salpinx"), "adnexa": ("adnexal",), "placenta": ("placental",),
    "testis": ("testicular", "testicle", "intratesticular"), "epididymis": ("epididymal",),
    "hip": ("acetabular", "acetabulum"), "bladder": ("vesical", "urachal", "urachus", "trigone"), "prostate": ("prostatic",),
    "heart": ("cardiac", "myocardial", "intracardiac", "endocardial", "atrial", "mitral", "tricuspid", "coronary"),
    "adrenal": ("suprarenal",), "bile": ("biliary", "ampullary", "ampulla", "choledochal"), "gallbladder": (),
    "duodenum": ("duodenal",), "ileum": ("ileal",), "jejunum": ("jejunal",), "cecum": ("cecal", "ileocecal"),
    "appendix": ("appendiceal",), "intestine": ("intestinal", "bowel"), "humerus": ("humeral",), "femur": ("femoral",),
    "tibia": ("tibial",), "fibula": ("fibular",), "meniscus": ("meniscal",), "patella": ("patellar",), "knee": ("cruciate", "popliteal"),
    "shoulder": ("glenoid", "glenohumeral", "rotator", "acromioclavicular", "acromion", "acromial", "coracoid"),
    "vertebra": ("vertebral",), "disc": ("disk", "discal", "intervertebral"), "orbit": ("orbital", "retrobulbar"),
    "eye": ("ocular", "intraocular", "conjunctival", "conjunctiva", "corneal", "cornea", "uveal", "uvea", "ciliary", "scleral", "sclera",
            "lacrimal", "eyelid", "canthus", "vitreous"),
    "retina": ("retinal",), "thyroid": (), "parathyroid": (), "breast": ("mammary", "nipple", "areola"), "pleura": ("pleural",),
    "pericardium": ("pericardial",), "peritoneum": ("peritoneal", "intraperitoneal", "omental", "omentum"),
    "retroperitoneum": ("retroperitoneal",), "mediastinum": ("mediastinal",), "diaphragm": ("diaphragmatic",),
    "aorta": ("aortic",), "carotid": (), "mesentery": ("mesenteric",), "ureter": ("ureteral", "vesicoureteral", "ureteropelvic"),
    "urethra": ("urethral", "paraurethral"), "nose": ("nasal", "sinonasal", "paranasal", "intranasal"),
    "larynx": ("laryngeal", "epiglottis", "epiglottic", "glottis", "glottic", "subglottis", "subglottic", "supraglottis", "supraglottic"),
    "pharynx": ("pharyngeal", "nasopharynx", "nasopharyngeal", "oropharynx", "oropharyngeal", "hypopharynx", "hypopharyngeal",
                "retropharyngeal"),
    "trachea": ("tracheal", "tracheobronchial"), "skin": ("cutaneous", "dermal", "subcutaneous", "scalp"),
    "perineum": ("perineal",), "scapula": ("scapular",), "clavicle": ("clavicular",), "calcaneus": ("calcaneal",),
    "sacrum": ("sacral", "sacroiliac", "coccyx", "coccygeal"), "salivary": ("parotid", "submandibular", "sublingual"),
    "pituitary": (), "pineal": (), "vagina": ("vaginal",), "vulva": ("vulvar", "labium"), "penis": ("penile", "glans", "prepuce"),
    "scrotum": ("scrotal",), "lip": (), "tongue": ("lingual",), "mouth": ("oral", "buccal", "gum", "gingival", "palate", "palatal"),
    "jaw": ("mandibular", "mandible", "maxillary", "maxilla", "temporomandibular", "zygoma", "zygomatic", "zygomaticomaxillary", "malar"),
    "ilium": ("iliac",), "ischium": ("ischial",), "pubis": ("pubic",), "ear": ("otic", "aural", "mastoid", "tympanic", "cochlear"),
    "tonsil": ("tonsillar",), "thymus": ("thymic",), "wrist": ("carpal", "carpus", "scaphoid", "lunate"), "ankle": ("malleolar", "malleolus"),
    "elbow": ("olecranon",), "foot": ("metatarsal", "tarsal", "talar", "talus"), "hand": ("metacarpal",), "finger": (), "toe": (),
    "radius": ("radial",), "ulna": ("ulnar",), "skull": ("calvarial", "calvarium"), "spine": ("spinal", "lumbar", "lumbosacral"),
    "lymph": ("node", "nodal", "lymphatic"), "sternum": ("sternal",), "rib": ("costal",), "axilla": ("axillary",),
    "groin": ("inguinal",), "umbilicus": ("umbilical", "paraumbilical"),
}
ORGAN_WORDS = {word: organ for organ, words in _ANATOMY.items() for word in (organ, *words)}
_NOT_ORGAN = frozenset(  # site words of the neoplasm categories that name no single organ (regions, tissues, ambiguous, grammar)
    "abdomen abdominal accessory acoustic anterior antrum area articular aryepiglottic as ascending aspect auricular autonomic base "
    "bilateral body bones border branchial broad canal cartilage cauda cavity central cheek choroid cleft clitoris cloacogenic column "
    "commissure connective cord cortex cranial craniopharyngeal curvature defined descended descending digestive dome dorsal duct "
    "ducts endocrine equina ethmoidal except external extrahepatic face female flexure floor fold fossa frontal fundus genital gland "
    "glands greater hard head ill in including inner intra intrapelvic intrathoracic isthmus junction lateral left lesser ligament "
    "ligaments limb limbs long lower main major majus male marrow medulla mesothelial middle minus mucosa multiple neck nerve nerves "
    "nervous not occipital olfactory optic or organ organs orifice other outer overlapping paraganglia parametrium parietal part parts "
    "pelvic pelvis peripheral pillar portion postcricoid posterior primary pyriform quadrant region regions related respiratory "
    "retromolar right ring round s secondary short sinus sinuses site sites small soft specified spermatic sphenoid stem structures "
    "superior surface system tail temporal the third thirds twothird thorax tissue to tract transverse trunk tube tubes two type undescended "
    "unspecified upper urinary uteri uvula vallecula vater ventral ventricle ventricles vestibule waldeyer wall whether within zone "
    "ovaries ribs and of large corpus lobe lobes lymphoid hematopoietic malignant neoplasm uncertain behavior benign sinuse structure".split())
_REGION = {  # organs that count as agreeing with each other (one region; "intestine" lies in both bowel regions)
    "intestine": ("small bowel", "large bowel"), "colon": "large bowel", "rectum": "large bowel", "cecum": "large bowel",
    "appendix": "large bowel", "anus": "large bowel", "ileum": "small bowel", "jejunum": "small bowel", "duodenum": "small bowel", "lung": "lung", "bronchus": "lung", "trachea": "lung", "pleura": "lung",
    "knee": "knee", "meniscus": "knee", "patella": "knee", "tibia": "knee", "fibula": "knee", "hip": "hip", "femur": "hip",
    "shoulder": "shoulder", "humerus": "shoulder", "scapula": "shoulder", "clavicle": "shoulder", "brain": "brain",
    "cerebellum": "brain", "meninges": "brain", "spine": "spine", "vertebra": "spine", "sacrum": "spine", "disc": "spine",
    "bile": "bile", "gallbladder": "bile", "eye": "eye", "retina": "eye", "orbit": "eye", "jaw": "jaw", "lip": "mouth", "tongue": "mouth",
    "mouth": "mouth", "wrist": "hand", "hand": "hand", "finger": "hand", "radius": "forearm", "ulna": "forearm", "elbow": "forearm",
    "ankle": "foot", "foot": "foot", "toe": "foot", "calcaneus": "foot", "heart": "heart", "pericardium": "heart",
    "uterus": "uterus", "endometrium": "uterus", "cervix": "uterus", "ovary": "adnexa", "fallopian": "adnexa", "adnexa": "adnexa",
    "testis": "testis", "epididymis": "testis", "scrotum": "testis", "peritoneum": "peritoneum", "mesentery": "peritoneum",
    "retroperitoneum": "peritoneum",
}
_PART_OF = {organ: "bone" for organ in (  # a text naming the whole ("Secondary malignant neoplasm of bone") covers its parts
    "vertebra", "skull", "femur", "humerus", "tibia", "fibula", "radius", "ulna", "rib", "sternum", "clavicle", "scapula",
    "calcaneus", "sacrum", "patella", "jaw", "ilium", "ischium", "pubis")}
_PHRASES = {  # two-word sites: the tabular's "large intestine" is the radiologist's colon; lobes named by position are the lung's
    ("large", "intestine"): "colon", ("large", "bowel"): "colon", ("basal", "ganglia"): "brain",
    ("upper", "lobe"): "lung", ("middle", "lobe"): "lung", ("lower", "lobe"): "lung",
}
_GENERIC = frozenset(  # words that do not name the pathology: a candidate sharing only these shares no head word
    "acute chronic subacute large small left right bilateral unilateral multiple single solitary primary total partial complete "
    "simple diffuse focal lower upper anterior posterior lateral medial superior inferior proximal distal internal external common "
    "giant mild severe disease syndrome lesion developmental idiopathic adult juvenile pediatric childhood junction tract wall "
    "process mass cell grade stage early late recurrent bone joint part area region".split())
_SEE_ALSO = {"tear": "sprain"}  # Index "Tear, ligament - see Sprain"
_CONTEXT = ("malignant", "neoplasm", "covid", "situ", "congenital", "newborn", "neonatal", "perinatal", "fetus", "fetal", "pregnancy", "puerperium", "puerperal", "childbirth",
            "abortion", "obstetric", "labor", "delivery", "history", "sequela", "sequelae", "screening", "poisoning", "toxic",
            "adverse", "underdosing", "postprocedural", "intraoperative", "birth", "family", "personal", "encounter", "complication")
_CODE_NOTE = re.compile(r"^(?P<term>[^()]*(?:\([^()]*\)[^()]*)*?)\s*\((?P<code>[A-Z][0-9][0-9A-Z](?:\.[0-9A-Z]{1,4})?)[-.]*(?:[,;\s][^()]*)?\)\s*$")
_WITHOUT = re.compile(r",?\s+without\b.*$", re.I)  # "X without Y" is the index's default for X: a variant "X" (not for "with")
_PARENS = re.compile(r"\s*[\(\[][^()\[\]]*[\)\]]")
_TOKEN = re.compile(r"[a-z0-9]+")


@functools.lru_cache(maxsize=1)
def _modifiers() -> dict[tuple[str, str], str]:
    return modifier_behaviours((*sorted(MORPHOLOGY), "tumor"))


def label_morphology(words: list[str]) -> Morphology | None:
    """:func:`raddiag.knowledge.morphology.label_morphology`, with the behaviour the index gives a morphology (or "tumor")
    as a whole or in the subterm the label names (:func:`~raddiag.knowledge.cm_index.modifier_behaviours`: "Atypical
    meningioma" uncertain, "Central neurocytoma" benign, "Yolk sac tumour" malignant)."""
    morphology = _morphology_alone(words)
    if morphology is None:
        return None
    modifiers = _modifier_words()
    present = set(words)
    named_by = [w for w in words if w in MORPHOLOGY and morphology_of(w) is morphology] or ["tumor"]  # "Yolk sac tumour"
    for word in named_by:
        if word in present:
            named = [(len(modifier), behaviour) for modifier, behaviour in modifiers.get(word, ()) if modifier <= present]
            behaviour = max(named, key=lambda pair: pair[0])[1] if named else None  # the most specific subterm it names
            if behaviour is not None and behaviour != morphology.behaviour:
                return Morphology(behaviour, morphology.site, morphology.by_site)
    return morphology


@functools.lru_cache(maxsize=1)
def _modifier_words() -> dict[str, list[tuple[frozenset[str], str]]]:
    """:func:`_modifiers` by morphology word: (the modifier's words as labels spell them, behaviour)."""
    out: dict[str, list[tuple[frozenset[str], str]]] = {}
    for (word, modifier), behaviour in _modifiers().items():
        out.setdefault(word, []).append((frozenset(_words(modifier)), behaviour))
    return out


def _stem(word: str) -> str:
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word in ORGAN_WORDS:  # pancreas, meninges: not plurals
        return word
    if len(word) > 6 and word.endswith(("oses", "yses", "eses")):  # exostoses, stenoses, analyses, prostheses: -sis
        return word[:-2] + "is"
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith("s") and not word.endswith(_PLURAL_KEEP):
        return word[:-1]
    return word


def _words(text: str) -> list[str]:
    """A text's words as :func:`normalise_name` reads them, before it adds organ nouns and neoplasm wording."""
    text = text.lower().replace("'s", "").replace("’s", "")
    if not text.isascii():  # Charcôt, Sjögren
        text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    for old, new in _SPELLING:
        text = text.replace(old, new)
    text = _IZE.sub(lambda m: m.group(0) if m.group(0) in _IZE_KEEP else f"{m.group(1)}iz{m.group(2)}", text)
    words = [_stem(w) for w in _TOKEN.findall(re.sub(r"(?<=[a-z]o)-(?=[a-z])|(?<=\bnon)[- ](?=[a-z])", "", text))]
    words = [w for w in words if w not in _DROP]
    return words


_POSITION_PREFIX = re.compile(r"^(infra|supra|sub|peri|retro|pre|para|inter|intra|extra|trans|post)(?=[a-z]{4})")


@functools.lru_cache(maxsize=65536)
def _unprefixed(word: str) -> str:
    """An organ or context word behind a position prefix the vocabulary lacks ("infrapatellar" -> "patellar",
    "retroplacental" -> "placental", "perigestational" -> "gestational"); "" for none."""
    if word in ORGAN_WORDS:
        return ""
    rest = _POSITION_PREFIX.sub("", word)
    return rest if rest != word and (rest in ORGAN_WORDS or any(rest in named for named in _NAMES_CHAPTER.values())) else ""


def normalise_name(text: str, label: bool = False) -> str:
    """Lower case, American spelling, no possessives/hyphens/punctuation, singular words, the
    words that never help matching dropped; organ nouns and the index's neoplasm wording added. A ``label``
    also reads the organ or context behind a position prefix (:func:`_unprefixed`); an index text keeps its
    own ("Malignant neoplasm - perirectal" is C76.3, not the rectum)."""
    words = _words(text)
    behind = [_unprefixed(w) for w in words if _unprefixed(w)] if label else []
    extra = [w for w in behind if w not in ORGAN_WORDS]  # a context word is read as such; an organ adds only its noun
    organs = {ORGAN_WORDS[w] for w in (*words, *behind) if w in ORGAN_WORDS}
    morphology = label_morphology(words)
    if morphology is not None and morphology.site and not organs:  # ICD-O's default site ("Retinoblastoma": retina)
        organs.add(morphology.site)
    extra.extend(sorted(o for o in organs if o not in words))
    extra.extend(_SEE_ALSO[w] for w in words if w in _SEE_ALSO)
    extra.extend(organ for pair, organ in _PHRASES.items() if any(pair == tuple(words[i:i + 2]) for i in range(len(words) - 1)))
    if morphology is not None:  # Index "<morphology> - see Neoplasm, by site, <behaviour>": the tabular's wording
        extra.extend(WORDING[morphology.behaviour])
    present = set(words)
    return " ".join(words + [w for w in dict.fromkeys(extra) if w not in present])


def head_words(normalised: str) -> frozenset[str]:
    """The words of a normalised label that name its pathology: not an organ, not a generic modifier
    ("Large bowel obstruction" -> {obstruction}; "Lymph node enlargement" -> {enlargement})."""
    words = normalised.split()
    sites = {w for i in range(len(words) - 1) if (words[i], words[i + 1]) in _PHRASES for w in words[i:i + 2]}  # basal ganglia
    return frozenset(w for w in words if w not in ORGAN_WORDS and w not in _GENERIC and w not in _DROP and w not in sites)


_HEAD_BREAK = re.compile(r"\b(?:of|with|in|due to|secondary to|after|following|from)\b")


def grammatical_head(name: str) -> str | None:
    """The pathology word a label is about: its last head word (:func:`head_words`) before "of", "with", "in"
    ("Middle cerebral artery (MCA) infarct" -> infarct; "Fracture of the scaphoid" -> fracture)."""
    words = _words(_HEAD_BREAK.split(_PARENS.sub(" ", name.lower()), maxsplit=1)[0])
    head = head_words(" ".join(words))
    return next((w for w in reversed(words) if w in head), None)


def same_stem(word: str, other: str) -> bool:
    """Equal, one a prefix of the other (4+ letters: cyst/cystic), or a shared prefix of 7+ letters
    (enlargement/enlarged, diverticulitis/diverticular, obstruction/obstructive)."""
    return (word == other or (min(len(word), len(other)) >= 4 and (word.startswith(other) or other.startswith(word)))
            or (len(word) >= 7 and len(other) >= 7 and word[:7] == other[:7]))


def shares_head(head: frozenset[str], text_words: set[str]) -> bool:
    """True when ``text_words`` contain a head word or a word of the same stem (:func:`same_stem`)."""
    return any(same_stem(word, other) for word in head for other in text_words)


class _HeadColumns:
    """:func:`shares_head` on the word TF-IDF rows (a text's words are its row's columns): the columns of the
    words of one stem are found by bisection in the sorted vocabulary, once per head word."""

    def __init__(self, index: MatchIndex) -> None:
        self.vocabulary = index.words.vocabulary_
        self.sorted = sorted(self.vocabulary)
        self.indptr, self.indices = index.word_rows.indptr, index.word_rows.indices
        self.cache: dict[str, frozenset[int]] = {}

    def _prefixed(self, prefix: str) -> list[str]:
        begin = bisect.bisect_left(self.sorted, prefix)
        end = bisect.bisect_left(self.sorted, prefix + "\uffff")
        return self.sorted[begin:end]

    def columns(self, word: str) -> frozenset[int]:
        if word not in self.cache:
            found = set(self._prefixed(word if len(word) < 7 else word[:7]))  # longer words, and the 7-letter stem
            found.update(word[:k] for k in range(4, len(word)) if word[:k] in self.vocabulary)  # shorter words it starts with
            self.cache[word] = frozenset(self.vocabulary[w] for w in found if w in self.vocabulary and same_stem(word, w))
        return self.cache[word]

    def of(self, head: frozenset[str]) -> frozenset[int]:
        """The word columns that share a stem with any head word."""
        return frozenset().union(*(self.columns(w) for w in head))

    def shared(self, columns: frozenset[int], position: int) -> bool:
        return not columns.isdisjoint(self.indices[self.indptr[position]:self.indptr[position + 1]].tolist())


def organs_of(normalised: str) -> frozenset[str]:
    """The organs a normalised text names."""
    return frozenset(ORGAN_WORDS[w] for w in normalised.split() if w in ORGAN_WORDS)


def anatomy_disagrees(name_organs: frozenset[str], text_organs: frozenset[str]) -> bool:
    """True when both name organs and they share neither an organ nor a region ("kidney" vs "liver"); a text
    naming the whole ("bone") agrees with a label naming a part ("vertebra"), not the other way round."""
    if not name_organs or not text_organs:
        return False
    name_organs = _with_wholes(name_organs)
    if name_organs & text_organs:
        return False
    return not (_regions(name_organs) & _regions(text_organs))


@functools.lru_cache(maxsize=4096)
def _with_wholes(organs: frozenset[str]) -> frozenset[str]:
    """The organs and the wholes they are part of (vertebra -> bone)."""
    return organs | {_PART_OF[o] for o in organs if o in _PART_OF}


@functools.lru_cache(maxsize=16384)
def _regions(organs: frozenset[str]) -> frozenset[str]:
    out: set[str] = set()
    for organ in organs:
        region = _REGION.get(organ, organ)
        out.update((region,) if isinstance(region, str) else region)
    return out


_IMPLIES = {"developmental": "congenital", "neonatal": "congenital", "newborn": "congenital",  # a label word that names a context in other words
            "malformation": "congenital", "anomaly": "congenital", "hereditary": "congenital", "familial": "congenital"}  # Index "Malformation (congenital)", "Anomaly, anomalous (congenital)"
# Chapters restricted to a context as a whole: every text of O00-O9A is about pregnancy and of P00-P96 about the perinatal
# period, whether or not its wording says so (O24's "diabetes mellitus" note). The label words that name the context:
_CHAPTER_CONTEXT = {"O": "@pregnancy", "P": "@perinatal", "S": "@injury", "Z": "@encounter"}
_NAMES_CHAPTER = {
    "@pregnancy": frozenset("pregnancy pregnant gestational gestation placenta placental amniotic obstetric postpartum puerperal "
                            "puerperium trimester childbirth fetal fetus abortion".split()),
    "@perinatal": frozenset("newborn neonatal neonate perinatal birth premature prematurity preterm congenital fetal fetus".split()),
    "@encounter": frozenset("encounter screening history status contact exposure carrier presence absence transplant transplanted "
                            "follow examination observation donor prophylactic fitting adjustment counseling".split()),
    "@injury": frozenset("injury trauma traumatic fracture dislocation subluxation sprain strain tear rupture laceration contusion "
                         "wound avulsion crush puncture penetrating blunt whiplash concussion transection amputation injured "
                         "hematoma foreign".split()),
}


# Label words that put the disorder in one chapter: a newborn's condition is coded in P00-P96, a pregnancy's in O00-O9A
_CHAPTER_ONLY = {"P": frozenset("newborn neonatal neonate perinatal".split()),
                 "O": frozenset("pregnancy pregnant gestational puerperal puerperium postpartum obstetric trimester".split())}


def label_chapters(words: list[str]) -> frozenset[str]:
    """The chapters (``"P"``, ``"O"``) a label's words confine it to ("Neonatal pneumothorax": P)."""
    return frozenset(chapter for chapter, named in _CHAPTER_ONLY.items() if not named.isdisjoint(words))


def context_words(normalised: str) -> frozenset[str]:
    """The context words of a normalised text, and the chapter contexts its words name (placental -> pregnancy)."""
    words = normalised.split()
    words += [_IMPLIES[w] for w in words if w in _IMPLIES]
    named = {chapter for chapter, implied in _NAMES_CHAPTER.items() if not implied.isdisjoint(words)}
    return frozenset(w for w in words if w in _CONTEXT) | named


def chapter_context(code: str) -> frozenset[str]:
    """The context of the chapter a code lies in (pregnancy for O, perinatal for P), else none."""
    return frozenset({_CHAPTER_CONTEXT[code[0]]}) if code[:1] in _CHAPTER_CONTEXT else frozenset()


def cause_vocabulary(entries: list[tuple[str, str]]) -> frozenset[str]:
    """Words that name an organism or cause: the words of the infectious chapter's (A00-B99) texts that no text of
    another chapter uses ("amebic", "demodex", "cryptococcal"), from the index's ``(code, normalised text)`` pairs."""
    infectious: set[str] = set()
    elsewhere: set[str] = set()
    for code, normalised in entries:
        (infectious if code[0] in "AB" else elsewhere).update(normalised.split())
    return frozenset(infectious - elsewhere - ORGAN_WORDS.keys() - _GENERIC - _DROP)


_MODIFIER = re.compile(r"^[a-z]+(ous|al|ic|ary|ans|ile)$")  # tuberculous, amebic, cerebral, coronary, obliterans, senile


def is_fragment(term: str) -> bool:
    """A one-word note term that names no disorder by itself: a lone modifier, organ, generic or context word,
    the tail of a note's list ("tuberculous (A17.81)" under "abscess ... tuberculous")."""
    words = term.lower().split()
    if len(words) != 1:
        return False
    word = words[0]
    return bool(_MODIFIER.match(word)) or word in ORGAN_WORDS or word in _GENERIC or word in _CONTEXT


def note_terms(note: str) -> tuple[str, str] | None:
    """``"amyotrophic lateral sclerosis (G12.21)"`` -> ``("amyotrophic lateral sclerosis", "G12.21")``;
    None when the note names no single code (ranges, blocks, plain text) or its term is a fragment (:func:`is_fragment`)."""
    found = _CODE_NOTE.match(note.strip())
    if not found or not found.group("term").strip():
        return None
    term = found.group("term").strip(" ,;:")
    return None if is_fragment(term) else (term, found.group("code"))


@dataclass(frozen=True)
class MatchIndex:
    chars: object  # the character 3-5-gram TF-IDF
    words: object  # the word TF-IDF
    features: object  # (char features + word features) x texts, CSR: one product scores a batch on both
    word_rows: object  # texts x word features, CSR (the head-word test)
    texts: list[str]  # the original wording shown to reviewers
    codes: list[str]
    organs: list[frozenset[str]]
    context: list[frozenset[str]]
    unspecified: Sequence[bool]  # per text: the text says "unspecified" or "NOS"
    causes: list[frozenset[str]] | None = None  # organism/cause words of infectious-chapter texts (:func:`cause_vocabulary`)
    main_terms: dict[int, str] | None = None  # position -> normalised text, for the index's main terms (a path of one term)
    cause_words: frozenset[str] = frozenset()  # :func:`cause_vocabulary`: words only the infectious chapter uses
    index_paths: Sequence[bool] | None = None  # per text: a path of the alphabetic index (not the tabular list's wording)
    normalised: list[str] | None = None  # per text: :func:`normalise_name` of it


def _known_prefix(code: str, valid: set[str]) -> str:
    """``code`` cut back to the longest prefix the table holds (the index prints codes to their last character)."""
    while code not in valid and len(code) > 3:
        code = code[:-1].rstrip(".")
    return code


def _icd_texts() -> tuple[list[str], list[str], list[bool]]:
    """(text, code) pairs: descriptions, inclusion terms, includes notes and code-naming notes of
    every category/subcategory up to 5 characters (laterality variants left out: they add no wording),
    plus the supplementary index terms and the alphabetic index's paths (flagged True in the third list). External
    causes (V00-Y99) are not disorders and are left out."""
    import simple_icd_10_cm as cm

    lateral = re.compile(r"\b(right|left|bilateral)\b", re.I)
    valid = set()
    pairs: list[tuple[str, ...]] = []
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
    pairs.extend((term, code) for term, code in (*INDEX_TERMS, *EPONYMS))
    pairs.extend((text, _known_prefix(code, valid), "index") for text, code in (*index_entries(), *neoplasm_entries()))
    out_texts, out_codes, out_index, seen = [], [], [], set()
    for text, code, *source in pairs:
        if code not in valid or code[0] in "VWXY":
            continue
        for variant in (text, _PARENS.sub("", text), _WITHOUT.sub("", _PARENS.sub("", text))):
            key = (variant.lower(), code)
            if variant.strip() and key not in seen:
                seen.add(key)
                out_texts.append(variant.strip())
                out_codes.append(code)
                out_index.append(bool(source))
    return out_texts, out_codes, out_index


_VESSELS = {"vein": "vein", "venous": "vein", "phlebitis": "vein", "thrombophlebitis": "vein", "varix": "vein", "varice": "vein",
            "varicose": "vein", "artery": "artery", "arterial": "artery", "arteritis": "artery", "arteriosclerosis": "artery"}


def vessels_of(text: str) -> frozenset[str]:
    """The kinds of vessel a text names ("vein", "artery"); an arteriovenous text names neither."""
    words = [_stem(w) for w in _TOKEN.findall(text.lower())]
    return frozenset() if any(w.startswith("arteriovenous") for w in words) else frozenset(_VESSELS[w] for w in words if w in _VESSELS)


@functools.lru_cache(maxsize=4096)
def _category_vessels(category: str) -> frozenset[str]:
    """The vessels a category's title names ("I66 Occlusion and stenosis of cerebral arteries": artery)."""
    return vessels_of(description(category))


@functools.lru_cache(maxsize=4096)
def _category_organs(category: str) -> frozenset[str]:
    return organs_of(normalise_name(description(category)))


@functools.lru_cache(maxsize=1)
def match_index() -> MatchIndex:
    """The fitted TF-IDF index over every normalised ICD-10-CM text (a few seconds, once per process)."""
    from scipy import sparse
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts, codes, normalised, organs, main_terms, seen, index_paths = [], [], [], [], {}, {}, []
    for text, code, from_index in zip(*_icd_texts()):  # variants that normalise alike add nothing: the first wording is kept
        norm = normalise_name(text)
        main_term = from_index and " - " not in text
        if (norm, code) in seen:  # an index main term worded like a tabular text ("Appendicitis" K37): that text is the main term
            if main_term:
                main_terms[seen[(norm, code)]] = norm
            if from_index:  # and an index path worded like one ("Laceration - lung", "Laceration of lung"): that text is the path
                index_paths[seen[(norm, code)]] = True
            continue
        seen[(norm, code)] = len(texts)
        texts.append(text)
        codes.append(code)
        normalised.append(norm)
        index_paths.append(from_index)
        # an index path naming no organ takes its category's site ("Carcinoma - basal-squamous cell" C44: skin)
        organs.append(organs_of(norm) or (_category_organs(code[:3]) if from_index else frozenset()))
        if main_term:
            main_terms[len(texts) - 1] = norm
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True, dtype=np.float32)
    words = TfidfVectorizer(analyzer="word", token_pattern=r"(?u)\b\w+\b", sublinear_tf=True, dtype=np.float32)
    unspecified = [bool(re.search(r"\b([Uu]nspecified|NOS)\b", t)) for t in texts]
    causes_known = cause_vocabulary(list(zip(codes, normalised)))
    char_rows, word_rows = chars.fit_transform(normalised), words.fit_transform(normalised)
    features = sparse.vstack([char_rows.T, word_rows.T], format="csr", dtype=np.float32)
    return MatchIndex(chars, words, features, word_rows, texts, codes, organs,
                      [context_words(n) | chapter_context(c) for n, c in zip(normalised, codes)], unspecified,
                      [frozenset(causes_known.intersection(n.split())) if c[0] in "AB" else frozenset()
                       for n, c in zip(normalised, codes)], main_terms, causes_known, index_paths, normalised)


def names_other_cause(text_causes: frozenset[str], name_words: list[str]) -> bool:
    """True when the candidate names a cause (organism) that no label word shares a stem (or its first five
    letters) with: "Amebic splenic abscess" for "Splenic abscess" (the index's default is "Abscess, spleen")."""
    return any(not any(same_stem(cause, word) or cause[:5] == word[:5] for word in name_words) for cause in text_causes)


def _organism_coded(code: str, text: str, name_words: list[str]) -> bool:
    """An infectious-chapter candidate whose every pathology word the label names ("Disease - hydatid" for "Hepatic
    hydatid infection"): the chapter codes infections by organism, so its lack of a site is no mismatch."""
    if code[0] not in "AB":
        return False
    words = head_words(normalise_name(text))
    return bool(words) and all(any(same_stem(word, other) for other in name_words) for word in words)


def _behaviour_disagrees(morphology: Morphology | None, code: str) -> bool:
    return morphology is not None and morphology.behaviour != UNSPECIFIED and not behaviour_agrees(morphology, code)


@functools.lru_cache(maxsize=1)
def _own_categories() -> dict[str, str]:
    """Morphologies with a category of their own (:func:`raddiag.knowledge.cm_index.own_categories`); those coded by a
    range (lymphoma, myeloma, leukaemia: C81-C96) keep their range."""
    return {w: c for w, c in own_categories(tuple(sorted(MORPHOLOGY))).items() if MORPHOLOGY[w].by_site}


def _index_names_all(core: frozenset[str], position: int, index: MatchIndex, exact: bool = False) -> bool:
    """True when the candidate is an alphabetic-index path that names every word of the label (two or more); with
    ``exact``, also nothing else ("Abscess - appendix" for "Appendicular abscess", not "Tuberculosis - epidural abscess")."""
    if len(core) < 2 or not index.index_paths or not index.index_paths[position]:
        return False
    words = set((index.normalised[position] if index.normalised else normalise_name(index.texts[position])).split()) - _GENERIC
    if not all(ORGAN_WORDS.get(word) in words or any(same_stem(word, other) for other in words) for word in core):
        return False
    named = core | {ORGAN_WORDS[w] for w in core if w in ORGAN_WORDS}
    return not exact or all(ORGAN_WORDS.get(word) in named or any(same_stem(word, other) for other in named) for word in words)


def own_category(name_words: list[str], morphology: Morphology | None) -> str | None:
    """The category the label's morphology word has in the index whatever the site ("Vertebral hemangioma": D18), when
    the label's neoplasm is that word's (not upgraded by "malignant", not a metastasis)."""
    if morphology is None:
        return None
    own = _own_categories()
    return next((own[w] for w in name_words if w in own and morphology_of(w) is morphology), None)


def rerank(name_norm: str, candidates: list[tuple[int, float]], index: MatchIndex,
           heads: _HeadColumns | None = None, name: str | None = None) -> list[tuple[int, float]]:
    """Apply the anatomy, head-word and context penalties (and the default-code bonus) to ``(text, score)``
    pairs; best first. ``heads`` answers the head-word test from the word rows (else the texts are normalised);
    ``name``, the label as written, adds the grammatical-head test and the index's own entries for a morphology."""
    name_organs, name_context, head = organs_of(name_norm), context_words(name_norm), head_words(name_norm)
    name_words = name_norm.split()
    name_causes = index.cause_words.intersection(name_words)
    chapters = label_chapters(name_words)
    morphology = label_morphology(name_words)
    own = own_category(name_words, morphology)
    by_site = own is None and (morphology is None or morphology.by_site)  # lymphoma, hemangioma: coded whatever the site
    columns = heads.of(head) if heads is not None and head else frozenset()
    word_columns = [heads.columns(w) for w in head] if heads is not None else []
    grammar = grammatical_head(name) if name else None
    vessels = vessels_of(name) if name else frozenset()
    core = frozenset(_words(name)) - _GENERIC if name else frozenset()  # every word the label says
    # one head word: HEAD_PENALTY already asks for it; a neoplasm's morphology word is the behaviour penalties' business,
    # and a named organism decides an infection's category ("Tuberculous arthropathy": Tuberculosis - arthritis, A18)
    grammar = grammar if grammar in head and len(head) > 1 and morphology is None and not name_causes else None
    grammar_words = frozenset({grammar, _SEE_ALSO.get(grammar, grammar)}) if grammar else frozenset()  # a tear is a sprain
    grammar_columns = heads.of(grammar_words) if heads is not None and grammar else frozenset()
    organs, contexts, causes, codes = index.organs, index.context, index.causes, index.codes
    unspecified, main_terms = index.unspecified, index.main_terms
    out = []
    for position, score in candidates:
        text_organs = organs[position]
        if anatomy_disagrees(name_organs, text_organs):
            score *= NEOPLASM_ANATOMY_PENALTY if morphology is not None and by_site else ANATOMY_PENALTY
        elif name_organs and not text_organs and by_site and not _organism_coded(codes[position], index.texts[position], name_words):
            score *= SITELESS_PENALTY
        elif name_organs and morphology is not None and by_site and text_organs - _with_wholes(name_organs | {morphology.site}):
            score *= EXTRA_ORGAN_PENALTY  # "Benign neoplasm of orbital bone" for "Orbital meningioma"
        if vessels and (_category_vessels(codes[position][:3]) or vessels_of(index.texts[position])) \
                and vessels.isdisjoint(_category_vessels(codes[position][:3]) | vessels_of(index.texts[position])):
            score *= ANATOMY_PENALTY  # "Cerebral venous thrombosis" is not I66, whose title names arteries
        if name_causes and codes[position][0] not in "AB":
            score *= CAUSE_PENALTY  # "Tuberculous arthropathy": the organism decides the category (A18), not the site
        if morphology is not None and _behaviour_disagrees(morphology, codes[position]) and not (
                _index_names_all(core, position, index) and contexts[position] <= name_context):
            score *= BEHAVIOUR_PENALTY  # unless the index path says what it is: "Fibroma - bone (nonossifying)" M89.8, not
            # "Adenocarcinoma - cervix, in situ" for "Adenocarcinoma of the cervix"
        if own is not None and codes[position][:3] != own:
            score *= BEHAVIOUR_PENALTY
        if causes and causes[position] and names_other_cause(causes[position], name_words):
            score *= CAUSE_PENALTY
        if head and not (heads.shared(columns, position) if heads is not None
                         else shares_head(head, set(normalise_name(index.texts[position]).split()))):
            score *= HEAD_PENALTY
        elif heads is not None and len(head) > 1:  # shares some head words: the fewer, the smaller the score
            missed = sum(1 for cols in word_columns if not heads.shared(cols, position))
            score *= PARTIAL_HEAD_PENALTY ** (missed / len(head))
        if grammar and not (heads.shared(grammar_columns, position) if heads is not None
                            else shares_head(grammar_words, set(normalise_name(index.texts[position]).split()))):
            score *= GRAMMAR_HEAD_PENALTY
        if contexts[position]:
            score *= CONTEXT_PENALTY ** len(contexts[position] - name_context)
        if chapters and codes[position][0] not in chapters:
            score *= CONTEXT_PENALTY  # the label names a newborn or a pregnancy: the candidate's chapter does not
        if unspecified[position]:
            score += UNSPECIFIED_BONUS
        if morphology is None and _index_names_all(core, position, index, exact=True):  # (a neoplasm's site decides, through the table)
            score += INDEX_PATH_BONUS
        if main_terms and main_terms.get(position) == name_norm:
            score += MAIN_TERM_BONUS
        out.append((position, score))
    return sorted(out, key=lambda item: (-item[1], item[0]))  # the bonus may lift a score past 1: callers clip


def match_candidates(names: list[str], k: int = 3) -> list[list[tuple[str, str, float]]]:
    """Up to ``k`` best ``(code, matched text, score)`` per name, one per ICD-10-CM category, best first."""
    from scipy import sparse

    index = match_index()
    heads = _HeadColumns(index)
    out: list[list[tuple[str, str, float]]] = []
    for start in range(0, len(names), BATCH):
        batch = [normalise_name(n, label=True) for n in names[start:start + BATCH]]
        raw = names[start:start + BATCH]
        names_rows = sparse.hstack([index.chars.transform(batch), index.words.transform(batch)], format="csr", dtype=np.float32)
        scores = (names_rows @ index.features).tocsr()  # the sum of the two cosines; halved below
        scores.data *= 0.5
        for row, name_norm in enumerate(batch):
            begin, end = scores.indptr[row], scores.indptr[row + 1]
            data, cols = scores.data[begin:end], scores.indices[begin:end]
            if len(data) > SHORTLIST:
                keep = np.argpartition(-data, SHORTLIST)[:SHORTLIST]
                data, cols = data[keep], cols[keep]
            picked, seen = [], set()
            for position, score in rerank(name_norm, list(zip(cols.tolist(), data.tolist())), index, heads, raw[row]):
                category = index.codes[position][:3]
                if category in seen:
                    continue
                seen.add(category)
                picked.append((index.codes[position], index.texts[position], min(float(score), 1.0)))
                if len(picked) == k:
                    break
            out.append(picked)
    return out
