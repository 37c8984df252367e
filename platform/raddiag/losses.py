"""Multi-label classification losses for a long-tailed label set.

Every loss takes ``logits`` ``(B, C)`` (any float dtype; computed in float32) and ``targets``
``(B, C)`` in {0, 1} (soft targets in [0, 1] are accepted), and returns the mean over all ``B × C``
elements. All terms are written with ``log σ(x) = -softplus(-x)`` so they stay finite, with finite
gradients, at any logit. Losses built from training class counts (``cb``, ``la``, ``db``, ``ldam``)
hold per-class buffers of length C and refuse logits of another width; the others work with any C.

Notation: ``x`` logit, ``p = σ(x)``, ``y`` target, ``n_c`` training cases positive for class c,
``N`` training cases. A class with no training case is treated as having one (``n_c ≥ 1``) where a
count is divided by or exponentiated, and class priors are Laplace-smoothed:
``π_c = (n_c + 1) / (N + 2)``, so every prior lies strictly inside (0, 1).

=========================== ==================================================================
class                       per-element loss
=========================== ==================================================================
:class:`BCELoss`            ``-(w⁺·y·log p + (1-y)·log(1-p))``
:class:`FocalLoss`          ``-(α·y·(1-p)^γ·log p + (1-α)·(1-y)·p^γ·log(1-p))``
:class:`AsymmetricLoss`     ``-(y·(1-p)^γ⁺·log p + (1-y)·p_m^γ⁻·log(1-p_m))``, ``p_m = max(p-m, 0)``
:class:`ClassBalancedLoss`  ``w_c · base``, ``w_c ∝ (1-β)/(1-β^n_c)``, mean of ``w`` = 1
:class:`LogitAdjustedLoss`  BCE on ``x + τ·log π_c`` (or ``τ·log(π_c/(1-π_c))``)
:class:`DistributionBalancedLoss` ``r̂·(y·softplus(-z) + (1-y)/λ·softplus(λz))``, ``z = x + κ·logit(π_c)``
:class:`LDAMLoss`           BCE on ``s·(x - Δ_c·y)``, ``Δ_c = Δ_max·(min n / n_c)^(1/4)``
=========================== ==================================================================
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raddiag.config import LossConfig

__all__ = [
    "AsymmetricLoss",
    "BCELoss",
    "ClassBalancedLoss",
    "DistributionBalancedLoss",
    "FocalLoss",
    "LDAMLoss",
    "LogitAdjustedLoss",
    "MultiLabelLoss",
    "build_loss",
    "class_balanced_weights",
    "class_priors",
    "ldam_margins",
    "LOSSES_NEEDING_COUNTS",
]

#: Loss types whose construction needs ``class_counts`` (and, for priors, ``n_train``).
LOSSES_NEEDING_COUNTS = ("cb", "la", "db", "ldam")


# ---------------------------------------------------------------------------------------------
# Per-class quantities derived from training counts (numpy, float64)
# ---------------------------------------------------------------------------------------------


def _check_counts(class_counts: np.ndarray | None, n_train: int | None, loss: str, need_n: bool) -> np.ndarray:
    if class_counts is None:
        raise ValueError(
            f"loss.type={loss!r} needs class_counts (training cases positive per class, shape (C,)); "
            "pass the training split's label counts to build_loss, or use bce/focal/asl"
        )
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"class_counts must be a non-empty 1-D array (C,), got shape {counts.shape}")
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError("class_counts must be finite and non-negative")
    if need_n:
        if n_train is None:
            raise ValueError(f"loss.type={loss!r} needs n_train (number of training cases) for the class priors")
        if n_train <= 0 or n_train < counts.max():
            raise ValueError(
                f"n_train={n_train} must be positive and at least the largest class count ({counts.max():g})"
            )
    return counts


def class_priors(class_counts: np.ndarray, n_train: int) -> np.ndarray:
    """Laplace-smoothed positive rate per class, ``(n_c + 1) / (N + 2)``, shape (C,), in (0, 1)."""
    counts = np.asarray(class_counts, dtype=np.float64)
    return (counts + 1.0) / (float(n_train) + 2.0)


def class_balanced_weights(class_counts: np.ndarray, beta: float) -> np.ndarray:
    """Cui et al. (2019) weights ``(1-β)/(1-β^n_c)`` (n_c ≥ 1), rescaled to mean 1; shape (C,).

    β = 0 gives all ones; β → 1 approaches inverse frequency.
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"cb beta must be in [0, 1), got {beta}")
    counts = np.maximum(np.asarray(class_counts, dtype=np.float64), 1.0)
    # 1 - β^n computed as -expm1(n·log β) keeps precision for β close to 1.
    effective = -np.expm1(counts * np.log(beta)) if beta > 0 else np.ones_like(counts)
    weights = (1.0 - beta) / effective
    return weights * (weights.size / weights.sum())


def ldam_margins(class_counts: np.ndarray, max_margin: float) -> np.ndarray:
    """Cao et al. (2019) margins ``Δ_c ∝ n_c^(-1/4)`` (n_c ≥ 1) with the largest equal to ``max_margin``."""
    counts = np.maximum(np.asarray(class_counts, dtype=np.float64), 1.0)
    raw = counts**-0.25
    return max_margin * raw / raw.max()


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------


class MultiLabelLoss(nn.Module):
    """Base class: checks shapes, computes in float32 and mean-reduces :meth:`elementwise`."""

    #: Number of classes the loss was built for, or None if it works with any C.
    num_classes: int | None = None

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Per-element loss ``(B, C)`` for float32 ``logits`` and ``targets`` of the same shape."""
        raise NotImplementedError

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        """``logits`` (B, C), ``targets`` (B, C) in {0, 1} -> scalar mean loss (float32)."""
        if logits.ndim != 2 or logits.shape != targets.shape:
            raise ValueError(
                f"{type(self).__name__}: logits and targets must both be (B, C); got "
                f"{tuple(logits.shape)} and {tuple(targets.shape)}"
            )
        if self.num_classes is not None and logits.shape[1] != self.num_classes:
            raise ValueError(
                f"{type(self).__name__} was built for C={self.num_classes} classes but logits have "
                f"C={logits.shape[1]}; rebuild it with the class counts of the new label set"
            )
        return self.elementwise(logits.float(), targets.to(torch.float32)).mean()

    def _per_class(self, values: np.ndarray, name: str) -> None:
        self.num_classes = int(values.size)
        self.register_buffer(name, torch.as_tensor(values, dtype=torch.float32), persistent=False)


def _bce_terms(logits: Tensor) -> tuple[Tensor, Tensor]:
    """``(log p, log(1-p))`` for ``p = σ(logits)``, finite for every finite logit."""
    return F.logsigmoid(logits), F.logsigmoid(-logits)


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
        log_p, log_q = _bce_terms(logits)
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
        log_p, log_q = _bce_terms(logits)
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
        log_p, log_q = _bce_terms(logits)
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
        counts = _check_counts(class_counts, None, "cb", need_n=False)
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
        counts = _check_counts(class_counts, n_train, "la", need_n=True)
        if tau < 0:
            raise ValueError(f"la tau must be >= 0, got {tau}")
        prior = class_priors(counts, n_train)
        shift = np.log(prior) - (np.log1p(-prior) if log_odds else 0.0)
        self.tau = float(tau)
        self._per_class(tau * shift, "logit_shift")

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:
        log_p, log_q = _bce_terms(logits + self.logit_shift)
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
        counts = _check_counts(class_counts, n_train, "db", need_n=True)
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
        counts = _check_counts(class_counts, None, "ldam", need_n=False)
        if max_margin < 0 or scale <= 0:
            raise ValueError(f"ldam needs max_margin >= 0 and scale > 0, got {max_margin}, {scale}")
        self.scale = float(scale)
        self._per_class(ldam_margins(counts, max_margin), "margin")

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:
        log_p, log_q = _bce_terms(self.scale * (logits - self.margin * targets))
        return -(targets * log_p + (1.0 - targets) * log_q)


def build_loss(cfg: LossConfig, class_counts: np.ndarray | None = None, n_train: int | None = None) -> nn.Module:
    """The classification loss named by ``cfg.type``, as a module ``(logits, targets) -> scalar``.

    ``class_counts``: (C,) training cases positive per class; ``n_train``: number of training cases.
    Both are required by ``la`` and ``db``; ``cb`` and ``ldam`` need only ``class_counts``.
    """
    kind = cfg.type
    if kind == "bce":
        return BCELoss(cfg.pos_weight)
    if kind == "focal":
        return FocalLoss(cfg.focal_gamma, cfg.focal_alpha)
    if kind == "asl":
        return AsymmetricLoss(cfg.asl_gamma_neg, cfg.asl_gamma_pos, cfg.asl_clip)
    if kind == "cb":
        counts = _check_counts(class_counts, n_train, kind, need_n=False)
        return ClassBalancedLoss(counts, cfg.cb_beta, cfg.cb_base, cfg.focal_gamma, cfg.focal_alpha)
    if kind == "la":
        counts = _check_counts(class_counts, n_train, kind, need_n=True)
        return LogitAdjustedLoss(counts, int(n_train), cfg.la_tau, cfg.la_log_odds)  # type: ignore[arg-type]
    if kind == "db":
        counts = _check_counts(class_counts, n_train, kind, need_n=True)
        return DistributionBalancedLoss(
            counts,
            int(n_train),  # type: ignore[arg-type]
            cfg.db_smooth_alpha,
            cfg.db_smooth_beta,
            cfg.db_smooth_mu,
            cfg.db_neg_scale,
            cfg.db_bias_scale,
        )
    if kind == "ldam":
        counts = _check_counts(class_counts, n_train, kind, need_n=False)
        return LDAMLoss(counts, cfg.ldam_max_margin, cfg.ldam_scale)
    raise ValueError(f"unknown loss.type {kind!r}")
