"""A trained model as one object: :class:`ModelBundle` — network, config, labels, preprocessing plan.

Every command that uses a trained model (``predict``, ``zeroshot``, ``evaluate``, ``score``,
``finetune``, ``promote``, ``report``, the served pyfunc) loads it through :meth:`ModelBundle.load`,
from any of:

- ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` (the registry),
- ``runs:/<run_id>/raddiag-classifier`` (the pyfunc a training run logs, :data:`LOGGED_MODEL_NAME`;
  runs logged before the name existed hold it as ``model``: either name loads either kind of run,
  so URIs written as ``runs:/<run_id>/model`` keep working),
- a logged-model id ``m-<hex>`` (or ``models:/m-<hex>``),
- a local folder: a Train checkpoint (``meta.json`` + ``best.pt``) or a saved pyfunc (``MLmodel``),
  or a remote Train checkpoint URL (:meth:`ModelBundle.from_checkpoint`).

The bundle's ``config`` is the model's own training config; :meth:`ModelBundle.on_store` points it at
another store (the only keys it changes), which is how a model reads a store to be scored on.
A URI that cannot be loaded is one :class:`ModelLoadError` line naming the URI and the tracking URI.
"""

from __future__ import annotations

import json
import re
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

#: The name of the pyfunc model a training run logs (``runs:/<run_id>/raddiag-classifier``).
LOGGED_MODEL_NAME = "raddiag-classifier"
#: The name runs logged before :data:`LOGGED_MODEL_NAME` used; still loaded.
LEGACY_MODEL_NAME = "model"
WEIGHTS_FILE = "best.pt"
URI_FORMS = f"models:/<name>@<alias>, models:/<name>/<version>, runs:/<run_id>/{LOGGED_MODEL_NAME}, m-<logged model id> or a checkpoint folder"

_LOGGED_MODEL_ID = re.compile(r"^m-[0-9a-f]{8,}$")


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded; the message names the URI, the tracking URI and the fix."""


def run_model_uri(run_id: str) -> str:
    """The URI of the pyfunc that training run ``run_id`` logged."""
    return f"runs:/{run_id}/{LOGGED_MODEL_NAME}"


def build_network(meta: dict[str, Any], weights: str | None = None) -> Any:
    """The network described by a checkpoint's ``meta.json``, in eval mode, with ``weights`` (a
    ``best.pt`` state dict, read with ``weights_only``) loaded when given."""
    import torch

    from raddiag.config import RadDiagConfig
    from raddiag.model import build_model

    cfg = RadDiagConfig.model_validate(meta["config"])
    cfg.model.pretrained_weights = None  # the checkpoint's own weights are loaded below
    names = meta["label_names"]
    table = meta.get("label_embeddings")
    counts = np.asarray(meta.get("train_counts") or np.ones(len(names)), dtype=np.float32)
    prior = torch.tensor(np.maximum(counts, 1) / max(float(counts.sum()), 1.0), dtype=torch.float32)
    model = build_model(
        cfg.model, len(names),
        label_embeddings=torch.tensor(np.asarray(table, dtype=np.float32)) if table is not None else None,
        label_prior=prior,
    )
    if weights is not None:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    return model


def predict_arrays(network: Any, image_size: int, label_names: list[str], inputs: dict[str, Any]) -> Any:
    """Probabilities (a DataFrame, one column per label, one row per case) of assembled tensors:
    ``images`` (B, N, D, H, W) float32 in [0, 1] (any H, W: resized to ``image_size``),
    ``scan_mask`` (B, N), ``slice_mask`` (B, N, D), ``modality_ids`` (B, N)."""
    import pandas as pd
    import torch
    import torch.nn.functional as F

    images = torch.as_tensor(np.asarray(inputs["images"], dtype=np.float32))
    if images.ndim != 5:
        raise ValueError(f"images: expected (B, N, D, H, W), got shape {tuple(images.shape)}")
    b, n, d, h, w = images.shape
    if (h, w) != (image_size, image_size):
        images = F.interpolate(images.reshape(b * n, d, h, w), size=(image_size, image_size), mode="bilinear", align_corners=False)
        images = images.reshape(b, n, d, image_size, image_size)
    scan_mask = torch.as_tensor(np.asarray(inputs["scan_mask"]).astype(bool))
    slice_mask = torch.as_tensor(np.asarray(inputs["slice_mask"]).astype(bool))
    modality_ids = torch.as_tensor(np.asarray(inputs["modality_ids"]).astype(np.int64))
    with torch.no_grad():
        logits = network(images, scan_mask, slice_mask, modality_ids)["logits"].float()
    return pd.DataFrame(torch.sigmoid(logits).numpy(), columns=list(label_names))


@dataclass(frozen=True)
class ModelBundle:
    """A trained model and everything needed to use it.

    ``network``: the torch module (eval mode, CPU); ``meta``: the checkpoint's ``meta.json``
    (config, label names, train counts, label embeddings, dataset version, selection metric,
    preprocessing plan); ``config``: the model's :class:`~raddiag.config.RadDiagConfig` (its store
    is the training store until :meth:`on_store`); ``source``: what it was loaded from.
    """

    network: Any
    meta: dict[str, Any]
    config: Any
    source: str

    # ---- what a consumer needs ----------------------------------------------------------------
    @property
    def label_names(self) -> list[str]:
        return list(self.meta["label_names"])

    @property
    def label_level(self) -> str:
        return str(self.config.data.label_level)

    @property
    def plan(self) -> dict[str, Any] | None:
        """The training store's preprocessing (:class:`~raddiag.storage.preprocess.Plan` as a
        dict), None for models trained before plans were recorded."""
        return self.meta.get("plan")

    @property
    def train_counts(self) -> np.ndarray:
        counts = self.meta.get("train_counts")
        return np.asarray(counts if counts is not None else np.ones(len(self.label_names)), dtype=np.int64)

    @property
    def label_embeddings(self) -> np.ndarray | None:
        table = self.meta.get("label_embeddings")
        return None if table is None else np.asarray(table, dtype=np.float32)

    @property
    def dataset_version(self) -> str | None:
        return self.meta.get("dataset_version")

    @property
    def selection_metric(self) -> str | None:
        """The validation metric its checkpoint was selected on (``train.metric``)."""
        return self.meta.get("metric")

    def on_store(self, store: Any) -> ModelBundle:
        """This bundle with its config reading ``store`` (a :class:`~raddiag.storage.ref.StoreRef`,
        a :class:`~raddiag.config.StoreConfig` or a config holding one); nothing else changes."""
        from raddiag.config import StoreConfig
        from raddiag.storage.ref import StoreRef

        ref = store if isinstance(store, StoreRef) else StoreRef.from_config(store)
        section = StoreConfig(url=ref.url, endpoint_url=ref.endpoint_url)
        return replace(self, config=self.config.model_copy(update={"store": section}))

    def predict(self, inputs: dict[str, Any]) -> Any:
        """Probabilities of assembled tensors (see :func:`predict_arrays`), as the pyfunc computes them."""
        return predict_arrays(self.network, int(self.config.data.image_size), self.label_names, inputs)

    def case_inputs(self, scans: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        """Raw scans (``[{name, volume, modality, plane}]``) -> a batch of one case, prepared with
        the training store's plan and assembled as training did (:func:`raddiag.predict.case_arrays`)."""
        from raddiag.predict import case_arrays

        return case_arrays(scans, self.config.data, self.plan)

    # ---- loading ------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str, weights: str = WEIGHTS_FILE) -> ModelBundle:
        """From a Train checkpoint: a local folder (``meta.json`` + ``best.pt``) or a remote
        checkpoint URL (``s3://...``, copied to a temporary folder first)."""
        from raddiag.config import RadDiagConfig

        if "://" in path and not path.startswith("file://"):
            from ray.train import Checkpoint

            with tempfile.TemporaryDirectory() as scratch:
                return replace(cls.from_checkpoint(Checkpoint(path).to_directory(scratch), weights), source=path)
        folder = Path(path.removeprefix("file://"))
        if not (folder / "meta.json").is_file() or not (folder / weights).is_file():
            raise ModelLoadError(f"checkpoint {path}: expected a folder with meta.json and {weights} (a Train checkpoint)")
        meta = json.loads((folder / "meta.json").read_text())
        network = build_network(meta, str(folder / weights))
        return cls(network=network, meta=meta, config=RadDiagConfig.model_validate(meta["config"]), source=str(path))

    @classmethod
    def from_pyfunc(cls, python_model: Any, source: str) -> ModelBundle:
        """From a loaded :class:`~raddiag.serve.pyfunc.RadDiagPyfunc` (it holds a bundle)."""
        bundle = getattr(python_model, "bundle", None)
        if not isinstance(bundle, ModelBundle):
            raise ModelLoadError(f"model {source}: not a RadDiag pyfunc model ({type(python_model).__name__})")
        return replace(bundle, source=source)

    @classmethod
    def load(cls, uri: str, tracking_uri: str | None = None) -> ModelBundle:
        """From a model URI or a checkpoint folder (see the module doc). ``tracking_uri`` (default:
        MLflow's current one) is where ``models:/`` and ``runs:/`` URIs are looked up."""
        if not uri:
            raise ModelLoadError(f"model URI is empty; expected {URI_FORMS}")
        if _LOGGED_MODEL_ID.match(uri):
            uri = f"models:/{uri}"
        if uri.startswith(("models:/", "runs:/")):
            return cls._load_mlflow(uri, tracking_uri)
        if re.match(r"^[a-z][a-z0-9+.-]*://", uri) and not uri.startswith("file://"):
            return cls.from_checkpoint(uri)  # a Train checkpoint on S3 (what raddiag.checkpoint tags hold)
        local = Path(uri.removeprefix("file://"))
        if (local / "meta.json").is_file():
            return cls.from_checkpoint(str(local))
        if (local / "MLmodel").is_file():
            return cls._load_mlflow(str(local), tracking_uri)
        raise ModelLoadError(f"model {uri}: not a model URI nor a model folder; expected {URI_FORMS}")

    @classmethod
    def _load_mlflow(cls, uri: str, tracking_uri: str | None) -> ModelBundle:
        import mlflow
        import mlflow.pyfunc

        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
            mlflow.set_registry_uri(tracking_uri)
        searched = tracking_uri or mlflow.get_tracking_uri()
        database = searched.removeprefix("sqlite:///") if searched.startswith("sqlite:///") else None
        if database is not None and not Path(database).is_file():  # MLflow would create an empty one
            raise ModelLoadError(
                f"model {uri}: no MLflow database at {database} (tracking URI {searched}); run from the project "
                "folder, or set tracking.tracking_uri / MLFLOW_TRACKING_URI"
            )
        candidates = [uri]
        run_part = re.match(r"^runs:/([^/]+)/(.+)$", uri)
        names = (LOGGED_MODEL_NAME, LEGACY_MODEL_NAME)
        if run_part and run_part.group(2).strip("/") in names:  # runs logged before the name, URIs written before it
            other = names[1] if run_part.group(2).strip("/") == names[0] else names[0]
            candidates.append(f"runs:/{run_part.group(1)}/{other}")
        first_error: Exception | None = None
        for candidate in candidates:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    loaded = mlflow.pyfunc.load_model(candidate)
            except Exception as exc:  # noqa: BLE001 - MlflowException, OSError, ...: reported below in one line
                first_error = first_error or exc
                continue
            return cls.from_pyfunc(loaded.unwrap_python_model(), uri)
        reason = _first_line(first_error)
        raise ModelLoadError(
            f"model {uri}: cannot be loaded from the MLflow tracking URI {searched} ({reason}); "
            f"check the URI ({URI_FORMS}) and tracking.tracking_uri / MLFLOW_TRACKING_URI"
        ) from None


def _first_line(exc: Exception | None) -> str:
    text = f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error"
    line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."

