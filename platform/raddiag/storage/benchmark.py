"""RP3D-LT, a controlled long-tail benchmark: real ICD-10-CM labels whose *visual* structure is the
structure of their *text*, with evidence split across scans. Deterministic by seed.

Specification (version :data:`BENCHMARK_VERSION`; written into the store's ``dataset.json``):

- **Labels.** Real ICD-10-CM codes that come in right/left pairs with otherwise identical names
  ("Malignant neoplasm of upper lobe, right bronchus or lung" / "..., left ..."), a few *bases* (the
  name with the side removed) from each of :data:`BLOCKS` (one ICD block per body system), taken
  round-robin over the block's 3-character categories; plus ``Normal`` (no finding).
- **Text → appearance.** block → lesion *shape* (one shape per block); base → vertical *slot*
  (the base's index within its block, so slots are shared across blocks); side word → horizontal
  *side* (radiological convention: the patient's right on the image's left). A text encoder that
  carries the side word and the base's words therefore carries everything that transfers from a
  frequent label to its rare sibling.
- **Evidence split across scans.** A *side view* (frontal X-ray 2D, or a coronal CT/MRI volume)
  shows a plain blob at (slot, side): it cannot tell the blocks apart. A *morphology view* (sagittal
  CT/MRI volume) shows the block's shape at a random height on the midline: it tells the block, not
  the slot nor the side. Every case with two or more scans has one of each (in random order); only
  fusion sees a label whole.
- **Incidental findings.** A case also holds 0-2 unlabelled benign nodules (Poisson, mean
  :data:`INCIDENTAL_RATE`) at random (slot, side) positions: a plain blob in the side view — the same
  as a lesion there — and a plain disk in the morphology view, where no label uses a disk. A side
  view alone cannot rule them out; the morphology view of the same case can.
- **Long tail.** Within every base one side is the *lead* label (sides alternate between bases):
  lead labels get training shares log-spaced from :data:`LEAD_SHARE` down, their siblings
  :data:`TAIL_SHARE` down, so head (≥ 100 training cases), medium and tail (< 30) are all populated
  at the benchmark size and every tail label has a frequent sibling.
- **Splits.** Training cases follow the long-tailed prior; validation and test cases follow a flatter
  prior (shares raised to ``synth.eval_prior_power``, rescaled to the same labels per case), as in
  ImageNet-LT-style benchmarks, so that per-class AUC on rare classes rests on enough positives;
  every label has at least :data:`MIN_EVAL_POSITIVES` positives per split (topped up at random).
- **3D.** A volume's lesions peak at one slice (the key slice) and fade over σ = depth / 6 slices.

The model-free checks that justify this design (pixel probes with all scans vs one scan, and the
text→appearance check) are in ``bench/benchmark_ceiling.py``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from raddiag.config import SynthConfig

BENCHMARK_VERSION = "rp3d-lt/3"
#: ICD-10-CM blocks the labels come from, with the anatomy of their cases; block i has shape i.
BLOCKS: tuple[tuple[str, str], ...] = (
    ("C30-C39", "Chest"),
    ("M15-M19", "Lower Limb"),
    ("I80-I89", "Lower Limb"),
    ("H65-H75", "Head and Neck"),
    ("N60-N65", "Chest"),
)
SHAPES = ("ring", "cross", "square", "bar", "triangle")
BASES_PER_BLOCK = 4
SIDES = ("right", "left")
#: x centre of a lesion on the image by side (patient's right on the image's left).
SIDE_X = {"right": 0.27, "left": 0.73}
LEAD_SHARE = (0.15, 0.022)
TAIL_SHARE = (0.018, 0.003)
MAX_LABELS_PER_CASE = 3
INCIDENTAL_RATE = 0.4
#: positives per label guaranteed in each evaluation split (at most a quarter of the split's cases):
#: labels short of it are added to random cases of the split that have room
MIN_EVAL_POSITIVES = {"val": 10, "test": 20}
#: vertical range of a lesion in the morphology view (uniform: that view carries no slot)
MORPH_Y = (0.15, 0.85)
LESION_RADIUS = 0.1
AMPLITUDE = 0.55

_SIDE_WORD = re.compile(r"\b(right|left)\b", re.IGNORECASE)
_EXCLUDE = re.compile(r"unspecified|other|bilateral", re.IGNORECASE)


@dataclass(frozen=True)
class BenchmarkLabel:
    """One disorder label and the visual attributes its text determines."""

    name: str
    code: str  # the full ICD-10-CM code, e.g. "C34.12"
    category: str  # 3-character code (the ICD-level label)
    block: str
    base: str  # the name with the side word replaced by "*"
    side: str  # "right" | "left"
    shape: int  # index into SHAPES (= the block's index)
    slot: int  # vertical slot (the base's index within its block)
    lead: bool  # the frequent label of its base
    share: float  # expected fraction of training cases that carry it

    @property
    def attributes(self) -> dict[str, int]:
        return {"shape": self.shape, "slot": self.slot, "side": SIDES.index(self.side)}


def _bases(block: str) -> list[tuple[str, str, dict[str, tuple[str, str]]]]:
    """(category, base, {side: (code, name)}) of ``block``'s right/left pairs, round-robin over its
    categories (ICD order inside each), so the first bases come from different categories."""
    import simple_icd_10_cm as icd

    per_category: list[list[tuple[str, str, dict[str, tuple[str, str]]]]] = []
    for category in icd.get_children(block):
        found: dict[str, dict[str, tuple[str, str]]] = {}
        for code in icd.get_descendants(category):
            if len(code) > 7 or not icd.is_leaf(code):
                continue
            name = icd.get_description(code)
            sides = _SIDE_WORD.findall(name)
            if len(sides) != 1 or _EXCLUDE.search(name):
                continue
            found.setdefault(_SIDE_WORD.sub("*", name), {}).setdefault(sides[0].lower(), (code, name))
        pairs = [(category, base, v) for base, v in found.items() if len(v) == 2]
        if pairs:
            per_category.append(pairs)
    out = []
    for depth in range(max((len(p) for p in per_category), default=0)):
        out.extend(p[depth] for p in per_category if depth < len(p))
    return out


def _log_spaced(bounds: tuple[float, float], n: int) -> np.ndarray:
    if n <= 1:
        return np.array([bounds[0]] * n)
    return np.exp(np.linspace(math.log(bounds[0]), math.log(bounds[1]), n))


def benchmark_labels(n_disorders: int | None = None) -> list[BenchmarkLabel]:
    """The benchmark's disorder labels, most frequent first (all lead labels, then their siblings);
    ``n_disorders`` keeps the first n (the share profile is computed for the full set)."""
    chosen = []
    for shape, (block, _anatomy) in enumerate(BLOCKS):
        for slot, (category, base, pair) in enumerate(_bases(block)[:BASES_PER_BLOCK]):
            chosen.append((shape, slot, block, category, base, pair))
    # interleave blocks so that the most frequent leads cover every block and slot
    chosen.sort(key=lambda item: (item[1], item[0]))
    lead_shares = _log_spaced(LEAD_SHARE, len(chosen))
    tail_shares = _log_spaced(TAIL_SHARE, len(chosen))
    leads, tails = [], []
    for rank, (shape, slot, block, category, base, pair) in enumerate(chosen):
        lead_side = SIDES[(shape + slot) % 2]  # sides alternate, so both sides are frequent somewhere
        for side in SIDES:
            code, name = pair[side]
            is_lead = side == lead_side
            label = BenchmarkLabel(
                name=name, code=code, category=category, block=block, base=base, side=side, shape=shape,
                slot=slot, lead=is_lead, share=float(lead_shares[rank] if is_lead else tail_shares[rank]),
            )
            (leads if is_lead else tails).append(label)
    # tails are ordered so that the rarest siblings belong to the most frequent leads' bases last
    labels = leads + tails
    if n_disorders is not None:
        if n_disorders > len(labels):
            raise ValueError(f"synth profile 'benchmark' has {len(labels)} disorder labels, asked for {n_disorders}")
        labels = labels[:n_disorders]
    return labels


def eval_shares(labels: list[BenchmarkLabel], power: float) -> np.ndarray:
    """Per-label probability in validation/test cases: training shares ** power, rescaled to the
    same expected labels per case (power 1: the training prior; 0: uniform)."""
    train = np.array([label.share for label in labels])
    flat = train**power
    return np.minimum(0.9, flat * train.sum() / flat.sum())


def _slot_y(slot: int) -> float:
    return (slot + 1) / (BASES_PER_BLOCK + 1)


def _shape_mask(shape: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, radius: float) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    dist = np.sqrt(dy**2 + dx**2)
    if shape == "disk":
        mask = dist <= radius
    elif shape == "ring":
        mask = (dist <= radius) & (dist >= 0.5 * radius)
    elif shape == "cross":
        thin = 0.3 * radius
        mask = ((np.abs(dy) <= thin) & (np.abs(dx) <= radius)) | ((np.abs(dx) <= thin) & (np.abs(dy) <= radius))
    elif shape == "square":
        mask = (np.abs(dy) <= 0.8 * radius) & (np.abs(dx) <= 0.8 * radius)
    elif shape == "bar":
        mask = (np.abs(dy) <= 0.35 * radius) & (np.abs(dx) <= 1.3 * radius)
    else:  # triangle, apex up
        mask = (dy <= radius) & (dy >= -radius) & (np.abs(dx) <= (dy + radius) / 2)
    return mask.astype(np.float32)


@dataclass(frozen=True)
class Finding:
    """Something visible in a case: a labelled lesion (``label``) or an incidental nodule (None)."""

    slot: int
    side: str
    label: BenchmarkLabel | None = None


def render(
    rng: np.random.Generator, findings: list[Finding], view: str, depth: int, size: int, anatomy_index: int
) -> tuple[np.ndarray, int]:
    """A float32 (D, H, W) scan of ``findings`` in ``view`` ("side" | "morph"); returns (volume, key slice)."""
    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    base = 0.3 + 0.05 * anatomy_index + 0.1 * np.sin(3 * yy + anatomy_index)
    volume = np.repeat(base[None].astype(np.float32), depth, axis=0)
    coarse = rng.normal(size=(depth, 4, 4)).astype(np.float32)
    reps = int(np.ceil(size / 4))
    volume += 0.08 * np.kron(coarse, np.ones((1, reps, reps), dtype=np.float32))[:, :size, :size]
    volume += 0.06 * rng.normal(size=volume.shape).astype(np.float32)
    key_slice = int(rng.integers(depth)) if depth > 1 else 0
    sigma = max(depth / 6.0, 0.5)
    profile = np.exp(-0.5 * ((np.arange(depth) - key_slice) / sigma) ** 2).astype(np.float32)
    for finding in findings:
        if view == "side":
            shape, cx, cy = "disk", SIDE_X[finding.side], _slot_y(finding.slot)
        else:  # the morphology view shows the shape, not where it is
            shape, cx, cy = ("disk" if finding.label is None else SHAPES[finding.label.shape]), 0.5, float(rng.uniform(*MORPH_Y))
        cy += rng.normal(scale=0.015)
        cx += rng.normal(scale=0.015)
        radius = LESION_RADIUS * (1 + rng.normal(scale=0.08))
        amplitude = AMPLITUDE * (1 + rng.normal(scale=0.1))
        for index in range(depth):
            if profile[index] < 0.05:
                continue
            mask = _shape_mask(shape, yy, xx, cy, cx, radius * (0.6 + 0.4 * float(profile[index])))
            volume[index] += amplitude * profile[index] * mask
    return volume, key_slice


def _draw_labels(rng: np.random.Generator, probs: np.ndarray) -> list[int]:
    hits = np.flatnonzero(rng.random(len(probs)) < probs)
    if hits.size > MAX_LABELS_PER_CASE:
        hits = np.sort(rng.choice(hits, MAX_LABELS_PER_CASE, replace=False))
    return [int(i) for i in hits]


def split_sizes(cfg: SynthConfig) -> dict[str, int]:
    n_val = int(round(cfg.n_cases * cfg.val_fraction))
    n_test = int(round(cfg.n_cases * cfg.test_fraction))
    return {"train": cfg.n_cases - n_val - n_test, "val": n_val, "test": n_test}


def plan_cases(cfg: SynthConfig) -> list[tuple[str, list[int]]]:
    """(split, label indices) of every case, train cases first. Every label gets >= 1 training case."""
    rng = np.random.default_rng([cfg.seed, 1])
    labels = benchmark_labels(cfg.n_labels - 1)
    sizes = split_sizes(cfg)
    train_p = np.minimum(0.9, np.array([label.share for label in labels]))
    test_p = eval_shares(labels, cfg.eval_prior_power)
    plans: list[tuple[str, list[int]]] = []
    for split in ("train", "val", "test"):
        probs = train_p if split == "train" else test_p
        plans.extend((split, _draw_labels(rng, probs)) for _ in range(sizes[split]))
    train = [p for p in plans if p[0] == "train"]
    seen = {i for _, hits in train for i in hits}
    for index in range(len(labels)):  # a label no training case drew: give it one (a rare fix at tiny sizes)
        if index not in seen and train:
            room = [p for p in train if len(p[1]) < MAX_LABELS_PER_CASE]
            if not room:
                from raddiag.config import ConfigError

                raise ConfigError(
                    f"synth.n_cases={cfg.n_cases} is too small for the benchmark profile's {cfg.n_labels} labels (every label "
                    f"needs a training case, at most {MAX_LABELS_PER_CASE} labels per case): raise synth.n_cases "
                    f"(>= {4 * cfg.n_labels}) or use synth.profile=basic"
                )
            room[int(rng.integers(len(room)))][1].append(index)
    for split, floor in MIN_EVAL_POSITIVES.items():  # every label evaluable on enough positives
        cases = [hits for s, hits in plans if s == split]
        floor = min(floor, len(cases) // 4)
        for index in range(len(labels)):
            short = floor - sum(index in hits for hits in cases)
            room = [hits for hits in cases if index not in hits and len(hits) < MAX_LABELS_PER_CASE]
            for pick in rng.permutation(len(room))[: max(0, short)]:
                room[int(pick)].append(index)
    return plans


def iter_cases(cfg: SynthConfig) -> Iterator[dict[str, Any]]:
    """The benchmark's cases in order, each with its rendered float32 scans (same keys as
    :func:`raddiag.storage.synth.iter_cases`, plus ``view`` per scan)."""
    labels = benchmark_labels(cfg.n_labels - 1)
    rng = np.random.default_rng([cfg.seed, 2])
    plans = plan_cases(cfg)
    recorded = [hits for _, hits in plans]
    if cfg.shuffle_train_labels:  # the control: training label sets permuted across training cases
        train = [i for i, (split, _) in enumerate(plans) if split == "train"]
        for source, target in zip(np.random.default_rng([cfg.seed, 3]).permutation(train), train):
            recorded[target] = plans[source][1]
    for index, (split, hits) in enumerate(plans):
        positive = [labels[i] for i in sorted(hits)]
        named = [labels[i] for i in sorted(recorded[index])]
        anatomies = [anatomy for _, anatomy in BLOCKS]
        anatomy = anatomies[positive[0].shape] if positive else anatomies[int(rng.integers(len(anatomies)))]
        anatomy_index = sorted(set(anatomies)).index(anatomy)
        n_scans = int(rng.integers(min(2, cfg.max_scans), min(3, cfg.max_scans) + 1))
        if n_scans >= 2:  # one view of each kind, then random ones, in random order
            views = ["side", "morph"] + [str(rng.choice(["side", "morph"])) for _ in range(n_scans - 2)]
            views = [views[i] for i in rng.permutation(n_scans)]
        else:
            views = [str(rng.choice(["side", "morph"]))]
        findings = [Finding(label.slot, label.side, label) for label in positive]
        findings += [
            Finding(int(rng.integers(BASES_PER_BLOCK)), SIDES[int(rng.integers(2))])
            for _ in range(min(2, int(rng.poisson(INCIDENTAL_RATE))))
        ]
        scans = []
        for view in views:
            if view == "side" and rng.random() < 0.5:
                modality, plane, depth = "X-ray", "frontal", 1
            else:
                modality = "CT" if rng.random() < 0.5 else "MRI"
                plane = "coronal" if view == "side" else "sagittal"
                depth = int(rng.integers(max(2, cfg.max_depth // 2), cfg.max_depth + 1))
            volume, key_slice = render(rng, findings, view, depth, cfg.image_size, anatomy_index)
            scans.append({"volume": volume, "key_slice": key_slice, "modality": modality, "plane": plane, "view": view})
        yield {
            "case_id": f"rp3dlt-{cfg.seed}-{index:05d}",
            "split": split,
            "anatomy": anatomy,
            "disorders": [label.name for label in named] or ["Normal"],
            "icd10": sorted({label.category for label in named}),
            "scans": scans,
        }


def spec(cfg: SynthConfig) -> dict[str, Any]:
    """The benchmark's written specification, stored in ``dataset.json`` under ``benchmark``."""
    labels = benchmark_labels(cfg.n_labels - 1)
    test_p = eval_shares(labels, cfg.eval_prior_power)
    return {
        "version": BENCHMARK_VERSION,
        "seed": cfg.seed,
        "splits": split_sizes(cfg),
        "eval_prior_power": cfg.eval_prior_power,
        "shuffle_train_labels": cfg.shuffle_train_labels,
        "image_size": cfg.image_size,
        "max_depth": cfg.max_depth,
        "views": {
            "side": "frontal X-ray (2D) or coronal CT/MRI: a plain blob at (slot, side)",
            "morph": "sagittal CT/MRI: the block's shape on the midline at a random height (no slot, no side)",
        },
        "incidental_rate": INCIDENTAL_RATE,
        "min_eval_positives": MIN_EVAL_POSITIVES,
        "labels": [
            {
                "name": label.name, "code": label.code, "block": label.block, "shape": SHAPES[label.shape],
                "slot": label.slot, "side": label.side, "lead": label.lead, "train_share": round(label.share, 5),
                "eval_share": round(float(p), 5),
            }
            for label, p in zip(labels, test_p)
        ],
    }
