"""``raddiag knowledge build``: label vocabulary -> versioned embedding table in the store (+ MLflow).

Layout under the store: ``knowledge/<version>/{embeddings.npy, labels.json, meta.json}``. The version
is a content hash of the label names, codes, encoder settings and ICD-10-CM data, so a rebuild with
the same inputs is a cache hit.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from dataclasses import asdict, dataclass

import numpy as np

from raddiag.config import KEConfig
from raddiag.knowledge.cm_index import INDEX_VERSION
from raddiag.knowledge.curated import curated_version
from raddiag.knowledge.icd import icd_version
from raddiag.knowledge.labels import SOURCES, LabelMapping, read_mapping, write_mapping
from raddiag.tracking import Tags, tag_filter

log = logging.getLogger(__name__)
FORMAT_VERSION = 9  # label matching / table layout; part of the version (3: #16 text matching, 4: its round 2, 5: rounds 3-4, the index, 6: round 6, 7: round 8, 8: round 9, alternatives, 9: the curated table)


@dataclass
class KnowledgeTable:
    """A built label embedding table: ``embeddings`` (C, dim) float32 aligned with ``mappings``."""

    version: str
    uri: str
    embeddings: np.ndarray
    mappings: list[LabelMapping]
    meta: dict


def knowledge_version(names: list[str], codes: list[str | None] | None, cfg: KEConfig) -> str:
    settings = cfg.model_dump(include={"encoder", "encoder_path", "template", "dim", "text_train_steps", "match_threshold", "curated"})
    if cfg.curated:  # the bundled table's content
        settings["curated_table"] = curated_version()
    if cfg.mapping:  # the reviewed mapping's content, not its path
        settings["mapping"] = sorted((k, v or "") for k, v in read_mapping(cfg.mapping).items())
    if cfg.encoder == "trained" and not cfg.encoder_path:
        from raddiag.knowledge.encoder import TextTrainConfig

        settings["text_encoder"] = TextTrainConfig(dim=cfg.dim, steps=cfg.text_train_steps).key()
    payload = json.dumps({"names": names, "codes": codes, "ke": settings, "icd": icd_version(), "format": FORMAT_VERSION},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def build_knowledge(
    names: list[str],
    cfg: KEConfig,
    codes: list[str | None] | None = None,
    store_url: str = ".raddiag/store",
    storage_options: dict | None = None,
    tracking_uri: str | None = None,
    experiment: str = "raddiag",
) -> KnowledgeTable:
    """Embed ``names`` (with optional ICD-10-CM ``codes``) with the configured KE encoder and store the
    table at ``<store_url>/knowledge/<version>/``; reuse it when that version exists. With
    ``tracking_uri`` the build is logged to MLflow (params, mapping counts, artifacts)."""
    import fsspec

    version = knowledge_version(list(names), codes, cfg)
    fs, root = fsspec.core.url_to_fs(store_url.rstrip("/"), **(storage_options or {}))
    folder = f"{root}/knowledge/{version}"
    uri = f"{store_url.rstrip('/')}/knowledge/{version}"
    if fs.exists(f"{folder}/meta.json"):
        with fs.open(f"{folder}/embeddings.npy", "rb") as handle:
            embeddings = np.load(io.BytesIO(handle.read()))
        with fs.open(f"{folder}/labels.json") as handle:
            mappings = [LabelMapping(**m) for m in json.load(handle)]
        with fs.open(f"{folder}/meta.json") as handle:
            meta = json.load(handle)
        log.info("knowledge table %s found in the store (%s)", version, uri)
        meta["cached"] = True
        if tracking_uri:
            _log_to_mlflow(tracking_uri, experiment, meta, embeddings, mappings)
        return KnowledgeTable(version, uri, embeddings, mappings, meta)

    from raddiag.knowledge.cache import cached_label_embeddings  # imports this module

    start = time.perf_counter()
    # through the local label-table cache: a training driver on this machine then reuses this very table
    embeddings, mappings, reused = cached_label_embeddings(list(names), cfg, codes)
    counts = {source: sum(m.source == source for m in mappings) for source in SOURCES}
    meta = {
        "version": version,
        "labels": len(names),
        "dim": int(embeddings.shape[1]),
        "icd_version": icd_version(),
        "icd_index": INDEX_VERSION,
        "ke": cfg.model_dump(mode="json"),
        "mapping_counts": counts,
        "seconds": round(time.perf_counter() - start, 2),
        "local_cache": reused,
    }
    fs.makedirs(folder, exist_ok=True)
    buffer = io.BytesIO()
    np.save(buffer, embeddings)
    fs.pipe_file(f"{folder}/embeddings.npy", buffer.getvalue())
    fs.pipe_file(f"{folder}/labels.json", json.dumps([asdict(m) for m in mappings], indent=1).encode())
    fs.pipe_file(f"{folder}/mapping.csv", write_mapping(mappings).encode())  # to review, correct and feed back (ke.mapping)
    fs.pipe_file(f"{folder}/meta.json", json.dumps(meta, indent=2).encode())  # written last: marks completion
    log.info("knowledge table %s: %d labels, %s -> %s", version, len(names), counts, uri)
    if tracking_uri:
        _log_to_mlflow(tracking_uri, experiment, meta, embeddings, mappings)
    return KnowledgeTable(version, uri, embeddings, mappings, meta)


def _log_to_mlflow(tracking_uri: str, experiment: str, meta: dict, embeddings: np.ndarray,
                   mappings: list[LabelMapping]) -> str:
    """Log the table as one MLflow run tagged ``raddiag.knowledge_version`` (once per version: a
    later build of the same version returns the existing run). Returns the run id."""
    import tempfile
    from pathlib import Path

    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    experiment_id = mlflow.set_experiment(experiment).experiment_id
    found = mlflow.search_runs([experiment_id], filter_string=tag_filter({Tags.KNOWLEDGE_VERSION: meta["version"]}),
                               output_format="list", max_results=1)
    if found:
        return found[0].info.run_id
    meta = {k: v for k, v in meta.items() if k != "cached"}
    with mlflow.start_run(run_name=f"knowledge-{meta['version']}") as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tags({Tags.STAGE: "knowledge", Tags.KNOWLEDGE_VERSION: meta["version"]})
        mlflow.log_params({f"ke.{k}": v for k, v in meta["ke"].items()} | {"knowledge.version": meta["version"]})
        mlflow.log_metrics({f"knowledge.{k}": v for k, v in meta["mapping_counts"].items()}
                           | {"knowledge.labels": meta["labels"], "knowledge.dim": meta["dim"]})
        folder = Path(tmp)
        np.save(folder / "embeddings.npy", embeddings)
        (folder / "labels.json").write_text(json.dumps([asdict(m) for m in mappings], indent=1))
        write_mapping(mappings, folder / "mapping.csv")
        (folder / "meta.json").write_text(json.dumps(meta, indent=2))
        mlflow.log_artifacts(str(folder), artifact_path="knowledge")
    return run.info.run_id
