"""``raddiag finetune`` and ``raddiag zeroshot``: reuse a registered model on new labels.

- finetune: the source model's network (backbone, slice transformer, fusion, KE projection) is the
  starting point for a new Ray Train run on another store with its own label set; the label-specific
  tensors (MLP output layer or KE label table) are rebuilt for the new labels ("new head"), or, with
  ``--head ke``, the new label *names* are embedded so the classifier starts from knowledge.
- zeroshot: a KE-trained model scores label names it never saw by swapping its label table, and
  normal/abnormal through its own "Normal" class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from raddiag.config import RadDiagConfig


def finetune(cfg: RadDiagConfig, model_uri: str, head: str | None = None, verbose: bool = False) -> Any:
    """Train ``cfg.train.name`` on ``cfg.store`` starting from ``model_uri``'s weights; returns TrainResult."""
    import torch

    from raddiag import tracking
    from raddiag.serve.bundle import ModelBundle
    from raddiag.train.trainer import run_train

    tracking.setup(cfg.tracking)
    bundle = ModelBundle.load(model_uri, cfg.tracking.resolved_uri())
    source = bundle.config
    init_dir = Path(cfg.train.storage_path) / cfg.train.name
    init_dir.mkdir(parents=True, exist_ok=True)
    weights = init_dir / "init_from_source.pt"
    torch.save({k: v.detach().cpu() for k, v in bundle.network.state_dict().items()}, weights)
    model_cfg = source.model.model_copy(update={"pretrained_weights": str(weights), "head": head or source.model.head})
    data_cfg = source.data.model_copy(update={"label_level": cfg.data.label_level})
    tuned = cfg.model_copy(update={"model": model_cfg, "data": data_cfg})
    result = run_train(tuned, verbose)
    tracking.client(cfg.tracking.resolved_uri()).set_tag(result.run_id, tracking.Tags.FINETUNED_FROM, model_uri)
    return result


def zeroshot_case(model_uri: str, folder: Path, labels: list[str], top_k: int = 10, scans: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Scores of ``labels`` (any names) for one case folder, plus P(abnormal) = 1 - P(Normal)."""
    import torch

    from raddiag.knowledge import cached_label_embeddings
    from raddiag.predict import load_case_folder
    from raddiag.serve.bundle import ModelBundle

    if not labels:
        raise ValueError("zeroshot: give at least one label name")
    scans = scans if scans is not None else load_case_folder(folder)  # a bad case fails before the model loads
    bundle = ModelBundle.load(model_uri)
    net = bundle.network
    source = bundle.config
    if source.model.head != "ke" or bundle.label_embeddings is None:
        raise ValueError(f"model {model_uri} was trained with model.head={source.model.head!r}; zero-shot needs the KE head")
    arrays = {k: torch.as_tensor(v) for k, v in bundle.case_inputs(scans).items()}
    inputs = (arrays["images"].float(), arrays["scan_mask"].bool(), arrays["slice_mask"].bool(), arrays["modality_ids"].long())
    names = bundle.label_names
    original = torch.tensor(bundle.label_embeddings)
    with torch.no_grad():
        base = torch.sigmoid(net(*inputs)["logits"].float())[0]
        abnormal = float(1.0 - base[names.index("Normal")]) if "Normal" in names else None
        trained = {key: value.clone() for key, value in net.head.state_dict().items()}
        net.set_label_embeddings(torch.tensor(cached_label_embeddings(labels, source.model.ke)[0]))
        try:
            scores = torch.sigmoid(net(*inputs)["logits"].float())[0].numpy()
        finally:  # the trained label table and its learned per-label biases come back exactly
            net.set_label_embeddings(original)
            net.head.load_state_dict(trained)
    order = np.argsort(-scores)[:top_k]
    return {
        "abnormal_probability": abnormal,
        "labels": [{"label": labels[i], "probability": float(scores[i])} for i in order],
    }


def read_label_list(labels: str | None, labels_file: Path | None) -> list[str]:
    """Label names from ``--labels "a;b"`` and/or a file with one name per line."""
    names = [x.strip() for x in (labels or "").split(";") if x.strip()]
    if labels_file is not None:
        if not labels_file.is_file():
            raise FileNotFoundError(f"{labels_file}: no such label file")
        names += [line.strip() for line in labels_file.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return list(dict.fromkeys(names))
