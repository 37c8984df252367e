"""Epoch bookkeeping at scale (#16): the linear mixing-partner draw, the sparse class sampler, what
the read tasks carry, and the fast bootstrap give the same results as the algorithms they replace
(kept inline here as the references)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from raddiag.config import RadDiagConfig
from raddiag.data.pipeline import class_index, epoch_records, label_matrix, mix_partners
from raddiag.data.sampling import ClassIndex, epoch_order


def reference_mix_partners(records: list[dict[str, Any]], order: list[int], p: float, seed: int, epoch: int) -> list[int | None]:
    """The pre-#16 algorithm: scans every case for every position (n²)."""
    if p <= 0:
        return [None] * len(order)
    rng = np.random.default_rng([seed, epoch, 1])
    anatomies = np.array([str(r.get("anatomy", "")) for r in records])
    partners: list[int | None] = []
    for index in order:
        others = np.flatnonzero(anatomies != anatomies[index])
        draw, pick = rng.random(), rng.random()
        partners.append(int(others[int(pick * len(others))]) if draw < p and len(others) else None)
    return partners


def reference_epoch_order(matrix: np.ndarray, strategy: str, power: float, seed: int, epoch: int) -> np.ndarray:
    """The pre-#16 sampler over a dense label matrix."""
    n_cases = matrix.shape[0]
    rng = np.random.default_rng([seed, epoch])
    if strategy == "instance":
        return rng.permutation(n_cases)
    q = 0.0 if strategy == "class_aware" else power
    counts = matrix.sum(axis=0).astype(np.float64)
    weights = np.where(counts > 0, np.power(np.maximum(counts, 1.0), q), 0.0)
    probs = weights / weights.sum()
    members = [np.flatnonzero(matrix[:, j]) for j in range(matrix.shape[1])]
    classes = rng.choice(len(probs), size=n_cases, p=probs)
    picks = rng.random(n_cases)
    return np.array([members[c][int(u * len(members[c]))] for c, u in zip(classes, picks)], dtype=np.int64)


def synthetic_records(n: int, n_labels: int, n_anatomies: int, seed: int) -> tuple[list[dict[str, Any]], list[str]]:
    rng = np.random.default_rng(seed)
    names = [f"label {j}" for j in range(n_labels)]
    weights = 1.0 / (np.arange(n_labels) + 2.0) ** 1.2
    records = []
    for i in range(n):
        labels = rng.choice(n_labels, size=int(rng.integers(1, 4)), p=weights / weights.sum())  # repeats allowed
        record = {"case_id": f"c{i}", "disorders": [names[j] for j in labels] + (["not in vocabulary"] if i % 17 == 0 else []),
                  "icd10": [], "scans": []}
        if i % 23:  # some records have no anatomy key at all
            record["anatomy"] = f"anatomy {int(rng.integers(0, n_anatomies))}"
        records.append(record)
    return records, names


@pytest.mark.parametrize("n_anatomies", [1, 2, 7, 60])
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_mix_partners_equal_the_quadratic_reference(n_anatomies: int, p: float) -> None:
    records, _ = synthetic_records(400, 30, n_anatomies, seed=n_anatomies)
    rng = np.random.default_rng(5)
    for order in (list(range(400)), rng.integers(0, 400, 900).tolist(), []):  # sampled orders repeat cases
        for seed, epoch in ((0, 0), (3, 11)):
            assert mix_partners(records, order, p, seed, epoch) == reference_mix_partners(records, order, p, seed, epoch)


def test_mix_partners_all_of_one_anatomy_never_mix() -> None:
    records = [{"anatomy": "chest"} for _ in range(50)]
    assert mix_partners(records, list(range(50)), 1.0, 0, 0) == [None] * 50


@pytest.mark.parametrize("strategy", ["instance", "class_aware", "sqrt"])
def test_epoch_order_from_the_class_index_equals_the_dense_reference(strategy: str) -> None:
    records, names = synthetic_records(700, 120, 7, seed=1)
    matrix = label_matrix(records, names, "disorder")
    index = class_index(records, names, "disorder")
    assert np.array_equal(index.counts, matrix.sum(axis=0))
    for epoch in range(3):
        expected = reference_epoch_order(matrix, strategy, 0.5, seed=9, epoch=epoch)
        assert np.array_equal(epoch_order(index, strategy, 0.5, seed=9, epoch=epoch), expected)
        assert np.array_equal(epoch_order(matrix, strategy, 0.5, seed=9, epoch=epoch), expected)  # dense input still works
        cfg = RadDiagConfig.model_validate({"data": {"sampler": strategy, "sampler_power": 0.5}, "train": {"seed": 9}})
        assert epoch_records(records, cfg, names, train=True, epoch=epoch) == expected.tolist()


def test_class_index_counts_a_repeated_pair_once_and_keeps_cases_ascending() -> None:
    index = ClassIndex.from_pairs(np.array([4, 1, 4, 0, 3]), np.array([2, 2, 2, 0, 2]), n_cases=5, n_classes=4)
    assert index.counts.tolist() == [1, 0, 3, 0]
    assert index.cases[index.starts[2] : index.starts[3]].tolist() == [1, 3, 4]
    with pytest.raises(ValueError, match="no class has a positive"):
        epoch_order(ClassIndex.from_pairs(np.array([]), np.array([]), 3, 2), "sqrt", 0.5, 0, 0)


def test_read_tasks_carry_a_reference_not_the_label_names() -> None:
    import pickle

    import cloudpickle
    import ray

    from raddiag.data.pipeline import (
        Item,
        Shared,
        case_datasource,
        read_task_args,
        resolve_task_args,
    )

    _, names = synthetic_records(64, 300, 3, seed=2)
    names = [f"{name} (a long disorder name of the vocabulary)" for name in names]
    cfg = RadDiagConfig.model_validate({"train": {"batch_size": 4}, "data": {"cases_per_task": 8}})
    items = [Item(i, i, "{}") for i in range(64)]
    stored: dict[Any, Any] = {}

    def put(value: Any) -> Any:
        ref = ray.ObjectRef.from_random()
        stored[ref] = pickle.loads(pickle.dumps(value))
        return ref

    args = read_task_args(cfg, names, {"disorder": names, "icd": ["A00"]}, train=True, epoch=3, put=put)
    tasks = case_datasource(items, cfg, args).get_read_tasks(2)
    assert len(tasks) == 8
    for task in tasks:
        payload = cloudpickle.dumps(task)
        assert names[-1].encode() not in payload and len(payload) < 4096
    assert len(stored) == 1  # put once for the whole dataset
    assert isinstance(args[0], Shared)
    resolved = resolve_task_args(args, get=stored.__getitem__)  # the dict plays the object store
    assert resolved == (cfg.model_dump(mode="json"), names, {"disorder": names, "icd": ["A00"]}, True, 3)
    plain = (cfg.model_dump(mode="json"), names, None, False, 0)
    assert resolve_task_args(plain) is plain


def _validation_rank(rank: int, world: int, init: str, out: str) -> None:
    import json

    import torch.distributed as dist

    from raddiag.metrics import group_of_counts
    from raddiag.train.loop import validation_metrics

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        rng = np.random.default_rng(0)
        labels = (rng.random((80, 6)) < 0.3).astype(np.float32)
        scores = rng.random((80, 6)).astype(np.float32) + labels * 0.5
        if rank == 1:  # what this rank holds must not matter: the numbers come from rank 0
            scores = -scores
        counts = np.array([300, 300, 50, 50, 5, 5])
        metrics, report = validation_metrics(labels, scores, counts, [f"d{i}" for i in range(6)], group_of_counts(counts), "", rank)
        with open(f"{out}.{rank}", "w") as handle:
            json.dump({"metrics": metrics, "report": report is not None}, handle)
    finally:
        dist.destroy_process_group()


def test_validation_is_scored_once_on_rank_0_and_every_rank_gets_its_numbers(tmp_path) -> None:
    """Two real gloo ranks: rank 0 scores, rank 1 (holding other scores) receives rank 0's values."""
    import json

    import torch.multiprocessing as mp

    out = str(tmp_path / "metrics")
    mp.spawn(_validation_rank, args=(2, f"file://{tmp_path / 'rendezvous'}", out), nprocs=2, join=True)
    first, second = (json.loads((tmp_path / f"metrics.{rank}").read_text()) for rank in (0, 1))
    assert first["report"] and not second["report"]
    assert first["metrics"] == second["metrics"] and first["metrics"]["val_auc_macro"] > 0.6


def test_bootstrap_replicates_are_the_metrics_of_their_resamples_whatever_the_threads(monkeypatch) -> None:
    """Every replicate (only the split's evaluable classes re-scored, integer multiplicities, nearest
    ROC point found without a pass per FPR) equals the metrics of its explicit resample, ties and
    validation thresholds included; one thread or several give the same numbers."""
    from raddiag import metrics
    from raddiag.metrics import GROUPS, evaluate_scores

    rng = np.random.default_rng(21)
    n, c = 90, 14
    y = (rng.random((n, c)) < rng.uniform(0.03, 0.4, c)).astype(int)
    y[:, 3] = 0  # never evaluable
    y[:, 4] = 0
    y[7, 4] = 1  # one positive: lost by some resamples
    s = np.round(rng.random((n, c)) + 0.6 * y, 1)  # many ties
    val = ((rng.random((50, c)) < 0.2).astype(int), np.round(rng.random((50, c)), 1))
    counts = np.repeat([300, 60, 5], [5, 5, 4])
    reports = []
    for threads in (1, 3):
        monkeypatch.setattr(metrics, "BOOTSTRAP_THREADS", threads)
        reports.append(evaluate_scores(y, s, counts, val_true=val[0], val_score=val[1], n_bootstrap=6, seed=4))
    assert all(np.array_equal(reports[0].draws[g][m], reports[1].draws[g][m], equal_nan=True) for g in reports[0].draws for m in reports[0].draws[g])
    draws = np.random.default_rng(4)
    evaluated = reports[0].per_class["evaluated"].to_numpy()
    for b in range(6):
        resample = draws.integers(0, n, n)
        expected = evaluate_scores(y[resample][:, evaluated], s[resample][:, evaluated], counts[evaluated], val_true=val[0][:, evaluated], val_score=val[1][:, evaluated])
        for group in GROUPS + ("all",):
            for metric in reports[0].metrics:
                assert reports[0].draws[group][metric][b] == pytest.approx(expected.summary[group][metric], abs=1e-12, nan_ok=True), (b, group, metric)


def test_roc_replicates_sorted_once_equal_one_interpolation_per_resample() -> None:
    from raddiag.metrics import interpolated_roc, interpolated_roc_replicates

    rng = np.random.default_rng(8)
    for decimals in (2, 1):  # some ties, heavy ties
        y = (rng.random((120, 9)) < rng.uniform(0.02, 0.4, 9)).astype(int)
        y[:, 2] = 0
        y[:, 3] = 0
        y[5, 3] = 1  # one positive: lost by some resamples
        s = np.round(rng.random((120, 9)) + 0.5 * y, decimals).astype(np.float32)
        grid = np.linspace(0, 1, 101)
        weights = [np.bincount(rng.integers(0, 120, 120), minlength=120) for _ in range(8)]
        threaded = list(interpolated_roc_replicates(y, s, grid, weights, threads=3))
        for fast, w, other in zip(interpolated_roc_replicates(y, s, grid, weights, threads=1), weights, threaded, strict=True):
            assert np.array_equal(fast, other, equal_nan=True)
            slow = interpolated_roc(y, s, grid, w)
            assert np.array_equal(np.isnan(fast), np.isnan(slow))
            np.testing.assert_allclose(fast[~np.isnan(fast)], slow[~np.isnan(slow)], rtol=0, atol=1e-12)


def test_epoch_planning_runs_on_the_prefetch_thread_while_the_caller_goes_on() -> None:
    """train_stream plans inside Prefetch's make(): the epoch's order, partners and items are built
    on the prefetch thread, and the caller (the training thread) is past the constructor before
    planning starts — here planning cannot even start until the caller has moved on."""
    import threading

    from raddiag.data.pipeline import Prefetch, epoch_items

    records, names = synthetic_records(300, 40, 7, seed=3)
    cfg = RadDiagConfig.model_validate({"data": {"sampler": "sqrt", "case_mix_p": 0.3}})
    caller_moved_on = threading.Event()
    planned_on: list[str] = []

    def make() -> Any:
        assert caller_moved_on.wait(timeout=20), "the caller waited for the planning"
        planned_on.append(threading.current_thread().name)
        return iter([epoch_items(records, cfg, names, train=True, epoch=1, rank=0, world=2)])

    stream = Prefetch(make, depth=1)
    caller_moved_on.set()
    (items,) = list(stream)
    assert planned_on == ["raddiag-prefetch"] and threading.current_thread().name != "raddiag-prefetch"
    assert [item.order for item in items] == epoch_records(records, cfg, names, train=True, epoch=1)[0::2]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparse_replicates_equal_the_curve_of_the_drawn_cases(seed: int, monkeypatch) -> None:
    """The bootstrap kernel (a gather and a running sum over the negatives, the rest at the positives
    and around each FPR crossing) gives what curve_stats gives on the drawn cases of every class —
    bit for bit but AP (summation order) — with ties from none to heavy, validation thresholds, and
    multiplicities that make long straight stretches (all ones: the whole-row window) or do not sum to n."""
    from raddiag import metrics
    from raddiag.metrics import FPR_POINTS, METRICS, VAL_METRICS, curve_stats, sort_block

    if seed == 2:
        monkeypatch.setattr(metrics, "_INT32_KEYS", 0)  # the int64 keys of very large blocks
    rng = np.random.default_rng(seed)
    n, c = 160, 24
    y = rng.random((n, c)) < rng.uniform(0.02, 0.5, c)
    y[0], y[1] = True, False  # every class evaluable on the split
    s = rng.normal(size=(n, c)) + 1.2 * y
    s[:, 8:16] = np.round(s[:, 8:16], 1)  # ties
    s[:, 16:] = np.round(s[:, 16:])  # heavy ties
    order, ss, sy = sort_block(np.ascontiguousarray(s.T), np.ascontiguousarray(y.T))
    vy = rng.random((n, c)) < 0.2
    vy[0], vy[1] = True, False
    _, vs, vsy = sort_block(np.ascontiguousarray(rng.normal(size=(n, c)).T), np.ascontiguousarray(vy.T))
    vstats = curve_stats(vs, vsy)
    thresholds = {"f1": vstats["threshold"]} | {f"r{sfx}": vstats[f"threshold_r{sfx}"] for sfx, _ in FPR_POINTS}
    names = METRICS + VAL_METRICS
    sparse = metrics.ReplicateCurves(order, ss, sy, thresholds)
    weight_sets = [np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(8)]
    weight_sets += [np.ones(n, dtype=np.int64), (rng.random(n) < 0.6) * rng.integers(1, 4, n)]
    for weights in weight_sets:
        drawn = weights > 0
        at = np.flatnonzero(drawn[order])
        m = int(drawn.sum())
        expected = curve_stats(ss.ravel()[at].reshape(c, m), sy.ravel()[at].reshape(c, m), weights[order.ravel()[at]].reshape(c, m), thresholds)
        expected |= metrics._honest(expected)
        got = sparse.values(weights, names)
        for j, name in enumerate(names):
            want = expected[name]
            assert np.array_equal(np.isnan(got[:, j]), np.isnan(want)), name
            if name == "ap":
                np.testing.assert_allclose(got[:, j], want, rtol=0, atol=1e-12)
            else:
                assert np.array_equal(got[:, j], want, equal_nan=True), name


def test_ablation_replicates_score_the_drawn_cases_of_every_evaluable_class() -> None:
    """stats.paired_bootstrap's replicates: AUC/AP/F1 of each class on the drawn cases (the kernel),
    NaN only for classes without both labels on the split. Before, the undrawn cases stayed in the
    curve as zero-weight points, and a class whose top-scored case was not drawn got AP = NaN (0/0
    precision) and silently left that replicate's AP mean."""
    from raddiag.metrics import curve_stats, sort_block
    from raddiag.stats import _Sorted

    rng = np.random.default_rng(9)
    n, c = 120, 16
    y = (rng.random((n, c)) < rng.uniform(0.05, 0.4, c)).astype(int)
    y[:, 2] = 0  # not evaluable
    s = np.round(rng.normal(size=(n, c)) + y, 1)
    run = _Sorted(y, s)
    order, ss, sy = sort_block(np.ascontiguousarray(s.T), np.ascontiguousarray(y.T.astype(bool)))
    names = ("auc", "ap", "f1")
    for _ in range(6):
        weights = np.bincount(rng.integers(0, n, n), minlength=n)
        weights[order[:, 0]] = 0  # no class's top-scored case drawn
        got = run.metrics(weights, names)
        drawn = weights > 0
        at = np.flatnonzero(drawn[order])
        m = int(drawn.sum())
        want = curve_stats(ss.ravel()[at].reshape(c, m), sy.ravel()[at].reshape(c, m), weights[order.ravel()[at]].reshape(c, m))
        assert np.isnan(got["ap"][2]) and np.array_equal(np.isnan(got["ap"]), ~want["valid"])
        for name in names:
            np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-12)
