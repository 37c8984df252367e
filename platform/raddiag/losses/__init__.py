"""Training losses: multi-label classification losses for a long-tailed label set, and the
key-slice attention loss.

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

Modules: :mod:`~raddiag.losses.base` (base class, BCE terms, per-class quantities from counts),
:mod:`~raddiag.losses.bce` (bce, focal, asl), :mod:`~raddiag.losses.count_based` (cb, la, db, ldam),
:mod:`~raddiag.losses.key_slice` (the key-slice attention loss, added to the classification loss
with weight ``loss.key_slice.weight``). :func:`build_loss` builds the loss named by ``loss.type``
from its section of the config (``loss.focal.gamma``, ``loss.cb.beta``, ...).
"""

from __future__ import annotations

import numpy as np
from torch import nn

from raddiag.config import LossConfig
from raddiag.losses.base import (
    MultiLabelLoss,
    check_counts,
    class_balanced_weights,
    class_priors,
    ldam_margins,
)
from raddiag.losses.bce import AsymmetricLoss, BCELoss, FocalLoss
from raddiag.losses.count_based import ClassBalancedLoss, DistributionBalancedLoss, LDAMLoss, LogitAdjustedLoss
from raddiag.losses.key_slice import key_slice_loss, key_slice_target

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
    "key_slice_loss",
    "key_slice_target",
    "ldam_margins",
    "LOSSES_NEEDING_COUNTS",
]

#: Loss types whose construction needs ``class_counts`` (and, for priors, ``n_train``).
LOSSES_NEEDING_COUNTS = ("cb", "la", "db", "ldam")


def build_loss(cfg: LossConfig, class_counts: np.ndarray | None = None, n_train: int | None = None) -> nn.Module:
    """The classification loss named by ``cfg.type``, built from its section of ``cfg`` (a ``cb``
    loss with ``cb.base=focal`` also reads ``cfg.focal``), as a module ``(logits, targets) -> scalar``.

    ``class_counts``: (C,) training cases positive per class; ``n_train``: number of training cases.
    Both are required by ``la`` and ``db``; ``cb`` and ``ldam`` need only ``class_counts``.
    """
    kind = cfg.type
    if kind == "bce":
        return BCELoss(cfg.bce.pos_weight)
    if kind == "focal":
        return FocalLoss(cfg.focal.gamma, cfg.focal.alpha)
    if kind == "asl":
        return AsymmetricLoss(cfg.asl.gamma_neg, cfg.asl.gamma_pos, cfg.asl.clip)
    if kind == "cb":
        counts = check_counts(class_counts, n_train, kind, need_n=False)
        return ClassBalancedLoss(counts, cfg.cb.beta, cfg.cb.base, cfg.focal.gamma, cfg.focal.alpha)
    if kind == "la":
        counts = check_counts(class_counts, n_train, kind, need_n=True)
        return LogitAdjustedLoss(counts, int(n_train), cfg.la.tau, cfg.la.log_odds)  # type: ignore[arg-type]
    if kind == "db":
        counts = check_counts(class_counts, n_train, kind, need_n=True)
        return DistributionBalancedLoss(
            counts,
            int(n_train),  # type: ignore[arg-type]
            cfg.db.smooth_alpha,
            cfg.db.smooth_beta,
            cfg.db.smooth_mu,
            cfg.db.neg_scale,
            cfg.db.bias_scale,
        )
    if kind == "ldam":
        counts = check_counts(class_counts, n_train, kind, need_n=False)
        return LDAMLoss(counts, cfg.ldam.max_margin, cfg.ldam.scale)
    raise ValueError(f"unknown loss.type {kind!r}")
