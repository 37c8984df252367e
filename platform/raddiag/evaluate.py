"""Evaluate a registered/logged RadDiag model on a split of the store (``raddiag evaluate``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from raddiag.config import RadDiagConfig


@dataclass
class Evaluation:
    model_uri: str
    split: str
    dataset_version: str
    report: Any  # raddiag.metrics.MetricReport
    n_cases: int


def load_pyfunc(model_uri: str) -> tuple[Any, Any]:
    """(pyfunc model, its RadDiagPyfunc) for a ``models:/...`` or ``runs:/...`` URI."""
    import warnings

    import mlflow.pyfunc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = mlflow.pyfunc.load_model(model_uri)
    return model, model.unwrap_python_model()


def score_split(model: Any, wrapper: Any, manifest: Any, cfg: RadDiagConfig, split: str, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(labels (n, C), scores (n, C)) for every case of ``split``, assembled with the model's own
    data settings (scans, depth, size, label level) from the store of ``cfg`` — the scoring
    function ``raddiag score`` runs in its actors (:func:`raddiag.score.score_records`)."""
    from raddiag.score import model_eval_config, score_records

    records = manifest.case_records(split)
    if not records:
        raise ValueError(f"store {cfg.store.url}: split {split!r} has no cases")
    scored = score_records(wrapper.model, records, model_eval_config(wrapper.meta, cfg), wrapper.label_names, batch_size=batch_size)
    return scored.labels.astype(np.float32), scored.scores


def evaluate_model(model_uri: str, cfg: RadDiagConfig, split: str = "test", n_bootstrap: int = 0) -> Evaluation:
    """Metrics by head / medium / tail for ``model_uri`` on ``split`` (groups from train counts),
    with the honest variant (thresholds chosen on the validation split) when one exists."""
    from raddiag.metrics import evaluate_scores

    manifest = cfg.store.ref().manifest()
    model, wrapper = load_pyfunc(model_uri)
    level = RadDiagConfig.model_validate(wrapper.meta["config"]).data.label_level
    names = wrapper.label_names
    if names != manifest.label_names(level):
        raise ValueError(
            f"model {model_uri}: its {len(names)} labels differ from the store's "
            f"{len(manifest.label_names(level))} ({cfg.store.url}); fine-tune it on this store first"
        )
    labels, scores = score_split(model, wrapper, manifest, cfg, split)
    val_true = val_score = None
    if split != "val" and manifest.case_records("val"):
        val_true, val_score = score_split(model, wrapper, manifest, cfg, "val")
    groups, rule = cfg.eval.groups(manifest.train_counts(level), level)
    report = evaluate_scores(
        labels, scores, manifest.train_counts(level), label_names=names, val_true=val_true, val_score=val_score,
        n_bootstrap=n_bootstrap, seed=cfg.train.seed, groups=groups, grouping=rule,
    )
    return Evaluation(model_uri=model_uri, split=split, dataset_version=manifest.version, report=report, n_cases=len(labels))
