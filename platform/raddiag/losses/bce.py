"""Losses that need no class counts: BCE, focal and asymmetric (ASL); they work with any C."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from raddiag.losses.base import MultiLabelLoss, bce_terms

__all__ = ["AsymmetricLoss", "BCELoss", "FocalLoss"]


class BCELoss(MultiLabelLoss):
    """Binary cross-entropy on logits with a positive-term weight.

    ``pos_weight``: a float, or a (C,) tensor/array of per-class weights (then C is fixed).
    """

    def __init__(self, pos_weight: float | np.ndarray | Tensor = 1.0) -> None:
        super().__init__()
        weight = np.asarray(pos_weight.detach().cpu() if isinstance(pos_weight, Tensor) else pos_weight, np.float64)
        if np.any(weight <= 0):
            raise ValueError("pos_weight must be > 0")
        if weight.ndim == 0:
            self.register_buffer("pos_weight", torch.tensor(float(weight)), persistent=False)
        else:
            self._per_class(weight, "pos_weight")

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:
        log_p, log_q = bce_terms(logits)
        return -(self.pos_weight * targets * log_p + (1.0 - targets) * log_q)


class FocalLoss(MultiLabelLoss):
    """Sigmoid focal loss (Lin et al. 2017). ``gamma`` ≥ 0; ``alpha`` in [0, 1] or None (no α term).

    The modulating factors are ``exp(γ·log σ(∓x))`` rather than powers of probabilities, so the
    gradient stays finite for γ < 1 at saturated logits. γ = 0 and α = None is exactly BCE.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = 0.25) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"focal alpha must be in [0, 1] or None, got {alpha}")
        self.gamma = float(gamma)
        self.alpha = alpha

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:
        log_p, log_q = bce_terms(logits)
        pos = targets * torch.exp(self.gamma * log_q) * log_p  # (1-p)^γ log p
        neg = (1.0 - targets) * torch.exp(self.gamma * log_p) * log_q  # p^γ log(1-p)
        if self.alpha is not None:
            pos = self.alpha * pos
            neg = (1.0 - self.alpha) * neg
        return -(pos + neg)


class AsymmetricLoss(MultiLabelLoss):
    """Asymmetric loss (Ridnik et al. 2021): separate focusing for positives (γ+) and negatives (γ-),
    and a probability margin ``clip`` that discards easy negatives (``p ≤ clip`` costs nothing).

    γ+ = γ- = 0 and clip = 0 is exactly BCE.
    """

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05) -> None:
        super().__init__()
        if gamma_neg < 0 or gamma_pos < 0:
            raise ValueError(f"asl gammas must be >= 0, got gamma_neg={gamma_neg}, gamma_pos={gamma_pos}")
        if not 0.0 <= clip < 1.0:
            raise ValueError(f"asl clip must be in [0, 1), got {clip}")
        self.gamma_neg = float(gamma_neg)
        self.gamma_pos = float(gamma_pos)
        self.clip = float(clip)

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:
        log_p, log_q = bce_terms(logits)
        pos = torch.exp(self.gamma_pos * log_q) * log_p
        if self.clip == 0.0:
            neg = torch.exp(self.gamma_neg * log_p) * log_q
        else:
            # p_m = max(p - m, 0); 1 - p_m = min(σ(-x) + m, 1) >= m > 0, so its log is finite.
            shifted = torch.sigmoid(logits) - self.clip
            active = shifted > 0
            log_q_m = torch.log(torch.clamp(torch.sigmoid(-logits) + self.clip, max=1.0))
            if self.gamma_neg == 0.0:
                focus = torch.ones_like(logits)
            else:
                # where() on a safe base keeps the gradient of pow finite where p_m = 0.
                safe = torch.where(active, shifted, torch.ones_like(shifted))
                focus = torch.where(active, safe**self.gamma_neg, torch.zeros_like(shifted))
            neg = focus * log_q_m
        return -(targets * pos + (1.0 - targets) * neg)
