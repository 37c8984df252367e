"""The MLflow pyfunc packaging of a trained RadDiag model: network + preprocessing + label names.

Input (``dict`` of numpy arrays, the batch schema of :mod:`raddiag.schema`): ``images``
(B, N, D, H, W) float32 in [0, 1] (any H, W: resized to the model's size), ``scan_mask`` (B, N)
bool, ``slice_mask`` (B, N, D) bool, ``modality_ids`` (B, N) int64. Output: a DataFrame of
probabilities, one column per label name, one row per case. ``mlflow models serve`` accepts the
same dict as ``{"inputs": {...}}`` JSON.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

PACKAGE_DIR = Path(__file__).resolve().parents[1]
MAX_EXAMPLE_VALUES = 200_000
PIP_REQUIREMENTS = ["torch>=2.4", "monai>=1.6,<1.7", "numpy", "pandas", "pydantic>=2", "pyyaml", "scikit-learn"]


def load_network(checkpoint_dir: str, weights: str = "best.pt") -> tuple[Any, dict[str, Any]]:
    """Rebuild the network from a checkpoint directory (``meta.json`` + weights, weights_only)."""
    import torch

    from raddiag.config import RadDiagConfig
    from raddiag.model import build_model

    meta = json.loads(Path(checkpoint_dir, "meta.json").read_text())
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
    state = torch.load(os.path.join(checkpoint_dir, weights), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model, meta


# MLflow wraps ``predict`` when the class is defined and warns (under its own "once" filter) that
# it has no type hints; ours has none on purpose: a type-hinted predict makes MLflow infer a schema
# that rejects our dict-of-arrays input. Only that class definition is silenced.
with warnings.catch_warnings():
    warnings.showwarning = lambda *args, **kwargs: None

    class RadDiagPyfunc(mlflow.pyfunc.PythonModel):
        """pyfunc wrapper; artifacts: ``checkpoint`` = a checkpoint directory (meta.json + best.pt)."""

        def load_context(self, context):
            import torch

            torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
            self.model, self.meta = load_network(context.artifacts["checkpoint"])
            cfg = self.meta["config"]["data"]
            self.depth, self.size = int(cfg["depth"]), int(cfg["image_size"])
            self.label_names = list(self.meta["label_names"])

        def predict(self, context, model_input, params=None):  # no type hints: MLflow would infer a schema from them
            import torch
            import torch.nn.functional as F

            inputs = _as_arrays(model_input)
            images = torch.as_tensor(np.asarray(inputs["images"], dtype=np.float32))
            if images.ndim != 5:
                raise ValueError(f"images: expected (B, N, D, H, W), got shape {tuple(images.shape)}")
            b, n, d, h, w = images.shape
            if (h, w) != (self.size, self.size):
                images = F.interpolate(images.reshape(b * n, d, h, w), size=(self.size, self.size), mode="bilinear", align_corners=False)
                images = images.reshape(b, n, d, self.size, self.size)
            scan_mask = torch.as_tensor(np.asarray(inputs["scan_mask"]).astype(bool))
            slice_mask = torch.as_tensor(np.asarray(inputs["slice_mask"]).astype(bool))
            modality_ids = torch.as_tensor(np.asarray(inputs["modality_ids"]).astype(np.int64))
            with torch.no_grad():
                logits = self.model(images, scan_mask, slice_mask, modality_ids)["logits"].float()
            return pd.DataFrame(torch.sigmoid(logits).numpy(), columns=self.label_names)


def _as_arrays(model_input: Any) -> dict[str, np.ndarray]:
    if isinstance(model_input, dict):
        return {k: np.asarray(v) for k, v in model_input.items()}
    if isinstance(model_input, pd.DataFrame):  # served JSON may arrive as one row of nested lists
        return {k: np.stack([np.asarray(x) for x in model_input[k]]) for k in model_input.columns}
    raise TypeError(f"model input: expected a dict of arrays, got {type(model_input).__name__}")


def signature_for(example: dict[str, np.ndarray], label_names: list[str]) -> Any:
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema, TensorSpec

    inputs = Schema(
        [TensorSpec(np.dtype(v.dtype), (-1, *v.shape[1:]), name=k) for k, v in example.items()]
    )
    outputs = Schema([ColSpec("double", name) for name in label_names])
    return ModelSignature(inputs=inputs, outputs=outputs)


def log_pyfunc(checkpoint_dir: str, example: dict[str, np.ndarray], registered_model: str | None = None) -> Any:
    """Log the model into the active MLflow run (and register it when ``registered_model``)."""
    meta = json.loads(Path(checkpoint_dir, "meta.json").read_text())
    from raddiag.schema import MODEL_INPUTS

    example = {k: example[k] for k in MODEL_INPUTS}
    small = example["images"].size <= MAX_EXAMPLE_VALUES  # a paper-scale example would be ~100 MB of JSON
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=RadDiagPyfunc(),
        artifacts={"checkpoint": checkpoint_dir},
        code_paths=[str(PACKAGE_DIR)],
        signature=signature_for(example, meta["label_names"]),
        input_example=example if small else None,
        pip_requirements=PIP_REQUIREMENTS,
        registered_model_name=registered_model,
    )
