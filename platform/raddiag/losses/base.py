"""The shared part of the classification losses: the :class:`MultiLabelLoss` base class, the
numerically safe BCE terms, and the checks and per-class quantities built from training counts."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MultiLabelLoss", "bce_terms", "check_counts", "class_balanced_weights", "class_priors", "ldam_margins"]


# ---------------------------------------------------------------------------------------------
# Per-class quantities derived from training counts (numpy, float64)
# ---------------------------------------------------------------------------------------------


def check_counts(class_counts: np.ndarray | None, n_train: int | None, loss: str, need_n: bool) -> np.ndarray:
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
# Base class
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


def bce_terms(logits: Tensor) -> tuple[Tensor, Tensor]:
    """``(log p, log(1-p))`` for ``p = σ(logits)``, finite for every finite logit."""
    return F.logsigmoid(logits), F.logsigmoid(-logits)
