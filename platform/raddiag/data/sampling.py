"""Long-tail case sampling, re-drawn every epoch from ``(seed, epoch)``.

Two-stage sampling: a class ``j`` is drawn with probability ``p_j ∝ n_j ** q`` (``n_j`` = training
cases of class j), then a case uniformly among that class's cases. ``q = 1`` is instance-balanced
in expectation, ``q = 0`` class-aware, ``q = 0.5`` square-root sampling. ``instance`` itself is an
exact permutation (each case once per epoch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raddiag.storage.records import CaseRecords


@dataclass(frozen=True)
class ClassIndex:
    """Each class's cases, sparse: ``cases[starts[j]:starts[j + 1]]`` are the (ascending) indices of
    the cases of class ``j``. Built once from (case, class) pairs in O(nnz log nnz) — no dense
    (n_cases, C) matrix — and what :func:`epoch_order` samples from."""

    cases: np.ndarray  # (nnz,) int64
    starts: np.ndarray  # (C + 1,) int64
    n_cases: int

    @property
    def n_classes(self) -> int:
        return len(self.starts) - 1

    @property
    def counts(self) -> np.ndarray:
        """Cases per class (C,), int64."""
        return np.diff(self.starts)

    @classmethod
    def from_pairs(cls, rows: np.ndarray, cols: np.ndarray, n_cases: int, n_classes: int) -> "ClassIndex":
        """From parallel arrays of case and class indices (a repeated pair counts once)."""
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        keys = np.unique(cols * max(n_cases, 1) + rows)  # sorted by class, then case; duplicates gone
        classes, cases = np.divmod(keys, max(n_cases, 1))
        starts = np.searchsorted(classes, np.arange(n_classes + 1))
        return cls(cases.astype(np.int64), starts.astype(np.int64), int(n_cases))

    @classmethod
    def from_matrix(cls, label_matrix: np.ndarray) -> "ClassIndex":
        """From a dense (n_cases, C) 0/1 matrix."""
        rows, cols = np.nonzero(np.asarray(label_matrix))
        return cls.from_pairs(rows, cols, label_matrix.shape[0], label_matrix.shape[1])


def power_probabilities(counts: np.ndarray, power: float) -> np.ndarray:
    """Target class-draw probabilities ``∝ n_j ** power`` over classes with at least one case."""
    counts = np.asarray(counts).astype(np.float64)
    weights = np.where(counts > 0, np.power(np.maximum(counts, 1.0), power), 0.0)
    if weights.sum() == 0:
        raise ValueError("sampling: no class has a positive training case")
    return weights / weights.sum()


def class_probabilities(label_matrix: np.ndarray, power: float) -> np.ndarray:
    """:func:`power_probabilities` of the class counts of a dense (n_cases, C) 0/1 matrix."""
    return power_probabilities(label_matrix.sum(axis=0), power)


def epoch_order(labels: np.ndarray | ClassIndex, strategy: str, power: float, seed: int, epoch: int) -> np.ndarray:
    """Case indices for one epoch (length = number of cases).

    ``labels``: a :class:`ClassIndex`, or a dense (n_cases, C) 0/1 matrix (converted; the order is
    the same). ``strategy``: ``instance`` | ``class_aware`` | ``sqrt`` (the power sampler with
    ``power``). Deterministic given (seed, epoch). O(n_cases + C) given the index: the draws are
    ``rng.choice`` of the classes then ``rng.random`` for the case within each class.
    """
    index = labels if isinstance(labels, ClassIndex) else ClassIndex.from_matrix(labels)
    n_cases = index.n_cases
    rng = np.random.default_rng([seed, epoch])
    if strategy == "instance":
        return rng.permutation(n_cases)
    q = 0.0 if strategy == "class_aware" else power
    counts = index.counts
    probs = power_probabilities(counts, q)
    classes = rng.choice(len(probs), size=n_cases, p=probs)
    picks = rng.random(n_cases)
    within = (picks * counts[classes]).astype(np.int64)  # int(u * len(members)), as a vector
    return index.cases[index.starts[classes] + within]


def stratified_fraction(records: list[dict], fraction: float, seed: int, level: str = "disorder") -> list[dict]:
    """A seeded subset of ``round(fraction * n)`` training case records, stratified by each case's
    rarest label (its least frequent label in ``records``; cases without labels form one stratum).

    Each stratum keeps ``floor(fraction * size)`` cases, and the slots left by rounding go to the
    strata with the largest remainders (ties broken by the seeded generator), so the subset has
    exactly the target size and every label's share is kept as far as whole cases allow. The result
    keeps the input order. ``fraction >= 1`` returns ``records`` unchanged.
    """
    if fraction >= 1.0 or not records:
        return records
    if fraction <= 0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    key = "icd10" if level == "icd" else "disorders"
    freq: dict[str, int] = {}
    for record in records:
        for label in set(record[key]):
            freq[label] = freq.get(label, 0) + 1
    strata: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        labels = record[key]
        stratum = min(labels, key=lambda label: (freq[label], label)) if labels else ""
        strata.setdefault(stratum, []).append(index)
    rng = np.random.default_rng(seed)
    names = sorted(strata)
    exact = np.array([fraction * len(strata[name]) for name in names])
    take = np.floor(exact).astype(np.int64)
    left = int(round(fraction * len(records))) - int(take.sum())
    if left > 0:
        remainder = exact - take
        order = np.lexsort((rng.random(len(names)), -remainder))  # largest remainder first, seeded ties
        take[order[:left]] += 1
    chosen: list[int] = []
    for name, k in zip(names, take):
        if k:
            chosen.extend(rng.choice(strata[name], size=int(k), replace=False).tolist())
    if isinstance(records, CaseRecords):
        return records.take(sorted(chosen))
    return [records[i] for i in sorted(chosen)]


def label_counts(records: list[dict], names: list[str], level: str = "disorder") -> np.ndarray:
    """Cases per label (C,) among ``records``, in the order of ``names`` (unknown labels ignored)."""
    key = "icd10" if level == "icd" else "disorders"
    if isinstance(records, CaseRecords):  # the label columns directly: each (case, label) once
        rows, cols = records.label_pairs(key, names)
        pairs = np.unique(rows * max(len(names), 1) + cols)
        return np.bincount(pairs % max(len(names), 1), minlength=len(names)).astype(np.int64)
    index = {name: i for i, name in enumerate(names)}
    counts = np.zeros(len(names), dtype=np.int64)
    for record in records:
        for label in set(record[key]):
            if label in index:
                counts[index[label]] += 1
    return counts
