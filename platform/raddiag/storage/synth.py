"""A synthetic RP3D-like dataset: long-tailed multi-label cases of 2D and 3D scans, deterministic by seed.

Design (each property makes a part of the method measurable on CPU):
- labels are real ICD-10-CM sub-categories (names from ``simple_icd_10_cm``) taken from a few
  blocks, so several disorders share a 3-character code and a block; plus ``Normal``;
- label frequency follows a power law (head / medium / tail all populated at the default size);
- every label is drawn as a lesion pattern whose *shape* is shared by its ICD block and whose
  *position* is shared by its 3-character category — so the hierarchy (and label text) helps rare
  labels;
- some labels are visible in one modality only — so fusing a case's scans helps;
- 3D lesions peak at one slice — largest and strongest there — recorded as the scan's key slice.

:func:`generate` writes the cases straight into a store; :func:`write_rp3d_source` writes the same
cases in RP3D-DiagDS format (json + float32 H×W×D ``.npy``) for ``raddiag ingest`` tests/benchmarks.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from raddiag.config import RadDiagConfig, SynthConfig
from raddiag.storage.splits import stratified_split
from raddiag.storage.store import Manifest, Store, label_table, to_uint8

#: Blocks with imaging-visible disorders; their sub-categories become the synthetic labels.
ICD_BLOCKS = ("I70-I79", "J09-J18", "S70-S79", "C30-C39", "K55-K64", "S80-S89", "I26-I28", "M80-M85")
ANATOMIES = ("Chest", "Abdomen and Pelvis", "Lower Limb", "Head and Neck")
MODALITIES = ("X-ray", "CT", "MRI")
PLANES_3D = ("axial", "coronal", "sagittal")
N_SHAPES = 6


@dataclass(frozen=True)
class SynthLabel:
    name: str
    code: str  # ICD-10-CM sub-category, e.g. "I71.0"
    category: str  # 3-character code, e.g. "I71" (the ICD-level label)
    block: str
    shape: int
    position: tuple[float, float]
    polarity: float
    visible_in: tuple[str, ...]


def _stable_hash(text: str) -> int:
    return zlib.crc32(text.encode())


def synth_labels(n_disorders: int, seed: int) -> list[SynthLabel]:
    """``n_disorders`` ICD-10-CM sub-categories spread over :data:`ICD_BLOCKS` (2-3 per category)."""
    import simple_icd_10_cm as icd

    rng = np.random.default_rng(seed)
    pools: list[list[tuple[str, str, str]]] = []
    for block in ICD_BLOCKS:
        pool = []
        for category in icd.get_children(block):
            subs = [c for c in icd.get_children(category) if len(c) == 5][:3]
            pool.extend((sub, category, block) for sub in subs)
        pools.append(pool)
    picked: list[tuple[str, str, str]] = []
    while len(picked) < n_disorders:
        progressed = False
        for pool in pools:
            if pool and len(picked) < n_disorders:
                picked.append(pool.pop(0))
                progressed = True
        if not progressed:
            raise ValueError(f"synth: at most {len(picked)} disorder labels are available, asked for {n_disorders}")
    labels = []
    for code, category, block in picked:
        cat_hash = _stable_hash(category)
        visible = tuple(MODALITIES) if rng.random() < 0.65 else (MODALITIES[int(rng.integers(len(MODALITIES)))],)
        labels.append(
            SynthLabel(
                name=icd.get_description(code),
                code=code,
                category=category,
                block=block,
                shape=ICD_BLOCKS.index(block) % N_SHAPES,
                position=(0.25 + 0.5 * ((cat_hash % 97) / 96), 0.25 + 0.5 * (((cat_hash // 97) % 89) / 88)),
                polarity=1.0 if _stable_hash(code) % 3 else -1.0,
                visible_in=visible,
            )
        )
    return labels


def _shape_mask(shape: int, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, radius: float) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    dist = np.sqrt(dy**2 + dx**2)
    if shape == 0:  # disk
        return (dist <= radius).astype(np.float32)
    if shape == 1:  # square
        return ((np.abs(dy) <= radius) & (np.abs(dx) <= radius)).astype(np.float32)
    if shape == 2:  # ring
        return ((dist <= radius) & (dist >= 0.55 * radius)).astype(np.float32)
    if shape == 3:  # cross
        thin = 0.3 * radius
        return (((np.abs(dy) <= thin) & (np.abs(dx) <= radius)) | ((np.abs(dx) <= thin) & (np.abs(dy) <= radius))).astype(np.float32)
    if shape == 4:  # horizontal bar
        return ((np.abs(dy) <= 0.35 * radius) & (np.abs(dx) <= 1.4 * radius)).astype(np.float32)
    return ((dy <= radius) & (dy >= -radius) & (np.abs(dx) <= (dy + radius) / 2)).astype(np.float32)  # triangle


def _smooth_noise(rng: np.random.Generator, depth: int, size: int) -> np.ndarray:
    coarse = rng.normal(size=(depth, 4, 4)).astype(np.float32)
    reps = int(np.ceil(size / 4))
    up = np.kron(coarse, np.ones((1, reps, reps), dtype=np.float32))[:, :size, :size]
    return up


def render_scan(
    rng: np.random.Generator, labels: list[SynthLabel], modality: str, depth: int, size: int, anatomy_index: int
) -> tuple[np.ndarray, int]:
    """A float32 (D, H, W) scan showing the ``labels`` visible in ``modality``; returns (volume, key_slice)."""
    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    base = 0.35 + 0.1 * anatomy_index / len(ANATOMIES) + 0.15 * np.sin(3 * yy + anatomy_index)
    volume = np.repeat(base[None].astype(np.float32), depth, axis=0)
    volume += 0.08 * _smooth_noise(rng, depth, size) + 0.05 * rng.normal(size=volume.shape).astype(np.float32)
    key_slice = int(rng.integers(depth)) if depth > 1 else 0
    sigma = max(depth / 6.0, 0.5)
    profile = np.exp(-0.5 * ((np.arange(depth) - key_slice) / sigma) ** 2).astype(np.float32)
    for label in labels:
        if modality not in label.visible_in:
            continue
        cy = label.position[0] + rng.normal(scale=0.04)
        cx = label.position[1] + rng.normal(scale=0.04)
        radius = 0.12 + rng.normal(scale=0.015)
        for index in range(depth):  # the lesion grows towards the key slice
            mask = _shape_mask(label.shape, yy, xx, cy, cx, radius * (0.6 + 0.4 * float(profile[index])))
            volume[index] += label.polarity * 0.6 * profile[index] * mask
    return volume, key_slice


def _label_probabilities(n_disorders: int, power: float) -> np.ndarray:
    ranks = np.arange(1, n_disorders + 1, dtype=np.float64)
    return np.minimum(0.9, 0.85 * ranks**-power + 0.012)


def label_vocabulary(cfg: SynthConfig) -> tuple[list[str], dict[str, str | None]]:
    """(disorder names with ``Normal`` first, {name: ICD-10-CM category}) of ``cfg``'s profile."""
    if cfg.profile == "benchmark":
        from raddiag.storage.benchmark import benchmark_labels

        labels: list[Any] = benchmark_labels(cfg.n_labels - 1)
    else:
        labels = synth_labels(cfg.n_labels - 1, cfg.seed)
    return ["Normal"] + [l.name for l in labels], {"Normal": None, **{l.name: l.category for l in labels}}


def iter_cases(cfg: SynthConfig) -> Iterator[dict[str, Any]]:
    """The synthetic cases of ``cfg`` in order, each with its rendered float32 scans. Deterministic.

    Yields {case_id, split, anatomy, disorders, icd10, scans: [{volume (D, H, W), key_slice,
    modality, plane}]}. ``profile: benchmark`` delegates to :func:`raddiag.storage.benchmark.iter_cases`.
    """
    if cfg.profile == "benchmark":
        from raddiag.storage import benchmark

        yield from benchmark.iter_cases(cfg)
        return
    rng = np.random.default_rng(cfg.seed)
    labels = synth_labels(cfg.n_labels - 1, cfg.seed)
    probs = _label_probabilities(len(labels), cfg.power_law)
    case_label_names, plans = [], []
    for _ in range(cfg.n_cases):
        if rng.random() < 0.12:
            positive: list[SynthLabel] = []
        else:
            hits = np.flatnonzero(rng.random(len(labels)) < probs)
            if hits.size == 0:
                hits = np.array([rng.choice(len(labels), p=probs / probs.sum())])
            positive = [labels[i] for i in hits[:4]]
        case_label_names.append([l.name for l in positive] or ["Normal"])
        plans.append(positive)
    splits = stratified_split(case_label_names, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    for index, positive in enumerate(plans):
        anatomy_index = int(rng.integers(len(ANATOMIES)))
        n_scans = int(rng.integers(1, cfg.max_scans + 1))
        scans = []
        for scan_index in range(n_scans):
            modality = MODALITIES[int(rng.integers(len(MODALITIES)))]
            if modality == "X-ray":
                depth, plane = 1, "frontal"
            else:
                depth = int(rng.integers(max(2, cfg.max_depth // 2), 2 * cfg.max_depth + 1))
                plane = PLANES_3D[scan_index % 3]
            volume, key_slice = render_scan(rng, positive, modality, depth, cfg.image_size, anatomy_index)
            scans.append({"volume": volume, "key_slice": key_slice, "modality": modality, "plane": plane})
        yield {
            "case_id": f"synth-{cfg.seed}-{index:05d}",
            "split": splits[index],
            "anatomy": ANATOMIES[anatomy_index],
            "disorders": case_label_names[index],
            "icd10": sorted({l.category for l in positive}),
            "scans": scans,
        }


def generate(
    cfg: SynthConfig, store: Store, progress: Callable[[int, int], None] | None = None
) -> Manifest:
    """Generate ``cfg.n_cases`` cases into ``store`` and publish the manifest. Deterministic by seed.
    The benchmark profile's specification goes into ``dataset.json`` (``benchmark``)."""
    case_rows, scan_rows = [], []
    for index, case in enumerate(iter_cases(cfg)):
        for scan in case["scans"]:
            volume = scan["volume"]
            depth = volume.shape[0]
            scan_id, checksum = store.write_scan(to_uint8(volume))
            scan_rows.append(
                {
                    "scan_id": scan_id, "case_id": case["case_id"], "modality": scan["modality"], "plane": scan["plane"],
                    "aux_modality": "", "depth": depth, "height": cfg.image_size, "width": cfg.image_size,
                    "orig_shape": [depth, cfg.image_size, cfg.image_size], "spacing": [1.0, 1.0, 1.0],
                    "key_slice": scan["key_slice"], "checksum": checksum,
                }
            )
        case_rows.append({k: case[k] for k in ("case_id", "split", "anatomy", "disorders", "icd10")} | {"source": "synth"})
        if progress:
            progress(index + 1, cfg.n_cases)
    cases = pd.DataFrame(case_rows)
    scans = pd.DataFrame(scan_rows).drop_duplicates(["scan_id", "case_id"])
    names, codes = label_vocabulary(cfg)
    table = label_table(cases, names, codes)
    from raddiag.storage.preprocess import Plan

    # synthetic scans are drawn at their stored size; a file given to predict is prepared the same way
    extra: dict = {"plan": Plan(cfg.image_size, cfg.max_depth).to_dict()}
    if cfg.profile == "benchmark":
        from raddiag.storage.benchmark import spec

        extra["benchmark"] = spec(cfg)
    source = f"raddiag synth profile={cfg.profile} seed={cfg.seed} n_cases={cfg.n_cases}"
    return store.publish(cases, scans, table, source=source, extra_info=extra)


def synth_store(cfg: RadDiagConfig, progress: Callable[[int, int], None] | None = None) -> Manifest:
    """Generate the synthetic dataset of ``cfg.synth`` into the store of ``cfg.store`` (``raddiag synth``,
    the demo's first step); ``progress(done, total)`` is called after each case."""
    return generate(cfg.synth, cfg.store.ref().open(), progress)


def write_rp3d_source(cfg: SynthConfig, out_dir: Path, foreign_root: str = "/home/authors/RP3D") -> list[Path]:
    """Write the cases of ``cfg`` in RP3D-DiagDS format under ``out_dir``; returns the json paths.

    ``{train,val,test}.json`` (cases keyed by URL, one Sample per scan), ``data/<n>.npy`` float32
    H×W×D (X-ray as equal-channel RGB H×W×3, like the real dataset), ``key/<n>.npy`` and
    ``disorder_label_dict.json``. Paths in the json point under ``foreign_root`` (like the real
    json points at the authors' machine): ingest with ``--data-root out_dir``.
    """
    out_dir = Path(out_dir)
    (out_dir / "data").mkdir(parents=True, exist_ok=True)
    (out_dir / "key").mkdir(exist_ok=True)
    names, _ = label_vocabulary(cfg)
    by_split: dict[str, dict[str, Any]] = {}
    number = 0
    for case in iter_cases(cfg):
        samples, keys = [], []
        for scan in case["scans"]:
            number += 1
            volume = np.moveaxis(scan["volume"], 0, -1).astype(np.float32) * 1000.0 - 200.0
            if scan["modality"] == "X-ray":
                volume = np.repeat(volume, 3, axis=-1)
            np.save(out_dir / "data" / f"{number}.npy", volume)
            np.save(out_dir / "key" / f"{number}.npy", np.array([scan["key_slice"]], dtype=np.int64))
            samples.append(
                {
                    "image_data_path": [f"{foreign_root}/data/{number}.npy"],
                    "image_key_path": [f"{foreign_root}/key/{number}.npy"],
                    "image_modality": [scan["modality"]],
                    "plane_projection": [scan["plane"].capitalize()],
                    "aux_modality": [None],
                    "articles": [] if case["disorders"] == ["Normal"] else case["disorders"],
                    "icd10s": case["icd10"],
                    "anatomy": case["anatomy"],
                }
            )
            keys.append({"image_0": scan["key_slice"]})
        if case["disorders"] == ["Normal"]:
            for sample in samples:
                sample["articles"] = ["Normal"]
        by_split.setdefault(case["split"], {})[f"https://synth.raddiag/cases/{case['case_id']}"] = {
            "Modalities": [s["image_modality"][0] for s in samples],
            "Anatomy": case["anatomy"],
            "key_slice": keys,
            "Samples": samples,
        }
    vocabulary = {name: index for index, name in enumerate(names)}
    (out_dir / "disorder_label_dict.json").write_text(json.dumps(vocabulary, indent=1))
    paths = []
    for split in ("train", "val", "test"):
        if split in by_split:
            path = out_dir / f"{split}.json"
            path.write_text(json.dumps(by_split[split], indent=1))
            paths.append(path)
    return paths
