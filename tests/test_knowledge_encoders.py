"""Trained ICD text encoder, local Hugging Face encoder, the versioned knowledge build (store cache,
MLflow), ``raddiag knowledge`` and KE settings in sweep search spaces."""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest
import torch

from raddiag.config import KEConfig
from raddiag.knowledge import build_knowledge, embed_labels, get_text_encoder, load_icd, map_labels
from raddiag.knowledge import encoder as encoder_module
from raddiag.knowledge.build import knowledge_version
from raddiag.knowledge.encoder import TextTrainConfig, TrainedTextEncoder, soft_info_nce, train_text_encoder
from raddiag.knowledge.evaluate import beats_baseline, evaluate_encoder, held_out_synonyms
from raddiag.tracking import Tags

TINY = TextTrainConfig(dim=16, hidden=32, vocab_size=400, char_features=4000, word_features=2000, steps=30,
                       groups=8, group_size=3, synonym_codes=16, random_codes=16)


@pytest.fixture(scope="module")
def respiratory():
    return tuple(e for e in load_icd() if e.code.startswith("J") or e.code in ("10", "J00-J06"))


@pytest.fixture(scope="module")
def tiny_encoder(respiratory):
    return train_text_encoder(TINY, held_out={"Common cold"}, entries=respiratory)


@pytest.fixture(scope="module")
def tiny_encoder_dir(tiny_encoder, tmp_path_factory):
    return tiny_encoder.save(tmp_path_factory.mktemp("textenc") / "enc")


def tiny_ke(encoder_dir, tmp_path, **update) -> KEConfig:
    return KEConfig(encoder="trained", encoder_path=str(encoder_dir), dim=16, cache_dir=str(tmp_path), **update)


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
    assert beats_baseline({"tfidf_char_sparse": metrics, "x": {**metrics, "synonym_r1": 2.0}}) == {"x": False}


def test_trained_encoder_from_path_via_config(tiny_encoder_dir, tmp_path):
    assert embed_labels(["Acute bronchitis"], tiny_ke(tiny_encoder_dir, tmp_path), codes=["J20"]).shape == (1, 16)


def test_trained_encoder_cached_by_content_hash_not_retrained_per_sweep_setting(tiny_encoder, tmp_path, monkeypatch):
    calls = []

    def fake_train(cfg, held_out=None, entries=None):
        calls.append(cfg)
        return tiny_encoder

    monkeypatch.setattr(encoder_module, "train_text_encoder", fake_train)
    base = KEConfig(encoder="trained", dim=16, text_train_steps=5, cache_dir=str(tmp_path))
    for update in ({}, {"template": "{name}"}, {"temperature_init": 0.2}, {"learn_temperature": False},
                   {"train_projection": False}, {"prior_bias": True}):
        get_text_encoder(base.model_copy(update=update))
    assert len(calls) == 1  # KE head settings never retrain the text encoder
    get_text_encoder(base.model_copy(update={"text_train_steps": 6}))
    assert len(calls) == 2 and len(list(tmp_path.glob("textenc-*/model.pt"))) == 2


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
    assert not np.allclose(table[0], table[1])
    with pytest.raises(ValueError, match="ke.dim"):
        embed_labels(["Acute bronchitis"], cfg.model_copy(update={"dim": 16}), codes=["J20"])


def test_build_knowledge_is_versioned_cached_in_store_and_logged_to_mlflow(tiny_encoder_dir, tmp_path):
    import mlflow

    cfg = tiny_ke(tiny_encoder_dir, tmp_path)
    store, uri = str(tmp_path / "store"), f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = build_knowledge(["Pneumonia", "Normal"], cfg, codes=["J18", None], store_url=store, tracking_uri=uri,
                            experiment="ke-tests")
    assert first.embeddings.shape == (2, 16) and not first.meta.get("cached")
    meta = json.loads((tmp_path / "store" / "knowledge" / first.version / "meta.json").read_text())
    assert meta["mapping_counts"] == {"override": 0, "given": 1, "curated": 0, "matched": 0, "unmatched": 0, "normal": 1}

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("ke-tests")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags[Tags.KNOWLEDGE_VERSION] == first.version
    assert run.data.params["ke.encoder"] == "trained" and run.data.params["knowledge.version"] == first.version
    assert run.data.metrics["knowledge.given"] == 1 and run.data.metrics["knowledge.dim"] == 16
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "knowledge")}
    assert artifacts == {"knowledge/embeddings.npy", "knowledge/labels.json", "knowledge/mapping.csv", "knowledge/meta.json"}
    logged = np.load(client.download_artifacts(run.info.run_id, "knowledge/embeddings.npy", str(tmp_path)))
    np.testing.assert_array_equal(logged, first.embeddings)

    again = build_knowledge(["Pneumonia", "Normal"], cfg, codes=["J18", None], store_url=store, tracking_uri=uri,
                            experiment="ke-tests")
    assert again.version == first.version and again.meta["cached"]
    np.testing.assert_array_equal(again.embeddings, first.embeddings)
    assert len(client.search_runs([experiment.experiment_id])) == 1  # one run per version
    other = build_knowledge(["Pneumonia"], cfg.model_copy(update={"template": "{name}"}), codes=["J18"], store_url=store)
    assert other.version != first.version
    assert knowledge_version(["Pneumonia"], ["J18"], cfg.model_copy(update={"curated": False})) != knowledge_version(["Pneumonia"], ["J18"], cfg)


def test_unmatched_labels_are_reported_not_silently_mapped(caplog):
    with caplog.at_level(logging.WARNING):
        mappings = map_labels(["1p19q codeletion", "Pulmonary embolism"], [None, None], curated=False)  # a molecular marker: no ICD-10-CM term
    marker, embolism = mappings
    assert marker.source == "unmatched" and marker.code is None and marker.description == "1p19q codeletion"
    assert 0 <= marker.score < 0.4 and marker.matched_text  # the best (rejected) candidate is kept for the report
    assert embolism.source == "matched" and embolism.code.startswith("I26") and embolism.score > 0.9
    assert "UNMATCHED" in caplog.text and "1p19q codeletion" in caplog.text


def _cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    from raddiag.cli import main

    monkeypatch.setattr(sys, "argv", ["raddiag", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    captured = capsys.readouterr()
    return exit_.value.code or 0, captured.out + captured.err


def test_cli_knowledge_build_and_misuse(tiny_encoder_dir, tmp_path, monkeypatch, capsys):
    labels = tmp_path / "labels.tsv"
    labels.write_text("Pneumonia\tJ18\nNormal\nPulmonary embolism\n")
    sets = ["--set", f"store.url={tmp_path / 'store'}", "--set", "model.ke.encoder=trained",
            "--set", f"model.ke.encoder_path={tiny_encoder_dir}", "--set", "model.ke.dim=16",
            "--set", f"model.ke.cache_dir={tmp_path}"]
    code, out = _cli(monkeypatch, capsys, "knowledge", "build", "--labels", str(labels), "--no-track", *sets)
    assert code == 0, out
    assert "I26" in out and "knowledge table" in out and (tmp_path / "store" / "knowledge").is_dir()
    code, out = _cli(monkeypatch, capsys, "knowledge", "build", "--labels", str(labels), "--no-track", *sets)
    assert code == 0 and "(cached)" in out
    code, out = _cli(monkeypatch, capsys, "knowledge", "build", "--labels", str(tmp_path / "missing.txt"), *sets)
    assert code == 2 and "missing.txt" in out
    code, out = _cli(monkeypatch, capsys, "knowledge", "build", "--labels", str(labels), "--no-track", *sets,
                     "--set", "model.ke.encoder=hf", "--set", "model.ke.encoder_path=")
    assert code == 2 and "encoder_path" in out
    code, out = _cli(monkeypatch, capsys, "knowledge", "build", "--set", "model.ke.encoder=bert")
    assert code == 2 and "model.ke.encoder" in out
    code, out = _cli(monkeypatch, capsys, "knowledge", "evaluate", "--steps", "-1")
    assert code == 2


KE_SPACE = {
    "model.head": {"choice": ["mlp", "ke"]},
    "model.ke.encoder": {"choice": ["tfidf", "trained", "hf"], "when": {"model.head": "ke"}},
    "model.ke.template": {"choice": ["{name}. {description}", "{description}", "{name} ({code})"],
                          "when": {"model.head": "ke"}},
    "model.ke.temperature_init": {"loguniform": [0.03, 0.2], "when": {"model.head": "ke"}},
    "model.ke.learn_temperature": {"choice": [True, False], "when": {"model.head": "ke"}},
    "model.ke.train_projection": {"choice": [True, False], "when": {"model.head": "ke"}},
}


def test_ke_settings_are_sweepable_dotted_keys():
    import optuna

    from raddiag.config import RadDiagConfig, SweepConfig, with_overrides
    from raddiag.tune.sweep import DefineByRun

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    SweepConfig(search_space=KE_SPACE)  # the space itself validates
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        DefineByRun(KE_SPACE)(trial)
        cfg = with_overrides(RadDiagConfig(), trial.params)
        ke = cfg.model.ke
        if cfg.model.head == "ke":
            assert set(trial.params) == set(KE_SPACE)
            assert (ke.encoder, ke.template, ke.temperature_init, ke.learn_temperature, ke.train_projection) == (
                trial.params["model.ke.encoder"], trial.params["model.ke.template"],
                trial.params["model.ke.temperature_init"], trial.params["model.ke.learn_temperature"],
                trial.params["model.ke.train_projection"])
        else:
            assert set(trial.params) == {"model.head"} and ke == RadDiagConfig().model.ke
        seen.add(cfg.model.head)
        study.tell(trial, 0.5)
    assert seen == {"mlp", "ke"}
