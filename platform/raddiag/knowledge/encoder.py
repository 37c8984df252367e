"""A small ICD-10-CM text encoder trained from scratch on CPU, plus a local Hugging Face encoder.

Trained encoder ("lexical + learned"):

- features: a text is a sparse TF-IDF vector over two vocabularies fit on the ICD corpus, character
  3-5-grams within words (the baseline's features) and sub-word unigrams + bigrams of a BPE tokenizer
  (``tokenizers``) trained on the same corpus;
- model: a learned linear map of that sparse vector to ``dim`` (``EmbeddingBag``, TF-IDF weights as
  per-sample weights; initialised as a random projection, so lexical overlap is preserved from step 0)
  plus a residual MLP, L2-normalised;
- loss: soft InfoNCE with a learnable temperature (init 0.07) over in-batch positives: texts of the
  same code (description <-> inclusion terms, n-gram-dropout variants; target 1) and child <-> parent
  (target ``parent_weight``). Batches are built from sibling groups, so siblings are hard negatives.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import joblib
import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from sklearn.feature_extraction.text import TfidfVectorizer
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from torch import nn

from raddiag.knowledge.icd import IcdEntry, icd_corpus, icd_version, load_icd
from raddiag.knowledge.tfidf import cache_root, l2_normalise

log = logging.getLogger(__name__)
FORMAT_VERSION = 2


@dataclass(frozen=True)
class TextTrainConfig:
    """Trained encoder hyper-parameters (defaults train in a few minutes on 2 cores)."""

    dim: int = 64
    hidden: int = 512  # residual MLP width
    vocab_size: int = 8000  # BPE vocabulary
    char_features: int = 2**17  # char 3-5-gram vocabulary cap
    word_features: int = 2**16  # BPE unigram + bigram vocabulary cap
    steps: int = 1500
    groups: int = 64  # sibling groups per batch
    group_size: int = 4  # siblings per group
    synonym_codes: int = 256  # codes with inclusion terms per batch (anchor = a synonym)
    random_codes: int = 256  # extra codes per batch
    lr: float = 2e-3
    temperature_init: float = 0.07
    parent_weight: float = 0.3
    parent_view_p: float = 0.15  # a positive is the parent's description with this probability
    feature_dropout: float = 0.2  # n-gram dropout of anchors and positives
    seed: int = 0

    def key(self) -> str:
        """Content hash of the settings, the ICD data and the format (the cache key)."""
        payload = json.dumps({"cfg": asdict(self), "icd": icd_version(), "format": FORMAT_VERSION}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def train_tokenizer(corpus: list[str], vocab_size: int) -> Tokenizer:
    """Lower-cased BPE tokenizer fit on ``corpus``."""
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKD(), normalizers.StripAccents(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(True)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["[UNK]"], show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer


def token_ngrams(tokens: list[str]) -> list[str]:
    """Sub-word unigrams and bigrams (the analyzer of the word-level TF-IDF)."""
    return tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:])]


class Featurizer:
    """Texts -> sparse TF-IDF rows ``[char 3-5-grams | BPE uni+bigrams]`` / sqrt(2), unit L2 norm."""

    def __init__(self, tokenizer: Tokenizer, chars: TfidfVectorizer, words: TfidfVectorizer) -> None:
        self.tokenizer, self.chars, self.words = tokenizer, chars, words

    @property
    def size(self) -> int:
        return len(self.chars.vocabulary_) + len(self.words.vocabulary_)

    @classmethod
    def fit(cls, corpus: list[str], cfg: "TextTrainConfig") -> "Featurizer":
        tokenizer = train_tokenizer(corpus, cfg.vocab_size)
        chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True, min_df=2,
                                max_features=cfg.char_features, dtype=np.float32).fit(corpus)
        words = TfidfVectorizer(analyzer=token_ngrams, sublinear_tf=True, min_df=2, max_features=cfg.word_features,
                                dtype=np.float32).fit(cls._tokens(tokenizer, corpus))
        return cls(tokenizer, chars, words)

    @staticmethod
    def _tokens(tokenizer: Tokenizer, texts: list[str]) -> list[list[str]]:
        return [encoding.tokens for encoding in tokenizer.encode_batch(list(texts))]

    def transform(self, texts: list[str]) -> sp.csr_matrix:
        char_rows = self.chars.transform(texts)
        word_rows = self.words.transform(self._tokens(self.tokenizer, texts))
        return (sp.hstack([char_rows, word_rows], format="csr", dtype=np.float32) * (1 / math.sqrt(2))).tocsr()


class SparseResidualEncoder(nn.Module):
    """Sparse feature rows -> ``(n, dim)``: ``h = W^T x`` (EmbeddingBag) then ``h + MLP(LN(h))``."""

    def __init__(self, n_features: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(n_features, dim, mode="sum", sparse=True)
        nn.init.normal_(self.bag.weight, std=1 / math.sqrt(dim))  # a random projection: keeps cosines
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, rows: sp.csr_matrix) -> torch.Tensor:
        rows = rows.tocsr()
        indices = torch.from_numpy(rows.indices.astype(np.int64))
        offsets = torch.from_numpy(rows.indptr[:-1].astype(np.int64))
        weights = torch.from_numpy(rows.data.astype(np.float32))
        h = self.bag(indices, offsets, per_sample_weights=weights)
        return h + self.mlp(h)


class TrainedTextEncoder:
    """``encode(texts) -> (n, dim)`` float32, L2-normalised. Saved as a directory."""

    def __init__(self, featurizer: Featurizer, model: SparseResidualEncoder, config: TextTrainConfig) -> None:
        self.featurizer = featurizer
        self.model = model.eval()
        self.config = config

    @property
    def dim(self) -> int:
        return self.config.dim

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 4096) -> np.ndarray:
        texts = list(texts)
        out = [self.model(self.featurizer.transform(texts[i : i + batch_size])).numpy()
               for i in range(0, len(texts), batch_size)]
        return l2_normalise(np.concatenate(out) if out else np.zeros((0, self.dim), np.float32))

    def save(self, directory: str | os.PathLike) -> Path:
        path = Path(directory)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        self.featurizer.tokenizer.save(str(tmp / "tokenizer.json"))
        joblib.dump({"chars": self.featurizer.chars, "words": self.featurizer.words}, tmp / "features.joblib")
        torch.save(self.model.state_dict(), tmp / "model.pt")
        (tmp / "config.json").write_text(json.dumps(asdict(self.config) | {"format": FORMAT_VERSION}, indent=2))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "TrainedTextEncoder":
        path = Path(directory)
        raw = json.loads((path / "config.json").read_text())
        if raw.pop("format", 1) != FORMAT_VERSION:
            raise ValueError(f"{path}: trained text encoder of an older format; retrain it (delete the folder)")
        config = TextTrainConfig(**{f.name: raw[f.name] for f in fields(TextTrainConfig) if f.name in raw})
        vectorizers = joblib.load(path / "features.joblib")
        featurizer = Featurizer(Tokenizer.from_file(str(path / "tokenizer.json")), vectorizers["chars"], vectorizers["words"])
        model = SparseResidualEncoder(featurizer.size, config.dim, config.hidden)
        model.load_state_dict(torch.load(path / "model.pt", map_location="cpu", weights_only=True))
        return cls(featurizer, model, config)


def soft_info_nce(anchors: torch.Tensor, positives: torch.Tensor, targets: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric soft InfoNCE. ``anchors``/``positives`` (n, d) normalised, ``targets`` (n, n) >= 0
    with a positive diagonal (rows/columns renormalised), ``log_scale`` = log(1/temperature)."""
    logits = log_scale.exp() * anchors @ positives.T
    rows = targets / targets.sum(1, keepdim=True)
    cols = targets.T / targets.T.sum(1, keepdim=True)
    return 0.5 * (-(rows * logits.log_softmax(1)).sum(1).mean() - (cols * logits.T.log_softmax(1)).sum(1).mean())


class _Views:
    """Per-code texts (row 0 = description, then training synonyms) as rows of one sparse matrix,
    and the hierarchy links, for batch sampling."""

    def __init__(self, entries: tuple[IcdEntry, ...], featurizer: Featurizer, held_out: set[str]) -> None:
        self.codes = [e.code for e in entries]
        self.index = {code: i for i, code in enumerate(self.codes)}
        texts = [[e.description, *(s for s in e.synonyms if s not in held_out)] for e in entries]
        self.rows = featurizer.transform([t for group in texts for t in group])
        self.first = np.cumsum([0] + [len(group) for group in texts])[:-1]
        self.count = np.array([len(group) for group in texts])
        self.with_synonyms = [i for i, n in enumerate(self.count) if n > 1]
        self.parent = np.array([self.index.get(e.parent, -1) if e.parent else -1 for e in entries])
        children: dict[int, list[int]] = {}
        for i, p in enumerate(self.parent):
            if p >= 0:
                children.setdefault(int(p), []).append(i)
        self.sibling_groups = [kids for kids in children.values() if len(kids) >= 2]


def _dropout(rows: sp.csr_matrix, p: float, rng: np.random.Generator) -> sp.csr_matrix:
    """Zero each stored n-gram weight with probability ``p`` (rows keep their structure)."""
    rows = rows.copy()
    rows.data = rows.data * (rng.random(rows.data.shape[0]) >= p)
    return rows


def _sample_batch(views: _Views, cfg: TextTrainConfig, rng: random.Random) -> tuple[list[int], list[int], list[int], list[int]]:
    """Codes, anchor rows, positive rows and positive codes for one batch."""
    batch = [i for g in rng.sample(views.sibling_groups, cfg.groups) for i in rng.sample(g, min(len(g), cfg.group_size))]
    synonym_codes = rng.sample(views.with_synonyms, min(cfg.synonym_codes, len(views.with_synonyms)))
    batch += synonym_codes + rng.sample(range(len(views.codes)), cfg.random_codes)
    first_synonym = len(batch) - cfg.random_codes - len(synonym_codes)
    anchors, positives, positive_codes = [], [], []
    for n, i in enumerate(batch):
        start, count = int(views.first[i]), int(views.count[i])
        if n >= first_synonym and n < first_synonym + len(synonym_codes):
            anchor, positive = start + rng.randrange(1, count), start  # inclusion term -> description
        else:
            anchor, positive = start + rng.randrange(count), start + rng.randrange(count)
        parent = int(views.parent[i])
        if parent >= 0 and rng.random() < cfg.parent_view_p:
            positive, code = int(views.first[parent]), parent
        else:
            code = i
        anchors.append(anchor)
        positives.append(positive)
        positive_codes.append(code)
    return batch, anchors, positives, positive_codes


def train_text_encoder(
    cfg: TextTrainConfig | None = None, held_out: set[str] | None = None, entries: tuple[IcdEntry, ...] | None = None
) -> TrainedTextEncoder:
    """Train the encoder on the ICD-10-CM knowledge base; terms in ``held_out`` are never seen."""
    cfg = cfg or TextTrainConfig()
    held_out = held_out or set()
    entries = entries or load_icd()
    start = time.perf_counter()
    rng = random.Random(cfg.seed)
    np_rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    corpus = [t for t in icd_corpus(entries) if t not in held_out]
    featurizer = Featurizer.fit(corpus, cfg)
    views = _Views(entries, featurizer, held_out)
    model = SparseResidualEncoder(featurizer.size, cfg.dim, cfg.hidden)
    log_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.temperature_init)))
    # the feature table is large and gets sparse gradients: SparseAdam for it, AdamW for the rest
    optimizers = [
        torch.optim.SparseAdam(list(model.bag.parameters()), lr=cfg.lr),
        torch.optim.AdamW([*model.mlp.parameters(), log_scale], lr=cfg.lr, weight_decay=1e-4),
    ]
    schedules = [
        torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.steps, pct_start=0.05) for opt in optimizers
    ]
    parents = torch.as_tensor(views.parent)
    log.info("text encoder: %d features, %d texts, %.0fs to featurise", featurizer.size, views.rows.shape[0],
             time.perf_counter() - start)
    model.train()
    for step in range(cfg.steps):
        batch, anchors, positives, positive_codes = _sample_batch(views, cfg, rng)
        a_codes, p_codes = torch.tensor(batch), torch.tensor(positive_codes)
        same = a_codes[:, None] == p_codes[None, :]
        related = (parents[a_codes][:, None] == p_codes[None, :]) | (a_codes[:, None] == parents[p_codes][None, :])
        targets = same.float() + cfg.parent_weight * (related & ~same).float()
        targets = targets + torch.eye(len(batch)) * (targets.diagonal() == 0).float()  # anchor i's own positive
        rows = _dropout(views.rows[anchors + positives], cfg.feature_dropout, np_rng)
        a, p = F.normalize(model(rows), dim=-1).split(len(batch))
        loss = soft_info_nce(a, p, targets, log_scale.clamp(max=math.log(100.0)))
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt, schedule in zip(optimizers, schedules):
            opt.step()
            schedule.step()
        if step % 250 == 0 or step == cfg.steps - 1:
            log.info("text encoder step %d loss %.3f temperature %.4f (%.0fs)", step, loss.item(),
                     (-log_scale).exp().item(), time.perf_counter() - start)
    log.info("trained text encoder in %.0fs", time.perf_counter() - start)
    return TrainedTextEncoder(featurizer, model, cfg)


def load_or_train_text_encoder(
    dim: int, steps: int, cache_dir: str | os.PathLike | None = None, path: str | os.PathLike | None = None
) -> TrainedTextEncoder:
    """The trained encoder at ``path`` (if given) or cached under ``cache_dir`` by the content hash of
    its settings and the ICD data, trained once when absent. A file lock makes concurrent callers
    (sweep trials) wait for one training instead of each training their own."""
    if path:
        if not (Path(path) / "model.pt").is_file():
            raise FileNotFoundError(f"ke.encoder_path {path}: no trained text encoder (model.pt) there")
        return TrainedTextEncoder.load(path)
    cfg = TextTrainConfig(dim=dim, steps=steps)
    root = cache_root(cache_dir)
    directory = root / f"textenc-icd10cm-d{dim}-{cfg.key()}"
    if (directory / "model.pt").is_file():
        return TrainedTextEncoder.load(directory)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{directory.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if (directory / "model.pt").is_file():  # trained by another process while we waited
                return TrainedTextEncoder.load(directory)
            log.info("training the ICD text encoder (d=%d, %d steps) -> %s", dim, steps, directory)
            encoder = train_text_encoder(cfg)
            encoder.save(directory)
            return encoder
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class HFTextEncoder:
    """A local Hugging Face encoder directory (``AutoTokenizer`` + ``AutoModel``, never downloaded),
    mean-pooled over real tokens, L2-normalised. Needs the ``transformers`` package."""

    def __init__(self, path: str | os.PathLike, max_length: int = 64) -> None:
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError as exc:
            raise ImportError("ke.encoder='hf' needs the 'transformers' package (pip install transformers)") from exc
        if not Path(path).is_dir():
            raise FileNotFoundError(f"ke.encoder_path {path}: not a directory (HF encoders are loaded locally only)")
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
        self.max_length = max_length

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        chunks = []
        for i in range(0, len(texts), batch_size):
            batch = self.tokenizer(list(texts[i : i + batch_size]), padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"][..., None].to(hidden.dtype)
            chunks.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().numpy())
        return l2_normalise(np.concatenate(chunks))
