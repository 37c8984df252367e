"""Medical knowledge for the KE head: the ICD-10-CM knowledge base, text encoders and label embeddings.

The names below are imported on first use (PEP 562): the ICD-10-CM package and scikit-learn take seconds
to import, and a run whose label table is cached needs neither.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "KnowledgeTable": "build",
    "build_knowledge": "build",
    "knowledge_version": "build",
    "cached_label_embeddings": "cache",
    "IcdEntry": "icd",
    "icd_corpus": "icd",
    "load_icd": "icd",
    "normalise_code": "icd",
    "LabelMapping": "labels",
    "embed_labels": "labels",
    "get_text_encoder": "labels",
    "label_texts": "labels",
    "map_labels": "labels",
    "TfidfEncoder": "tfidf",
    "cache_root": "tfidf",
    "load_or_fit_tfidf": "tfidf",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
