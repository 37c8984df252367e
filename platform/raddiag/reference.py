"""Official RadDiag checkpoints (``qiaoyu-zheng/RP3D-Diag``, Hugging Face ``QiaoyuZheng/RP3D-DiagModel``)
as our :class:`~raddiag.model.RadDiagNet`, registered in MLflow.

The official ``RadNet`` is rebuilt from our own blocks by the ``rp3d_reference`` preset
(:data:`PRESET`, also ``jobs/rp3d_reference.yaml``): ResNet-50 slice encoder (3-channel input of a
repeated grey slice = our 1-channel conv with the three input filters summed), no feature projection,
a 1-layer 1-head slice transformer and a 2-layer 4-head fusion transformer at width 2048 in the
official layer style (``model.transformer = "rp3d"``, feed-forward width 2048), CLS tokens, learned
slice positions and the 16-entry modality table, and the ``2048 -> 2048 -> C`` GELU MLP head.
Widths are read from the checkpoint, so a reduced-width checkpoint of the same layout maps too.

Files: ``pytorch_model.bin`` / ``.pt`` / ``.pth`` are read with ``torch.load(weights_only=True)``
(tensors only; anything else in the pickle is refused, never executed); ``*.safetensors`` with
``safetensors``. Modality ids: the official table indexes CT planes 1-3, MRI 4-6, X-ray views 7-8,
Ultrasound 9, Annotated image 10, Fluoroscopy 11, Mammography 12, DSA 13, Nuclear medicine 14 and
Barium 15 (``RP3D_Demo/Dataset/dataset.py``); our ids (:data:`raddiag.schema.MODALITY_PLANE_IDS`)
differ, so the table's rows are re-ordered (:data:`OFFICIAL_MODALITY_ROW`). A second X-ray view (8)
and "Annotated image" (10) have no id of ours and are reported unused.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raddiag.config import ModelConfig, RadDiagConfig
from raddiag.tracking import Tags

#: The ``rp3d_reference`` preset: the official early-fusion RadNet's semantics and its data shape.
PRESET: dict[str, Any] = {
    "data": {"n_image": 4, "depth": 32, "image_size": 256, "label_level": "disorder"},
    "model": {
        "encoder": "resnet",
        "backbone_depth": 50,
        "width": 64,
        "stem": "imagenet",
        "norm": "batch",
        "embed_dim": 2048,
        "feature_proj": False,
        "transformer": "rp3d",
        "ff_ratio": 1.0,
        "slice_layers": 1,
        "slice_heads": 1,
        "max_depth": 32,
        "fusion": "transformer",
        "fusion_layers": 2,
        "fusion_heads": 4,
        "head": "mlp",
        "mlp_hidden": 2048,
        "dropout": 0.0,
        "bias_init": "zero",
    },
}
PRESETS = {"rp3d_reference": PRESET}

#: our modality id -> row of the official 16-entry modality table (0 = padding in both).
OFFICIAL_MODALITY_ROW: dict[int, int] = {
    0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 7, 8: 9, 9: 11, 10: 13, 11: 14, 12: 12, 13: 15, 14: 1, 15: 4,
}
CHECKPOINT_NAMES = ("model.safetensors", "pytorch_model.bin")
_ENCODERS = {"attention1D": "slice_transformer", "vitFuse": "fusion"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or mapped; the message names the file and the fix."""


@dataclass
class Mapping:
    """Result of :func:`map_state_dict`: our state dict plus one row per official tensor."""

    state: dict[str, Any]
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # (official key, our key or "", note)

    @property
    def unused(self) -> list[tuple[str, str, str]]:
        return [row for row in self.rows if not row[1]]

    def summary(self) -> list[tuple[str, int, str]]:
        """Unused official keys grouped by pattern (layer numbers -> N): (pattern, count, why)."""
        groups: dict[tuple[str, str], int] = {}
        for key, _, note in self.unused:
            pattern = re.sub(r"\.(layers|linears)\.\d+\.", r".\1.N.", key)
            groups[(pattern, note)] = groups.get((pattern, note), 0) + 1
        return [(pattern, count, note) for (pattern, note), count in sorted(groups.items())]


# ----------------------------------------------------------------------------------- reading
def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint file, or the file inside a downloaded checkpoint folder."""
    if path.is_dir():
        for name in CHECKPOINT_NAMES:
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: folder holds none of {', '.join(CHECKPOINT_NAMES)}; pass the weights file itself")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    return path


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Tensors of an official checkpoint, ``module.`` prefixes removed; never runs pickled code."""
    import torch

    path = resolve_checkpoint(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            raw: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(exc)}); download it again") from None
    else:
        try:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - every failure of an untrusted file is the user's input
            text = str(exc)
            if "Weights only load failed" in text or "weights_only" in text:
                raise CheckpointError(
                    f"{path}: holds objects other than tensors; refused (checkpoints are read tensors-only, nothing "
                    "else is unpickled) — export the state dict, or use the .safetensors file"
                ) from None
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint, truncated or corrupt ({_first_line(exc)})") from None
    if isinstance(raw, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(raw.get(key), dict):
                raw = raw[key]
                break
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors (name -> tensor)")
    return {str(k).removeprefix("module."): v for k, v in raw.items()}


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------- layout
def _count(state: dict[str, Any], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for key in state if (m := regex.match(key))})


def infer_model_config(state: dict[str, Any], base: ModelConfig, source: str = "checkpoint") -> ModelConfig:
    """``base`` (the preset's semantics) with every width and count read off the official tensors."""
    need = ("resnet2D.conv1.weight", "attention1D.pos_emb", "attention1D.cls_token", "fc.0.weight", "fc.2.weight")
    absent = [key for key in need if key not in state]
    if absent:
        sample = ", ".join(sorted(state)[:3])
        raise CheckpointError(
            f"{source}: not an official RadDiag (RadNet) checkpoint — missing {', '.join(absent)} (its keys start: {sample})"
        )
    if any(key.startswith(("fcke.", "bioLORD.")) for key in state):
        raise CheckpointError(
            f"{source}: a knowledge-enhanced RadNet (fcke/bioLORD tensors); its classifier needs the BioLORD text "
            "encoder, which is not supported — use a released model without KE"
        )
    width = int(state["resnet2D.conv1.weight"].shape[0])
    blocks = [_count(state, rf"resnet2D\.layer{i}\.(\d+)\.") for i in range(1, 5)]
    bottleneck = any(key.endswith("conv3.weight") for key in state if key.startswith("resnet2D.layer"))
    if blocks != [3, 4, 6, 3] or not bottleneck:
        raise CheckpointError(f"{source}: ResNet with stages {blocks} is not the ResNet-50 of the official model")
    depth_plus_cls, dim = (int(x) for x in state["attention1D.pos_emb"].shape)
    if dim != 32 * width:
        raise CheckpointError(f"{source}: slice transformer width {dim} != ResNet-50 output {32 * width}")
    ff = state.get("attention1D.transformer_encoder.encoder.layers.0.feed_forward.w_1.weight")
    update: dict[str, Any] = {
        "width": width,
        "embed_dim": dim,
        "max_depth": depth_plus_cls - 1,
        "slice_layers": _count(state, r"attention1D\.transformer_encoder\.encoder\.layers\.(\d+)\."),
        "ff_ratio": (int(ff.shape[0]) / dim) if ff is not None else base.ff_ratio,
        "mlp_hidden": int(state["fc.0.weight"].shape[0]),
    }
    if "vitFuse.cls_token" in state:
        update |= {"fusion": "transformer", "fusion_layers": _count(state, r"vitFuse\.transformer_encoder\.encoder\.layers\.(\d+)\.")}
    else:
        update["fusion"] = "late"
    try:
        return ModelConfig.model_validate(base.model_dump() | update)
    except ValueError as exc:  # pydantic's ValidationError: e.g. heads that do not divide the width
        errors = getattr(exc, "errors", None)
        why = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors()) if errors else _first_line(exc)
        raise CheckpointError(f"{source}: the preset does not fit its shapes (model.{why})") from None


def num_labels(state: dict[str, Any]) -> int:
    return int(state["fc.2.weight"].shape[0])


# ----------------------------------------------------------------------------------- mapping
_TEMPLATE = "template module the official encoder deep-copies into encoder.layers; not in its forward"
_DISCARDED = "norm computed then discarded by the official layer (its attention has no pre-norm)"


def _encoder_rule(rest: str, ours: str) -> tuple[str | None, str]:
    """Official ``<encoder>.transformer_encoder.<rest>`` -> our key (None: unused, with why)."""
    if rest.startswith(("multi_headed_attention.", "feed_forward.", "encoder_layer.")):
        return None, _TEMPLATE
    if m := re.fullmatch(r"encoder\.norm\.([ab])", rest):
        return f"{ours}.norm.{'weight' if m.group(1) == 'a' else 'bias'}", ""
    if m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", rest):
        layer, tail = m.groups()
        prefix = f"{ours}.layers.{layer}"
        if n := re.fullmatch(r"self_attn\.linears\.3\.(weight|bias)", tail):
            return f"{prefix}.attn.out.{n.group(1)}", ""
        if n := re.fullmatch(r"self_attn\.linears\.[012]\.(weight|bias)", tail):
            return f"{prefix}.attn.qkv.{n.group(1)}", "q, k, v concatenated"
        if n := re.fullmatch(r"feed_forward\.w_([12])\.(weight|bias)", tail):
            return f"{prefix}.ff.{0 if n.group(1) == '1' else 3}.{n.group(2)}", ""
        if n := re.fullmatch(r"sublayer\.1\.norm\.([ab])", tail):
            return f"{prefix}.norm.{'weight' if n.group(1) == 'a' else 'bias'}", ""
        if re.fullmatch(r"sublayer\.0\.norm\.[ab]", tail):
            return None, _DISCARDED
    return None, "unknown key"


def map_state_dict(state: dict[str, Any], model: Any, source: str = "checkpoint") -> Mapping:
    """Official tensors -> a complete state dict for ``model`` (built from the preset); raises
    :class:`CheckpointError` naming the first tensor of ours left without a value or of wrong shape."""
    import torch

    own = model.state_dict()
    out: dict[str, Any] = {}
    rows: list[tuple[str, str, str]] = []
    qkv: dict[str, dict[int, Any]] = {}
    for key, value in state.items():
        target, note = None, ""
        if key.startswith("resnet2D.fc."):
            note = "the official forward never applies resnet2D.fc"
        elif key == "resnet2D.conv1.weight":
            target, note = "backbone.net.conv1.weight", "3 input channels summed (grey slice repeated 3x)"
            value = value.sum(dim=1, keepdim=True) if value.shape[1] == 3 else value
        elif key.startswith("resnet2D."):
            target = "backbone.net." + key.removeprefix("resnet2D.")
        elif key == "attention1D.cls_token":
            target, note = "slice_cls", "+ attention1D.pos_emb[0] (the CLS position)"
            value = value + state["attention1D.pos_emb"][0]
        elif key == "attention1D.pos_emb":
            target, note = "slice_pos", "rows 1.. (row 0 went into slice_cls)"
            value = value[1:].unsqueeze(0)
        elif key == "vitFuse.cls_token":
            target = "fusion_cls"
        elif key == "vitFuse.mod_embed":
            target, note = "modality_embedding.weight", "rows re-ordered to our modality ids"
            value = value[[OFFICIAL_MODALITY_ROW[i] for i in range(len(OFFICIAL_MODALITY_ROW))]].clone()
            value[0] = 0.0  # our padding row (padded scans are masked out either way)
        elif m := re.fullmatch(r"(attention1D|vitFuse)\.transformer_encoder\.(.+)", key):
            target, note = _encoder_rule(m.group(2), _ENCODERS[m.group(1)])
            if target is not None and target.endswith((".qkv.weight", ".qkv.bias")):
                part = int(re.search(r"linears\.([012])\.", key).group(1))
                qkv.setdefault(target, {})[part] = value
                rows.append((key, target, note))
                continue
        elif m := re.fullmatch(r"fc\.([02])\.(weight|bias)", key):
            target = f"head.net.{0 if m.group(1) == '0' else 3}.{m.group(2)}"
        else:
            note = "unknown key"
        rows.append((key, target or "", note))
        if target is not None:
            out[target] = value
    for target, parts in qkv.items():
        if sorted(parts) != [0, 1, 2]:
            raise CheckpointError(f"{source}: {target} needs the q, k and v projections; found only {sorted(parts)}")
        out[target] = torch.cat([parts[0], parts[1], parts[2]], dim=0)
    missing = [key for key in own if key not in out]
    if missing:
        raise CheckpointError(
            f"{source}: {len(missing)} tensor(s) of the model have no official counterpart (first: {missing[0]}); "
            "is this an official RadNet checkpoint of the same fusion type?"
        )
    for key, value in out.items():
        if key not in own:
            raise CheckpointError(f"{source}: mapped tensor {key} does not exist in the model")
        if tuple(value.shape) != tuple(own[key].shape):
            raise CheckpointError(
                f"{source}: {key} has shape {tuple(value.shape)} in the checkpoint but {tuple(own[key].shape)} in the model"
            )
        out[key] = value.to(own[key].dtype)
    return Mapping(out, rows)


# ----------------------------------------------------------------------------------- building
def build_from_checkpoint(cfg: RadDiagConfig, path: Path) -> tuple[Any, RadDiagConfig, Mapping, dict[str, Any]]:
    """(model in eval mode with the official weights, config, mapping, raw state) for ``path``."""
    from raddiag.model import build_model

    state = read_checkpoint(path)
    model_cfg = infer_model_config(state, cfg.model, str(path))
    if cfg.data.depth > model_cfg.max_depth:
        raise CheckpointError(f"{path}: data.depth={cfg.data.depth} exceeds the checkpoint's {model_cfg.max_depth} slice positions")
    model = build_model(model_cfg, num_labels(state))
    mapping = map_state_dict(state, model, str(path))
    model.load_state_dict(mapping.state, strict=True)
    model.eval()
    return model, cfg.model_copy(update={"model": model_cfg}), mapping, state


@dataclass
class ImportResult:
    run_id: str
    name: str
    version: str
    num_labels: int
    mapped: int
    unused: list[tuple[str, int, str]]
    sha256: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def import_checkpoint(cfg: RadDiagConfig, path: Path, label_names: list[str], model_name: str, preset: str) -> ImportResult:
    """Map an official checkpoint onto our network and register it as a pyfunc model version."""
    import warnings

    import mlflow
    import numpy as np
    import torch

    from raddiag import tracking
    from raddiag.serve.pyfunc import log_pyfunc
    from raddiag.train.run import CheckpointMeta

    path = resolve_checkpoint(path)
    model, full, mapping, state = build_from_checkpoint(cfg, path)
    if len(label_names) != num_labels(state):
        raise CheckpointError(
            f"{path}: the head scores {num_labels(state)} labels but the label file names {len(label_names)}; "
            "give the label dictionary the checkpoint was trained with"
        )
    digest = sha256(path)
    experiment_id = tracking.setup(full.tracking)
    meta = CheckpointMeta(
        config=full.model_dump(mode="json"), label_names=list(label_names), train_counts=None,
        dataset_version=f"official:{path.name}", metric="val_auc_tail",
        # the official inputs: slices sampled to <= depth, resized to image_size, min-max to [0, 1] per scan
        plan={"image_size": full.data.image_size, "max_depth": full.data.depth, "dtype": "uint8", "ct_window": None},
    )
    example = _example(full)
    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow nags about the type hints we leave out on purpose
        meta.write(scratch)
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, Path(scratch, "best.pt"))
        tags = {Tags.IMPORTED_FROM: path.name, Tags.SOURCE_SHA256: digest, Tags.PRESET: preset}
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"import-{path.stem}", tags=tags) as run:
            mlflow.log_params({
                "preset": preset, "source_file": path.name, "num_labels": len(label_names),
                **{f"model.{k}": v for k, v in full.model.model_dump().items() if k in PRESET["model"]},
            })
            mlflow.log_dict({
                "mapped": [list(row) for row in mapping.rows if row[1]],
                "unused": [list(row) for row in mapping.unused],
            }, "import_report.json")
            info = log_pyfunc(scratch, {k: np.asarray(v) for k, v in example.items()}, registered_model=model_name)
    version = str(info.registered_model_version)
    client = tracking.client(full.tracking.resolved_uri())
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    return ImportResult(
        run.info.run_id, model_name, version, len(label_names), len(mapping.rows) - len(mapping.unused),
        mapping.summary(), digest,
    )


def _example(cfg: RadDiagConfig) -> dict[str, Any]:
    """A one-case input of the model's shape (for the pyfunc signature)."""
    import numpy as np

    n, d, size = cfg.data.n_image, cfg.data.depth, cfg.data.image_size
    scan_mask = np.zeros((1, n), bool)
    scan_mask[0, 0] = True
    slice_mask = np.zeros((1, n, d), bool)
    slice_mask[0, 0, 0] = True
    modality_ids = np.zeros((1, n), np.int64)
    modality_ids[0, 0] = 7
    return {
        "images": np.zeros((1, n, d, size, size), np.float32), "scan_mask": scan_mask,
        "slice_mask": slice_mask, "modality_ids": modality_ids,
    }
