"""Label names -> ICD-10-CM codes -> label texts -> embedding table for the KE head."""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass

import numpy as np

from raddiag.config import KEConfig
from raddiag.knowledge.icd import code_length, description, load_icd, normalise_code
from raddiag.knowledge.tfidf import cache_root, load_or_fit_tfidf

log = logging.getLogger(__name__)
NORMAL_DESCRIPTION = "normal study without abnormal findings"
MATCH_DIM = 64  # the TF-IDF encoder whose sparse vectors drive name -> code matching


@dataclass(frozen=True)
class LabelMapping:
    """How one label name was tied to ICD-10-CM. ``source``: given | matched | normal."""

    name: str
    code: str | None
    description: str
    source: str
    score: float = 1.0


@functools.lru_cache(maxsize=2)
def _match_index(cache_dir: str):
    """Sparse TF-IDF rows of every category/subcategory (<= 4 chars) description and synonym."""
    encoder = load_or_fit_tfidf(MATCH_DIM, cache_dir)
    texts, codes = [], []
    for entry in load_icd():
        if entry.kind in ("category", "subcategory") and code_length(entry.code) <= 4:
            for text in (entry.description, *entry.synonyms):
                texts.append(text)
                codes.append(entry.code)
    return encoder, encoder.sparse(texts), codes


def map_labels(
    names: list[str], codes: list[str | None] | None = None, cache_dir: str | os.PathLike | None = None
) -> list[LabelMapping]:
    """Tie each label name to an ICD-10-CM code: the given code when valid, else the best character
    n-gram TF-IDF match over descriptions and inclusion terms (logged, with its cosine score).
    A label named "normal" gets no code and a fixed description."""
    if codes is not None and len(codes) != len(names):
        raise ValueError(f"codes has {len(codes)} entries but names has {len(names)}")
    given = [normalise_code(c) for c in (codes or [None] * len(names))]
    mappings: list[LabelMapping | None] = [None] * len(names)
    to_match = []
    for index, (name, code) in enumerate(zip(names, given)):
        if code is not None:
            mappings[index] = LabelMapping(name, code, description(code), "given")
        elif name.strip().lower() == "normal":
            mappings[index] = LabelMapping(name, None, NORMAL_DESCRIPTION, "normal")
        else:
            to_match.append(index)
    if to_match:
        encoder, matrix, index_codes = _match_index(str(cache_root(cache_dir)))
        scores = encoder.sparse([names[i] for i in to_match]) @ matrix.T
        for row, index in enumerate(to_match):
            line = scores.getrow(row)
            if line.nnz:
                best = int(line.indices[line.data.argmax()])
                code, score = index_codes[best], float(line.data.max())
                mappings[index] = LabelMapping(names[index], code, description(code), "matched", score)
            else:
                mappings[index] = LabelMapping(names[index], None, names[index], "matched", 0.0)
        shown = ", ".join(f"{m.name!r}->{m.code} ({m.score:.2f})" for m in (mappings[i] for i in to_match[:10]))
        more = f" and {len(to_match) - 10} more" if len(to_match) > 10 else ""
        log.warning("%d label(s) without a valid ICD-10-CM code, matched by text: %s%s", len(to_match), shown, more)
    return [m for m in mappings if m is not None]


def label_texts(mappings: list[LabelMapping], template: str) -> list[str]:
    """Fill ``template`` ({name}, {code}, {description}) for every label."""
    try:
        return [template.format(name=m.name, code=m.code or "", description=m.description) for m in mappings]
    except (KeyError, IndexError) as exc:
        raise ValueError(f"ke.template {template!r}: unknown field {exc}; use {{name}}, {{code}}, {{description}}") from None


def get_text_encoder(cfg: KEConfig, cache_dir: str | os.PathLike | None = None):
    """The text encoder named by ``cfg.encoder``; anything with ``encode(texts) -> (n, dim)``."""
    cache_dir = cache_dir or cfg.cache_dir or None
    if cfg.encoder == "tfidf":
        return load_or_fit_tfidf(cfg.dim, cache_dir)
    if cfg.encoder == "trained":
        from raddiag.knowledge.encoder import load_or_train_text_encoder

        return load_or_train_text_encoder(cfg.dim, cfg.text_train_steps, cache_dir, cfg.encoder_path or None)
    if cfg.encoder == "hf":
        from raddiag.knowledge.encoder import HFTextEncoder

        if not cfg.encoder_path:
            raise ValueError("ke.encoder='hf' needs ke.encoder_path, a local Hugging Face model directory")
        encoder = HFTextEncoder(cfg.encoder_path)
        if encoder.dim != cfg.dim:
            raise ValueError(f"ke.dim={cfg.dim} but the HF encoder at {cfg.encoder_path} emits {encoder.dim}; set ke.dim={encoder.dim}")
        return encoder
    raise ValueError(f"ke.encoder {cfg.encoder!r} is not supported")


def embed_labels(
    names: list[str],
    cfg: KEConfig,
    codes: list[str | None] | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """Label-text embeddings ``(C, cfg.dim)`` float32, L2-normalised, for the KE head.

    ``names`` are label names, ``codes`` optional ICD-10-CM codes aligned with them (missing/invalid
    ones are matched by text, see :func:`map_labels`). The text of each label is ``cfg.template``.
    Deterministic; the fitted encoder is cached under ``cache_dir`` / ``cfg.cache_dir`` /
    ``$RADDIAG_CACHE`` / ``~/.cache/raddiag``.
    """
    if not names:
        raise ValueError("embed_labels needs at least one label name")
    cache_dir = cache_dir or cfg.cache_dir or None
    texts = label_texts(map_labels(list(names), codes, cache_dir), cfg.template)
    table = np.asarray(get_text_encoder(cfg, cache_dir).encode(texts), dtype=np.float32)
    if table.shape != (len(names), cfg.dim):
        raise ValueError(f"encoder {cfg.encoder!r} returned {table.shape}, expected ({len(names)}, {cfg.dim})")
    return table
