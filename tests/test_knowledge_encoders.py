"""Trained ICD text encoder, local Hugging Face encoder and the versioned knowledge build."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from raddiag.config import KEConfig
from raddiag.knowledge import build_knowledge, embed_labels, load_icd
from raddiag.knowledge.encoder import TextTrainConfig, TrainedTextEncoder, soft_info_nce, train_text_encoder
from raddiag.knowledge.evaluate import evaluate_encoder, held_out_synonyms


@pytest.fixture(scope="module")
def respiratory():
    return tuple(e for e in load_icd() if e.code.startswith("J") or e.code in ("10", "J00-J06"))


@pytest.fixture(scope="module")
def tiny_encoder(respiratory):
    cfg = TextTrainConfig(dim=16, hidden=32, vocab_size=400, steps=30, groups=8, group_size=3, random_codes=16)
    return train_text_encoder(cfg, held_out={"Common cold"}, entries=respiratory)


def test_soft_info_nce_prefers_aligned_pairs():
    x = torch.nn.functional.normalize(torch.randn(8, 4), dim=-1)
    targets = torch.eye(8)
    scale = torch.tensor(np.log(1 / 0.07), dtype=torch.float32)
    aligned = soft_info_nce(x, x, targets, scale)
    shuffled = soft_info_nce(x, x[torch.randperm(8)], targets, scale)
    assert aligned < shuffled and torch.isfinite(aligned)


def test_trained_encoder_roundtrip_and_metrics(tiny_encoder, respiratory, tmp_path):
    texts = ["Acute bronchitis", "Pneumonia, unspecified organism"]
    table = tiny_encoder.encode(texts)
    assert table.shape == (2, 16) and table.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(table, axis=1), 1.0, atol=1e-5)
    tiny_encoder.save(tmp_path / "enc")
    np.testing.assert_allclose(TrainedTextEncoder.load(tmp_path / "enc").encode(texts), table, atol=1e-6)
    held = held_out_synonyms(respiratory, 0.2)
    metrics = evaluate_encoder(tiny_encoder.encode, held, respiratory, n_triples=200)
    assert set(metrics) == {"synonym_r1", "synonym_r10", "hierarchy"}
    assert all(0 <= v <= 1 for v in metrics.values())


def test_trained_encoder_from_path_via_config(tiny_encoder, tmp_path):
    tiny_encoder.save(tmp_path / "enc")
    cfg = KEConfig(encoder="trained", encoder_path=str(tmp_path / "enc"), dim=16, cache_dir=str(tmp_path))
    assert embed_labels(["Acute bronchitis"], cfg, codes=["J20"]).shape == (1, 16)


def test_hf_encoder_directory_tiny_random_bert(tmp_path):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    words = ["pneumonia", "acute", "bronchitis", "lung", "fracture", "of", "femur", "normal", "unspecified"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer()
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.train_from_iterator(words * 5, trainers.WordPieceTrainer(
        vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                                cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    config = transformers.BertConfig(vocab_size=fast.vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(tmp_path / "bert")
    fast.save_pretrained(tmp_path / "bert")
    cfg = KEConfig(encoder="hf", encoder_path=str(tmp_path / "bert"), dim=32, cache_dir=str(tmp_path))
    table = embed_labels(["Acute bronchitis", "Fracture of femur"], cfg, codes=["J20", "S72"])
    assert table.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(table, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="ke.dim"):
        embed_labels(["Acute bronchitis"], cfg.model_copy(update={"dim": 16}), codes=["J20"])


def test_build_knowledge_is_versioned_and_cached(tmp_path, tmp_path_factory):
    cfg = KEConfig(cache_dir=str(tmp_path_factory.getbasetemp() / "raddiag-cache"))  # TF-IDF fit shared
    store = str(tmp_path / "store")
    first = build_knowledge(["Pneumonia", "Normal"], cfg, codes=["J18", None], store_url=store)
    assert first.embeddings.shape == (2, cfg.dim)
    meta = json.loads((tmp_path / "store" / "knowledge" / first.version / "meta.json").read_text())
    assert meta["mapping_counts"] == {"given": 1, "matched": 0, "normal": 1}
    again = build_knowledge(["Pneumonia", "Normal"], cfg, codes=["J18", None], store_url=store)
    assert again.version == first.version
    np.testing.assert_array_equal(again.embeddings, first.embeddings)
    other = build_knowledge(["Pneumonia"], cfg, codes=["J18"], store_url=store)
    assert other.version != first.version
