"""raddiag.losses: each loss against a direct numpy computation, limit cases, gradients, config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from raddiag.config import ConfigError, LossConfig, RadDiagConfig, load_config, with_overrides
from raddiag.losses import (
    AsymmetricLoss,
    BCELoss,
    ClassBalancedLoss,
    DistributionBalancedLoss,
    FocalLoss,
    LDAMLoss,
    LogitAdjustedLoss,
    build_loss,
    class_balanced_weights,
    ldam_margins,
)

REPO = Path(__file__).resolve().parents[1]
ALL_TYPES = ("bce", "focal", "asl", "cb", "la", "db", "ldam")
COUNTS = np.array([500, 120, 60, 31, 12, 3, 1, 0])
N_TRAIN = 800
FAST = settings(max_examples=25, deadline=None)


# ----------------------------------------------------------------------------- numpy references


def np_log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def np_bce(x: np.ndarray, y: np.ndarray, pos_weight: float = 1.0) -> np.ndarray:
    return -(pos_weight * y * np_log_sigmoid(x) + (1 - y) * np_log_sigmoid(-x))


def np_focal(x, y, gamma, alpha):
    p = 1 / (1 + np.exp(-x))
    a_pos, a_neg = (1.0, 1.0) if alpha is None else (alpha, 1 - alpha)
    return -(a_pos * y * (1 - p) ** gamma * np.log(p) + a_neg * (1 - y) * p**gamma * np.log(1 - p))


def np_asl(x, y, gamma_neg, gamma_pos, clip):
    p = 1 / (1 + np.exp(-x))
    p_m = np.maximum(p - clip, 0.0)
    return -(y * (1 - p) ** gamma_pos * np.log(p) + (1 - y) * p_m**gamma_neg * np.log(1 - p_m))


def np_prior(counts, n_train):
    return (counts + 1.0) / (n_train + 2.0)


def np_db(x, y, counts, n_train, alpha, beta, mu, lam, kappa):
    inv = 1.0 / np.maximum(counts, 1)
    weight = np.ones_like(x)
    for row in range(x.shape[0]):
        total = inv[y[row] == 1].sum()
        if total > 0:
            weight[row] = alpha + 1 / (1 + np.exp(-beta * (inv / total - mu)))
    prior = np_prior(counts, n_train)
    z = x + kappa * np.log(prior / (1 - prior))
    return weight * (y * np.logaddexp(0, -z) + (1 - y) * np.logaddexp(0, lam * z) / lam)


def run(loss: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return float(loss(torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)))


@st.composite
def batches(draw, n_classes: int | None = None):
    rows = draw(st.integers(1, 6))
    cols = n_classes or draw(st.integers(1, 7))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 3, (rows, cols))
    y = (rng.random((rows, cols)) < 0.4).astype(np.float64)
    return x, y


# ----------------------------------------------------------------------------- against numpy


@FAST
@given(batches(), st.floats(0.1, 5.0))
def test_bce_matches_numpy_and_torch(batch, pos_weight):
    x, y = batch
    got = run(BCELoss(pos_weight), x, y)
    assert got == pytest.approx(np_bce(x, y, pos_weight).mean(), rel=1e-5)
    torch_ref = F.binary_cross_entropy_with_logits(
        torch.tensor(x), torch.tensor(y), pos_weight=torch.full((x.shape[1],), pos_weight, dtype=torch.float64)
    )
    assert got == pytest.approx(float(torch_ref), rel=1e-5)


def test_bce_per_class_pos_weight():
    x, y = np.array([[1.0, -2.0, 0.5]]), np.array([[1.0, 1.0, 0.0]])
    weights = np.array([1.0, 3.0, 2.0])
    ref = -(weights * y * np_log_sigmoid(x) + (1 - y) * np_log_sigmoid(-x)).mean()
    assert run(BCELoss(weights), x, y) == pytest.approx(ref, rel=1e-5)


@FAST
@given(batches(), st.floats(0.0, 4.0), st.one_of(st.none(), st.floats(0.0, 1.0)))
def test_focal_matches_numpy(batch, gamma, alpha):
    x, y = batch
    assert run(FocalLoss(gamma, alpha), x, y) == pytest.approx(np_focal(x, y, gamma, alpha).mean(), rel=1e-4, abs=1e-7)


@FAST
@given(batches(), st.floats(0.0, 6.0), st.floats(0.0, 1.0), st.floats(0.0, 0.3))
def test_asl_matches_numpy(batch, gamma_neg, gamma_pos, clip):
    x, y = batch
    got = run(AsymmetricLoss(gamma_neg, gamma_pos, clip), x, y)
    assert got == pytest.approx(np_asl(x, y, gamma_neg, gamma_pos, clip).mean(), rel=1e-4, abs=1e-7)


@FAST
@given(batches(n_classes=len(COUNTS)), st.sampled_from([0.0, 0.9, 0.99, 0.999, 0.9999]))
def test_class_balanced_matches_numpy(batch, beta):
    x, y = batch
    n = np.maximum(COUNTS, 1).astype(float)
    weights = (1 - beta) / (1 - beta**n)
    weights = weights / weights.mean()
    got = run(ClassBalancedLoss(COUNTS, beta), x, y)
    assert got == pytest.approx((weights * np_bce(x, y)).mean(), rel=1e-4)
    got_focal = run(ClassBalancedLoss(COUNTS, beta, base="focal", focal_gamma=2.0, focal_alpha=0.25), x, y)
    assert got_focal == pytest.approx((weights * np_focal(x, y, 2.0, 0.25)).mean(), rel=1e-4, abs=1e-7)


@FAST
@given(batches(n_classes=len(COUNTS)), st.floats(0.0, 3.0), st.booleans())
def test_logit_adjusted_matches_numpy(batch, tau, log_odds):
    x, y = batch
    prior = np_prior(COUNTS, N_TRAIN)
    shift = np.log(prior / (1 - prior)) if log_odds else np.log(prior)
    got = run(LogitAdjustedLoss(COUNTS, N_TRAIN, tau, log_odds), x, y)
    assert got == pytest.approx(np_bce(x + tau * shift, y).mean(), rel=1e-4)


@FAST
@given(
    batches(n_classes=len(COUNTS)),
    st.floats(0.0, 0.5),
    st.floats(0.0, 20.0),
    st.floats(0.0, 0.5),
    st.floats(1.0, 6.0),
    st.floats(0.0, 0.2),
)
def test_distribution_balanced_matches_numpy(batch, alpha, beta, mu, lam, kappa):
    x, y = batch
    got = run(DistributionBalancedLoss(COUNTS, N_TRAIN, alpha, beta, mu, lam, kappa), x, y)
    assert got == pytest.approx(np_db(x, y, COUNTS, N_TRAIN, alpha, beta, mu, lam, kappa).mean(), rel=1e-4)


@FAST
@given(batches(n_classes=len(COUNTS)), st.floats(0.0, 2.0), st.floats(0.5, 30.0))
def test_ldam_matches_numpy(batch, max_margin, scale):
    x, y = batch
    n = np.maximum(COUNTS, 1).astype(float)
    margin = max_margin * n**-0.25 / (n**-0.25).max()
    got = run(LDAMLoss(COUNTS, max_margin, scale), x, y)
    assert got == pytest.approx(np_bce(scale * (x - margin * y), y).mean(), rel=1e-4, abs=1e-6)


# ----------------------------------------------------------------------------- limit cases


@FAST
@given(batches(n_classes=len(COUNTS)))
def test_limits_reduce_to_bce(batch):
    x, y = batch
    bce = np_bce(x, y).mean()
    assert run(FocalLoss(gamma=0.0, alpha=None), x, y) == pytest.approx(bce, rel=1e-5)
    assert run(FocalLoss(gamma=0.0, alpha=0.5), x, y) == pytest.approx(0.5 * bce, rel=1e-5)
    assert run(AsymmetricLoss(gamma_neg=0.0, gamma_pos=0.0, clip=0.0), x, y) == pytest.approx(bce, rel=1e-5)
    assert run(ClassBalancedLoss(COUNTS, beta=0.0), x, y) == pytest.approx(bce, rel=1e-5)
    assert run(LogitAdjustedLoss(COUNTS, N_TRAIN, tau=0.0), x, y) == pytest.approx(bce, rel=1e-5)
    assert run(LDAMLoss(COUNTS, max_margin=0.0, scale=1.0), x, y) == pytest.approx(bce, rel=1e-5)


def test_cb_beta_zero_equals_unweighted_focal():
    x, y = np.array([[2.0, -1.0, 0.3, 4.0, -3.0, 0.0, 1.0, -0.5]]), np.array([[1, 0, 1, 0, 0, 1, 1, 0.0]])
    assert run(ClassBalancedLoss(COUNTS, 0.0, base="focal", focal_gamma=1.5, focal_alpha=0.3), x, y) == pytest.approx(
        run(FocalLoss(1.5, 0.3), x, y), rel=1e-6
    )


def test_db_without_regulariser_is_rebalanced_bce():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, len(COUNTS)))
    y = (rng.random(x.shape) < 0.3).astype(float)
    y[0] = 0.0  # a case with no positive label: weight 1
    loss = DistributionBalancedLoss(COUNTS, N_TRAIN, neg_scale=1.0, bias_scale=0.0)
    weight = loss.rebalance_weight(torch.tensor(y, dtype=torch.float32)).numpy()
    assert np.all(weight[0] == 1.0)
    assert run(loss, x, y) == pytest.approx((weight * np_bce(x, y)).mean(), rel=1e-5)


def test_asl_clip_discards_easy_negatives():
    loss = AsymmetricLoss(gamma_neg=2.0, gamma_pos=0.0, clip=0.2)
    easy = torch.tensor([[-3.0]])  # p = 0.047 < clip
    assert float(loss(easy, torch.zeros_like(easy))) == 0.0
    assert float(loss(torch.tensor([[2.0]]), torch.zeros(1, 1))) > 0.0


def test_cb_weights_favour_rare_classes():
    weights = class_balanced_weights(COUNTS, 0.999)
    assert weights.mean() == pytest.approx(1.0)
    assert np.all(np.diff(weights[:-1]) > 0)  # fewer cases -> larger weight (0 and 1 case share n=1)
    assert np.allclose(class_balanced_weights(COUNTS, 0.0), 1.0)


def test_ldam_margins_scale_with_quarter_power():
    margins = ldam_margins(np.array([16, 1, 256]), 0.5)
    assert margins == pytest.approx([0.25, 0.5, 0.125])


# ----------------------------------------------------------------------------- gradients, dtypes


EXTREME = torch.tensor([[-1e4, -100.0, -30.0, -1e-3, 0.0, 1e-3, 30.0, 100.0]])


@pytest.mark.parametrize("loss_type", ALL_TYPES)
@pytest.mark.parametrize("overrides", [{}, {"focal": {"gamma": 0.5}, "asl": {"gamma_neg": 0.5, "gamma_pos": 0.5}}])
def test_finite_gradients_at_extreme_logits(loss_type, overrides):
    loss = build_loss(LossConfig(type=loss_type, **overrides), COUNTS, N_TRAIN)
    for target in (0.0, 1.0):
        for sign in (1.0, -1.0):
            logits = (sign * EXTREME).clone().requires_grad_(True)
            value = loss(logits, torch.full_like(logits, target))
            value.backward()
            assert torch.isfinite(value), (loss_type, target, sign)
            assert torch.isfinite(logits.grad).all(), (loss_type, target, sign, logits.grad)


@pytest.mark.parametrize("loss_type", ALL_TYPES)
def test_half_precision_logits_give_float32_loss(loss_type):
    loss = build_loss(LossConfig(type=loss_type), COUNTS, N_TRAIN)
    logits = torch.randn(4, len(COUNTS)).to(torch.bfloat16)
    targets = (torch.rand(4, len(COUNTS)) < 0.3).float()
    value = loss(logits, targets)
    assert value.dtype == torch.float32 and value.ndim == 0 and torch.isfinite(value)
    reference = loss(logits.float(), targets)
    assert float(value) == pytest.approx(float(reference), rel=1e-6)


@pytest.mark.parametrize("loss_type", ALL_TYPES)
def test_gradient_descent_lowers_loss(loss_type):
    torch.manual_seed(0)
    loss = build_loss(LossConfig(type=loss_type), COUNTS, N_TRAIN)
    logits = torch.zeros(6, len(COUNTS), requires_grad=True)
    targets = (torch.rand(6, len(COUNTS)) < 0.4).float()
    start = loss(logits, targets).item()
    optimiser = torch.optim.SGD([logits], lr=0.5)
    for _ in range(20):
        optimiser.zero_grad()
        loss(logits, targets).backward()
        optimiser.step()
    assert loss(logits, targets).item() < start


# ----------------------------------------------------------------------------- build_loss and config


@pytest.mark.parametrize(
    ("loss_type", "cls"),
    [
        ("bce", BCELoss),
        ("focal", FocalLoss),
        ("asl", AsymmetricLoss),
        ("cb", ClassBalancedLoss),
        ("la", LogitAdjustedLoss),
        ("db", DistributionBalancedLoss),
        ("ldam", LDAMLoss),
    ],
)
def test_build_loss_types(loss_type, cls):
    assert isinstance(build_loss(LossConfig(type=loss_type), COUNTS, N_TRAIN), cls)


def test_build_loss_passes_config_values():
    cfg = LossConfig(type="asl", asl={"gamma_neg": 3.0, "gamma_pos": 0.5, "clip": 0.1})
    loss = build_loss(cfg, None, None)
    assert (loss.gamma_neg, loss.gamma_pos, loss.clip) == (3.0, 0.5, 0.1)
    x, y = np.array([[0.3, -2.0]]), np.array([[1.0, 0.0]])
    assert run(loss, x, y) == pytest.approx(np_asl(x, y, 3.0, 0.5, 0.1).mean(), rel=1e-5)


@pytest.mark.parametrize("loss_type", ["cb", "la", "db", "ldam"])
def test_count_losses_require_counts(loss_type):
    with pytest.raises(ValueError, match="class_counts"):
        build_loss(LossConfig(type=loss_type), None, N_TRAIN)


@pytest.mark.parametrize("loss_type", ["la", "db"])
def test_prior_losses_require_n_train(loss_type):
    with pytest.raises(ValueError, match="n_train"):
        build_loss(LossConfig(type=loss_type), COUNTS, None)
    with pytest.raises(ValueError, match="n_train"):
        build_loss(LossConfig(type=loss_type), COUNTS, 10)  # fewer cases than the largest count


def test_invalid_counts_rejected():
    with pytest.raises(ValueError, match="non-negative"):
        build_loss(LossConfig(type="cb"), np.array([3, -1]), 10)
    with pytest.raises(ValueError, match="1-D"):
        build_loss(LossConfig(type="cb"), np.ones((2, 2)), 10)


def test_count_losses_check_width_and_others_take_any_width():
    with pytest.raises(ValueError, match="C=8"):
        build_loss(LossConfig(type="ldam"), COUNTS, N_TRAIN)(torch.zeros(2, 5), torch.zeros(2, 5))
    for loss_type in ("bce", "focal", "asl"):
        loss = build_loss(LossConfig(type=loss_type))
        for width in (1, 5, 5569):
            assert torch.isfinite(loss(torch.zeros(2, width), torch.ones(2, width)))


def test_shape_mismatch_rejected():
    with pytest.raises(ValueError, match=r"\(B, C\)"):
        BCELoss()(torch.zeros(2, 3), torch.zeros(2, 4))


def test_count_buffers_move_with_module():
    loss = build_loss(LossConfig(type="db"), COUNTS, N_TRAIN).to(torch.float64)
    assert loss.inv_freq.dtype == torch.float64
    assert "inv_freq" not in loss.state_dict()  # derived from counts, not checkpointed


@pytest.mark.parametrize(
    "bad",
    [
        {"asl.clip": 1.0},
        {"focal.alpha": 1.5},
        {"cb.beta": 1.0},
        {"db.neg_scale": 0.5},
        {"ldam.scale": 0.0},
        {"type": "softmax"},
        {"la.tau": -1.0},
    ],
)
def test_config_rejects_out_of_range(bad):
    with pytest.raises(ConfigError):
        load_config(overrides=[f"loss.{key}={value}" for key, value in bad.items()])


def test_config_focal_alpha_null_disables_alpha():
    cfg = load_config(overrides=["loss.type=focal", "loss.focal.alpha=null", "loss.focal.gamma=0"])
    x, y = np.array([[0.7, -1.2]]), np.array([[1.0, 0.0]])
    assert run(build_loss(cfg.loss), x, y) == pytest.approx(np_bce(x, y).mean(), rel=1e-6)


def test_every_loss_field_is_described():
    for name, info in LossConfig.model_fields.items():
        assert info.description, f"LossConfig.{name} needs a description"
        for sub, sub_info in getattr(info.annotation, "model_fields", {}).items():
            assert sub_info.description, f"loss.{name}.{sub} needs a description"


# ----------------------------------------------------------------------------- sweep ranges


def test_loss_ranges_yaml_is_a_valid_sweep():
    path = REPO / "jobs" / "loss_ranges.yaml"
    cfg = load_config([path])
    space = cfg.sweep.search_space
    assert set(space["loss.type"]["choice"]) == set(ALL_TYPES)
    assert space["loss.asl.gamma_neg"]["uniform"] == [2.0, 6.0]
    assert space["loss.asl.gamma_pos"]["uniform"] == [0.0, 1.0]
    assert space["loss.asl.clip"]["uniform"] == [0.0, 0.2]
    assert space["loss.focal.gamma"]["uniform"] == [0.5, 3.0]
    assert min(space["loss.cb.beta"]["choice"]) == 0.9 and max(space["loss.cb.beta"]["choice"]) == 0.9999
    assert space["loss.la.tau"]["uniform"] == [0.5, 2.0]
    raw = yaml.safe_load(path.read_text())
    assert set(raw) == {"sweep"}
    for key, spec in space.items():
        section, *path = key.split(".")
        assert section == "loss" and (path == ["type"] or path[1] in LossConfig.model_fields[path[0]].annotation.model_fields), key
        when = spec.get("when", {})
        if key != "loss.type":
            assert when.get("loss.type") in ALL_TYPES, f"{key} should be conditional on loss.type"
        kind = next(k for k in spec if k != "when")
        for value in spec[kind]:  # every choice, or both ends of a range
            trial = with_overrides(RadDiagConfig(), {**when, key: value})
            built = build_loss(trial.loss, COUNTS, N_TRAIN)
            assert torch.isfinite(built(torch.randn(3, len(COUNTS)), torch.ones(3, len(COUNTS))))
