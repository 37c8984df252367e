"""Model-free checks of the RP3D-LT benchmark (``raddiag.storage.benchmark``): what is learnable,
from which scans, and whether label text carries the visual attributes. No network is trained.

1. **Probes, all scans vs one scan.** (a) a logistic probe on pixels (each scan's key slice,
   average-pooled to 8x8, placed in its view's half of the feature vector; "one scan" keeps only the
   case's first scan, as late fusion at evaluation); (b) a template observer that knows the
   generator: per label, the best correlation of its side-view template over the case's side views
   and that of its morphology template over the morphology views, combined by min (a soft AND). Test AUC by head/medium/tail
   (groups from training counts), macro over classes.
2. **Text check.** Label text embeddings (the KE encoder, ``model.ke``) of head+medium labels fit a
   linear map to their visual attributes (shape, slot, side); it predicts the tail labels'
   attributes. Accuracy against chance, and against the same fit on permuted embeddings.

    python bench/benchmark_ceiling.py [--set synth.n_cases=3000 ...] > ceiling.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np


def _key_slices(case: dict[str, Any], pool: int, first_only: bool) -> np.ndarray:
    """(2, pool, pool): mean key slice per view kind (side, morph), zeros where the case has none."""
    out = np.zeros((2, pool, pool), dtype=np.float32)
    seen = np.zeros(2)
    for scan in case["scans"][:1] if first_only else case["scans"]:
        image = scan["volume"][scan["key_slice"]]
        size = image.shape[0]
        pooled = image.reshape(pool, size // pool, pool, size // pool).mean(axis=(1, 3))
        kind = 0 if scan["view"] == "side" else 1
        out[kind] += pooled
        seen[kind] += 1
    return out / np.maximum(seen, 1)[:, None, None]


def _unit(templates: np.ndarray) -> np.ndarray:
    out = templates - templates.mean(axis=(-2, -1), keepdims=True)
    return out / (np.linalg.norm(out.reshape(*out.shape[:-2], -1), axis=-1)[..., None, None] + 1e-9)


def _templates(labels: list[Any], size: int, heights: int = 15) -> tuple[np.ndarray, np.ndarray]:
    """Zero-mean unit-norm templates: side view (C, H, W) and morphology view (C, heights, H, W),
    the latter at ``heights`` positions over the view's vertical range (it shows no slot)."""
    from raddiag.storage.benchmark import LESION_RADIUS, MORPH_Y, SHAPES, SIDE_X, _shape_mask, _slot_y

    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    side = np.stack([_shape_mask("disk", yy, xx, _slot_y(l.slot), SIDE_X[l.side], LESION_RADIUS) for l in labels])
    ys = np.linspace(*MORPH_Y, heights)
    morph = np.stack([np.stack([_shape_mask(SHAPES[l.shape], yy, xx, y, 0.5, LESION_RADIUS) for y in ys]) for l in labels])
    return _unit(side), _unit(morph)


def _template_scores(case: dict[str, Any], templates: tuple[np.ndarray, np.ndarray], first_only: bool) -> np.ndarray:
    """(C,) per label, the smaller over view kinds of the best template correlation among that kind's
    scans (a soft AND: a label is present only if both views agree; in the morphology view the best
    over heights); a kind the case lacks is skipped."""
    side, morph = templates
    best = np.full((side.shape[0], 2), np.nan)
    for scan in case["scans"][:1] if first_only else case["scans"]:
        image = scan["volume"][scan["key_slice"]]
        image = image - image.mean()
        if scan["view"] == "side":
            best[:, 0] = np.fmax(best[:, 0], (side * image).sum(axis=(1, 2)))
        else:
            best[:, 1] = np.fmax(best[:, 1], (morph * image).sum(axis=(2, 3)).max(axis=1))
    return np.nanmin(best, axis=1)


def _group_auc(y: np.ndarray, s: np.ndarray, counts: np.ndarray) -> dict[str, float]:
    from raddiag.metrics import evaluate_scores

    report = evaluate_scores(y, s, counts)
    return {g: round(float(report.summary[g]["auc"]), 4) for g in ("head", "medium", "tail", "all")}


def probes(cfg: Any, pool: int) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    from raddiag.storage.benchmark import benchmark_labels, iter_cases

    labels = benchmark_labels(cfg.n_labels - 1)
    names = ["Normal"] + [label.name for label in labels]
    templates = _templates(labels, cfg.image_size)
    rows: dict[str, dict[str, list[Any]]] = {s: {"y": [], "all": [], "one": [], "t_all": [], "t_one": []} for s in ("train", "val", "test")}
    for case in iter_cases(cfg):
        row = rows[case["split"]]
        row["y"].append([name in case["disorders"] for name in names])
        row["all"].append(_key_slices(case, pool, False).ravel())
        row["one"].append(_key_slices(case, pool, True).ravel())
        row["t_all"].append(np.r_[0.0, _template_scores(case, templates, False)])
        row["t_one"].append(np.r_[0.0, _template_scores(case, templates, True)])
    data = {s: {k: np.asarray(v, dtype=np.float32) for k, v in row.items()} for s, row in rows.items()}
    counts = data["train"]["y"].sum(axis=0)
    out: dict[str, Any] = {"train_counts": {"min": int(counts.min()), "max": int(counts.max())}}
    test_y = data["test"]["y"]
    for view in ("all", "one"):
        x_train, x_test = data["train"][view], data["test"][view]
        mean, std = x_train.mean(0), x_train.std(0) + 1e-6
        scores = np.zeros_like(test_y)
        for c in range(test_y.shape[1]):
            target = data["train"]["y"][:, c]
            if target.min() == target.max():
                continue
            probe = LogisticRegression(C=0.1, max_iter=500).fit((x_train - mean) / std, target)
            scores[:, c] = probe.decision_function((x_test - mean) / std)
        out[f"pixel_probe_{view}_scans"] = _group_auc(test_y, scores, counts)
        template = data["test"][f"t_{view}"]
        template[:, 0] = -template[:, 1:].max(axis=1)  # Normal: no lesion anywhere
        out[f"template_observer_{view}_scans"] = _group_auc(test_y, template, counts)
    return out


def text_check(cfg: Any, ke: Any, counts: np.ndarray, seeds: int = 20) -> dict[str, Any]:
    """Fit embeddings -> attributes on head+medium labels, predict tail labels' attributes."""
    from sklearn.linear_model import LogisticRegression

    from raddiag.knowledge import embed_labels
    from raddiag.storage.benchmark import benchmark_labels

    labels = benchmark_labels(cfg.n_labels - 1)
    table = embed_labels([label.name for label in labels], ke, codes=[label.category for label in labels])
    frequent = counts >= 30
    out: dict[str, Any] = {"encoder": ke.encoder, "dim": ke.dim, "n_fit": int(frequent.sum()), "n_tail": int((~frequent).sum())}
    rng = np.random.default_rng(0)
    for attribute in ("shape", "slot", "side"):
        target = np.array([label.attributes[attribute] for label in labels])
        def accuracy(x: np.ndarray, target: np.ndarray = target) -> float:
            model = LogisticRegression(C=10.0, max_iter=2000).fit(x[frequent], target[frequent])
            return float((model.predict(x[~frequent]) == target[~frequent]).mean())
        permuted = [accuracy(table[rng.permutation(len(table))]) for _ in range(seeds)]
        out[attribute] = {
            "tail_accuracy": round(accuracy(table), 3),
            "permuted_table_accuracy": round(float(np.mean(permuted)), 3),
            "chance": round(float(np.bincount(target[~frequent]).max() / (~frequent).sum()), 3),
        }
    return out


def main() -> None:
    from raddiag.config import load_config
    from raddiag.storage.benchmark import BENCHMARK_VERSION, plan_cases

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", action="append", default=[])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--pool", type=int, default=8, help="key slices average-pooled to pool x pool for the pixel probe")
    parser.add_argument("--skip-probes", action="store_true")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    started = time.perf_counter()
    names = cfg.synth.n_labels - 1
    counts = np.zeros(names)
    for split, hits in plan_cases(cfg.synth):
        if split == "train":
            counts[hits] += 1
    result: dict[str, Any] = {"benchmark": BENCHMARK_VERSION, "synth": cfg.synth.model_dump()}
    result["text_check"] = text_check(cfg.synth, cfg.model.ke, counts)
    if not args.skip_probes:
        result["probes"] = probes(cfg.synth, args.pool)
    result["seconds"] = round(time.perf_counter() - started, 1)
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
