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


def score_split(
    model_uri: str, cfg: RadDiagConfig, split: str, batch_size: int = 8
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray, Any]:
    """(labels (n, C), scores (n, C), label_names, train_counts (C,), manifest) for ``split``.

    Cases are assembled with the model's own data settings (scans, depth, size, label level).
    """
    from raddiag.data.pipeline import local_batches
    from raddiag.storage.store import Store

    manifest = Store(cfg.store.url, cfg.store.endpoint_url).manifest()
    model, wrapper = load_pyfunc(model_uri)
    model_cfg = RadDiagConfig.model_validate(wrapper.meta["config"])
    eval_cfg = model_cfg.model_copy(update={"store": cfg.store})
    names = wrapper.label_names
    store_names = manifest.label_names(model_cfg.data.label_level)
    if names != store_names:
        raise ValueError(
            f"model {model_uri}: its {len(names)} labels differ from the store's {len(store_names)} "
            f"({cfg.store.url}); fine-tune it on this store first"
        )
    records = manifest.case_records(split)
    if not records:
        raise ValueError(f"store {cfg.store.url}: split {split!r} has no cases")
    labels, scores = [], []
    for batch in local_batches(records, eval_cfg, names, batch_size):
        frame = model.predict({k: batch[k] for k in ("images", "scan_mask", "slice_mask", "modality_ids")})
        scores.append(frame[names].to_numpy())
        labels.append(batch["labels"])
    counts = manifest.train_counts(model_cfg.data.label_level)
    return np.concatenate(labels), np.concatenate(scores), names, counts, manifest


def evaluate_model(model_uri: str, cfg: RadDiagConfig, split: str = "test", n_bootstrap: int = 0) -> Evaluation:
    """Metrics by head / medium / tail for ``model_uri`` on ``split`` (groups from train counts)."""
    from raddiag.metrics import evaluate_scores

    labels, scores, names, counts, manifest = score_split(model_uri, cfg, split)
    report = evaluate_scores(labels, scores, counts, label_names=names, n_bootstrap=n_bootstrap, seed=cfg.train.seed)
    return Evaluation(model_uri=model_uri, split=split, dataset_version=manifest.version, report=report, n_cases=len(labels))
