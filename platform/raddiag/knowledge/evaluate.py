"""Intrinsic evaluation of label text encoders against a character n-gram TF-IDF baseline.

- Synonym retrieval: held-out ICD-10-CM inclusion terms (never seen in training) query the gallery
  of unique category/subcategory descriptions; R@1 / R@10 = the term's own code description ranks
  first / in the top 10.
- Hierarchy consistency: for triples (code, sibling, non-sibling of the same depth), the fraction
  where the sibling is closer than the non-sibling.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from raddiag.knowledge.icd import IcdEntry, icd_corpus, load_icd

Encode = Callable[[list[str]], np.ndarray]


def held_out_synonyms(entries: tuple[IcdEntry, ...], fraction: float = 0.1, seed: int = 0) -> dict[str, str]:
    """``{inclusion term: code}`` for a random ``fraction`` of terms that differ from every description."""
    descriptions = {e.description.lower() for e in entries}
    terms = sorted({(s, e.code) for e in entries if e.kind in ("category", "subcategory") for s in e.synonyms
                    if s.lower() not in descriptions})
    rng = random.Random(seed)
    chosen = rng.sample(terms, int(len(terms) * fraction))
    return dict(chosen)


def _rank_metrics(query: np.ndarray, gallery: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    hits1 = hits10 = 0
    for start in range(0, query.shape[0], 512):
        sims = query[start : start + 512] @ gallery.T
        sims = np.asarray(sims.todense()) if hasattr(sims, "todense") else sims
        top = np.argpartition(-sims, 10, axis=1)[:, :10]
        true = truth[start : start + 512]
        true_score = sims[np.arange(len(true)), true]
        hits10 += int(np.sum(np.any(top == true[:, None], axis=1)))
        hits1 += int(np.sum((sims > true_score[:, None]).sum(1) == 0))
    return {"synonym_r1": hits1 / query.shape[0], "synonym_r10": hits10 / query.shape[0]}


def evaluate_encoder(encode: Encode, held_out: dict[str, str], entries: tuple[IcdEntry, ...] | None = None,
                     n_triples: int = 3000, seed: int = 0) -> dict[str, float]:
    """Synonym R@1/R@10 and hierarchy consistency for ``encode`` (texts -> normalised rows)."""
    entries = entries or load_icd()
    codes = [e for e in entries if e.kind in ("category", "subcategory")]
    gallery_texts = sorted({e.description for e in codes})
    position = {text: i for i, text in enumerate(gallery_texts)}
    by_code = {e.code: e for e in codes}
    queries = sorted(held_out)
    truth = np.array([position[by_code[held_out[q]].description] for q in queries])
    metrics = _rank_metrics(encode(queries), encode(gallery_texts), truth)
    metrics["hierarchy"] = hierarchy_consistency(encode, codes, n_triples, seed)
    return metrics


def hierarchy_consistency(encode: Encode, codes: list[IcdEntry], n_triples: int = 3000, seed: int = 0) -> float:
    """Fraction of (code, sibling, same-depth non-sibling) triples where the sibling is closer."""
    rng = random.Random(seed)
    groups: dict[str, list[IcdEntry]] = {}
    for e in codes:
        if e.parent:
            groups.setdefault(e.parent, []).append(e)
    by_depth: dict[int, list[IcdEntry]] = {}
    for e in codes:
        by_depth.setdefault(e.level, []).append(e)
    families = sorted((k for k, v in groups.items() if len(v) >= 2))
    triples = []
    while len(triples) < n_triples:
        kids = groups[rng.choice(families)]
        code, sibling = rng.sample(kids, 2)
        other = rng.choice(by_depth[code.level])
        if other.parent != code.parent and other.description != sibling.description:
            triples.append((code.description, sibling.description, other.description))
    a, s, o = (encode([t[i] for t in triples]) for i in range(3))
    sim = lambda x, y: np.asarray(x.multiply(y).sum(1)).ravel() if hasattr(x, "multiply") else (x * y).sum(1)  # noqa: E731
    return float(np.mean(sim(a, s) > sim(a, o)))


def tfidf_baseline(held_out: dict[str, str], entries: tuple[IcdEntry, ...] | None = None) -> Encode:
    """Raw (sparse, L2-normalised) char 3-5-gram TF-IDF fit on the corpus minus held-out terms."""
    entries = entries or load_icd()
    corpus = [t for t in icd_corpus(entries) if t not in held_out]
    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True, min_df=2,
                                 max_features=2**16, dtype=np.float32).fit(corpus)
    return vectorizer.transform


def compare_encoders(dim: int = 64, steps: int = 1500, fraction: float = 0.1, seed: int = 0,
                     train: dict | None = None) -> dict[str, dict[str, float]]:
    """Train the text encoder without the held-out terms and evaluate it beside the TF-IDF baselines
    (raw sparse, and SVD-projected to ``dim``), all in the same run. ``train`` overrides other
    :class:`TextTrainConfig` fields. Returns ``{name: metrics}`` (the trained one with ``train_seconds``)."""
    import time

    from raddiag.knowledge.encoder import TextTrainConfig, train_text_encoder
    from raddiag.knowledge.tfidf import TfidfEncoder

    entries = load_icd()
    held_out = held_out_synonyms(entries, fraction, seed)
    results = {"tfidf_char_sparse": evaluate_encoder(tfidf_baseline(held_out, entries), held_out, entries)}
    corpus = [t for t in icd_corpus(entries) if t not in held_out]
    results[f"tfidf_svd{dim}"] = evaluate_encoder(TfidfEncoder.fit(corpus, dim).encode, held_out, entries)
    start = time.perf_counter()
    cfg = TextTrainConfig(**{"dim": dim, "steps": steps, "seed": seed, **(train or {})})
    encoder = train_text_encoder(cfg, set(held_out), entries)
    seconds = time.perf_counter() - start
    results[f"trained_d{dim}"] = evaluate_encoder(encoder.encode, held_out, entries) | {"train_seconds": round(seconds, 1)}
    return results


def beats_baseline(results: dict[str, dict[str, float]], baseline: str = "tfidf_char_sparse") -> dict[str, bool]:
    """``{encoder: True}`` when it is above ``baseline`` on synonym R@1, R@10 and hierarchy."""
    keys = ("synonym_r1", "synonym_r10", "hierarchy")
    return {name: all(m[k] > results[baseline][k] for k in keys) for name, m in results.items() if name != baseline}


def format_results(results: dict[str, dict[str, float]]) -> str:
    lines = ["| encoder | synonym R@1 | synonym R@10 | hierarchy |", "| --- | --- | --- | --- |"]
    for name, m in results.items():
        lines.append(f"| {name} | {m['synonym_r1']:.3f} | {m['synonym_r10']:.3f} | {m['hierarchy']:.3f} |")
    return "\n".join(lines)
