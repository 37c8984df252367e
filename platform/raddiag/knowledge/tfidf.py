"""Character n-gram TF-IDF + truncated SVD text encoder, fit on the ICD-10-CM corpus and cached on disk.

It is the first KE encoder and the baseline every learned encoder is compared with.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from raddiag.knowledge.icd import icd_corpus, icd_version, load_icd

if TYPE_CHECKING:  # scikit-learn takes seconds to import: only fitting and encoding need it
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

log = logging.getLogger(__name__)
FORMAT_VERSION = 2  # 2: fitted on one BLAS thread (a v1 file depends on the thread count of the process that fitted it)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` or ``$RADDIAG_CACHE`` or ``~/.cache/raddiag``."""
    root = cache_dir or os.environ.get("RADDIAG_CACHE") or Path.home() / ".cache" / "raddiag"
    return Path(root).expanduser()


def l2_normalise(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.maximum(norms, 1e-12)).astype(np.float32)


class TfidfEncoder:
    """``encode(texts) -> (len(texts), dim)`` float32, L2-normalised. Deterministic."""

    def __init__(self, vectorizer: TfidfVectorizer, svd: TruncatedSVD) -> None:
        self.vectorizer = vectorizer
        self.svd = svd

    @property
    def dim(self) -> int:
        return int(self.svd.n_components)

    @classmethod
    def fit(cls, corpus: list[str], dim: int, svd_rows: int | None = None, seed: int = 0) -> "TfidfEncoder":
        """Fit char 3-5-gram TF-IDF on ``corpus`` and an SVD to ``dim`` on up to ``svd_rows`` rows."""
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer
        from threadpoolctl import threadpool_limits

        vectorizer = TfidfVectorizer(
            analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True, min_df=2, max_features=2**16, dtype=np.float32
        )
        matrix = vectorizer.fit_transform(corpus)
        rows = svd_rows or (20_000 if dim <= 256 else 12_000)
        if matrix.shape[0] > rows:
            matrix = matrix[np.random.default_rng(seed).permutation(matrix.shape[0])[:rows]]
        if dim >= min(matrix.shape):
            raise ValueError(f"ke.dim={dim} too large for the TF-IDF encoder (max {min(matrix.shape) - 1})")
        # One BLAS thread: the randomized SVD's dense products sum in another order with more threads (components
        # differ by ~3e-5), and a KE run amplifies that into another trajectory. A Ray worker (OMP_NUM_THREADS=1)
        # and a driver with every core must fit, and cache, the same encoder.
        with threadpool_limits(1):
            svd = TruncatedSVD(dim, algorithm="randomized", n_iter=3, random_state=seed).fit(matrix)
        return cls(vectorizer, svd)

    def sparse(self, texts: list[str]):
        """Raw TF-IDF rows (L2-normalised sparse), used for text matching."""
        return self.vectorizer.transform(texts)

    def encode(self, texts: list[str]) -> np.ndarray:
        return l2_normalise(self.svd.transform(self.vectorizer.transform(texts)))


def load_or_fit_tfidf(dim: int, cache_dir: str | os.PathLike | None = None) -> TfidfEncoder:
    """The ICD-10-CM TF-IDF encoder of dimension ``dim``, from the cache or fitted (< 20 s) and cached."""
    import joblib

    path = cache_root(cache_dir) / f"tfidf-icd10cm-{icd_version()}-d{dim}-v{FORMAT_VERSION}.joblib"
    if path.is_file():
        try:
            return joblib.load(path)
        except Exception as exc:  # a truncated or incompatible cache file is refit, not fatal
            log.warning("ignoring unreadable TF-IDF cache %s (%s)", path, exc)
    start = time.perf_counter()
    encoder = TfidfEncoder.fit(icd_corpus(load_icd()), dim)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    joblib.dump(encoder, tmp)
    os.replace(tmp, path)  # atomic: concurrent workers never read a half-written file
    log.info("fitted TF-IDF encoder d=%d in %.1fs -> %s", dim, time.perf_counter() - start, path)
    return encoder
