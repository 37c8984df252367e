"""A small ICD-10-CM text encoder trained from scratch on CPU, plus a local Hugging Face encoder.

Trained encoder: a BPE tokenizer (``tokenizers``) fit on the ICD corpus, then a bag of sub-word
unigrams and hashed bigrams (``EmbeddingBag``, mean) -> LayerNorm -> MLP -> ``dim``, trained with a
soft InfoNCE loss and a learnable temperature (init 0.07). In-batch positives: texts of the same code
(description, inclusion terms, token-dropout variants; target 1) and child <-> parent (target
``parent_weight``). Batches are built from sibling groups, so siblings are hard negatives.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from torch import nn

from raddiag.knowledge.icd import IcdEntry, icd_corpus, icd_version, load_icd
from raddiag.knowledge.tfidf import cache_root, l2_normalise

log = logging.getLogger(__name__)
BIGRAM_BUCKETS = 2**15


@dataclass(frozen=True)
class TextTrainConfig:
    """Trained encoder hyper-parameters (defaults train in ~1-3 min on 2 cores)."""

    dim: int = 64
    hidden: int = 256
    vocab_size: int = 8000
    steps: int = 1200
    groups: int = 48  # sibling groups per batch
    group_size: int = 4  # siblings per group
    random_codes: int = 96  # extra codes per batch
    lr: float = 3e-3
    temperature_init: float = 0.07
    parent_weight: float = 0.5
    parent_view_p: float = 0.3  # a positive is the parent's description with this probability
    token_dropout: float = 0.15
    seed: int = 0


def train_tokenizer(corpus: list[str], vocab_size: int) -> Tokenizer:
    """Lower-cased BPE tokenizer fit on ``corpus``."""
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKD(), normalizers.StripAccents(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(True)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["[UNK]"], show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer


class BagOfNgramsEncoder(nn.Module):
    """Token ids (flat, with offsets) -> ``(n, dim)`` embeddings (not normalised)."""

    def __init__(self, vocab_size: int, hidden: int, dim: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.bag = nn.EmbeddingBag(vocab_size + BIGRAM_BUCKETS, hidden, mode="mean", sparse=True)
        self.mlp = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def features(self, token_lists: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Unigram ids + hashed bigram ids per text, flattened for ``EmbeddingBag``."""
        flat, offsets = [], []
        for ids in token_lists:
            offsets.append(len(flat))
            flat.extend(ids or [0])
            flat.extend(self.vocab_size + (a * 1_000_003 + b) % BIGRAM_BUCKETS for a, b in zip(ids, ids[1:]))
        return torch.tensor(flat, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)

    def forward(self, token_lists: list[list[int]]) -> torch.Tensor:
        flat, offsets = self.features(token_lists)
        return self.mlp(self.bag(flat, offsets))


class TrainedTextEncoder:
    """``encode(texts) -> (n, dim)`` float32, L2-normalised. Saved as a directory."""

    def __init__(self, tokenizer: Tokenizer, model: BagOfNgramsEncoder, config: TextTrainConfig) -> None:
        self.tokenizer = tokenizer
        self.model = model.eval()
        self.config = config

    @property
    def dim(self) -> int:
        return self.config.dim

    def tokens(self, texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self.tokenizer.encode_batch(list(texts))]

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 4096) -> np.ndarray:
        ids = self.tokens(texts)
        out = [self.model(ids[i : i + batch_size]).numpy() for i in range(0, len(ids), batch_size)]
        return l2_normalise(np.concatenate(out) if out else np.zeros((0, self.dim), np.float32))

    def save(self, directory: str | os.PathLike) -> Path:
        path = Path(directory)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(tmp / "tokenizer.json"))
        torch.save(self.model.state_dict(), tmp / "model.pt")
        (tmp / "config.json").write_text(json.dumps(asdict(self.config), indent=2))
        if path.exists():
            import shutil

            shutil.rmtree(tmp)
            return path
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "TrainedTextEncoder":
        path = Path(directory)
        config = TextTrainConfig(**json.loads((path / "config.json").read_text()))
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        model = BagOfNgramsEncoder(tokenizer.get_vocab_size(), config.hidden, config.dim)
        model.load_state_dict(torch.load(path / "model.pt", map_location="cpu", weights_only=True))
        return cls(tokenizer, model, config)


def soft_info_nce(anchors: torch.Tensor, positives: torch.Tensor, targets: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric soft InfoNCE. ``anchors``/``positives`` (n, d) normalised, ``targets`` (n, n) >= 0
    with a positive diagonal (rows/columns renormalised), ``log_scale`` = log(1/temperature)."""
    logits = log_scale.exp() * anchors @ positives.T
    rows = targets / targets.sum(1, keepdim=True)
    cols = targets.T / targets.T.sum(1, keepdim=True)
    return 0.5 * (-(rows * logits.log_softmax(1)).sum(1).mean() - (cols * logits.T.log_softmax(1)).sum(1).mean())


class _Views:
    """Per-code token views (description + synonyms) and hierarchy links, for batch sampling."""

    def __init__(self, entries: tuple[IcdEntry, ...], tokenize, held_out: set[str]) -> None:
        self.codes = [e.code for e in entries]
        self.index = {code: i for i, code in enumerate(self.codes)}
        texts = [[e.description, *(s for s in e.synonyms if s not in held_out)] for e in entries]
        flat = tokenize([t for group in texts for t in group])
        self.views, cursor = [], 0
        for group in texts:
            self.views.append(flat[cursor : cursor + len(group)])
            cursor += len(group)
        self.parent = np.array([self.index.get(e.parent, -1) if e.parent else -1 for e in entries])
        children: dict[int, list[int]] = {}
        for i, p in enumerate(self.parent):
            if p >= 0:
                children.setdefault(int(p), []).append(i)
        self.sibling_groups = [kids for kids in children.values() if len(kids) >= 2]


def _dropout(ids: list[int], p: float, rng: random.Random) -> list[int]:
    kept = [t for t in ids if rng.random() >= p]
    return kept or ids


def train_text_encoder(
    cfg: TextTrainConfig | None = None, held_out: set[str] | None = None, entries: tuple[IcdEntry, ...] | None = None
) -> TrainedTextEncoder:
    """Train the encoder on the ICD-10-CM knowledge base; terms in ``held_out`` are never seen."""
    cfg = cfg or TextTrainConfig()
    held_out = held_out or set()
    entries = entries or load_icd()
    start = time.perf_counter()
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    corpus = [t for t in icd_corpus(entries) if t not in held_out]
    tokenizer = train_tokenizer(corpus, cfg.vocab_size)
    views = _Views(entries, lambda texts: [e.ids for e in tokenizer.encode_batch(texts)], held_out)
    model = BagOfNgramsEncoder(tokenizer.get_vocab_size(), cfg.hidden, cfg.dim)
    log_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.temperature_init)))
    # the embedding table is large and gets sparse gradients: SparseAdam for it, AdamW for the rest
    optimizers = [
        torch.optim.SparseAdam(list(model.bag.parameters()), lr=cfg.lr),
        torch.optim.AdamW([*model.mlp.parameters(), log_scale], lr=cfg.lr, weight_decay=1e-4),
    ]
    schedules = [
        torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.steps, pct_start=0.05) for opt in optimizers
    ]
    n_codes = len(views.codes)
    model.train()
    for step in range(cfg.steps):
        batch = [i for g in rng.sample(views.sibling_groups, cfg.groups) for i in rng.sample(g, min(len(g), cfg.group_size))]
        batch += rng.sample(range(n_codes), cfg.random_codes)
        anchors, positives, positive_codes = [], [], []
        for i in batch:
            own = views.views[i]
            anchor = rng.choice(own)
            parent = int(views.parent[i])
            if parent >= 0 and rng.random() < cfg.parent_view_p:
                positives.append(views.views[parent][0])
                positive_codes.append(parent)
            else:
                positives.append(rng.choice(own) if len(own) > 1 else anchor)
                positive_codes.append(i)
            anchors.append(_dropout(anchor, cfg.token_dropout, rng))
            positives[-1] = _dropout(positives[-1], cfg.token_dropout, rng)
        a_codes = torch.tensor(batch)
        p_codes = torch.tensor(positive_codes)
        parents = torch.as_tensor(views.parent)
        same = a_codes[:, None] == p_codes[None, :]
        related = (parents[a_codes][:, None] == p_codes[None, :]) | (a_codes[:, None] == parents[p_codes][None, :])
        targets = same.float() + cfg.parent_weight * (related & ~same).float()
        targets = targets + torch.eye(len(batch)) * (targets.diagonal() == 0).float()  # anchor i's own positive
        a, p = F.normalize(model(anchors + positives), dim=-1).split(len(batch))
        loss = soft_info_nce(a, p, targets, log_scale.clamp(max=math.log(100.0)))
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt, schedule in zip(optimizers, schedules):
            opt.step()
            schedule.step()
        if step % 250 == 0 or step == cfg.steps - 1:
            log.info("text encoder step %d loss %.3f temperature %.4f", step, loss.item(), (-log_scale).exp().item())
    log.info("trained text encoder in %.0fs", time.perf_counter() - start)
    return TrainedTextEncoder(tokenizer, model, cfg)


def load_or_train_text_encoder(
    dim: int, steps: int, cache_dir: str | os.PathLike | None = None, path: str | os.PathLike | None = None
) -> TrainedTextEncoder:
    """The trained encoder at ``path`` (if given) or cached under ``cache_dir``, training it when absent."""
    if path:
        if not (Path(path) / "model.pt").is_file():
            raise FileNotFoundError(f"ke.encoder_path {path}: no trained text encoder (model.pt) there")
        return TrainedTextEncoder.load(path)
    cfg = TextTrainConfig(dim=dim, steps=steps)
    key = f"textenc-icd10cm-{icd_version()}-d{dim}-s{steps}-h{cfg.hidden}-v1"
    directory = cache_root(cache_dir) / key
    if (directory / "model.pt").is_file():
        return TrainedTextEncoder.load(directory)
    encoder = train_text_encoder(cfg)
    encoder.save(directory)
    return encoder


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
