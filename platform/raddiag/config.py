"""One typed configuration for every verb.

A config is built from embedded defaults, then zero or more YAML files (later files win), then
``--set a.b=c`` overrides (values parsed as YAML scalars/lists). Every model forbids unknown keys, so
a typo fails loudly. Errors are raised as :class:`ConfigError` with one line naming the key.
"""

from __future__ import annotations

import copy
import difflib
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ConfigError(ValueError):
    """A configuration problem, phrased as one line that names the key and the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StoreConfig(_Strict):
    """Where the dataset lives: a local path, ``file://`` or ``s3://bucket/prefix``."""

    url: str = ".raddiag/store"
    endpoint_url: str | None = Field(
        default=None, description="S3 endpoint (MinIO, moto, ...); credentials come from the AWS chain."
    )

    def ref(self) -> Any:
        """This store as a picklable :class:`~raddiag.storage.ref.StoreRef` (URL normalised once)."""
        from raddiag.storage.ref import StoreRef

        return StoreRef(self.url, self.endpoint_url)


class SynthConfig(_Strict):
    """Synthetic RP3D-like dataset (see ``raddiag synth``).

    ``profile: benchmark`` is RP3D-LT (:mod:`raddiag.storage.benchmark`), the controlled long-tail
    benchmark whose label text determines the lesions' appearance and whose evidence is split across
    scans; ``basic`` is the earlier generator (:mod:`raddiag.storage.synth`), kept for storage tests.
    """

    profile: Literal["benchmark", "basic"] = "benchmark"
    n_cases: int = Field(default=1800, ge=8)
    n_labels: int = Field(default=41, ge=4, description="disorder labels, 'Normal' included (benchmark: at most 41)")
    eval_prior_power: float = Field(
        default=0.1, ge=0, le=1,
        description="benchmark: validation/test label shares = training shares ** power (rescaled); 1 = same prior",
    )
    image_size: int = Field(default=32, ge=8)
    max_depth: int = Field(default=6, ge=1, description="depth of 3D scans (2D scans have D=1)")
    max_scans: int = Field(default=3, ge=1, le=8)
    power_law: float = Field(default=1.0, gt=0, description="label frequency ~ rank^-power_law")
    val_fraction: float = Field(default=0.15, ge=0, lt=0.5)
    test_fraction: float = Field(default=0.25, ge=0, lt=0.5)
    shuffle_train_labels: bool = Field(
        default=False,
        description="benchmark control: permute the label sets across training cases (images unchanged), so nothing is learnable",
    )
    seed: int = 0


class IngestConfig(_Strict):
    """``raddiag ingest``: preprocessing plan, guards and splits for real data (see storage/README.md)."""

    data_root: str = Field(default="", description="directory scan paths are resolved against ('' = each source's folder)")
    labels: str = Field(default="", description="label vocabulary file (JSON name->index or one name per line); '' = accept any")
    image_size: int = Field(default=256, ge=8, le=2048, description="stored H = W")
    max_depth: int = Field(default=64, ge=1, le=1024, description="stored slices per scan (uniform sampling, key slice kept)")
    dtype: Literal["uint8", "uint16"] = "uint8"
    ct_window: list[float] | None = Field(default=None, description="[centre, width] HU window for CT before min-max")
    max_side: int = Field(default=8192, ge=16, description="refuse images with a side larger than this (bomb guard)")
    max_voxels: int = Field(default=2**28, ge=1024, description="refuse scans with more voxels than this (bomb guard)")
    memory_mb: int = Field(default=4096, ge=64, description="memory budget of an ingest, shared by its workers: a scan that would need more than memory_mb / workers to decode is quarantined")
    val_fraction: float = Field(default=0.15, ge=0, lt=0.5, description="for cases without a given split")
    test_fraction: float = Field(default=0.25, ge=0, lt=0.5, description="for cases without a given split")
    seed: int = 0
    keep_flagged: bool = Field(default=False, description="keep every DICOM flagged as possibly showing PHI in its pixels (else quarantine)")
    trust_pixels: list[Literal["US", "colour"]] = Field(
        default_factory=list,
        description="accept the burned_in_risk flag of these kinds (US, colour) — only for exports known to be free of burned-in text",
    )
    deid_key_env: str = Field(default="RADDIAG_DEID_KEY", description="env var holding the DICOM keyed-hash secret")

    @field_validator("ct_window")
    @classmethod
    def _window(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (len(value) != 2 or value[1] <= 0):
            raise ValueError("ct_window must be [centre, width] with width > 0")
        return value


class AugmentConfig(_Strict):
    """MONAI augmentations, each applied with its own probability (0 disables it)."""

    affine_p: float = Field(default=0.15, ge=0, le=1)
    noise_p: float = Field(default=0.15, ge=0, le=1)
    contrast_p: float = Field(default=0.15, ge=0, le=1)
    elastic_p: float = Field(default=0.0, ge=0, le=1)
    rotate: float = Field(default=0.2, ge=0, le=math.pi, description="affine: in-plane rotation in radians, +-")
    translate: float = Field(default=2.0, ge=0, description="affine: shift in pixels, +- (official: 10 at 256 px)")
    scale: float = Field(default=0.1, ge=0, lt=1, description="affine: zoom 1 +- scale per axis")
    shear: float = Field(default=0.0, ge=0, lt=1, description="affine: shear +- (official: 0.2)")
    elastic_sigma: tuple[float, float] = Field(default=(5.0, 7.0), description="elastic: smoothing sigma of the displacement field, pixels")
    elastic_magnitude: tuple[float, float] = Field(default=(1.0, 2.0), description="elastic: displacement magnitude, pixels (official: 10-20 at 256 px)")
    noise_std: float = Field(default=0.03, ge=0, le=1, description="noise: std drawn in [0, noise_std] per scan (official: 0.07)")
    gamma: tuple[float, float] = Field(default=(0.7, 1.5), description="contrast: gamma range (official: 0.5-1.5)")
    affine_axes: Literal["both", "first"] = Field(
        default="both",
        description="translate/scale/shear on both image axes; 'first' (on=workers only) = MONAI's reading of a bare "
        "float (the first axis only), the recipe of the published ablation round 2 (kept for reproduction)",
    )
    on: Literal["workers", "device"] = Field(
        default="device",
        description="where training augmentation runs: the training device, one batched call per batch (default), or "
        "the Ray Data read tasks (CPU, a MONAI Compose per scan; each fresh read process first imports MONAI, ~8 s)",
    )

    @model_validator(mode="after")
    def _ranges(self) -> "AugmentConfig":
        for name in ("elastic_sigma", "elastic_magnitude", "gamma"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"data.augment.{name} must be [low, high] with 0 < low <= high, got [{low}, {high}]")
        if self.affine_axes == "first" and self.on != "workers":
            raise ValueError("data.augment.affine_axes=first is the MONAI per-scan recipe: set data.augment.on=workers with it")
        return self

    @property
    def enabled(self) -> bool:
        """Whether any augmentation can fire (all probabilities 0: batches skip the float path)."""
        return max(self.affine_p, self.noise_p, self.contrast_p, self.elastic_p) > 0


class DataConfig(_Strict):
    """How cases are assembled from the store into fixed-shape batches ``(B, N, D, H, W)``."""

    n_image: int = Field(default=3, ge=1, le=8, description="max scans per case (N)")
    depth: int = Field(default=4, ge=1, le=64, description="slices per scan after sampling (D)")
    image_size: int = Field(default=32, ge=8, description="H = W fed to the model")
    label_level: Literal["disorder", "icd"] = "disorder"
    sampler: Literal["instance", "class_aware", "sqrt"] = "instance"
    sampler_power: float = Field(default=0.5, ge=0, le=1, description="q for the power sampler")
    augment: AugmentConfig = AugmentConfig()
    case_mix_p: float = Field(default=0.0, ge=0, le=1, description="training: probability of appending a case of another anatomy (labels: union)")
    read_parallelism: int = Field(default=2, ge=1, description="concurrent Ray Data read tasks per worker dataset")
    cases_per_task: int = Field(default=16, ge=1, description="cases per Ray Data read task (each opens its own store)")
    max_gap_kb: int = Field(default=0, ge=0, description="merge ranged reads of chunks closer than this (0: adjacent chunks only)")
    data_cpus: float = Field(default=0.5, gt=0, description="logical CPUs for each Ray Data task")
    eval_cache_mb: int = Field(
        default=256, ge=0,
        description="keep a worker's validation batches (uint8, deterministic) in memory after the first epoch when they fit in this many MB (0: read every epoch)",
    )


class KEConfig(_Strict):
    """Knowledge enhancement: label-text embeddings act as the classifier."""

    encoder: Literal["tfidf", "trained", "hf"] = Field(
        default="tfidf", description="tfidf baseline | trained: ICD-contrastive encoder | hf: local HF encoder dir"
    )
    encoder_path: str = Field(default="", description="hf: model directory; trained: '' = train/cache in cache_dir")
    text_train_steps: int = Field(default=1500, ge=1, description="trained encoder: contrastive steps")
    template: str = Field(default="{name}. {description}", description="label text; {name} {code} {description}")
    dim: int = Field(default=128, ge=8, description="text embedding size (tfidf: SVD components)")
    temperature_init: float = Field(default=0.07, gt=0, description="initial temperature; logit scale s = 1/T")
    learn_temperature: bool = Field(default=True, description="learn the logit scale s (else fixed at 1/T)")
    train_projection: bool = Field(default=True, description="train the text projection P (else frozen)")
    prior_bias: bool = Field(default=False, description="add log(label prior) to the KE logits (fixed, not learned)")
    permute_table: bool = Field(
        default=False,
        description="control arm: permute the label-text table across labels (seeded by train.seed), so text no longer matches labels",
    )
    cache_dir: str = Field(default="", description="'' = $RADDIAG_CACHE or ~/.cache/raddiag (fitted encoders)")
    match_threshold: float = Field(
        default=0.4, ge=0, le=1, description="a label without a code from the data is text-matched to ICD-10-CM only at this score or above"
    )
    mapping: str = Field(
        default="", description="reviewed label -> ICD-10-CM CSV (columns name, code; empty code = none) that wins over data and text"
    )
    curated: bool = Field(
        default=True,
        description="use the bundled curated RP3D-name -> ICD-10-CM table for labels without a code from the data (before text matching)",
    )


class ModelConfig(_Strict):
    """RadDiag network: slice encoder -> slice transformer -> scan fusion -> head."""

    encoder: Literal["resnet", "vit", "cnn3d"] = "resnet"
    backbone_depth: Literal[10, 18, 34, 50] = 10
    width: int = Field(default=8, ge=4, description="channels of the first backbone stage")
    embed_dim: int = Field(default=64, ge=8)
    slice_layers: int = Field(default=1, ge=1)
    slice_heads: int = Field(default=4, ge=1)
    max_depth: int = Field(default=32, ge=1, description="size of the slice position table")
    fusion: Literal["transformer", "late"] = "transformer"
    fusion_layers: int = Field(default=2, ge=1)
    fusion_heads: int = Field(default=4, ge=1)
    transformer: Literal["prenorm", "rp3d"] = Field(
        default="prenorm",
        description="slice/fusion transformer layer: prenorm = x+attn(LN(x)), x+GELU-MLP(LN(x)); rp3d = the official "
        "RadDiag layer: x+attn(x), x+ReLU-FF(norm(x)), norm by unbiased std + 1e-6 (needed to load its weights)",
    )
    ff_ratio: float = Field(default=4.0, gt=0, le=16, description="transformer feed-forward width / embed_dim (official RadDiag: 1)")
    feature_proj: bool = Field(
        default=True,
        description="project backbone features to embed_dim with a Linear; false feeds them as they are "
        "(embed_dim must equal the backbone width, e.g. 2048 for ResNet-50 at width 64)",
    )
    head: Literal["mlp", "ke"] = Field(default="ke", description="ke: label-text embeddings are the classifier; mlp: a plain head")
    ke: KEConfig = KEConfig()
    dropout: float = Field(default=0.0, ge=0, lt=1)
    pretrained_weights: str | None = Field(default=None, description="local .pt state dict (model or backbone)")
    norm: Literal["batch", "group"] = Field(default="batch", description="CNN backbone normalisation (group: batch-size independent)")
    vit_patch_size: int = Field(default=8, ge=2, description="ViT encoder: square patch size in pixels")
    vit_layers: int = Field(default=2, ge=1, description="ViT encoder: transformer layers per slice")
    vit_heads: int = Field(default=4, ge=1, description="ViT encoder: attention heads (divides embed_dim)")
    mlp_hidden: int = Field(default=0, ge=0, description="MLP head hidden width (0 = embed_dim)")
    bias_init: Literal["prior", "zero"] = Field(
        default="prior", description="per-label output bias (MLP and KE heads) starts at logit(training prior), or 0"
    )
    stem: Literal["imagenet", "small"] = Field(
        default="imagenet",
        description="CNN stem: imagenet = 7x7/2 conv + max-pool (/4); small = 3x3/1 conv, no pool (for images <= 64 px)",
    )
    channels_last: bool = Field(default=False, description="run CNN backbones in channels_last memory format")
    activation_checkpointing: bool = Field(default=False, description="recompute activations in backward")
    compile: bool = Field(
        default=False,
        description="training: torch.compile the whole forward (dynamic shapes, one graph without breaks; served models stay eager)",
    )

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> "ModelConfig":
        for name in ("slice_heads", "fusion_heads", "vit_heads"):
            if self.embed_dim % getattr(self, name):
                raise ValueError(f"model.embed_dim ({self.embed_dim}) must be divisible by model.{name}")
        if not self.feature_proj:
            if self.encoder == "vit":
                raise ValueError("model.feature_proj=false needs a CNN encoder (the ViT encoder already has embed_dim)")
            out = 8 * self.width * (4 if self.backbone_depth == 50 else 1)
            if out != self.embed_dim:
                raise ValueError(
                    f"model.feature_proj=false feeds the backbone's {out} features unprojected, but model.embed_dim="
                    f"{self.embed_dim}; set model.embed_dim={out} or model.feature_proj=true"
                )
        return self


class BCELossConfig(_Strict):
    """``loss.type=bce``: binary cross-entropy on logits."""

    pos_weight: float = Field(default=1.0, gt=0, description="weight of the positive term (1 = plain BCE)")


class FocalLossConfig(_Strict):
    """``loss.type=focal`` (and ``cb`` with ``cb.base=focal``): sigmoid focal loss."""

    gamma: float = Field(default=2.0, ge=0, le=10, description="focusing exponent γ (0 = no focusing)")
    alpha: float | None = Field(
        default=0.25, ge=0, le=1, description="weight α of positives, 1-α of negatives (null = unweighted)"
    )


class ASLConfig(_Strict):
    """``loss.type=asl``: asymmetric loss."""

    gamma_neg: float = Field(default=4.0, ge=0, le=10, description="focusing exponent γ- of negatives")
    gamma_pos: float = Field(default=0.0, ge=0, le=10, description="focusing exponent γ+ of positives")
    clip: float = Field(default=0.05, ge=0, lt=1, description="probability margin m shifted off negatives (0 = none)")


class CBConfig(_Strict):
    """``loss.type=cb``: class-balanced re-weighting by effective number."""

    beta: float = Field(
        default=0.999, ge=0, lt=1, description="β of the effective number (1-β^n)/(1-β) (0 = unweighted)"
    )
    base: Literal["bce", "focal"] = Field(
        default="bce", description="loss that the class-balanced weights multiply (focal uses loss.focal.*)"
    )


class LAConfig(_Strict):
    """``loss.type=la``: logit-adjusted BCE."""

    tau: float = Field(default=1.0, ge=0, le=5, description="logits + τ·log(prior) during training (0 = BCE)")
    log_odds: bool = Field(default=False, description="adjust by τ·log(prior/(1-prior)) instead of τ·log(prior)")


class DBConfig(_Strict):
    """``loss.type=db``: distribution-balanced loss."""

    smooth_alpha: float = Field(
        default=0.1, ge=0, le=1, description="floor α of the smoothed re-balancing weight α + σ(β(r-μ))"
    )
    smooth_beta: float = Field(default=10.0, ge=0, le=100, description="slope β of the smoothing sigmoid")
    smooth_mu: float = Field(default=0.2, ge=0, le=1, description="centre μ of the smoothing sigmoid")
    neg_scale: float = Field(default=2.0, ge=1, le=20, description="negative-tolerant scale λ on negative logits (1 = off)")
    bias_scale: float = Field(
        default=0.05, ge=0, le=1, description="κ, logits shifted by κ·log(prior/(1-prior)) (0 = off)"
    )


class LDAMConfig(_Strict):
    """``loss.type=ldam``: label-distribution-aware margins."""

    max_margin: float = Field(
        default=0.5, ge=0, le=5, description="margin of the rarest class; others ∝ n^(-1/4) (0 = BCE)"
    )
    scale: float = Field(default=1.0, gt=0, le=64, description="logit scale s applied after the margin")


class KeySliceConfig(_Strict):
    """The key-slice attention term, added to every classification loss."""

    weight: float = Field(default=0.001, ge=0, description="weight of the key-slice attention loss")
    form: Literal["raddiag", "official"] = Field(
        default="raddiag",
        description="raddiag: sigma = real slices / 16, KL(a||g) + KL(g||a) over scans with > 1 slice; official: the "
        "released code's sigma = padded depth / 16 and the mean of the two directions (half the weight)",
    )


#: The flat loss keys of earlier versions and their nested names (``loss.focal_gamma`` ->
#: ``loss.focal.gamma``): still read, with a one-line deprecation warning, from YAML, ``--set``,
#: ``sweep.search_space`` and ``ablation.arms``, and silently from configs stored with old runs.
LEGACY_LOSS_KEYS: dict[str, str] = {
    "pos_weight": "bce.pos_weight",
    "focal_gamma": "focal.gamma", "focal_alpha": "focal.alpha",
    "asl_gamma_neg": "asl.gamma_neg", "asl_gamma_pos": "asl.gamma_pos", "asl_clip": "asl.clip",
    "cb_beta": "cb.beta", "cb_base": "cb.base",
    "la_tau": "la.tau", "la_log_odds": "la.log_odds",
    "db_smooth_alpha": "db.smooth_alpha", "db_smooth_beta": "db.smooth_beta", "db_smooth_mu": "db.smooth_mu",
    "db_neg_scale": "db.neg_scale", "db_bias_scale": "db.bias_scale",
    "ldam_max_margin": "ldam.max_margin", "ldam_scale": "ldam.scale",
    "key_slice_weight": "key_slice.weight", "key_slice_form": "key_slice.form",
}


def legacy_key(dotted: str) -> str | None:
    """The current name of a pre-nesting dotted key (``"loss.focal_gamma"`` -> ``"loss.focal.gamma"``), else None."""
    section, _, name = dotted.partition(".")
    new = LEGACY_LOSS_KEYS.get(name) if section == "loss" else None
    return f"loss.{new}" if new else None


def _upgrade_loss_section(loss: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``loss`` with its flat legacy keys moved into their sub-sections, and the old keys found.
    An old key next to a different value under its new name is an error (which one is meant?)."""
    found = [key for key in loss if key in LEGACY_LOSS_KEYS]
    if not found:
        return loss, []
    out = copy.deepcopy(loss)
    for old in found:
        value = out.pop(old)
        section, name = LEGACY_LOSS_KEYS[old].split(".")
        sub = out.get(section)
        if sub is None:
            sub = out[section] = {}
        if not isinstance(sub, dict):
            raise ValueError(f"loss.{old} is the old name of loss.{section}.{name}, but loss.{section} is not a mapping")
        if name in sub and sub[name] != value:
            raise ValueError(f"loss.{old} (old name) and loss.{section}.{name} are both set: keep only loss.{section}.{name}")
        sub[name] = value
    return out, found


def _upgrade_keys(mapping: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``mapping`` (dotted key -> value) with legacy loss keys renamed, and the old keys found; an
    old and a new name of the same key both present is an error."""
    found = [key for key in mapping if isinstance(key, str) and legacy_key(key)]
    if not found:
        return mapping, []
    out = {}
    for key, value in mapping.items():
        new = legacy_key(key) if isinstance(key, str) else None
        if new and new in mapping and mapping[new] != value:
            raise ValueError(f"{key} (old name) and {new} are both given: keep only {new}")
        out[new or key] = value
    return out, found


def _upgrade_space(space: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A search space with legacy loss keys renamed in its keys and in every ``when``; the old keys found."""
    space, found = _upgrade_keys(space)
    out = {}
    for key, spec in space.items():
        if isinstance(spec, dict) and isinstance(spec.get("when"), dict):
            when, old = _upgrade_keys(spec["when"])
            if old:
                spec = {**spec, "when": when}
                found += [k for k in old if k not in found]
        out[key] = spec
    return out, found


def _upgrade_arms(arms: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Ablation arms with legacy loss keys renamed in their overrides; the old keys found."""
    out, found = {}, []
    for arm, overrides in arms.items():
        if isinstance(overrides, dict):
            overrides, old = _upgrade_keys(overrides)
            found += [k for k in old if k not in found]
        out[arm] = overrides
    return out, found


class LossConfig(_Strict):
    """Multi-label classification loss on logits plus the key-slice attention term.

    ``type`` picks the loss (see :mod:`raddiag.losses`); its parameters live in the sub-section of
    the same name (``loss.focal.gamma``, ``loss.cb.beta``, ...) and only that one is read (``cb``
    with ``cb.base=focal`` also reads ``focal``). ``cb``, ``la``, ``db`` and ``ldam`` need the
    training class counts. ``key_slice`` is read by every type.
    """

    type: Literal["bce", "focal", "asl", "cb", "la", "db", "ldam"] = Field(
        default="bce",
        description="bce | focal | asl (asymmetric) | cb (class-balanced) | la (logit-adjusted) | "
        "db (distribution-balanced) | ldam (label-distribution-aware margins)",
    )
    bce: BCELossConfig = Field(default_factory=BCELossConfig, description="bce: binary cross-entropy")
    focal: FocalLossConfig = Field(default_factory=FocalLossConfig, description="focal: sigmoid focal loss (Lin et al. 2017)")
    asl: ASLConfig = Field(default_factory=ASLConfig, description="asl: asymmetric loss (Ridnik et al. 2021)")
    cb: CBConfig = Field(default_factory=CBConfig, description="cb: class-balanced weights (Cui et al. 2019)")
    la: LAConfig = Field(default_factory=LAConfig, description="la: logit adjustment (Menon et al. 2021)")
    db: DBConfig = Field(default_factory=DBConfig, description="db: distribution-balanced loss (Wu et al. 2020)")
    ldam: LDAMConfig = Field(default_factory=LDAMConfig, description="ldam: label-distribution-aware margins (Cao et al. 2019)")
    key_slice: KeySliceConfig = Field(default_factory=KeySliceConfig, description="key-slice attention term (every type)")

    @model_validator(mode="before")
    @classmethod
    def _legacy_keys(cls, data: Any) -> Any:
        """Flat keys of earlier versions (``focal_gamma``) read as their nested names: configs
        stored with old runs and models still load (user input is translated, with a warning, by
        :func:`load_config`)."""
        return _upgrade_loss_section(data)[0] if isinstance(data, dict) else data

    def sections(self) -> tuple[str, ...]:
        """The parameter sub-sections the active ``type`` reads (``cb`` with ``base=focal`` also reads ``focal``)."""
        return (self.type, "focal") if self.type == "cb" and self.cb.base == "focal" else (self.type,)


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ +-]{0,99}")


def run_name(value: str) -> str:
    """A run/sweep/ablation name: it becomes a folder under ``train.storage_path`` and an MLflow
    tag, so no path separators, no '..', no quotes or control characters."""
    if not _NAME.fullmatch(value) or ".." in value:
        raise ValueError(
            "use 1-100 letters, digits, spaces or . _ + - (starting with a letter or digit; no '/', '..' or quotes)"
        )
    return value


def run_metric(value: str) -> str:
    """``train.metric`` / ``sweep.metric``: a metric a training run logs each epoch, ``val_<metric>_<group>``
    of :data:`raddiag.metrics.METRIC_SPECS` (the table imports no pandas) or the training loss."""
    from raddiag.metrics import TRAINING_LOSS, check_metric

    return check_metric(value, "val_", validation=False, extra=(TRAINING_LOSS,))


def evaluation_metric(value: str) -> str:
    """``promote.metric``: a test-split metric of :data:`raddiag.metrics.METRIC_SPECS`, ``<metric>_<group>``."""
    from raddiag.metrics import check_metric

    return check_metric(value)


class TrainConfig(_Strict):
    """Ray Train TorchTrainer settings and the optimisation schedule."""

    name: str = "raddiag-train"

    _name = field_validator("name")(classmethod(lambda cls, v: run_name(v)))
    epochs: int = Field(default=16, ge=1)
    batch_size: int = Field(default=16, ge=1, description="cases per worker per step")
    lr: float = Field(default=2e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    warmup_fraction: float = Field(default=0.05, ge=0, lt=1)
    num_workers: int = Field(default=1, ge=1, description="DDP workers per run (1 on a small CPU machine: two runs side by side beat one run with 2 workers)")
    cpus_per_worker: float = Field(default=1.0, gt=0, description="logical CPUs per worker (also its torch threads, at least 1)")
    resources_per_worker: dict[str, float] = Field(default_factory=dict, description="extra custom resources per worker")
    use_gpu: bool = False
    grad_accum_steps: int = Field(default=1, ge=1, description="micro-batches per optimiser step")
    prefetch_batches: int = Field(
        default=2, ge=1, description="batches read ahead of the step (Ray Data iterator and the next epoch's stream)"
    )
    amp: bool = Field(default=True, description="bf16 autocast on GPU (ignored on CPU)")
    max_failures: int = Field(default=0, ge=-1, description="worker restarts from the last checkpoint (-1 = forever)")
    early_stop_patience: int = Field(default=0, ge=0, description="epochs without improvement before stopping (0 = off)")
    metric: str = Field(
        default="val_auc_macro",
        description="validation metric for early stopping and the best model: val_<metric>_<group> (e.g. val_auc_tail; "
        "metrics.METRIC_SPECS) or train_loss",
    )
    _metric = field_validator("metric")(classmethod(lambda cls, v: run_metric(v)))
    storage_path: str = ".raddiag/ray_results"
    seed: int = 0
    fraction: float = Field(
        default=1.0, gt=0, le=1,
        description="train on this fraction of the training split (stratified by each case's rarest label, seeded by "
        "fraction_seed): the paper's data-efficiency experiments",
    )
    fraction_seed: int = Field(default=0, description="seed of the train.fraction subset")


class SweepConfig(_Strict):
    """Ray Tune + Optuna sweep. ``search_space`` maps dotted config keys to distributions.

    A distribution is one of ``{choice: [...]}``, ``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}``,
    ``{int: [lo, hi]}``; ``when: {key: value}`` makes it conditional on another sampled key.

    ``max_trial_epochs`` is the sweep's budget in trial-epochs (epochs trained, summed over all
    trials), enforced exactly: every epoch is claimed from a ledger actor before it starts
    (:mod:`raddiag.tune.budget`), so a trial ends after its last granted epoch and no new one
    starts once the budget is spent, however far the workers run ahead of Tune. With a budget,
    ``num_samples`` is only the cap on trials started, so set it high enough for the budget to end
    the sweep (ASHA stops most trials after a few epochs, so a budget of B pays for more than
    B / train.epochs trials).
    """

    name: str = "raddiag-sweep"

    _name = field_validator("name")(classmethod(lambda cls, v: run_name(v)))
    num_samples: int = Field(default=2, ge=1, description="trials to start (with max_trial_epochs: the cap on trials)")
    max_trial_epochs: int = Field(default=0, ge=0, description="budget in trial-epochs over all trials (0 = unlimited)")
    max_concurrent_trials: int = Field(default=0, ge=0, description="0 = derived from cluster CPUs")
    metric: str = Field(default="val_auc_macro", description="what the searcher and ASHA optimise: val_<metric>_<group> or train_loss")
    _metric = field_validator("metric")(classmethod(lambda cls, v: run_metric(v)))
    mode: Literal["max", "min"] = "max"
    searcher: Literal["optuna", "random"] = "optuna"
    scheduler: Literal["asha", "none"] = "asha"
    grace_period: int = Field(default=4, ge=1, description="ASHA: epochs every trial gets before it can be stopped")
    reduction_factor: int = Field(default=2, ge=2)
    seed: int = 0
    trial_cpus: float = Field(default=0.25, gt=0, description="logical CPUs held by each trial driver")
    search_space: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {
            "loss.type": {"choice": ["bce", "focal", "asl"]},
            "loss.focal.gamma": {"uniform": [0.5, 3.0], "when": {"loss.type": "focal"}},
            "loss.asl.gamma_neg": {"uniform": [2.0, 6.0], "when": {"loss.type": "asl"}},
            "model.head": {"choice": ["mlp", "ke"]},
            "model.ke.temperature_init": {"loguniform": [0.03, 0.2], "when": {"model.head": "ke"}},
            "train.lr": {"loguniform": [1e-3, 4e-3]},
        }
    )

    @field_validator("search_space", mode="before")
    @classmethod
    def _legacy_keys(cls, space: Any) -> Any:
        """Pre-nesting loss keys (``loss.focal_gamma``) read as their nested names, in keys and ``when``."""
        return _upgrade_space(space)[0] if isinstance(space, dict) else space

    @field_validator("search_space")
    @classmethod
    def _check_space(cls, space: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        kinds = {"choice", "uniform", "loguniform", "int"}
        for key, spec in space.items():
            found = kinds & set(spec)
            if len(found) != 1 or set(spec) - kinds - {"when"}:
                raise ValueError(f"search_space[{key!r}] needs exactly one of {sorted(kinds)} (+ optional 'when')")
            kind = found.pop()
            values = spec[kind]
            if not isinstance(values, list) or not values:
                raise ValueError(f"search_space[{key!r}].{kind} must be a non-empty list")
            if kind != "choice" and (len(values) != 2 or not values[0] < values[1]):
                raise ValueError(f"search_space[{key!r}].{kind} must be [low, high] with low < high")
            if kind == "loguniform" and values[0] <= 0:
                raise ValueError(f"search_space[{key!r}].loguniform bounds must be > 0")
        return space

    @model_validator(mode="after")
    def _mode_follows_metric(self) -> SweepConfig:
        """``mode`` agrees with the metric's direction in :data:`raddiag.metrics.METRIC_SPECS` (checked
        when either is set: the defaults agree, and importing the table at import time would cost --help)."""
        if not {"metric", "mode"} & self.model_fields_set:
            return self
        from raddiag.metrics import higher_is_better

        expected = "max" if higher_is_better(self.metric) else "min"
        if self.mode != expected:
            raise ValueError(f"sweep.mode={self.mode} but sweep.metric {self.metric} is better when "
                             f"{'higher' if expected == 'max' else 'lower'}: set sweep.mode={expected}")
        return self


class AblationConfig(_Strict):
    """``raddiag ablate``: named arms (config overlays) × seeds as one Ray Tune grid.

    ``arms`` maps an arm name to dotted overrides applied on top of the rest of the config (e.g.
    ``{"model.fusion": "late", "model.head": "mlp"}``); every arm is trained with every seed in
    ``seeds`` (``train.seed``), selected on validation (best epoch), scored on the test split, and
    compared with paired bootstrap CIs over seeds and test cases (:mod:`raddiag.stats`).
    """

    name: str = "raddiag-ablation"

    _name = field_validator("name")(classmethod(lambda cls, v: run_name(v)))
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    arms: dict[str, dict[str, Any]] = Field(default_factory=dict)
    comparisons: list[list[str]] = Field(
        default_factory=list, description="[A, B] pairs reported as A - B (default: each arm minus the one before it)"
    )
    n_bootstrap: int = Field(default=1000, ge=0)
    max_concurrent_trials: int = Field(default=2, ge=1)

    @field_validator("arms", mode="before")
    @classmethod
    def _legacy_keys(cls, arms: Any) -> Any:
        """Pre-nesting loss keys (``loss.focal_gamma``) in an arm's overrides read as their nested names."""
        return _upgrade_arms(arms)[0] if isinstance(arms, dict) else arms

    @field_validator("arms")
    @classmethod
    def _check_arms(cls, arms: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, overrides in arms.items():
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", name):
                raise ValueError(f"arm name {name!r}: use letters, digits and _ . + - only")
            if not isinstance(overrides, dict):
                raise ValueError(f"arm {name!r}: expected a mapping of dotted config keys to values")
        return arms

    @field_validator("comparisons")
    @classmethod
    def _check_pairs(cls, pairs: list[list[str]]) -> list[list[str]]:
        for pair in pairs:
            if len(pair) != 2:
                raise ValueError(f"comparison {pair}: expected [A, B]")
        return pairs

    def pairs(self) -> list[tuple[str, str]]:
        """The (A, B) comparisons, validated against the arm names."""
        names = list(self.arms)
        pairs = [tuple(p) for p in self.comparisons] or list(zip(names[1:], names[:-1]))
        for a, b in pairs:
            for arm in (a, b):
                if arm not in self.arms:
                    raise ValueError(f"ablation.comparisons names arm {arm!r}, which is not in ablation.arms ({', '.join(names)})")
        return pairs  # type: ignore[return-value]


class EvalConfig(_Strict):
    """How evaluation (validation during training, ``evaluate``, ``ablate``, reports) groups classes."""

    grouping: Literal["counts", "rank"] = Field(
        default="counts",
        description="counts: head/medium/tail by training cases (head_min, medium_min); rank: fixed slices of the "
        "frequency-sorted label list, as the official RadDiag evaluation (rank_cuts)",
    )
    head_min: int = Field(default=100, ge=1, description="counts: training cases of a head class")
    medium_min: int = Field(default=30, ge=1, description="counts: training cases of a medium class")
    rank_cuts_disorder: tuple[int, int] = Field(default=(85, 555), description="rank: head = [:a], medium = [a:b] (disorders)")
    rank_cuts_icd: tuple[int, int] = Field(default=(165, 395), description="rank: head = [:a], medium = [a:b] (ICD-10-CM)")

    @model_validator(mode="after")
    def _ordered(self) -> "EvalConfig":
        if self.medium_min > self.head_min:
            raise ValueError(f"eval.medium_min ({self.medium_min}) must not exceed eval.head_min ({self.head_min})")
        for name in ("rank_cuts_disorder", "rank_cuts_icd"):
            a, b = getattr(self, name)
            if not 0 <= a <= b:
                raise ValueError(f"eval.{name} must be [head, medium] with 0 <= head <= medium, got [{a}, {b}]")
        return self

    def groups(self, train_counts: Any, level: str) -> tuple[Any, str]:
        """(group per class, description) for ``train_counts`` (C,) of label level ``level``."""
        from raddiag.metrics import groups_for

        cuts = self.rank_cuts_icd if level == "icd" else self.rank_cuts_disorder
        return groups_for(train_counts, self.grouping, head_min=self.head_min, medium_min=self.medium_min, cuts=cuts)


class TrackingConfig(_Strict):
    """MLflow tracking and registry. Default: a local sqlite file (no server to start)."""

    tracking_uri: str = Field(default="", description="'' = $MLFLOW_TRACKING_URI or sqlite:///.raddiag/mlflow.db")
    experiment: str = "raddiag"
    registered_model: str = "raddiag"
    system_metrics: bool = Field(default=True, description="log CPU/memory/GPU of rank 0 as MLflow system metrics")
    artifact_location: str = Field(default="", description="'' = .raddiag/mlartifacts (sqlite) or server default")

    def resolved_uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('.raddiag/mlflow.db').resolve()}"


class RayConfig(_Strict):
    """Where Ray runs. ``address`` '' = $RAY_ADDRESS or a local instance started by the verb."""

    address: str = ""
    num_cpus: int = Field(default=0, ge=0, description="logical CPUs for a local Ray (0 = 4 x physical)")
    state_api: bool = Field(
        default=True,
        description=(
            "start a local Ray with its dashboard/State API: Ray Train's placement-group cleaner needs it to free "
            "the workers of a trial that Tune stopped (without it, every ASHA stop leaks CPUs until a sweep starves)"
        ),
    )


class PromoteConfig(_Strict):
    metric: str = Field(default="auc_macro", description="test metric a challenger must beat the champion on: <metric>_<group>")
    _metric = field_validator("metric")(classmethod(lambda cls, v: evaluation_metric(v)))
    margin: float = Field(default=0.0, ge=0)


class RadDiagConfig(_Strict):
    """Everything a verb needs; see ``jobs/*.yaml`` for annotated examples."""

    store: StoreConfig = StoreConfig()
    synth: SynthConfig = SynthConfig()
    ingest: IngestConfig = IngestConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    sweep: SweepConfig = SweepConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    ray: RayConfig = RayConfig()
    promote: PromoteConfig = PromoteConfig()
    ablation: AblationConfig = AblationConfig()

    def flat(self) -> dict[str, Any]:
        """Flattened ``{"a.b": value}`` view of every key."""
        return flatten(self.model_dump(mode="json"))

    def run_params(self, scope: str = "run") -> dict[str, Any]:
        """The MLflow params of a training run: :meth:`flat` without the keys that cannot affect it —
        the other losses' sections (a BCE run shows ``loss.type``, ``loss.key_slice.*`` and
        ``loss.bce.*`` only; ``cb`` with ``cb.base=focal`` also ``loss.focal.*``), the KE head's
        when ``model.head=mlp``, the ViT's for a CNN and the CNN's for a ViT, and ingest/synth
        (the store is recorded by its dataset version). ``scope="sweep"``/``"ablation"`` keeps that
        section (a parent run)."""
        flat = self.flat()
        used_loss = ("loss.type", "loss.key_slice.", *(f"loss.{section}." for section in self.loss.sections()))
        drop = ["synth.", "ingest."]
        drop += [section for section in ("sweep.", "ablation.") if not section.startswith(scope)]
        if self.model.head != "ke":
            drop.append("model.ke.")
        if self.model.encoder == "vit":
            drop += ["model.backbone_depth", "model.width", "model.norm", "model.stem", "model.channels_last"]
        else:
            drop.append("model.vit_")

        def kept(key: str) -> bool:
            if key.startswith(tuple(drop)):
                return False
            return key.startswith(used_loss) if key.startswith("loss.") else True

        return {key: value for key, value in flat.items() if kept(key)}

    @model_validator(mode="after")
    def _check_override_keys(self) -> "RadDiagConfig":
        """Every ``sweep.search_space`` key and ``when`` key and every ``ablation.arms`` override
        names a real config key, and every value a trial or an arm can set (each choice, both ends
        of a range, an arm's overrides together) is valid for it: a typo fails at load, in one
        line, before Ray starts, instead of in every trial."""
        if self.sweep.search_space or self.ablation.arms:
            base = self.model_dump(mode="json")
            base["sweep"]["search_space"], base["ablation"]["arms"] = {}, {}
            _check_search_space(self.sweep.search_space, base)
            for arm, overrides in self.ablation.arms.items():
                _check_arm(arm, overrides, base)
        return self


#: Config keys a sweep or an arm cannot set (they hold the overrides themselves).
_NOT_OVERRIDABLE = ("sweep.search_space", "ablation.arms")


def _field_annotation(dotted: str) -> Any:
    """The type annotation of config key ``dotted`` (a leaf, a section, or an entry of a
    ``dict``-typed field such as ``train.resources_per_worker.GPU``), or None if no such key."""
    model: Any = RadDiagConfig
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        annotation = field.annotation
        if i == len(parts) - 1:
            return annotation
        sub = next((a for a in (annotation, *get_args(annotation)) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is not None:
            model = sub
        elif get_origin(annotation) is dict and i == len(parts) - 2:
            return get_args(annotation)[1]
        else:
            return None
    return None


def _known_key(dotted: str, base: dict[str, Any], what: str) -> None:
    """Raise naming ``what`` and the closest valid key unless ``dotted`` is a config key."""
    if isinstance(dotted, str) and dotted not in _NOT_OVERRIDABLE and _field_annotation(dotted) is not None:
        return
    valid = [key for key in flatten(base) if key not in _NOT_OVERRIDABLE]
    close = difflib.get_close_matches(str(dotted), valid, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else " (see `raddiag config show --keys`)"
    raise ValueError(f"{what}: unknown config key '{cut(str(dotted), 120)}'{hint}")


def _first_problem(tree: dict[str, Any], blamed: Any) -> tuple[str, str] | None:
    """``(key, message)`` of the first validation error of ``tree`` that ``blamed(loc)`` accepts, else None."""
    try:
        RadDiagConfig.model_validate(tree)
    except ValidationError as exc:
        for error in exc.errors():
            loc = ".".join(str(p) for p in error["loc"])
            if blamed(loc):
                return loc, cut(error["msg"].removeprefix("Value error, "), 160)
    return None


def _check_search_space(space: dict[str, dict[str, Any]], base: dict[str, Any]) -> None:
    """See :meth:`RadDiagConfig._check_override_keys`: keys, ``when`` conditions and values."""
    earlier: list[str] = []
    for key, spec in space.items():
        where = f"sweep.search_space['{cut(str(key), 120)}']"
        _known_key(key, base, "sweep.search_space")
        kind = next(k for k in spec if k != "when")
        when = spec.get("when") or {}
        if not isinstance(when, dict):
            raise ValueError(f"{where}.when must be a mapping {{key: value}}, got {shown(when)}")
        for cond, value in when.items():
            _known_key(cond, base, f"{where}.when")
            if cond not in earlier:
                raise ValueError(f"{where}.when: '{cond}' is not sampled above '{key}' in sweep.search_space, so the condition "
                                 f"never holds (add '{cond}' to the search space before '{key}')")
            cond_spec = space[cond]
            cond_kind = next(k for k in cond_spec if k != "when")
            if cond_kind == "choice" and value not in cond_spec["choice"]:
                raise ValueError(f"{where}.when: {cond}={shown(value)} is never sampled (choices: {shown(cond_spec['choice'])})")
            if cond_kind != "choice" and not (cond_kind == "int" and isinstance(value, int)
                                              and cond_spec["int"][0] <= value <= cond_spec["int"][1]):
                raise ValueError(f"{where}.when: {cond}={shown(value)} is never sampled from {{{cond_kind}: {shown(cond_spec[cond_kind])}}}")
        annotation = _field_annotation(key)
        if kind in ("uniform", "loguniform") and annotation is int:
            raise ValueError(f"{where}: {key} is an integer; sample it with {{int: [low, high]}}, not {kind}")
        others = [k for k in space if k != key]
        for value in spec[kind]:
            tree = copy.deepcopy(base)
            for cond, cond_value in when.items():
                set_dotted(tree, cond, cond_value)
            set_dotted(tree, key, value)

            def blamed(loc: str, key: str = key, others: list[str] = others) -> bool:
                if loc == key or loc.startswith(key + "."):
                    return True  # the key's own constraint
                if loc and not key.startswith(loc + "."):
                    return False  # another section's problem
                # A cross-field check of a section holding the key: the key's fault unless another
                # sampled key of that section could satisfy it in a trial.
                return not any(not loc or other.startswith(loc + ".") for other in others)

            problem = _first_problem(tree, blamed)
            if problem:
                what = "value" if kind == "choice" else "bound"
                named = problem[0] if problem[0].startswith(key) else key
                raise ValueError(f"{where}: {kind} {what} {shown(value)} is not valid for {named}: {problem[1]}")
        earlier.append(key)


def _check_arm(arm: str, overrides: dict[str, Any], base: dict[str, Any]) -> None:
    """See :meth:`RadDiagConfig._check_override_keys`: an arm's keys, and its overrides applied together."""
    tree = copy.deepcopy(base)
    for key, value in overrides.items():
        _known_key(key, base, f"ablation.arms.{arm}")
        set_dotted(tree, key, value)
    problem = _first_problem(tree, lambda loc: True)
    if problem:
        key, message = problem
        value = overrides.get(key)
        got = f" (got {shown(value)})" if key in overrides else ""
        raise ValueError(f"ablation.arms.{arm}: config key '{key}': {message}{got}")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and search-space dicts kept as leaves)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path not in ("sweep.search_space", "ablation.arms"):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree["a"]["b"] = value`` for ``dotted == "a.b"``, creating dicts as needed."""
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


#: Bounds on YAML read from users: aliases ("billion laughs": a 1 KB file of nested aliases expands
#: to gigabytes), the expanded size, and how much of a bad value an error message echoes.
MAX_YAML_ALIASES = 100
MAX_YAML_NODES = 200_000
MAX_SHOWN = 80


def cut(text: str, limit: int = MAX_SHOWN) -> str:
    """``text`` cut to ``limit`` characters (with an ellipsis)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shown(value: Any, limit: int = MAX_SHOWN) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages (never echo a whole input)."""
    if isinstance(value, (dict, list)) and _expanded_size(value, limit=10_000) >= 10_000:
        return f"<{type(value).__name__} too large to show>"
    return cut(repr(value), limit)


def _expanded_size(value: Any, limit: int = MAX_YAML_NODES) -> int:
    """Nodes of ``value`` with shared (aliased) sub-trees counted every time they appear; stops
    counting past ``limit`` (memoised per object, so a nested-alias bomb costs linear time)."""
    memo: dict[int, int] = {}

    def size(node: Any) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        if id(node) in memo:
            return memo[id(node)]
        memo[id(node)] = limit  # a cycle counts as too large
        children = node.values() if isinstance(node, dict) else node
        total = 1
        for child in children:
            total += size(child)
            if total >= limit:
                break
        memo[id(node)] = min(total, limit)
        return memo[id(node)]

    return size(value)


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses documents with more than :data:`MAX_YAML_ALIASES` aliases."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.events.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_YAML_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_YAML_ALIASES} YAML aliases (refused: alias expansion bomb?)")
        return super().compose_node(parent, index)


def safe_load(text: str, what: str) -> Any:
    """``yaml.safe_load`` with bounded aliases and expanded size; ``ConfigError`` naming ``what``."""
    loader = _BoundedLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        detail = str(exc) if "aliases" in str(exc) else "invalid YAML"
        raise ConfigError(f"{what}: {detail}{where}") from None
    finally:
        loader.dispose()
    if _expanded_size(data) >= MAX_YAML_NODES:
        raise ConfigError(f"{what}: expands to more than {MAX_YAML_NODES} values (refused)")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=3e-4"`` -> ``("train.lr", 0.0003)``; the value is parsed as a YAML scalar/list."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {shown(text)}: expected KEY=VALUE, e.g. --set train.lr=3e-4")
    try:
        value = safe_load(raw, f"--set {cut(key)}") if raw.strip() else ""
    except ConfigError as exc:
        if "refused" in str(exc):
            raise
        value = raw
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads "3e-4" as a string
    return key, value


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path}: cannot be read ({type(exc).__name__})") from None
    data = safe_load(text, f"config file {path}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("search_space", "arms"):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _describe(error: ValidationError, origin: str) -> str:
    first = error.errors()[0]
    key = cut(".".join(str(p) for p in first["loc"]) or "(top level)", 120)
    if first["type"] == "extra_forbidden":
        return f"{origin}: unknown config key '{key}'"
    if not first["loc"]:  # a whole-config check (search-space and arm keys): the message names its key
        return f"{origin}: {cut(first['msg'].removeprefix('Value error, '), 400)}"
    value = first.get("input")
    got = "" if isinstance(value, dict) else f" (got {shown(value)})"
    msg = cut(first["msg"].removeprefix("Value error, "), 200)
    return f"{origin}: config key '{key}': {msg}{got}"


def _upgrade_tree(tree: dict[str, Any], origin: str) -> dict[str, Any]:
    """``tree`` (a YAML file, a preset) with pre-nesting loss keys renamed in ``loss``,
    ``sweep.search_space`` and ``ablation.arms``, and one warning line naming the old keys."""
    found: list[str] = []
    try:
        loss = tree.get("loss")
        if isinstance(loss, dict):
            loss, old = _upgrade_loss_section(loss)
            tree = {**tree, "loss": loss}
            found += [f"loss.{key}" for key in old]
        for section, field, upgrade in (("sweep", "search_space", _upgrade_space), ("ablation", "arms", _upgrade_arms)):
            node = tree.get(section)
            if isinstance(node, dict) and isinstance(node.get(field), dict):
                value, old = upgrade(node[field])
                tree = {**tree, section: {**node, field: value}}
                found += [f"{key} in {section}.{field}" for key in old]
    except ValueError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    if found:
        _deprecated(origin, found)
    return tree


def _deprecated(origin: str, found: list[str]) -> None:
    """One warning line for the legacy keys ``found`` in ``origin`` (stderr unless logging is configured)."""
    names = ", ".join(f"{key} -> {legacy_key(key)}{sep}{where}" for key, sep, where in (k.partition(" ") for k in found))
    logging.getLogger("raddiag.config").warning(f"{origin}: deprecated config keys read as their new names ({cut(names, 400)}); rename them")


def build_config(tree: dict[str, Any], origin: str = "config") -> RadDiagConfig:
    """Validate a nested dict into a :class:`RadDiagConfig`, raising a one-line :class:`ConfigError`."""
    try:
        return RadDiagConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin)) from None


def load_config(
    paths: list[Path] | None = None, overrides: list[str] | None = None, base: dict[str, Any] | None = None
) -> RadDiagConfig:
    """Defaults <- ``base`` (a preset tree) <- YAML files (in order) <- ``KEY=VALUE`` overrides."""
    tree: dict[str, Any] = copy.deepcopy(base) if base else {}
    origin = "defaults"
    for path in paths or []:
        tree = _merge(tree, _upgrade_tree(_read_yaml(Path(path)), f"config file {path}"))
        origin = str(path)
    for text in overrides or []:
        key, value = parse_override(text)
        if legacy_key(key):
            _deprecated(f"--set {cut(key)}", [key])
            key = legacy_key(key)  # type: ignore[assignment]
        set_dotted(tree, key, value)
        origin = "--set" if not paths else f"{origin} + --set"
    tree = _upgrade_tree(tree, origin)  # a preset, or a search space / arms given whole with --set
    return absolute_paths(build_config(tree, origin))


def _absolute(path_or_url: str) -> str:
    if "://" in path_or_url and not path_or_url.startswith("file://"):
        return path_or_url
    return str(Path(path_or_url.removeprefix("file://")).expanduser().resolve())


def absolute_paths(cfg: RadDiagConfig) -> RadDiagConfig:
    """Local paths resolved against the current directory, once, where the user ran the verb: Ray
    Tune and Train run code in other working directories."""
    uri = cfg.tracking.resolved_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{_absolute(uri.removeprefix('sqlite:///'))}"
    return cfg.model_copy(
        update={
            "store": cfg.store.model_copy(update={"url": _absolute(cfg.store.url)}),
            "train": cfg.train.model_copy(update={"storage_path": _absolute(cfg.train.storage_path)}),
            "tracking": cfg.tracking.model_copy(update={"tracking_uri": uri}),
            "model": cfg.model.model_copy(update={"ke": cfg.model.ke.model_copy(
                update={"mapping": _absolute(cfg.model.ke.mapping) if cfg.model.ke.mapping else ""})}),
        }
    )


def with_overrides(cfg: RadDiagConfig, values: dict[str, Any]) -> RadDiagConfig:
    """A copy of ``cfg`` with dotted ``values`` applied and re-validated (used per sweep trial)."""
    tree = cfg.model_dump(mode="json")
    for key, value in values.items():
        set_dotted(tree, legacy_key(key) or key, value)
    return build_config(tree, "trial overrides")


class JobRuntimeEnv(_Strict):
    """The part of a Ray runtime_env a job spec may set (see :class:`JobSpec`)."""

    working_dir: str = Field(default=".", description="uploaded and used as the job's cwd; relative to where you run submit")
    excludes: list[str] = Field(default_factory=list, description="gitignore-style patterns, added to the built-in excludes")
    env_vars: dict[str, str] = Field(default_factory=dict, description="non-secret environment variables for the job")
    ship_code: bool = Field(default=True, description="upload this checkout's raddiag package (py_modules) so the job runs it")


class JobSpec(_Strict):
    """A Ray Jobs submission spec (``raddiag submit JOBSPEC``): a YAML with an ``entrypoint``.

    A plain config YAML (no ``entrypoint``) is also accepted by ``submit``: its entrypoint is then
    ``raddiag <verb> -c <file>``, the verb taken from ``--verb`` or the file name.
    """

    entrypoint: str = Field(description="shell command run on the head node, e.g. 'raddiag sweep -c jobs/sweep.yaml'")
    runtime_env: JobRuntimeEnv = JobRuntimeEnv()
    entrypoint_num_cpus: float = Field(default=0.0, ge=0, description="CPUs reserved for the entrypoint (driver)")
    entrypoint_num_gpus: float = Field(default=0.0, ge=0)
    metadata: dict[str, str] = Field(default_factory=dict, description="shown by `ray job list`")
    submission_id: str | None = Field(default=None, description="fixed job id (default: generated)")
