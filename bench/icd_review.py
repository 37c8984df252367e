"""How many rows of the text-matched ICD mapping must a clinician review (#16)?

Text matching is right for ~80% of unseen names. The reviewable mapping CSV (``raddiag knowledge``) puts the least
trustworthy rows first; this measures, on the hand-checked lists, how the mapping's accuracy grows as a reviewer works
down the CSV, for two confidence orderings: the top-1 ``score`` and the ``margin`` (top-1 score minus the best score of
another category). Simulated reviewer: a reviewed row ends correct; the others keep the matcher's top 1. Protocol and
expected outcome: ``bench/data/icd_review_expected.md`` (the ordering is chosen on the development lists and reported
once on held-outs 12-15).

    PYTHONPATH=platform .venv/bin/python bench/icd_review.py --output bench/data/icd_review.json
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from sklearn.metrics import roc_auc_score

from icd_accuracy import LISTS, category, read_handcheck, wilson

DEV = ("dev", "heldout", "heldout2", "heldout3", "heldout4", "heldout5", "heldout6", "heldout7", "heldout8", "heldout9",
       "heldout10", "heldout11")
REPORT = ("heldout12", "heldout13", "heldout14", "heldout15")
ORDERINGS = ("score", "margin")
TARGETS = (0.90, 0.95)
FRACTIONS = (0.1, 0.2, 0.3, 0.4)


def margin(picks: list[tuple[str, str, float]]) -> float:
    """Top-1 score minus the best score of another category (candidates best first, one per category;
    the top-1 score when there is no other, 0 when there is none at all)."""
    if not picks:
        return 0.0
    return picks[0][2] - (picks[1][2] if len(picks) > 1 else 0.0)


def rows_of(names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Per hand-checked row: top 1 right, top 3 holds the right category, top-1 score, margin."""
    from raddiag.knowledge.textmatch import match_candidates

    rows = [row for name in names for row in read_handcheck(LISTS[name])]
    picks = match_candidates([row.name for row in rows], k=3)
    correct = np.array([bool(p) and category(p[0][0]) in row.accepted for row, p in zip(rows, picks)])
    top3 = np.array([any(category(code) in row.accepted for code, _, _ in p) for row, p in zip(rows, picks)])
    score = np.array([p[0][2] if p else 0.0 for p in picks])
    return {"correct": correct, "top3": top3, "score": score, "margin": np.array([margin(p) for p in picks])}


def review_order(confidence: np.ndarray) -> np.ndarray:
    """Least confident first; ties keep list order (stable)."""
    return np.argsort(confidence, kind="stable")


def accuracy_after(correct: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Accuracy after reviewing the first m rows of ``order``, m = 0..n."""
    n = len(correct)
    wrong_in_order = (~correct[order]).astype(int)
    fixed = np.concatenate([[0], np.cumsum(wrong_in_order)])
    return (correct.sum() + fixed) / n


def reviewed_for(curve: np.ndarray, target: float) -> float:
    """Smallest fraction of rows reviewed at which accuracy reaches ``target``."""
    n = len(curve) - 1
    return float(np.argmax(curve >= target - 1e-12) / n)


def summarise(data: dict[str, np.ndarray], ordering: str) -> dict:
    correct = data["correct"]
    order = review_order(data[ordering])
    curve = accuracy_after(correct, order)
    n, errors = len(correct), int((~correct).sum())
    errors_left = (1 - curve) * n / max(errors, 1)
    out = {
        "n": n, "top1": int(correct.sum()), "top1_accuracy": round(float(correct.mean()), 4),
        "auroc_error": round(float(roc_auc_score(~correct, -data[ordering])), 4) if 0 < errors < n else None,
        "errors_left_area": round(float(errors_left.mean()), 4),
        "accuracy_after_reviewing": {f"{f:.0%}": round(float(curve[int(round(f * n))]), 4) for f in FRACTIONS},
        "reviewed_for": {f"{t:.0%}": round(reviewed_for(curve, t), 4) for t in TARGETS},
        "errors_with_right_category_in_top3": int((~correct & data["top3"]).sum()),
    }
    return out


def bootstrap(data: dict[str, np.ndarray], ordering: str, n_boot: int = 2000, seed: int = 0) -> dict:
    """95% percentile intervals over resampled rows of the report figures."""
    rng = np.random.default_rng(seed)
    n = len(data["correct"])
    draws: dict[str, list[float]] = {"acc20": [], "rev90": [], "rev95": [], "auroc": []}
    for _ in range(n_boot):
        pick = rng.integers(0, n, n)
        sample = {k: v[pick] for k, v in data.items()}
        curve = accuracy_after(sample["correct"], review_order(sample[ordering]))
        draws["acc20"].append(curve[int(round(0.2 * n))])
        draws["rev90"].append(reviewed_for(curve, 0.90))
        draws["rev95"].append(reviewed_for(curve, 0.95))
        wrong = ~sample["correct"]
        if 0 < wrong.sum() < n:
            draws["auroc"].append(roc_auc_score(wrong, -sample[ordering]))
    return {k: [round(float(np.percentile(v, 2.5)), 4), round(float(np.percentile(v, 97.5)), 4)] for k, v in draws.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="", help="JSON file for the results")
    args = parser.parse_args()
    dev = rows_of(DEV)
    result: dict = {"dev_lists": list(DEV), "report_lists": list(REPORT),
                    "dev": {o: summarise(dev, o) for o in ORDERINGS}}
    chosen = min(ORDERINGS, key=lambda o: result["dev"][o]["errors_left_area"])
    result["chosen_on_dev"] = chosen
    for o in ORDERINGS:
        print(f"dev      {o:6s} {result['dev'][o]}")
    report = rows_of(REPORT)
    result["report"] = {o: summarise(report, o) for o in ORDERINGS}
    result["report_ci95"] = bootstrap(report, chosen)
    result["report_top1_ci95"] = [round(x, 4) for x in wilson(int(report["correct"].sum()), len(report["correct"]))]
    for o in ORDERINGS:
        print(f"held-out {o:6s} {result['report'][o]}")
    print(f"chosen on dev: {chosen}; held-out 95% intervals: {result['report_ci95']}")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()
