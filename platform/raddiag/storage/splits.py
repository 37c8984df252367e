"""Seeded case-level splits, stratified so that every label (tail ones first) appears in train."""

from __future__ import annotations

import numpy as np


def stratified_split(
    case_labels: list[list[str]], val_fraction: float, test_fraction: float, seed: int
) -> list[str]:
    """Assign each case to ``train``/``val``/``test``.

    Labels are visited rarest first; each label's still-unassigned cases are shuffled and dealt so
    that its first case goes to train, and the split proportions are met per label as closely as
    possible (iterative stratification). Cases without labels are split at the global fractions.

    Returns one split name per case, in input order. Deterministic for a given seed.
    """
    rng = np.random.default_rng(seed)
    n = len(case_labels)
    fractions = {"train": 1.0 - val_fraction - test_fraction, "val": val_fraction, "test": test_fraction}
    assigned: list[str | None] = [None] * n
    by_label: dict[str, list[int]] = {}
    for index, labels in enumerate(case_labels):
        for label in set(labels):
            by_label.setdefault(label, []).append(index)
    for label in sorted(by_label, key=lambda name: (len(by_label[name]), name)):
        members = by_label[label]
        counts = {s: sum(1 for i in members if assigned[i] == s) for s in fractions}
        free = [i for i in members if assigned[i] is None]
        rng.shuffle(free)
        for index in free:
            total = sum(counts.values()) + 1
            if counts["train"] == 0:
                choice = "train"
            else:
                deficits = {s: fractions[s] * total - counts[s] for s in fractions}
                choice = max(deficits, key=lambda s: (deficits[s], s == "train"))
            assigned[index] = choice
            counts[choice] += 1
    rest = [i for i in range(n) if assigned[i] is None]
    rng.shuffle(rest)
    n_val = int(round(val_fraction * len(rest)))
    n_test = int(round(test_fraction * len(rest)))
    for position, index in enumerate(rest):
        assigned[index] = "val" if position < n_val else "test" if position < n_val + n_test else "train"
    return [str(s) for s in assigned]
