"""Masked pre-norm transformer layers on :func:`torch.nn.functional.scaled_dot_product_attention`.

Tokens are ``(B, L, E)``; ``key_padding_mask`` is ``(B, L)`` bool with True for a *real* token (the
opposite of :class:`torch.nn.MultiheadAttention`'s convention, matching ``scan_mask``/``slice_mask``).
Padded tokens are never attended to, so their content cannot reach real tokens. Every row must hold at
least one real token (callers prepend an always-real CLS token).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class MaskedSelfAttention(nn.Module):
    """Multi-head self-attention with a key padding mask; ``E`` must be divisible by ``heads``."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, length, dim = x.shape
        qkv = self.qkv(x).view(b, length, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, L, Eh)
        return q, k, v

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        """``x`` (B, L, E), ``key_padding_mask`` (B, L) bool (True = real) or None -> (B, L, E)."""
        b, length, dim = x.shape
        q, k, v = self._split(x)
        # (B, 1, 1, L): broadcast over heads and queries
        attn_mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, length, dim))

    def first_token_attention(self, x: torch.Tensor, key_padding_mask: torch.Tensor) -> torch.Tensor:
        """Attention of token 0 (CLS) over tokens 1..L-1, averaged over heads.

        ``x`` (B, L, E) is the layer's normalised input. Returns (B, L-1): a softmax over the real
        tokens among 1..L-1 (the CLS key itself excluded), exactly 0 on padded tokens; rows with no
        real token are all 0.
        """
        q, k, _ = self._split(x)
        scale = q.shape[-1] ** -0.5
        scores = torch.einsum("bhe,bhle->bhl", q[:, :, 0].float(), k[:, :, 1:].float()) * scale
        real = key_padding_mask[:, None, 1:]
        scores = scores.masked_fill(~real, float("-inf"))
        weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # all-padded rows: nan -> 0
        return weights.mean(dim=1)


class MaskedTransformerLayer(nn.Module):
    """Pre-norm transformer encoder layer: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MaskedSelfAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), key_padding_mask))
        return x + self.drop(self.mlp(self.norm2(x)))


class MaskedTransformer(nn.Module):
    """A stack of :class:`MaskedTransformerLayer` with a final LayerNorm.

    ``forward(x, key_padding_mask, return_cls_attention)`` returns ``(y, attn)``: ``y`` (B, L, E) and,
    when asked, the last layer's CLS (token 0) attention over tokens 1..L-1, (B, L-1), else ``None``.
    """

    def __init__(
        self, dim: int, heads: int, layers: int, dropout: float = 0.0, checkpointing: bool = False, ff_ratio: float = 4.0
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            MaskedTransformerLayer(dim, heads, mlp_ratio=ff_ratio, dropout=dropout) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.checkpointing = checkpointing

    def forward(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None, return_cls_attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attention = None
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            if return_cls_attention and index == last:
                if key_padding_mask is None:
                    key_padding_mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
                attention = layer.attn.first_token_attention(self._attention_input(layer, x), key_padding_mask)
            if self.checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, key_padding_mask, use_reentrant=False)
            else:
                x = layer(x, key_padding_mask)
        return self.norm(x), attention

    def _attention_input(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """What ``layer``'s attention sees: the pre-normed input."""
        return layer.norm1(x)
