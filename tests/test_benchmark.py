"""RP3D-LT benchmark generator, prior-initialised output biases, the permuted-table control and the
small ResNet stem. Every expected value is recomputed here with numpy, independently of the code."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from raddiag.config import KEConfig, ModelConfig, SynthConfig, load_config
from raddiag.model import build_model
from raddiag.model.blocks.encoders import ResNetBackbone
from raddiag.model.blocks.heads import KEHead, MLPHead, prior_logit
from raddiag.storage import benchmark as bm
from raddiag.storage.benchmark import BENCHMARK_VERSION, BenchmarkLabel, Finding, benchmark_labels, render
from raddiag.train.trainer import derangement, label_embeddings

BENCH_CFG = SynthConfig(n_cases=3000, n_labels=41, val_fraction=0.2, test_fraction=0.3, image_size=32, max_depth=6)
SMALL_CFG = SynthConfig(n_cases=40, n_labels=11, image_size=16, max_depth=4)
SIDE_WORD = re.compile(r"\b(right|left)\b", re.IGNORECASE)


def logit(p: np.ndarray) -> np.ndarray:
    """numpy log(p / (1 - p)) with the heads' clamping at 1e-4."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


@pytest.fixture(scope="module")
def labels() -> list[BenchmarkLabel]:
    return benchmark_labels()


@pytest.fixture(scope="module")
def bench_counts() -> dict[str, Any]:
    """Plan of the benchmark-size config: per-split case counts and per-label positive counts."""
    plans = bm.plan_cases(BENCH_CFG)
    n = BENCH_CFG.n_labels - 1
    counts = {split: np.zeros(n, dtype=np.int64) for split in ("train", "val", "test")}
    for split, hits in plans:
        for index in hits:
            counts[split][index] += 1
    return {"plans": plans, "sizes": Counter(split for split, _ in plans), **counts}


@pytest.fixture(scope="module")
def small_cases() -> list[dict[str, Any]]:
    return list(bm.iter_cases(SMALL_CFG))


# ---------------------------------------------------------------- labels


def test_labels_count_and_side_words(labels: list[BenchmarkLabel]) -> None:
    """40 labels with distinct names and codes; each name holds exactly one side word, its ``side``."""
    assert len(labels) == 40
    assert len({label.name for label in labels}) == 40
    assert len({label.code for label in labels}) == 40
    for label in labels:
        words = [w.lower() for w in SIDE_WORD.findall(label.name)]
        assert words == [label.side], label.name
        assert SIDE_WORD.sub("*", label.name) == label.base
        assert label.code.startswith(label.category)


def test_siblings_are_right_left_pairs(labels: list[BenchmarkLabel]) -> None:
    """Each base has one right and one left label, with the same block, shape, slot; one is the lead."""
    by_base: dict[str, list[BenchmarkLabel]] = {}
    for label in labels:
        by_base.setdefault(label.base, []).append(label)
    assert len(by_base) == 20
    for base, pair in by_base.items():
        assert sorted(label.side for label in pair) == ["left", "right"], base
        assert len({(label.block, label.shape, label.slot, label.category) for label in pair}) == 1, base
        assert sum(label.lead for label in pair) == 1, base
        lead = next(label for label in pair if label.lead)
        tail = next(label for label in pair if not label.lead)
        assert lead.share > tail.share


def test_shape_by_block_and_slot_by_base(labels: list[BenchmarkLabel]) -> None:
    """Block -> shape is one-to-one; base -> slot is a function; every (shape, slot, side) is used once."""
    block_shape = {(label.block, label.shape) for label in labels}
    assert len({block for block, _ in block_shape}) == len(block_shape) == len(bm.BLOCKS)
    assert len({shape for _, shape in block_shape}) == len(bm.BLOCKS)
    assert {block: shape for block, shape in block_shape} == {b: i for i, (b, _) in enumerate(bm.BLOCKS)}
    base_slot = {(label.base, label.slot) for label in labels}
    assert len({base for base, _ in base_slot}) == len(base_slot)
    triples = [(label.shape, label.slot, label.side) for label in labels]
    assert len(set(triples)) == len(triples) == len(bm.BLOCKS) * bm.BASES_PER_BLOCK * 2
    for label in labels:
        assert label.attributes == {"shape": label.shape, "slot": label.slot, "side": bm.SIDES.index(label.side)}


def test_leads_first_with_decreasing_shares(labels: list[BenchmarkLabel]) -> None:
    """All 20 leads precede all siblings; lead shares strictly decrease from LEAD_SHARE[0]."""
    leads = [label.lead for label in labels]
    assert leads == [True] * 20 + [False] * 20
    lead_shares = np.array([label.share for label in labels[:20]])
    assert np.all(np.diff(lead_shares) < 0)
    assert lead_shares[0] == pytest.approx(bm.LEAD_SHARE[0])
    assert lead_shares[-1] == pytest.approx(bm.LEAD_SHARE[1])
    # log-spaced: constant ratio between consecutive shares
    ratios = lead_shares[1:] / lead_shares[:-1]
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-9)
    assert benchmark_labels(7) == labels[:7]


# ---------------------------------------------------------------- plan_cases


def test_plan_split_sizes_and_label_limits(bench_counts: dict[str, Any]) -> None:
    """1500/600/900 cases, train first; at most 3 distinct labels per case; every label is trained."""
    assert dict(bench_counts["sizes"]) == {"train": 1500, "val": 600, "test": 900}
    splits = [split for split, _ in bench_counts["plans"]]
    assert splits == ["train"] * 1500 + ["val"] * 600 + ["test"] * 900
    for _, hits in bench_counts["plans"]:
        assert len(hits) <= bm.MAX_LABELS_PER_CASE
        assert len(set(hits)) == len(hits)
        assert all(0 <= i < 40 for i in hits)
    assert bench_counts["train"].min() >= 1


def test_plan_long_tail_groups(bench_counts: dict[str, Any]) -> None:
    """Head (>= 100), medium (30-99) and tail (< 30) training counts are all populated."""
    train = bench_counts["train"]
    assert (train >= 100).sum() > 0
    assert ((train >= 30) & (train < 100)).sum() > 0
    assert (train < 30).sum() > 0
    # train counts follow the long-tailed shares (Poisson-ish tolerance on the expected count)
    shares = np.array([label.share for label in benchmark_labels()])
    expected = 1500 * shares
    assert np.all(np.abs(train - expected) < 5 * np.sqrt(expected) + 3)


def test_plan_tail_expected_test_positives(bench_counts: dict[str, Any]) -> None:
    """The flatter eval prior (shares ** 0.1, rescaled) expects >= 25 test positives per tail label,
    and the observed test counts stay within binomial noise of that."""
    shares = np.array([label.share for label in benchmark_labels()])
    flat = shares**BENCH_CFG.eval_prior_power
    eval_p = np.minimum(0.9, flat * shares.sum() / flat.sum())
    np.testing.assert_allclose(bm.eval_shares(benchmark_labels(), BENCH_CFG.eval_prior_power), eval_p, rtol=1e-12)
    tail = bench_counts["train"] < 30
    expected = 900 * eval_p
    assert expected[tail].min() >= 25
    observed = bench_counts["test"][tail]
    sd = np.sqrt(expected[tail] * (1 - eval_p[tail]))
    assert np.all(np.abs(observed - expected[tail]) < 4 * sd)


def test_plan_every_tail_label_has_20_test_positives(bench_counts: dict[str, Any]) -> None:
    """Every tail label (< 30 training cases) has >= 20 positive test cases."""
    tail = bench_counts["train"] < 30
    assert bench_counts["test"][tail].min() >= 20


def test_plan_tiny_config_every_label_trained() -> None:
    """Even at 60 cases / 7 disorders every label gets a training case (the fix-up), <= 3 per case."""
    cfg = SynthConfig(n_cases=60, n_labels=8)
    plans = bm.plan_cases(cfg)
    assert len(plans) == 60
    trained = Counter(i for split, hits in plans if split == "train" for i in hits)
    assert set(trained) == set(range(7))
    assert all(len(hits) <= bm.MAX_LABELS_PER_CASE for _, hits in plans)


# ---------------------------------------------------------------- iter_cases


def test_iter_cases_deterministic(small_cases: list[dict[str, Any]]) -> None:
    """Two runs give the same cases and bit-identical volumes."""
    again = list(bm.iter_cases(SMALL_CFG))
    assert len(again) == len(small_cases) == SMALL_CFG.n_cases
    for a, b in zip(small_cases, again):
        assert {k: v for k, v in a.items() if k != "scans"} == {k: v for k, v in b.items() if k != "scans"}
        assert len(a["scans"]) == len(b["scans"])
        for sa, sb in zip(a["scans"], b["scans"]):
            assert {k: v for k, v in sa.items() if k != "volume"} == {k: v for k, v in sb.items() if k != "volume"}
            np.testing.assert_array_equal(sa["volume"], sb["volume"])


def test_iter_cases_views_modalities_and_volumes(small_cases: list[dict[str, Any]]) -> None:
    """Multi-scan cases hold both views; X-ray = 2D side view, sagittal = morph; float32 (D, H, W)."""
    names = {label.name: label for label in benchmark_labels(SMALL_CFG.n_labels - 1)}
    multi = 0
    for case in small_cases:
        scans = case["scans"]
        assert 1 <= len(scans) <= SMALL_CFG.max_scans
        views = [scan["view"] for scan in scans]
        if len(scans) >= 2:
            multi += 1
            assert "side" in views and "morph" in views, case["case_id"]
        for scan in scans:
            volume = scan["volume"]
            assert volume.dtype == np.float32 and volume.ndim == 3
            assert volume.shape[1:] == (SMALL_CFG.image_size, SMALL_CFG.image_size)
            assert 1 <= volume.shape[0] <= SMALL_CFG.max_depth
            assert 0 <= scan["key_slice"] < volume.shape[0]
            assert np.isfinite(volume).all()
            if scan["modality"] == "X-ray":
                assert volume.shape[0] == 1 and scan["view"] == "side" and scan["plane"] == "frontal"
            else:
                assert scan["modality"] in ("CT", "MRI") and volume.shape[0] >= 2
            if scan["plane"] == "sagittal":
                assert scan["view"] == "morph"
            if scan["plane"] == "coronal":
                assert scan["view"] == "side"
        positives = [names[n] for n in case["disorders"] if n != "Normal"]
        assert case["disorders"] == ["Normal"] or len(positives) == len(case["disorders"])
        assert case["icd10"] == sorted({label.category for label in positives})
    assert multi > 0


# ---------------------------------------------------------------- renderer: evidence split


def _render(label: BenchmarkLabel | None, view: str, seed: int, depth: int = 1, size: int = 32) -> np.ndarray:
    findings = [] if label is None else [Finding(label.slot, label.side, label)]
    volume, _ = render(np.random.default_rng(seed), findings, view, depth, size, anatomy_index=1)
    return volume


def _lesion(label: BenchmarkLabel, view: str, seed: int, depth: int = 1) -> np.ndarray:
    """The lesion alone: a render minus the same seed's empty render. Background and key slice are
    drawn before any finding, so they cancel exactly."""
    return _render(label, view, seed, depth) - _render(None, view, seed, depth)


def test_render_draw_count_independent_of_label(labels: list[BenchmarkLabel]) -> None:
    """Within a view, a finding consumes the same rng draws whatever its label (renders are comparable)."""
    for view in ("side", "morph"):
        states = set()
        for label in (labels[0], labels[1], labels[25], labels[39]):
            rng = np.random.default_rng(5)
            render(rng, [Finding(label.slot, label.side, label)], view, 3, 16, 0)
            states.add(float(rng.random()))
        assert len(states) == 1, view


@pytest.mark.parametrize("depth", [1, 4])
def test_render_siblings_differ_only_in_side_view(labels: list[BenchmarkLabel], depth: int) -> None:
    """Same base, other side: identical morphology view, different side view."""
    for lead in labels[:20]:
        sibling = next(label for label in labels if label.base == lead.base and label is not lead)
        seed = 11 + lead.slot
        np.testing.assert_array_equal(_render(lead, "morph", seed, depth), _render(sibling, "morph", seed, depth))
        side_gap = np.abs(_render(lead, "side", seed, depth) - _render(sibling, "side", seed, depth)).max()
        assert side_gap > 0.2, lead.name


@pytest.mark.parametrize("depth", [1, 4])
def test_render_blocks_differ_only_in_morph_view(labels: list[BenchmarkLabel], depth: int) -> None:
    """Same slot and side, other block: identical side view, different morphology view."""
    pairs = [
        (a, b) for a in labels for b in labels if a.slot == b.slot and a.side == b.side and a.shape < b.shape
    ]
    assert len(pairs) == bm.BASES_PER_BLOCK * 2 * 10  # C(5, 2) block pairs per (slot, side)
    for a, b in pairs:
        seed = 3 + a.shape
        np.testing.assert_array_equal(_render(a, "side", seed, depth), _render(b, "side", seed, depth))
        morph_gap = np.abs(_render(a, "morph", seed, depth) - _render(b, "morph", seed, depth)).max()
        assert morph_gap > 0.2, (a.name, b.name)


def test_render_morph_view_carries_no_slot(labels: list[BenchmarkLabel]) -> None:
    """Same block (shape), other base (either side): identical morphology view, different side view."""
    for a in labels:
        for b in labels:
            if a.shape == b.shape and a.slot < b.slot:
                np.testing.assert_array_equal(_render(a, "morph", 4, 3), _render(b, "morph", 4, 3))
                assert np.abs(_render(a, "side", 4, 3) - _render(b, "side", 4, 3)).max() > 0.2


def _centroid(lesion: np.ndarray) -> tuple[float, float]:
    """(y, x) intensity-weighted centroid of a 2D lesion image, in [0, 1] coordinates."""
    grid = np.linspace(0, 1, lesion.shape[-1])
    weight = np.clip(lesion, 0, None)
    return float((weight.sum(1) * grid).sum() / weight.sum()), float((weight.sum(0) * grid).sum() / weight.sum())


def test_render_lesion_position(labels: list[BenchmarkLabel]) -> None:
    """Side view: lesion at (slot, side), the patient's right on the image's left; morphology view:
    on the midline at a height within MORPH_Y. Positions from the lesion's centroid."""
    morph_heights = []
    for label in labels:
        for view in ("side", "morph"):
            lesion = _lesion(label, view, seed=label.slot + 7 * label.shape)[0]
            assert lesion.min() >= -1e-6 and lesion.max() > 0.3, (label.name, view)
            cy, cx = _centroid(lesion)
            if view == "side":
                assert cy == pytest.approx((label.slot + 1) / (bm.BASES_PER_BLOCK + 1), abs=0.06), label.name
                assert (cx < 0.5) == (label.side == "right"), (label.name, cx)
                assert cx == pytest.approx(bm.SIDE_X[label.side], abs=0.06)
            else:
                assert cx == pytest.approx(0.5, abs=0.06), (label.name, cx)
                assert bm.MORPH_Y[0] - 0.08 <= cy <= bm.MORPH_Y[1] + 0.08
                morph_heights.append(cy)
    assert np.ptp(morph_heights) > 0.2  # the height is random, not fixed


# ---------------------------------------------------------------- spec and generate


def test_spec_json_and_labels() -> None:
    """spec() round-trips through JSON and lists benchmark_labels(n_labels - 1) in order."""
    spec = bm.spec(BENCH_CFG)
    assert json.loads(json.dumps(spec)) == spec
    assert spec["version"] == BENCHMARK_VERSION
    assert spec["splits"] == {"train": 1500, "val": 600, "test": 900}
    expected = benchmark_labels(BENCH_CFG.n_labels - 1)
    assert [entry["name"] for entry in spec["labels"]] == [label.name for label in expected]
    assert [entry["code"] for entry in spec["labels"]] == [label.code for label in expected]
    assert [entry["shape"] for entry in spec["labels"]] == [bm.SHAPES[label.shape] for label in expected]
    assert [entry["lead"] for entry in spec["labels"]] == [label.lead for label in expected]


def test_generate_writes_benchmark_spec(tmp_path: Path) -> None:
    """The benchmark profile's store has the spec in dataset.json and 'Normal' first in its labels."""
    from raddiag.storage.store import Store
    from raddiag.storage.synth import generate

    cfg = SynthConfig(n_cases=16, n_labels=6, image_size=16, max_depth=4)
    assert cfg.profile == "benchmark"
    url = str(tmp_path / "store")
    generate(cfg, Store(url))
    manifest = Store(url).manifest()
    info = json.loads((tmp_path / "store" / "dataset.json").read_text())
    assert info["benchmark"]["version"] == manifest.info["benchmark"]["version"] == BENCHMARK_VERSION
    assert info["benchmark"] == json.loads(json.dumps(bm.spec(cfg)))
    names = manifest.label_names("disorder")
    assert names == ["Normal"] + [label.name for label in benchmark_labels(5)]
    assert manifest.label_codes("disorder") == [None] + [label.category for label in benchmark_labels(5)]
    assert len(manifest.cases) == 16


# ---------------------------------------------------------------- prior-initialised biases

PRIOR = np.array([0.01, 0.05, 0.1, 0.2, 0.35, 0.6], dtype=np.float32)


def test_prior_logit_matches_numpy() -> None:
    """prior_logit = log(p / (1 - p)) clamped at 1e-4; zeros without a prior; length is checked."""
    p = np.array([0.0, 1e-6, 1e-4, 0.01, 0.5, 0.9, 1 - 1e-6, 1.0], dtype=np.float32)
    got = prior_logit(torch.tensor(p), len(p)).numpy()
    np.testing.assert_allclose(got, logit(p), rtol=1e-4, atol=1e-3)
    assert np.isfinite(got).all()
    assert got[0] == got[1] == pytest.approx(np.log(1e-4 / (1 - 1e-4)), rel=1e-4)
    assert got[4] == 0
    assert torch.equal(prior_logit(None, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="3 entries"):
        prior_logit(torch.tensor([0.1, 0.2, 0.3]), 4)


def test_mlp_head_bias_prior() -> None:
    """MLPHead(bias_prior=p): sigmoid of the last layer's bias is p; without: a random bias."""
    head = MLPHead(16, len(PRIOR), bias_prior=torch.tensor(PRIOR))
    np.testing.assert_allclose(sigmoid(head.net[-1].bias.detach().numpy()), PRIOR, rtol=1e-5)
    plain = MLPHead(16, len(PRIOR))
    assert not np.allclose(sigmoid(plain.net[-1].bias.detach().numpy()), PRIOR, atol=1e-3)


def test_ke_head_bias_prior() -> None:
    """KEHead(bias_prior=p): sigmoid(bias) = p, and a zero embedding scores exactly the prior."""
    torch.manual_seed(0)
    table = torch.randn(len(PRIOR), 8)
    head = KEHead(16, table, bias_prior=torch.tensor(PRIOR))
    np.testing.assert_allclose(sigmoid(head.bias.detach().numpy()), PRIOR, rtol=1e-5)
    with torch.no_grad():
        zero = torch.sigmoid(head(torch.zeros(3, 16))).numpy()  # cos(0, .) = 0 after normalisation
        random = head(torch.randn(3, 16)).numpy()
    np.testing.assert_allclose(zero, np.broadcast_to(PRIOR, (3, len(PRIOR))), rtol=1e-5)
    assert np.isfinite(random).all()
    assert torch.equal(KEHead(16, table).bias.detach(), torch.zeros(len(PRIOR)))


def test_ke_set_label_embeddings_bias() -> None:
    """New labels get the old biases' mean without a prior, logit(prior) with one."""
    torch.manual_seed(0)
    head = KEHead(16, torch.randn(len(PRIOR), 8), bias_prior=torch.tensor(PRIOR))
    old_mean = float(logit(PRIOR).mean())
    head.set_label_embeddings(torch.randn(4, 8))
    assert head.num_labels == 4 and head.bias.shape == (4,)
    np.testing.assert_allclose(head.bias.detach().numpy(), old_mean, rtol=1e-5)
    assert head.bias.requires_grad
    new_prior = np.array([0.02, 0.3, 0.5, 0.0], dtype=np.float32)
    head.set_label_embeddings(torch.randn(4, 8), torch.tensor(new_prior))
    np.testing.assert_allclose(head.bias.detach().numpy(), logit(new_prior), rtol=1e-4)
    assert head.bias.requires_grad and head.num_labels == 4


def _model_probs(head: str, bias_init: str, seed: int = 1) -> tuple[np.ndarray, np.ndarray, Any]:
    """(logits, sigmoid probs) of a tiny model built with torch seed ``seed`` on fixed random inputs."""
    cfg = ModelConfig(
        embed_dim=16, width=4, slice_heads=2, fusion_heads=2, head=head, ke=KEConfig(dim=8), bias_init=bias_init
    )
    g = torch.Generator().manual_seed(123)
    table = torch.randn(len(PRIOR), 8, generator=g)
    images = torch.randn(4, 2, 2, 16, 16, generator=g)
    torch.manual_seed(seed)
    model = build_model(cfg, len(PRIOR), label_embeddings=table if head == "ke" else None, label_prior=torch.tensor(PRIOR))
    model.eval()
    with torch.no_grad():
        out = model(
            images,
            torch.ones(4, 2, dtype=torch.bool),
            torch.ones(4, 2, 2, dtype=torch.bool),
            torch.ones(4, 2, dtype=torch.long),
        )
    logits = out["logits"].double().numpy()
    return logits, sigmoid(logits), model


def test_model_mlp_bias_init_prior_vs_zero() -> None:
    """With the MLP head, 'prior' starts near the base rate and 'zero' near 0.5."""
    for seed in (1, 2):
        _, prior_probs, model = _model_probs("mlp", "prior", seed)
        _, zero_probs, _ = _model_probs("mlp", "zero", seed)
        np.testing.assert_allclose(sigmoid(model.head.net[-1].bias.detach().numpy()), PRIOR, rtol=1e-5)
        assert abs(prior_probs.mean() - PRIOR.mean()) < 0.05
        assert abs(zero_probs.mean() - 0.5) < 0.15
        # per label, the initial prediction tracks the prior (in logit space, within the weights' noise)
        assert np.abs(logit(prior_probs.mean(0)) - logit(PRIOR)).max() < 0.75


@pytest.mark.parametrize("head", ["mlp", "ke"])
def test_model_bias_init_shifts_logits_by_prior_logit(head: str) -> None:
    """Same seed, same weights but the output bias: logits('prior') - logits('zero') is
    logit(p) - (the 'zero' model's bias) for every case and label."""
    prior_logits, _, prior_model = _model_probs(head, "prior")
    zero_logits, _, zero_model = _model_probs(head, "zero")
    bias_of = (lambda m: m.head.net[-1].bias) if head == "mlp" else (lambda m: m.head.bias)
    zero_bias = bias_of(zero_model).detach().double().numpy()
    shift = prior_logits - zero_logits
    np.testing.assert_allclose(shift, np.broadcast_to(logit(PRIOR) - zero_bias, shift.shape), atol=1e-4)
    np.testing.assert_allclose(sigmoid(bias_of(prior_model).detach().numpy()), PRIOR, rtol=1e-5)
    if head == "ke":
        np.testing.assert_array_equal(zero_bias, 0.0)
        assert prior_model.head.log_prior is None  # ke.prior_bias is off: the prior only seeds the bias


def test_model_mlp_bias_init_zero_is_zero() -> None:
    """bias_init='zero' gives the MLP head's last layer a zero bias."""
    _, _, model = _model_probs("mlp", "zero")
    np.testing.assert_array_equal(model.head.net[-1].bias.detach().numpy(), 0.0)


def test_model_ke_prior_bias_and_prior_init_predict_prior() -> None:
    """With ke.prior_bias (a fixed log p term) and bias_init='prior', the prior is counted once: the
    learned bias starts at 0, so a zero case embedding scores sigmoid(log p) = p / (1 + p), not p**2."""
    cfg = ModelConfig(embed_dim=16, width=4, slice_heads=2, fusion_heads=2, head="ke", ke=KEConfig(dim=8, prior_bias=True))
    torch.manual_seed(0)
    model = build_model(cfg, len(PRIOR), label_embeddings=torch.randn(len(PRIOR), 8), label_prior=torch.tensor(PRIOR))
    with torch.no_grad():
        probs = torch.sigmoid(model.head(torch.zeros(1, 16))).double().numpy()[0]
    np.testing.assert_array_equal(model.head.bias.detach().numpy(), 0.0)
    np.testing.assert_allclose(probs, PRIOR / (1 + PRIOR), rtol=1e-3)


# ---------------------------------------------------------------- permuted-table control


def test_derangement() -> None:
    """A permutation without fixed points, reproducible per seed, different across seeds."""
    orders = [derangement(40, seed) for seed in range(5)]
    for seed, order in enumerate(orders):
        assert sorted(order.tolist()) == list(range(40))
        assert not np.any(order == np.arange(40))
        np.testing.assert_array_equal(order, derangement(40, seed))
    assert len({tuple(order.tolist()) for order in orders}) == 5
    for n in (2, 3, 7):
        assert not np.any(derangement(n, 0) == np.arange(n))
    np.testing.assert_array_equal(derangement(2, 9), [1, 0])


def test_label_embeddings_permute_table(tmp_path_factory: pytest.TempPathFactory) -> None:
    """permute_table=true returns the unpermuted table's rows in derangement(C, train.seed) order."""
    cache = tmp_path_factory.mktemp("raddiag-cache")
    chosen = benchmark_labels()[:10]
    names = [label.name for label in chosen]
    codes: list[str | None] = [label.category for label in chosen]
    base = ["model.head=ke", "model.ke.dim=32", f"model.ke.cache_dir={cache}"]
    permuted_cfg = load_config(None, base + ["model.ke.permute_table=true"])
    plain_cfg = load_config(None, base + ["model.ke.permute_table=false"])
    permuted = np.array(label_embeddings(permuted_cfg, names, codes))
    plain = np.array(label_embeddings(plain_cfg, names, codes))
    assert plain.shape == permuted.shape == (10, 32)
    order = derangement(10, permuted_cfg.train.seed)
    np.testing.assert_array_equal(permuted, plain[order])
    for i in range(10):  # every label now carries another label's (distinct) text embedding
        assert not np.allclose(permuted[i], plain[i]), names[i]
    mlp_cfg = load_config(None, ["model.head=mlp", "model.ke.permute_table=true"])
    assert label_embeddings(mlp_cfg, names, codes) is None


# ---------------------------------------------------------------- small ResNet stem


def test_resnet_small_stem_keeps_resolution() -> None:
    """stem='small': 3x3 stride-1 first conv, no max-pool, 16x16 maps after layer1 (imagenet: 4x4)."""
    torch.manual_seed(0)
    small = ResNetBackbone(2, 10, 4, stem="small").eval()
    conv = small.net.conv1
    assert tuple(conv.kernel_size) == (3, 3) and tuple(conv.stride) == (1, 1)
    imagenet = ResNetBackbone(2, 10, 4).eval()
    assert tuple(imagenet.net.conv1.kernel_size) == (7, 7) and tuple(imagenet.net.conv1.stride) == (2, 2)
    shapes: dict[str, tuple[int, ...]] = {}
    for name, backbone in (("small", small), ("imagenet", imagenet)):
        hook = backbone.net.layer1[-1].register_forward_hook(  # forward() runs the blocks one by one
            lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape))
        )
        with torch.no_grad():
            out = backbone(torch.randn(3, 1, 16, 16))
        hook.remove()
        assert out.shape == (3, 32) and torch.isfinite(out).all()
    assert shapes["small"][-2:] == (16, 16)
    assert shapes["imagenet"][-2:] == (4, 4)
    cfg = ModelConfig(embed_dim=16, width=4, slice_heads=2, fusion_heads=2, head="mlp", stem="small")
    model = build_model(cfg, 3)
    assert tuple(model.backbone.net.conv1.stride) == (1, 1)
