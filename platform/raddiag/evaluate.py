"""Evaluate a registered/logged RadDiag model on a split of the store (``raddiag evaluate``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from raddiag.config import RadDiagConfig
from raddiag.serve.bundle import ModelBundle


@dataclass
class Evaluation:
    model_uri: str
    split: str
    dataset_version: str
    report: Any  # raddiag.metrics.MetricReport
    n_cases: int


def score_split(bundle: ModelBundle, manifest: Any, split: str, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(labels (n, C), scores (n, C)) for every case of ``split``, assembled with the model's own
    data settings (scans, depth, size, label level) from the store ``bundle`` is on
    (:meth:`ModelBundle.on_store`) — the scoring function ``raddiag score`` runs in its actors
    (:func:`raddiag.score.score_records`)."""
    from raddiag.score import score_records

    records = manifest.case_records(split)
    if not records:
        raise ValueError(f"store {bundle.config.store.url}: split {split!r} has no cases")
    scored = score_records(bundle, records, batch_size=batch_size)
    return scored.labels.astype(np.float32), scored.scores


def evaluate_model(model: str | ModelBundle, cfg: RadDiagConfig, split: str = "test", n_bootstrap: int = 0) -> Evaluation:
    """Metrics by head / medium / tail for ``model`` (a URI, see :meth:`ModelBundle.load`, or a
    loaded bundle) on ``split`` of ``cfg``'s store (groups from train counts), with the honest
    variant (thresholds chosen on the validation split) when one exists."""
    from raddiag.metrics import evaluate_scores
    from raddiag.storage.store import RECORD_COLUMNS

    manifest = cfg.store.ref().manifest(RECORD_COLUMNS)
    if not isinstance(model, ModelBundle):
        model = ModelBundle.load(model, cfg.tracking.resolved_uri())
    bundle = model.on_store(cfg.store.ref())
    level = bundle.label_level
    names = bundle.label_names
    if names != manifest.label_names(level):
        raise ValueError(
            f"model {bundle.source}: its {len(names)} labels differ from the store's "
            f"{len(manifest.label_names(level))} ({cfg.store.url}); fine-tune it on this store first"
        )
    labels, scores = score_split(bundle, manifest, split)
    val_true = val_score = None
    if split != "val" and manifest.case_records("val"):
        val_true, val_score = score_split(bundle, manifest, "val")
    groups, rule = cfg.eval.groups(manifest.train_counts(level), level)
    report = evaluate_scores(
        labels, scores, manifest.train_counts(level), label_names=names, val_true=val_true, val_score=val_score,
        n_bootstrap=n_bootstrap, seed=cfg.train.seed, groups=groups, grouping=rule,
    )
    return Evaluation(model_uri=bundle.source, split=split, dataset_version=manifest.version, report=report, n_cases=len(labels))
