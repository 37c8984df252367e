"""Epoch bookkeeping at scale (#16): the linear mixing-partner draw, the sparse class sampler, what
the read tasks carry, and the fast bootstrap give the same results as the algorithms they replace
(kept inline here as the references)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from raddiag.config import RadDiagConfig
from raddiag.data.pipeline import class_index, epoch_records, label_matrix, mix_partners
from raddiag.data.sampling import ClassIndex, epoch_order


def reference_mix_partners(records: list[dict[str, Any]], order: list[int], p: float, seed: int, epoch: int) -> list[int | None]:
    """The pre-#16 algorithm: scans every case for every position (n²)."""
    if p <= 0:
        return [None] * len(order)
    rng = np.random.default_rng([seed, epoch, 1])
    anatomies = np.array([str(r.get("anatomy", "")) for r in records])
    partners: list[int | None] = []
    for index in order:
        others = np.flatnonzero(anatomies != anatomies[index])
        draw, pick = rng.random(), rng.random()
        partners.append(int(others[int(pick * len(others))]) if draw < p and len(others) else None)
    return partners


def reference_epoch_order(matrix: np.ndarray, strategy: str, power: float, seed: int, epoch: int) -> np.ndarray:
    """The pre-#16 sampler over a dense label matrix."""
    n_cases = matrix.shape[0]
    rng = np.random.default_rng([seed, epoch])
    if strategy == "instance":
        return rng.permutation(n_cases)
    q = 0.0 if strategy == "class_aware" else power
    counts = matrix.sum(axis=0).astype(np.float64)
    weights = np.where(counts > 0, np.power(np.maximum(counts, 1.0), q), 0.0)
    probs = weights / weights.sum()
    members = [np.flatnonzero(matrix[:, j]) for j in range(matrix.shape[1])]
    classes = rng.choice(len(probs), size=n_cases, p=probs)
    picks = rng.random(n_cases)
    return np.array([members[c][int(u * len(members[c]))] for c, u in zip(classes, picks)], dtype=np.int64)


def synthetic_records(n: int, n_labels: int, n_anatomies: int, seed: int) -> tuple[list[dict[str, Any]], list[str]]:
    rng = np.random.default_rng(seed)
    names = [f"label {j}" for j in range(n_labels)]
    weights = 1.0 / (np.arange(n_labels) + 2.0) ** 1.2
    records = []
    for i in range(n):
        labels = rng.choice(n_labels, size=int(rng.integers(1, 4)), p=weights / weights.sum())  # repeats allowed
        record = {"case_id": f"c{i}", "disorders": [names[j] for j in labels] + (["not in vocabulary"] if i % 17 == 0 else []),
                  "icd10": [], "scans": []}
        if i % 23:  # some records have no anatomy key at all
            record["anatomy"] = f"anatomy {int(rng.integers(0, n_anatomies))}"
        records.append(record)
    return records, names


@pytest.mark.parametrize("n_anatomies", [1, 2, 7, 60])
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_mix_partners_equal_the_quadratic_reference(n_anatomies: int, p: float) -> None:
    records, _ = synthetic_records(400, 30, n_anatomies, seed=n_anatomies)
    rng = np.random.default_rng(5)
    for order in (list(range(400)), rng.integers(0, 400, 900).tolist(), []):  # sampled orders repeat cases
        for seed, epoch in ((0, 0), (3, 11)):
            assert mix_partners(records, order, p, seed, epoch) == reference_mix_partners(records, order, p, seed, epoch)


def test_mix_partners_all_of_one_anatomy_never_mix() -> None:
    records = [{"anatomy": "chest"} for _ in range(50)]
    assert mix_partners(records, list(range(50)), 1.0, 0, 0) == [None] * 50


@pytest.mark.parametrize("strategy", ["instance", "class_aware", "sqrt"])
def test_epoch_order_from_the_class_index_equals_the_dense_reference(strategy: str) -> None:
    records, names = synthetic_records(700, 120, 7, seed=1)
    matrix = label_matrix(records, names, "disorder")
    index = class_index(records, names, "disorder")
    assert np.array_equal(index.counts, matrix.sum(axis=0))
    for epoch in range(3):
        expected = reference_epoch_order(matrix, strategy, 0.5, seed=9, epoch=epoch)
        assert np.array_equal(epoch_order(index, strategy, 0.5, seed=9, epoch=epoch), expected)
        assert np.array_equal(epoch_order(matrix, strategy, 0.5, seed=9, epoch=epoch), expected)  # dense input still works
        cfg = RadDiagConfig.model_validate({"data": {"sampler": strategy, "sampler_power": 0.5}, "train": {"seed": 9}})
        assert epoch_records(records, cfg, names, train=True, epoch=epoch) == expected.tolist()


def test_class_index_counts_a_repeated_pair_once_and_keeps_cases_ascending() -> None:
    index = ClassIndex.from_pairs(np.array([4, 1, 4, 0, 3]), np.array([2, 2, 2, 0, 2]), n_cases=5, n_classes=4)
    assert index.counts.tolist() == [1, 0, 3, 0]
    assert index.cases[index.starts[2] : index.starts[3]].tolist() == [1, 3, 4]
    with pytest.raises(ValueError, match="no class has a positive"):
        epoch_order(ClassIndex.from_pairs(np.array([]), np.array([]), 3, 2), "sqrt", 0.5, 0, 0)
