"""RadDiagNet: slice encoder -> slice transformer -> scan fusion -> head.

Input shapes (B cases, N scans, D slices; see :mod:`raddiag.schema`):

- ``images`` (B, N, D, H, W) float, ``scan_mask`` (B, N) bool, ``slice_mask`` (B, N, D) bool,
  ``modality_ids`` (B, N) int64 (0 = padding).

Only real slices (``resnet``/``vit``) or real scans (``cnn3d``) are gathered and sent through the
backbone, in one batched call; results are scattered back into zero-filled tensors. Padded content
therefore never reaches the output, and nothing loops over slices or scans in Python. The fusion
transformer has no position embedding, so the output does not depend on the order of the scans.

Gathers and scatters use index tensors (:func:`real_index`: the flat positions of the real slices in
``B*N*D`` and of the real scans in ``B*N``), not boolean-mask indexing. Given those indices the
forward has no data-dependent shape: the number of real slices ``R`` and scans ``S`` are the lengths
of input tensors, so ``torch.compile`` traces it as one graph, without breaks, and ``R``/``S`` stay
symbolic (no recompilation as the fill of a batch changes). The training loop computes the indices
outside the compiled region (see :func:`compile_model`); without them ``forward`` computes them
itself (``nonzero``: the one data-dependent step). Either way the backbone sees exactly the real
slices, as before: padding costs no backbone compute, and BatchNorm statistics and outputs are those
of the boolean-mask formulation, bit for bit.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from raddiag.config import ModelConfig
from raddiag.model.blocks.attention import MaskedTransformer
from raddiag.model.blocks.encoders import ResNetBackbone, ViTBackbone
from raddiag.model.blocks.heads import KEHead, MLPHead
from raddiag.model.blocks.rp3d import RP3DTransformer
from raddiag.schema import NUM_MODALITY_IDS

log = logging.getLogger(__name__)


def real_index(scan_mask: torch.Tensor, slice_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(slice_index, scan_index)``: flat positions of the real slices in ``B*N*D`` (R,) and of the
    real scans in ``B*N`` (S,), int64, in row-major order (the order of boolean-mask indexing).

    ``scan_mask`` (B, N), ``slice_mask`` (B, N, D); a slice counts only in a real scan. This is the
    forward's one data-dependent step: compute it on the host masks (no device sync) or outside
    compiled code and pass the result to :meth:`RadDiagNet.forward`. Outside compiled code the
    lengths are marked dynamic, so a compiled forward keeps ``R`` and ``S`` symbolic from its first
    call (every other dimension is a configuration constant and stays static).
    """
    scan_mask = torch.as_tensor(scan_mask).bool()
    slice_mask = torch.as_tensor(slice_mask).bool() & scan_mask[..., None]
    slice_index = torch.arange(slice_mask.numel(), device=slice_mask.device)[slice_mask.flatten()]
    scan_index = torch.arange(scan_mask.numel(), device=scan_mask.device)[scan_mask.flatten()]
    if not torch.compiler.is_compiling():
        torch._dynamo.maybe_mark_dynamic(slice_index, 0)
        torch._dynamo.maybe_mark_dynamic(scan_index, 0)
    return slice_index, scan_index


class RadDiagNet(nn.Module):
    """The RadDiag network; build it with :func:`build_model`.

    ``forward`` returns ``{"logits": (B, C), "slice_attention": (B, N, D), "embedding": (B, E)}``.
    ``slice_attention`` is the last slice-transformer layer's CLS attention over slices (softmax over
    the real slices of each scan, mean over heads; 0 on padded slices and scans). The ``cnn3d``
    encoder has no slice transformer and reports a uniform distribution over real slices.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        num_labels: int,
        label_embeddings: torch.Tensor | None = None,
        label_prior: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        self.cfg = cfg
        dim = cfg.embed_dim
        bias_prior = label_prior if cfg.bias_init == "prior" else None
        ckpt = cfg.activation_checkpointing
        if cfg.encoder == "vit":
            self.backbone: nn.Module = ViTBackbone(dim, cfg.vit_patch_size, cfg.vit_layers, cfg.vit_heads, cfg.dropout, ckpt)
        else:
            spatial_dims = 3 if cfg.encoder == "cnn3d" else 2
            self.backbone = ResNetBackbone(
                spatial_dims, cfg.backbone_depth, cfg.width, cfg.norm, ckpt, cfg.channels_last, cfg.stem
            )
        self.feature_proj: nn.Module = nn.Linear(self.backbone.out_dim, dim) if cfg.feature_proj else nn.Identity()
        transformer = RP3DTransformer if cfg.transformer == "rp3d" else MaskedTransformer
        if cfg.encoder != "cnn3d":
            self.slice_cls = nn.Parameter(torch.zeros(1, 1, dim))
            self.slice_pos = nn.Parameter(torch.zeros(1, cfg.max_depth, dim))
            self.slice_transformer = transformer(dim, cfg.slice_heads, cfg.slice_layers, cfg.dropout, ckpt, cfg.ff_ratio)
            nn.init.trunc_normal_(self.slice_cls, std=0.02)
            nn.init.trunc_normal_(self.slice_pos, std=0.02)
        if cfg.fusion == "transformer":
            self.modality_embedding = nn.Embedding(NUM_MODALITY_IDS, dim, padding_idx=0)
            self.fusion_cls = nn.Parameter(torch.zeros(1, 1, dim))
            self.fusion = transformer(dim, cfg.fusion_heads, cfg.fusion_layers, cfg.dropout, ckpt, cfg.ff_ratio)
            nn.init.trunc_normal_(self.fusion_cls, std=0.02)
        else:  # the official late-fusion model classifies the slice transformer's output as it is
            self.scan_norm = nn.Identity() if cfg.transformer == "rp3d" else nn.LayerNorm(dim)
        if cfg.head == "ke":
            if label_embeddings is None:
                raise ValueError(
                    "model.head='ke' needs label_embeddings (C, T): compute them with "
                    "raddiag.knowledge.embed_labels(label_names, cfg.model.ke) and pass them to build_model"
                )
            if torch.as_tensor(label_embeddings).shape[0] != num_labels:
                raise ValueError(
                    f"label_embeddings has {torch.as_tensor(label_embeddings).shape[0]} rows but num_labels={num_labels}"
                )
            ke = cfg.ke
            self.head: nn.Module = KEHead(
                dim, label_embeddings, ke.temperature_init, ke.learn_temperature, ke.train_projection,
                label_prior if ke.prior_bias else None, bias_prior,
            )
        else:
            self.head = MLPHead(dim, num_labels, cfg.mlp_hidden, cfg.dropout, bias_prior)
            if cfg.bias_init == "zero":
                nn.init.zeros_(self.head.net[-1].bias)

    # ------------------------------------------------------------------ encoders
    def _encode_slices(
        self, images: torch.Tensor, slice_mask: torch.Tensor, slice_index: torch.Tensor, scan_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """2D backbone on every real slice + slice transformer -> (B, N, E) scans, (B, N, D) attention.

        ``slice_mask`` (B, N, D) already excludes padded scans; ``slice_index`` (R,) and
        ``scan_index`` (S,) come from :func:`real_index`.
        """
        b, n, d = slice_mask.shape
        if d > self.cfg.max_depth:
            raise ValueError(f"images have D={d} slices but model.max_depth={self.cfg.max_depth}; raise model.max_depth")
        real = images.reshape(b * n * d, *images.shape[3:]).index_select(0, slice_index)  # (R, H, W): one backbone call
        features = self.feature_proj(self.backbone(real[:, None]))  # (R, E)
        dim = features.shape[-1]
        tokens = features.new_zeros(b * n * d, dim).index_copy(0, slice_index, features)
        tokens = tokens.view(b * n, d, dim).index_select(0, scan_index) + self.slice_pos[:, :d]  # (S, D, E): real scans
        masks = slice_mask.reshape(b * n, d).index_select(0, scan_index)  # (S, D)
        cls = self.slice_cls.expand(tokens.shape[0], -1, -1).to(tokens.dtype)
        sequence = torch.cat([cls, tokens], dim=1)
        key_mask = torch.cat([masks.new_ones(masks.shape[0], 1), masks], dim=1)
        encoded, attention = self.slice_transformer(sequence, key_mask, return_cls_attention=True)
        scan_embeddings = encoded.new_zeros(b * n, encoded.shape[-1]).index_copy(0, scan_index, encoded[:, 0])
        slice_attention = attention.new_zeros(b * n, d).index_copy(0, scan_index, attention)
        return scan_embeddings.view(b, n, -1), slice_attention.view(b, n, d)

    def _encode_volumes(
        self, images: torch.Tensor, slice_mask: torch.Tensor, scan_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """3D backbone on every real scan (padded slices zeroed) -> (B, N, E), uniform (B, N, D)."""
        b, n, d = slice_mask.shape
        real = slice_mask.reshape(b * n, d).index_select(0, scan_index)  # (S, D)
        volumes = images.reshape(b * n, *images.shape[2:]).index_select(0, scan_index)
        volumes = volumes * real[..., None, None].to(images.dtype)  # (S, D, H, W)
        features = self.feature_proj(self.backbone(volumes[:, None]))  # (S, E)
        scan_embeddings = features.new_zeros(b * n, features.shape[-1]).index_copy(0, scan_index, features)
        counts = slice_mask.sum(-1, keepdim=True).clamp(min=1)
        return scan_embeddings.view(b, n, -1), slice_mask.to(features.dtype) / counts

    # ------------------------------------------------------------------ fusion
    def _fuse(self, scans: torch.Tensor, scan_mask: torch.Tensor, modality_ids: torch.Tensor) -> torch.Tensor:
        """(B, N, E) scan embeddings -> (B, E) case embedding."""
        if self.cfg.fusion == "late":
            return self.scan_norm(scans[torch.arange(scans.shape[0], device=scans.device), self._pick_scan(scan_mask)])
        tokens = scans + self.modality_embedding(modality_ids.clamp(min=0) * scan_mask).to(scans.dtype)
        cls = self.fusion_cls.expand(tokens.shape[0], -1, -1).to(tokens.dtype)
        key_mask = torch.cat([scan_mask.new_ones(scan_mask.shape[0], 1), scan_mask], dim=1)
        encoded, _ = self.fusion(torch.cat([cls, tokens], dim=1), key_mask)
        return encoded[:, 0]

    def _pick_scan(self, scan_mask: torch.Tensor) -> torch.Tensor:
        """Index of one real scan per case: random in training, the first in eval. (B,) int64."""
        weights = scan_mask.float() + 1e-12  # a case without real scans falls back to scan 0
        if self.training:
            return torch.multinomial(weights, 1).squeeze(1)
        return (scan_mask.float() * 2 - torch.arange(scan_mask.shape[1], device=scan_mask.device) * 1e-3).argmax(1)

    # ------------------------------------------------------------------ API
    def forward(
        self,
        images: torch.Tensor,
        scan_mask: torch.Tensor,
        slice_mask: torch.Tensor,
        modality_ids: torch.Tensor,
        slice_index: torch.Tensor | None = None,
        scan_index: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """See the class docstring for shapes. ``slice_index``/``scan_index``: :func:`real_index` of
        the masks, computed by the caller (no data-dependent step in the forward then) or, when both
        are None, here."""
        if images.ndim != 5 or images.shape[:3] != slice_mask.shape or scan_mask.shape != images.shape[:2]:
            raise ValueError(
                "expected images (B, N, D, H, W), scan_mask (B, N), slice_mask (B, N, D); got "
                f"{tuple(images.shape)}, {tuple(scan_mask.shape)}, {tuple(slice_mask.shape)}"
            )
        if (slice_index is None) != (scan_index is None):
            raise ValueError("pass both slice_index and scan_index (raddiag.model.nets.raddiag.real_index) or neither")
        scan_mask = scan_mask.bool()
        slice_mask = slice_mask.bool() & scan_mask[..., None]
        if slice_index is None or scan_index is None:
            slice_index, scan_index = real_index(scan_mask, slice_mask)
        if self.cfg.encoder == "cnn3d":
            scans, slice_attention = self._encode_volumes(images, slice_mask, scan_index)
        else:
            scans, slice_attention = self._encode_slices(images, slice_mask, slice_index, scan_index)
        embedding = self._fuse(scans, scan_mask, modality_ids)
        return {"logits": self.head(embedding), "slice_attention": slice_attention, "embedding": embedding}

    def set_label_embeddings(self, label_embeddings: torch.Tensor, label_prior: torch.Tensor | None = None) -> None:
        """Swap the KE label table for ``(C', T)`` embeddings of new label names (zero-shot scoring)."""
        if not isinstance(self.head, KEHead):
            raise ValueError("set_label_embeddings needs model.head='ke' (the MLP head has a fixed label set)")
        self.head.set_label_embeddings(label_embeddings, label_prior)

    @property
    def num_labels(self) -> int:
        head = self.head
        return head.num_labels if isinstance(head, KEHead) else head.net[-1].out_features


def _clean_state_dict(raw: object, path: str) -> dict[str, torch.Tensor]:
    state = raw
    if isinstance(state, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"pretrained_weights {path}: expected a state dict of tensors")
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}


def load_pretrained(model: RadDiagNet, path: str) -> dict[str, int]:
    """Load a local state dict (``torch.load(weights_only=True)``) into ``model``; never downloads.

    Accepts a full RadDiagNet state dict or a backbone-only one (MONAI/torchvision ResNet key names;
    a 3-channel first conv is summed to 1 channel). Tensors with a mismatching shape are skipped.
    Returns counts ``{"loaded", "skipped", "missing"}``; raises if nothing matched.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"model.pretrained_weights {path}: no such file (weights are never downloaded)")
    state = _clean_state_dict(torch.load(path, map_location="cpu", weights_only=True), path)
    own = model.state_dict()
    if not any(key in own for key in state):
        state = {f"backbone.net.{key}": value for key, value in state.items()}
    loadable, skipped = {}, 0
    for key, value in state.items():
        target = own.get(key)
        if target is None:
            skipped += 1
            continue
        if key.endswith("conv1.weight") and value.ndim == target.ndim and value.shape[1] == 3 and target.shape[1] == 1:
            value = value.sum(dim=1, keepdim=True)
        if value.shape != target.shape:
            skipped += 1
            continue
        loadable[key] = value
    if not loadable:
        raise ValueError(f"pretrained_weights {path}: no tensor matches the model (encoder={model.cfg.encoder})")
    model.load_state_dict(loadable, strict=False)
    counts = {"loaded": len(loadable), "skipped": skipped, "missing": len(own) - len(loadable)}
    log.info("loaded %s from %s", counts, path)
    return counts


def compile_model(model: RadDiagNet, **options: object) -> RadDiagNet:
    """``model.compile``: :func:`torch.compile` the whole forward of ``model`` in place (its state-dict
    keys are unchanged).

    Call the compiled model with :func:`real_index`'s indices (the training loop does): the forward
    is then one graph without breaks, and the number of real slices ``R`` and scans ``S`` are
    symbolic from the first call, so a new fill does not recompile; the image shape, ``N`` and ``D``
    are configuration constants and stay static (a different batch size, e.g. an epoch's last
    batch, recompiles once with ``B`` dynamic; train and eval are two graphs). Without the indices
    the index step (``nonzero``) breaks the graph; the result is still correct. ``options`` go to
    ``torch.compile`` (e.g. ``backend="aot_eager", fullgraph=True`` in the tests).
    """
    model.compile(**options)
    return model


def build_model(
    cfg: ModelConfig,
    num_labels: int,
    label_embeddings: torch.Tensor | None = None,
    label_prior: torch.Tensor | None = None,
) -> RadDiagNet:
    """Build a :class:`RadDiagNet` from ``cfg`` for ``num_labels`` labels.

    ``label_embeddings`` (C, T) float is required when ``cfg.head == "ke"``; ``label_prior`` (C,)
    (label frequencies) is used only with ``cfg.ke.prior_bias``. ``cfg.pretrained_weights``, if set,
    is loaded from the local file.
    """
    if label_embeddings is not None:
        label_embeddings = torch.as_tensor(label_embeddings)
    model = RadDiagNet(cfg, num_labels, label_embeddings, label_prior)
    if cfg.pretrained_weights:
        load_pretrained(model, cfg.pretrained_weights)
    return model
