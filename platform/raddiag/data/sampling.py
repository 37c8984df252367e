"""Long-tail case sampling, re-drawn every epoch from ``(seed, epoch)``.

Two-stage sampling: a class ``j`` is drawn with probability ``p_j ∝ n_j ** q`` (``n_j`` = training
cases of class j), then a case uniformly among that class's cases. ``q = 1`` is instance-balanced
in expectation, ``q = 0`` class-aware, ``q = 0.5`` square-root sampling. ``instance`` itself is an
exact permutation (each case once per epoch).
"""

from __future__ import annotations

import numpy as np


def class_probabilities(label_matrix: np.ndarray, power: float) -> np.ndarray:
    """Target class-draw probabilities ``∝ n_j ** power`` over classes with at least one case."""
    counts = label_matrix.sum(axis=0).astype(np.float64)
    weights = np.where(counts > 0, np.power(np.maximum(counts, 1.0), power), 0.0)
    if weights.sum() == 0:
        raise ValueError("sampling: no class has a positive training case")
    return weights / weights.sum()


def epoch_order(label_matrix: np.ndarray, strategy: str, power: float, seed: int, epoch: int) -> np.ndarray:
    """Case indices for one epoch (length = number of cases).

    ``label_matrix``: (n_cases, C) 0/1. ``strategy``: ``instance`` | ``class_aware`` | ``sqrt``
    (the power sampler with ``power``). Deterministic given (seed, epoch).
    """
    n_cases = label_matrix.shape[0]
    rng = np.random.default_rng([seed, epoch])
    if strategy == "instance":
        return rng.permutation(n_cases)
    q = 0.0 if strategy == "class_aware" else power
    probs = class_probabilities(label_matrix, q)
    members = [np.flatnonzero(label_matrix[:, j]) for j in range(label_matrix.shape[1])]
    classes = rng.choice(len(probs), size=n_cases, p=probs)
    picks = rng.random(n_cases)
    return np.array([members[c][int(u * len(members[c]))] for c, u in zip(classes, picks)], dtype=np.int64)
