"""Label text embeddings for the KE head (TF-IDF encoder over the offline ICD-10-CM corpus)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from raddiag.config import KEConfig
from raddiag.knowledge import TfidfEncoder, embed_labels, icd_corpus, load_icd, map_labels

BLOCKS = {
    "J09-J18": ["J12", "J13", "J15", "J18"],
    "C30-C39": ["C32", "C33", "C34", "C38"],
    "K35-K38": ["K35", "K36", "K37", "K38"],
    "S70-S79": ["S70", "S72", "S73", "S76"],
    "I20-I25": ["I20", "I21", "I24", "I25"],
}


@pytest.fixture(scope="session")
def ke_cfg(tmp_path_factory) -> KEConfig:
    return KEConfig(cache_dir=str(tmp_path_factory.getbasetemp() / "raddiag-cache"))  # shared by the session


def test_shape_dtype_normalised_and_deterministic(ke_cfg):
    names = ["Pneumonia", "Lung cancer", "Normal", "Appendicitis"]
    first = embed_labels(names, ke_cfg, codes=["J18", None, None, "K35"])
    again = embed_labels(names, ke_cfg, codes=["J18", None, None, "K35"])
    assert first.shape == (4, ke_cfg.dim) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(first, again)


def test_fit_is_deterministic():
    corpus = icd_corpus(load_icd())[:3000]
    a = TfidfEncoder.fit(corpus, 16).encode(["viral pneumonia", "fracture of femur"])
    b = TfidfEncoder.fit(corpus, 16).encode(["viral pneumonia", "fracture of femur"])
    np.testing.assert_array_equal(a, b)


def test_fit_does_not_depend_on_the_callers_blas_threads():
    """A Ray worker (OMP_NUM_THREADS=1) and a driver with every core fit, and cache, the same encoder: with two
    BLAS threads the randomized SVD once differed by ~2e-5, enough to send a KE run on another trajectory."""
    from threadpoolctl import threadpool_limits

    corpus = icd_corpus(load_icd())[:4000]
    texts = corpus[:50]
    with threadpool_limits(1):
        one = TfidfEncoder.fit(corpus, 32).encode(texts)
    with threadpool_limits(2):
        two = TfidfEncoder.fit(corpus, 32).encode(texts)
    np.testing.assert_array_equal(one, two)


def test_labels_in_one_icd_block_are_closer_than_unrelated(ke_cfg):
    from raddiag.knowledge.icd import description

    codes = [code for block in BLOCKS.values() for code in block]
    names = [description(code) for code in codes]
    block_of = np.repeat(np.arange(len(BLOCKS)), [len(b) for b in BLOCKS.values()])
    table = embed_labels(names, ke_cfg, codes=codes)
    sims = table @ table.T
    same = block_of[:, None] == block_of[None, :]
    off_diagonal = ~np.eye(len(codes), dtype=bool)
    assert sims[same & off_diagonal].mean() > sims[~same].mean() + 0.1


def test_missing_or_invalid_codes_are_matched_and_reported(ke_cfg, caplog):
    with caplog.at_level(logging.WARNING):
        mappings = map_labels(["Appendicitis", "Fracture of femur", "Normal"], ["J18", "not-a-code", None],
                              cache_dir=ke_cfg.cache_dir, curated=False)
    assert [m.source for m in mappings] == ["given", "matched", "normal"]
    assert mappings[0].code == "J18" and mappings[1].code.startswith("S72")
    assert "Fracture of femur" in caplog.text


def test_template_fields_and_errors(ke_cfg):
    table = embed_labels(["Pneumonia"], ke_cfg.model_copy(update={"template": "{code}: {name}"}), codes=["J18"])
    assert table.shape == (1, ke_cfg.dim)
    with pytest.raises(ValueError, match="template"):
        embed_labels(["Pneumonia"], ke_cfg.model_copy(update={"template": "{synonym}"}))
