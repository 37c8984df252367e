"""Classification heads: case embedding ``(B, E)`` -> logits ``(B, C)``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def prior_logit(label_prior: torch.Tensor | None, num_labels: int) -> torch.Tensor:
    """``log(p / (1 - p))`` of each label's training prior ``p`` (C,), clamped to [1e-4, 1 - 1e-4];
    zeros without a prior. An MLP head whose bias starts here predicts the base rate before any step
    (instead of 0.5 for a label that 1 case in 100 carries); in the KE head the bias centres the
    logits while the scaled cosine term still spreads them."""
    if label_prior is None:
        return torch.zeros(num_labels)
    prior = torch.as_tensor(label_prior, dtype=torch.float32).flatten()
    if prior.shape[0] != num_labels:
        raise ValueError(f"label_prior has {prior.shape[0]} entries but there are {num_labels} labels")
    prior = prior.clamp(1e-4, 1 - 1e-4)
    return (prior / (1 - prior)).log()


class MLPHead(nn.Module):
    """``Linear(E, hidden) -> GELU -> Dropout -> Linear(hidden, C)``; the last bias starts at
    :func:`prior_logit` of ``bias_prior`` (C,) when given."""

    def __init__(
        self, dim: int, num_labels: int, hidden: int = 0, dropout: float = 0.0, bias_prior: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        hidden = hidden or dim
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, num_labels))
        if bias_prior is not None:
            with torch.no_grad():
                self.net[-1].bias.copy_(prior_logit(bias_prior, num_labels))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.net(embedding)


class KEHead(nn.Module):
    """Knowledge-enhanced head: ``logits[b, c] = s * cos(f_b, P t_c) + bias_c (+ log prior_c)``.

    ``bias_c`` is a learned per-label bias that starts at :func:`prior_logit` of ``bias_prior`` (or
    0). With ``label_prior`` (a fixed ``log prior_c`` term) the bias starts at 0 instead, so the prior
    is not counted twice. Labels swapped in by :meth:`set_label_embeddings` get the mean learned bias,
    plus ``logit`` of their prior when given to a head without the fixed term.

    ``label_embeddings`` (C, T) are label text embeddings computed once (e.g. by
    :func:`raddiag.knowledge.embed_labels`) and held as a buffer; ``P`` is ``Linear(T, E)``, trainable
    or frozen; ``s = exp(log_scale)`` starts at ``1 / temperature_init`` and is learnable or fixed.
    :meth:`set_label_embeddings` swaps the table (any C') to score new label names zero-shot.
    """

    def __init__(
        self,
        dim: int,
        label_embeddings: torch.Tensor,
        temperature_init: float = 0.07,
        learn_temperature: bool = True,
        train_projection: bool = True,
        label_prior: torch.Tensor | None = None,
        bias_prior: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        table = self._check_table(label_embeddings)
        self.bias = nn.Parameter(prior_logit(None if label_prior is not None else bias_prior, table.shape[0]))
        self.register_buffer("label_embeddings", table)
        self.projection = nn.Linear(table.shape[1], dim)
        self.projection.requires_grad_(train_projection)
        log_scale = torch.tensor(math.log(1.0 / temperature_init))
        if learn_temperature:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)
        self.register_buffer("log_prior", self._log_prior(label_prior, table.shape[0]))

    @staticmethod
    def _check_table(label_embeddings: torch.Tensor) -> torch.Tensor:
        table = torch.as_tensor(label_embeddings)
        if table.ndim != 2 or not table.is_floating_point() or table.shape[0] < 1:
            raise ValueError(f"label_embeddings must be a float (C, T) tensor, got {tuple(table.shape)} {table.dtype}")
        return table.detach().float().clone()

    @staticmethod
    def _log_prior(label_prior: torch.Tensor | None, num_labels: int) -> torch.Tensor | None:
        if label_prior is None:
            return None
        prior = torch.as_tensor(label_prior, dtype=torch.float32).flatten()
        if prior.shape[0] != num_labels:
            raise ValueError(f"label_prior has {prior.shape[0]} entries but there are {num_labels} labels")
        return prior.clamp(1e-6, 1.0).log()

    @property
    def num_labels(self) -> int:
        return self.label_embeddings.shape[0]

    def set_label_embeddings(self, label_embeddings: torch.Tensor, label_prior: torch.Tensor | None = None) -> None:
        """Replace the label table with ``(C', T)`` embeddings (same T); the prior is replaced too."""
        table = self._check_table(label_embeddings)
        if table.shape[1] != self.projection.in_features:
            raise ValueError(
                f"new label embeddings have dim {table.shape[1]}, the head was built for {self.projection.in_features}"
                " (embed them with the same KE encoder)"
            )
        device = self.label_embeddings.device
        self.label_embeddings = table.to(device)
        fixed_prior = self.log_prior is not None
        with torch.no_grad():
            if label_prior is not None and not fixed_prior:
                bias = prior_logit(label_prior, table.shape[0])
            else:
                bias = self.bias.mean().expand(table.shape[0])
            self.bias = nn.Parameter(bias.clone().to(device))
        prior = self._log_prior(label_prior, table.shape[0]) if fixed_prior else None
        self.log_prior = None if prior is None else prior.to(device)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """``embedding`` (B, E) -> logits (B, C)."""
        classifier = self.projection(self.label_embeddings.to(self.projection.weight.dtype))  # (C, E)
        cosine = F.normalize(embedding, dim=-1) @ F.normalize(classifier, dim=-1).T.to(embedding.dtype)
        logits = self.log_scale.exp() * cosine + self.bias.to(cosine.dtype)
        if self.log_prior is not None:
            logits = logits + self.log_prior
        return logits
