"""The MLflow pyfunc packaging of a trained RadDiag model: network + preprocessing + label names.

Two inputs:

- **Scan files** (what a client has): a table, one row per scan, columns ``case_id``, ``name`` (the
  file name; its suffix picks the reader: ``.npy``, ``.nii``, ``.nii.gz``, ``.png``, ``.jpg``),
  ``data`` (the file's bytes; base64 text when it arrives as JSON), ``modality`` and optionally
  ``plane``. Each scan goes through the training store's preprocessing plan (``meta["plan"]``: slice
  sampling, resize, CT window, normalisation) and the training case assembly, so a served file is
  scored exactly as ``raddiag predict`` scores it. Output: ``case_id`` plus one probability column
  per label, one row per case (first-appearance order). Served: ``POST /invocations`` with
  ``{"dataframe_split": {"columns": ["case_id", "name", "data", "modality", "plane"], "data": [...]}}``.
  Files are parsed by our readers (no pickle: ``.npy`` with ``allow_pickle=False``), within limits.
- **Assembled tensors** (the batch schema of :mod:`raddiag.schema`, e.g. from the store):
  ``images`` (B, N, D, H, W) float32 in [0, 1] (any H, W: resized to the model's size),
  ``scan_mask`` (B, N) bool, ``slice_mask`` (B, N, D) bool, ``modality_ids`` (B, N) int64; served as
  ``{"inputs": {...}}``. Output: one probability column per label, one row per case.

The logged signature names the outputs only (an input signature would admit one of the two).
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


# MLflow wraps ``predict`` when the class is defined and warns (under its own "once" filter) that
# it has no type hints; ours has none on purpose: a type-hinted predict makes MLflow infer a schema
# that rejects our dict-of-arrays input. Only that class definition is silenced.
with warnings.catch_warnings():
    warnings.showwarning = lambda *args, **kwargs: None

    class RadDiagPyfunc(mlflow.pyfunc.PythonModel):
        """pyfunc wrapper; artifacts: ``checkpoint`` = a checkpoint directory (meta.json + best.pt)."""

        def load_context(self, context):
            import torch

            from raddiag.serve.bundle import ModelBundle

            torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
            self.bundle = ModelBundle.from_checkpoint(context.artifacts["checkpoint"])

        def predict(self, context, model_input, params=None):  # no type hints: MLflow would infer a schema from them
            if _is_scan_table(model_input):
                return self._predict_files(model_input)
            return self.bundle.predict(_as_arrays(model_input))

        def _predict_files(self, table):
            cases = scans_from_table(table)
            arrays = [self.bundle.case_inputs(scans) for scans in cases.values()]
            batch = {key: np.concatenate([a[key] for a in arrays]) for key in arrays[0]}
            frame = self.bundle.predict(batch)
            frame.insert(0, "case_id", list(cases))
            return frame


FILE_COLUMNS = ("case_id", "name", "data", "modality")


def _is_scan_table(model_input: Any) -> bool:
    if isinstance(model_input, pd.DataFrame):
        return "data" in model_input.columns and "name" in model_input.columns
    return isinstance(model_input, list) and bool(model_input) and isinstance(model_input[0], dict) and "data" in model_input[0]


def scans_from_table(table: Any) -> dict[str, list[dict[str, Any]]]:
    """Rows of scan files -> ``{case_id: [{name, volume, modality, plane}]}`` (volumes read by our
    readers from the bytes, via a private temporary file). A bad row raises ValueError naming it."""
    import base64
    import binascii
    import tempfile

    from raddiag.schema import canonical_modality
    from raddiag.storage.readers import SCAN_SUFFIXES, BadInput, read_volume, suffix_of

    frame = table if isinstance(table, pd.DataFrame) else pd.DataFrame(list(table))
    missing = [c for c in FILE_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"scan table: missing column(s) {missing}; expected {', '.join(FILE_COLUMNS)} (+ plane)")
    cases: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for index, row in enumerate(frame.to_dict("records")):
            name = Path(str(row["name"])).name
            where = f"scan table row {index} ({row['case_id']}/{name})"
            if suffix_of(Path(name)) not in SCAN_SUFFIXES or suffix_of(Path(name)) == ".dcm":
                raise ValueError(f"{where}: unsupported file type; send .npy, .nii, .nii.gz, .png or .jpg")
            data = row["data"]
            if isinstance(data, str):
                try:
                    data = base64.b64decode(data, validate=True)
                except (binascii.Error, ValueError):
                    raise ValueError(f"{where}: data is text but not base64") from None
            path = Path(scratch, f"{index}{suffix_of(Path(name))}")
            path.write_bytes(bytes(data))
            try:
                volume = read_volume(path).data
            except BadInput as exc:
                raise ValueError(f"{where}: {exc}") from None
            plane = str(row.get("plane") or ("axial" if volume.shape[0] > 1 else "frontal"))
            cases.setdefault(str(row["case_id"]), []).append(
                {"name": name, "volume": volume, "modality": canonical_modality(str(row["modality"])), "plane": plane}
            )
    return cases


def scan_rows(case_id: str, files: list[tuple[str, bytes, str, str]]) -> pd.DataFrame:
    """The scan-file input for one case: ``files`` = [(name, bytes, modality, plane)]."""
    return pd.DataFrame([{"case_id": case_id, "name": n, "data": d, "modality": m, "plane": p} for n, d, m, p in files])


def _as_arrays(model_input: Any) -> dict[str, np.ndarray]:
    if isinstance(model_input, dict):
        return {k: np.asarray(v) for k, v in model_input.items()}
    if isinstance(model_input, pd.DataFrame):  # served JSON may arrive as one row of nested lists
        return {k: np.stack([np.asarray(x) for x in model_input[k]]) for k in model_input.columns}
    raise TypeError(f"model input: expected a dict of arrays, got {type(model_input).__name__}")


def signature_for(example: dict[str, np.ndarray], label_names: list[str]) -> Any:
    """Outputs only: one probability per label (inputs: scan files or tensors, see the module doc)."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    outputs = Schema([ColSpec("double", name) for name in label_names])
    return ModelSignature(inputs=None, outputs=outputs)


def log_pyfunc(checkpoint_dir: str, example: dict[str, np.ndarray], registered_model: str | None = None, name: str = "") -> Any:
    """Log the model into the active MLflow run as ``name`` (default
    :data:`~raddiag.serve.bundle.LOGGED_MODEL_NAME`: ``runs:/<run_id>/raddiag-classifier``) and
    register it when ``registered_model``."""
    from raddiag.serve.bundle import LOGGED_MODEL_NAME

    meta = json.loads(Path(checkpoint_dir, "meta.json").read_text())
    from raddiag.schema import MODEL_INPUTS

    example = {k: example[k] for k in MODEL_INPUTS}
    small = example["images"].size <= MAX_EXAMPLE_VALUES  # a paper-scale example would be ~100 MB of JSON
    return mlflow.pyfunc.log_model(
        name=name or LOGGED_MODEL_NAME,
        python_model=RadDiagPyfunc(),
        artifacts={"checkpoint": checkpoint_dir},
        code_paths=[str(PACKAGE_DIR)],
        signature=signature_for(example, meta["label_names"]),
        input_example=example if small else None,
        pip_requirements=PIP_REQUIREMENTS,
        registered_model_name=registered_model,
    )
