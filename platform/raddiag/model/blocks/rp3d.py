"""The transformer layer of the official RadDiag code (``model.transformer = "rp3d"``), written anew.

The released RadDiag checkpoints were trained with a layer that differs from the textbook pre-norm
layer (:mod:`raddiag.model.blocks.attention`) in three ways, each of which changes the logits:

- the attention sub-layer has **no normalisation before it**: ``x = x + attn(x)``; only the
  feed-forward sub-layer is pre-normed: ``x = x + ff(norm(x))``;
- the feed-forward block is ``Linear(E, F) -> ReLU -> Linear(F, E)`` with ``F = E`` in the release
  (``ff_ratio = 1``);
- the normalisation divides by the **unbiased** standard deviation plus ``eps = 1e-6`` (outside the
  square root), not by ``sqrt(var + eps)`` as :class:`torch.nn.LayerNorm` does.

The stack ends with one more such norm. Attention is :class:`MaskedSelfAttention` (fused q/k/v
projection, a key padding mask with True = real token), so masking semantics are shared with our
own transformer: the official ``-1e9`` fill and our boolean mask give the same softmax.
"""

from __future__ import annotations

import torch
from torch import nn

from raddiag.model.blocks.attention import MaskedSelfAttention, MaskedTransformer


class StdNorm(nn.Module):
    """``weight * (x - mean) / (std + eps) + bias`` over the last dim, ``std`` unbiased (n - 1)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        std = x.std(-1, keepdim=True)
        return self.weight * (x - mean) / (std + self.eps) + self.bias


class RP3DTransformerLayer(nn.Module):
    """``x + attn(x)`` then ``x + ff(norm(x))`` with a ReLU feed-forward of width ``ff_ratio * E``."""

    def __init__(self, dim: int, heads: int, ff_ratio: float = 1.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.attn = MaskedSelfAttention(dim, heads, dropout)
        self.norm = StdNorm(dim)
        hidden = int(dim * ff_ratio)
        self.ff = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.drop(self.attn(x, key_padding_mask))
        return x + self.drop(self.ff(self.norm(x)))


class RP3DTransformer(MaskedTransformer):
    """A stack of :class:`RP3DTransformerLayer` and a final :class:`StdNorm`; the call signature,
    return value and CLS attention of :class:`~raddiag.model.blocks.attention.MaskedTransformer`
    (whose forward it runs), except that the attention sees the un-normed input."""

    def __init__(
        self, dim: int, heads: int, layers: int, dropout: float = 0.0, checkpointing: bool = False, ff_ratio: float = 1.0
    ) -> None:
        nn.Module.__init__(self)
        self.layers = nn.ModuleList(RP3DTransformerLayer(dim, heads, ff_ratio, dropout) for _ in range(layers))
        self.norm = StdNorm(dim)
        self.checkpointing = checkpointing

    def _attention_input(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return x
