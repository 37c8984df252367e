"""Losses built from training class counts: class-balanced (cb), logit-adjusted (la),
distribution-balanced (db) and LDAM margins (ldam). They hold per-class buffers of length C."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from raddiag.losses.base import (
    MultiLabelLoss,
    bce_terms,
    check_counts,
    class_balanced_weights,
    class_priors,
    ldam_margins,
)
from raddiag.losses.bce import BCELoss, FocalLoss

__all__ = ["ClassBalancedLoss", "DistributionBalancedLoss", "LDAMLoss", "LogitAdjustedLoss"]


class ClassBalancedLoss(MultiLabelLoss):
    """Class-balanced re-weighting by effective number (Cui et al. 2019) of a BCE or focal base.

    ``class_counts`` (C,) training cases per class; ``beta`` in [0, 1); β = 0 is the unweighted base.
    The class weight multiplies both the positive and the negative term of that class.
    """

    def __init__(
        self,
        class_counts: np.ndarray,
        beta: float = 0.999,
        base: str = "bce",
        focal_gamma: float = 2.0,
        focal_alpha: float | None = 0.25,
    ) -> None:
        super().__init__()
        counts = check_counts(class_counts, None, "cb", need_n=False)
        if base == "bce":
            self.base: MultiLabelLoss = BCELoss()
        elif base == "focal":
            self.base = FocalLoss(focal_gamma, focal_alpha)
        else:
            raise ValueError(f"cb base must be 'bce' or 'focal', got {base!r}")
        self.beta = float(beta)
        self._per_class(class_balanced_weights(counts, beta), "class_weight")

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:
        return self.class_weight * self.base.elementwise(logits, targets)


class LogitAdjustedLoss(MultiLabelLoss):
    """Logit-adjusted BCE (Menon et al. 2021): train on ``x + τ·log π_c`` and predict with raw ``x``.

    With ``log_odds=True`` the shift is ``τ·log(π_c/(1-π_c))``, the Bayes-consistent adjustment of
    a binary (sigmoid) classifier. τ = 0 is exactly BCE.
    """

    def __init__(self, class_counts: np.ndarray, n_train: int, tau: float = 1.0, log_odds: bool = False) -> None:
        super().__init__()
        counts = check_counts(class_counts, n_train, "la", need_n=True)
        if tau < 0:
            raise ValueError(f"la tau must be >= 0, got {tau}")
        prior = class_priors(counts, n_train)
        shift = np.log(prior) - (np.log1p(-prior) if log_odds else 0.0)
        self.tau = float(tau)
        self._per_class(tau * shift, "logit_shift")

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:
        log_p, log_q = bce_terms(logits + self.logit_shift)
        return -(targets * log_p + (1.0 - targets) * log_q)


class DistributionBalancedLoss(MultiLabelLoss):
    """Distribution-balanced loss (Wu et al. 2020), following the authors' reference implementation.

    * Re-balanced weighting: for case k and class c, ``r = (1/n_c) / Σ_{j ∈ y_k} 1/n_j`` (the ratio
      of class-level to instance-level sampling probability), smoothed to
      ``r̂ = α + σ(β·(r - μ))`` and applied to both terms (a case with no positive label gets 1).
    * Negative-tolerant regularisation: logits shifted to ``z = x + κ·log(π_c/(1-π_c))``, negative
      term ``softplus(λz)/λ``, positive term ``softplus(-z)``.
    """

    def __init__(
        self,
        class_counts: np.ndarray,
        n_train: int,
        smooth_alpha: float = 0.1,
        smooth_beta: float = 10.0,
        smooth_mu: float = 0.2,
        neg_scale: float = 2.0,
        bias_scale: float = 0.05,
    ) -> None:
        super().__init__()
        counts = check_counts(class_counts, n_train, "db", need_n=True)
        if neg_scale <= 0:
            raise ValueError(f"db neg_scale (λ) must be > 0, got {neg_scale}")
        self.smooth_alpha = float(smooth_alpha)
        self.smooth_beta = float(smooth_beta)
        self.smooth_mu = float(smooth_mu)
        self.neg_scale = float(neg_scale)
        prior = class_priors(counts, n_train)
        self._per_class(1.0 / np.maximum(counts, 1.0), "inv_freq")
        self.register_buffer(
            "logit_shift",
            torch.as_tensor(bias_scale * (np.log(prior) - np.log1p(-prior)), dtype=torch.float32),
            persistent=False,
        )

    def rebalance_weight(self, targets: Tensor) -> Tensor:
        """Smoothed re-balancing weight ``r̂`` (B, C) for hard ``targets`` (B, C); no gradient."""
        with torch.no_grad():
            instance = (targets * self.inv_freq).sum(dim=1, keepdim=True)  # (B, 1)
            ratio = self.inv_freq / torch.where(instance > 0, instance, torch.ones_like(instance))
            weight = self.smooth_alpha + torch.sigmoid(self.smooth_beta * (ratio - self.smooth_mu))
            return torch.where(instance > 0, weight, torch.ones_like(weight))

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:
        z = logits + self.logit_shift
        pos = F.softplus(-z)
        neg = F.softplus(self.neg_scale * z) / self.neg_scale
        return self.rebalance_weight(targets) * (targets * pos + (1.0 - targets) * neg)


class LDAMLoss(MultiLabelLoss):
    """LDAM-style margins (Cao et al. 2019) for sigmoid outputs: BCE on ``s·(x - Δ_c·y)``.

    A positive of a rare class must clear a larger margin ``Δ_c ∝ n_c^(-1/4)`` (largest = ``max_margin``).
    ``max_margin = 0`` and ``scale = 1`` is exactly BCE.
    """

    def __init__(self, class_counts: np.ndarray, max_margin: float = 0.5, scale: float = 1.0) -> None:
        super().__init__()
        counts = check_counts(class_counts, None, "ldam", need_n=False)
        if max_margin < 0 or scale <= 0:
            raise ValueError(f"ldam needs max_margin >= 0 and scale > 0, got {max_margin}, {scale}")
        self.scale = float(scale)
        self._per_class(ldam_margins(counts, max_margin), "margin")

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:
        log_p, log_q = bce_terms(self.scale * (logits - self.margin * targets))
        return -(targets * log_p + (1.0 - targets) * log_q)
