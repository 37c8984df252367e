"""Label names -> ICD-10-CM codes -> label texts -> embedding table for the KE head."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from raddiag.config import KEConfig
from raddiag.knowledge import curated as curated_codes
from raddiag.knowledge.icd import description, normalise_code
from raddiag.knowledge.textmatch import match_candidates
from raddiag.knowledge.tfidf import load_or_fit_tfidf

log = logging.getLogger(__name__)
NORMAL_DESCRIPTION = "normal study without abnormal findings"


MATCH_THRESHOLD = 0.4  # below this text-match score a label is reported "unmatched" (no code)
ALTERNATIVES = 2  # next-best text matches (other categories) kept per label for the reviewer
#: Sources in review order: what text matching decided first, then the curated table, the data's codes, overrides, "normal".
SOURCE_ORDER = {"unmatched": 0, "matched": 0, "curated": 1, "given": 2, "override": 3, "normal": 4}
TEXT_SOURCES = frozenset({"matched", "unmatched"})
SCORED_SOURCES = TEXT_SOURCES | {"curated"}  # ordered by score within their group
JUDGEMENT_SCORE = 0.5  # a curated row from a near-synonym, group, sign or a coder's unsure judgement (the index path: 1)
SOURCES = ("override", "given", "curated", "matched", "unmatched", "normal")


@dataclass(frozen=True)
class LabelMapping:
    """How one label name was tied to ICD-10-CM. ``source``: override | given | curated | matched | unmatched |
    normal. ``score`` is the text-match score of matched/unmatched labels (curated: 1 for the name's own index path,
    :data:`JUDGEMENT_SCORE` for a coder's judgement; 1 otherwise); ``matched_text`` the
    description or inclusion term that matched best (curated rows: the index path they came from);
    ``alternatives`` the next best text matches of other categories, ``"code (score) text"`` joined by ``"; "``
    (curated rows: the other defensible categories, ``"category description"``), what a reviewer picks from."""

    name: str
    code: str | None
    description: str
    source: str
    score: float = 1.0
    matched_text: str = ""
    alternatives: str = ""


def match_text(names: list[str]) -> list[tuple[str, str, float]]:
    """Best ICD-10-CM ``(code, matched text, score)`` per name (``("", "", 0.0)`` when nothing
    matches): see :mod:`raddiag.knowledge.textmatch` (normalised spelling and organ words, index
    terms, anatomy and context penalties over the character n-gram and word TF-IDF cosines)."""
    return [picks[0] if picks else ("", "", 0.0) for picks in match_candidates(names, 1)]


def read_mapping(path: str | os.PathLike) -> dict[str, str | None]:
    """A reviewed mapping CSV (``name,code[,...]``; an empty code means "no code") -> ``{name: code}``.
    Every problem is a ValueError naming the file and row: a missing column, an invalid code, a name twice."""
    import csv

    overrides: dict[str, str | None] = {}
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"name", "code"} <= set(reader.fieldnames):
                raise ValueError(f"{path}: expected a CSV with columns name, code (got {reader.fieldnames})")
            for row_number, row in enumerate(reader, start=2):
                name, raw = (row.get("name") or "").strip(), (row.get("code") or "").strip()
                if not name:
                    continue
                code = normalise_code(raw) if raw else None
                if raw and code is None:
                    raise ValueError(f"{path}, row {row_number}: {raw!r} is not an ICD-10-CM code (for {name!r}); fix it or leave it empty")
                if name in overrides:
                    raise ValueError(f"{path}, row {row_number}: {name!r} appears twice")
                overrides[name] = code
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the mapping CSV ({type(exc).__name__})") from None
    return overrides


def review_key(m: LabelMapping) -> tuple:
    """Sort key of the review order: text-decided rows weakest score first, then curated (judgements first), given,
    override, normal."""
    return (SOURCE_ORDER.get(m.source, 5), m.score if m.source in SCORED_SOURCES else 0, m.name)


def write_mapping(mappings: list[LabelMapping], path: str | os.PathLike | None = None) -> str:
    """The reviewable mapping as CSV text (name, code, source, score, description, matched_text,
    alternatives), in review order (:func:`review_key`): the labels text matching decided, weakest score first
    (unmatched ones, then matched ones), then the curated table's, the data's codes, the overrides and "normal";
    written to ``path`` when given.
    On hand-checked held-out names, reviewing the first 20% of text-matched rows in this order took the
    mapping from 82% to 93% right (``bench/icd_review.py``, BENCHMARKS.md)."""
    import csv
    import io

    rows = sorted(mappings, key=review_key)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["name", "code", "source", "score", "description", "matched_text", "alternatives"])
    for m in rows:
        writer.writerow([m.name, m.code or "", m.source, f"{m.score:.3f}", m.description, m.matched_text, m.alternatives])
    if path is not None:
        with open(path, "w", newline="", encoding="utf-8") as handle:
            handle.write(buffer.getvalue())
    return buffer.getvalue()


def map_labels(
    names: list[str], codes: list[str | None] | None = None, cache_dir: str | os.PathLike | None = None,
    threshold: float = MATCH_THRESHOLD, overrides: dict[str, str | None] | None = None, curated: bool = True,
) -> list[LabelMapping]:
    """Tie each label name to an ICD-10-CM code: a reviewed ``overrides`` entry first (source
    "override"), then the given code when valid (from the data: ingest pairs each disorder with the
    code its cases carry most often), then, with ``curated``, the bundled curated table's code for an RP3D
    vocabulary name (:mod:`raddiag.knowledge.curated`), else the best text match over descriptions and
    inclusion terms (:func:`match_text`) when its score reaches ``threshold``; below it the label is
    "unmatched" (no code, its own name as description). Text matches are logged with their scores. A label
    named "normal" gets no code and a fixed description. (``cache_dir`` is accepted for compatibility.)"""
    if codes is not None and len(codes) != len(names):
        raise ValueError(f"codes has {len(codes)} entries but names has {len(names)}")
    given = [normalise_code(c) for c in (codes or [None] * len(names))]
    mappings: list[LabelMapping | None] = [None] * len(names)
    to_match = []
    overrides = overrides or {}
    table = curated_codes.lookup(names) if curated else [None] * len(names)
    for index, (name, code, row) in enumerate(zip(names, given, table)):
        if name in overrides:
            fixed = overrides[name]
            mappings[index] = LabelMapping(name, fixed, description(fixed) if fixed else name, "override")
        elif code is not None:
            mappings[index] = LabelMapping(name, code, description(code), "given")
        elif name.strip().lower() == "normal":
            mappings[index] = LabelMapping(name, None, NORMAL_DESCRIPTION, "normal")
        elif row is not None:
            others = "; ".join(f"{c} {description(c)}" for c in row.alternatives.split())  # valid categories (checked at build)
            score = 1.0 if row.confidence == "index" else JUDGEMENT_SCORE
            mappings[index] = LabelMapping(name, row.code, description(row.code), "curated", score, row.index_entry, others)
        else:
            to_match.append(index)
    if to_match:
        for index, picks in zip(to_match, match_candidates([names[i] for i in to_match], k=1 + ALTERNATIVES)):
            code, text, score = picks[0] if picks else ("", "", 0.0)
            others = "; ".join(f"{c} ({s:.2f}) {t}" for c, t, s in picks[1:])
            if code and score >= threshold:
                mappings[index] = LabelMapping(names[index], code, description(code), "matched", round(score, 3), text, others)
            else:
                mappings[index] = LabelMapping(names[index], None, names[index], "unmatched", round(score, 3), text, others)
        log_text_matches([mappings[i] for i in to_match], threshold)
    return [m for m in mappings if m is not None]


def log_text_matches(mappings: list[LabelMapping], threshold: float) -> None:
    """Warn about the labels text matching decided (matched, and left unmatched), with their scores: the
    rows a reviewer should check. Said again when a cached table is reused, so a run never hides them."""
    for source in ("matched", "unmatched"):
        shown = [m for m in mappings if m.source == source]
        if shown:
            listed = ", ".join(
                f"{m.name!r}->{m.code or 'none'} ({m.score:.2f}{'' if m.code else ', best: ' + repr(m.matched_text)})"
                for m in shown[:10])
            more = f" and {len(shown) - 10} more" if len(shown) > 10 else ""
            log.warning("%d label(s) without a valid ICD-10-CM code %s by text (threshold %.2f): %s%s",
                        len(shown), "matched" if source == "matched" else "left UNMATCHED", threshold, listed, more)


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
    return embed_and_map(names, cfg, codes, cache_dir)[0]


def embed_and_map(
    names: list[str],
    cfg: KEConfig,
    codes: list[str | None] | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[np.ndarray, list[LabelMapping]]:
    """:func:`embed_labels` with the mapping each row's text came from."""
    if not names:
        raise ValueError("embed_labels needs at least one label name")
    cache_dir = cache_dir or cfg.cache_dir or None
    overrides = read_mapping(cfg.mapping) if cfg.mapping else None
    mappings = map_labels(list(names), codes, cache_dir, cfg.match_threshold, overrides, cfg.curated)
    table = np.asarray(get_text_encoder(cfg, cache_dir).encode(label_texts(mappings, cfg.template)), dtype=np.float32)
    if table.shape != (len(names), cfg.dim):
        raise ValueError(f"encoder {cfg.encoder!r} returned {table.shape}, expected ({len(names)}, {cfg.dim})")
    return table, mappings
