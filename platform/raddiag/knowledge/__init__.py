"""Medical knowledge for the KE head: the ICD-10-CM knowledge base, text encoders and label embeddings."""

from raddiag.knowledge.build import KnowledgeTable, build_knowledge, knowledge_version
from raddiag.knowledge.icd import IcdEntry, icd_corpus, load_icd, normalise_code
from raddiag.knowledge.labels import LabelMapping, embed_labels, get_text_encoder, label_texts, map_labels
from raddiag.knowledge.tfidf import TfidfEncoder, cache_root, load_or_fit_tfidf

__all__ = [
    "KnowledgeTable",
    "build_knowledge",
    "knowledge_version",
    "IcdEntry",
    "LabelMapping",
    "TfidfEncoder",
    "cache_root",
    "embed_labels",
    "get_text_encoder",
    "icd_corpus",
    "label_texts",
    "load_icd",
    "load_or_fit_tfidf",
    "map_labels",
    "normalise_code",
]
