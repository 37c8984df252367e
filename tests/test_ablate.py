"""`raddiag ablate` and its statistics: the paired bootstrap against direct scikit-learn numbers, config
errors before Ray starts, a tiny 2-arm x 1-seed ablation for real (Ray Tune + TorchTrainer + MLflow),
and the shuffled-labels control (nothing leaks labels into the inputs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from conftest import REPO, run_cli
from raddiag.metrics import group_of_counts
from raddiag.stats import paired_bootstrap
from raddiag.tracking import Tags


def _runs(seed: int = 0, n: int = 300, classes: int = 6, noise: tuple[float, ...] = (0.5, 2.0)) -> tuple[dict, np.ndarray, np.ndarray]:
    """Two arms x 2 seeds on the same labels; arm i's scores = labels + noise[i] * N(0, 1)."""
    rng = np.random.default_rng(seed)
    truth = (rng.random((n, classes)) < 0.2).astype(np.uint8)
    truth[0] = 1
    truth[1] = 0
    counts = np.array([150, 120, 60, 40, 10, 5])[:classes]
    runs = {}
    for arm, scale in zip(("good", "bad"), noise):
        runs[arm] = {s: (truth, truth + scale * rng.normal(size=truth.shape)) for s in (0, 1)}
    return runs, truth, counts


def test_point_estimates_match_sklearn_macro_auc_by_group() -> None:
    runs, truth, counts = _runs()
    table = paired_bootstrap(runs, counts, [("good", "bad")], n_bootstrap=20)
    groups = group_of_counts(counts)
    for arm in runs:
        for group in ("head", "medium", "tail"):
            members = np.flatnonzero(groups == group)
            expected = np.mean([np.mean([roc_auc_score(truth[:, c], runs[arm][s][1][:, c]) for c in members]) for s in (0, 1)])
            assert table.estimates[arm][group]["auc"].mean == pytest.approx(expected, abs=1e-9)
            per_seed = [table.per_seed[arm][s][group]["auc"] for s in (0, 1)]
            assert np.mean(per_seed) == pytest.approx(expected, abs=1e-4)
    assert table.counts == {"head": 2, "medium": 2, "tail": 2, "all": 6}


def test_bootstrap_cis_cover_the_mean_and_pair_the_arms() -> None:
    runs, _, counts = _runs()
    table = paired_bootstrap(runs, counts, [("good", "bad"), ("good", "good")], n_bootstrap=200)
    for arm in runs:
        for group, values in table.estimates[arm].items():
            for metric, est in values.items():
                assert est.low <= est.mean + 1e-9 and est.mean <= est.high + 1e-9, (arm, group, metric)
    better = table.differences["good - bad"]["all"]["auc"]
    assert better.mean > 0.1 and better.low > 0  # a much less noisy arm: the paired CI excludes 0
    same = table.differences["good - good"]["all"]["auc"]
    assert same.mean == 0 and same.low == 0 and same.high == 0  # paired: identical arms differ by exactly 0
    markdown = table.markdown()
    assert "| good |" in markdown and "good - bad" in markdown and "*" in markdown
    document = json.loads(json.dumps(table.to_json()))
    assert document["estimates"]["good"]["tail"]["auc"][0] == pytest.approx(table.estimates["good"]["tail"]["auc"].mean, abs=1e-4)


def test_paired_bootstrap_refuses_runs_on_different_cases() -> None:
    runs, truth, counts = _runs()
    runs["bad"][1] = (1 - truth, runs["bad"][1][1])
    with pytest.raises(ValueError, match="not the same test cases"):
        paired_bootstrap(runs, counts, [])
    runs, _, counts = _runs()
    del runs["bad"][1]
    with pytest.raises(ValueError, match="every arm needs every seed"):
        paired_bootstrap(runs, counts, [])


def test_arm_scores_round_trip_and_a_foreign_file_is_named(tmp_path: Path) -> None:
    from raddiag.tune.ablate import AblationError, ArmScores

    rng = np.random.default_rng(0)
    labels, scores = (rng.random((5, 3)) > 0.5).astype(np.uint8), rng.random((5, 3)).astype(np.float32)
    ids = np.array([f"c{i}" for i in range(5)])
    saved = ArmScores("run-1", 12.5, np.array([3, 2, 1]), labels, scores, ids, labels[::-1], scores[::-1], ids[::-1])
    saved.save(str(tmp_path / "a-s0.npz"))
    loaded = ArmScores.load(str(tmp_path / "a-s0.npz"))
    assert (loaded.run_id, loaded.train_seconds) == ("run-1", 12.5)
    assert np.array_equal(loaded.test_scores, saved.test_scores) and loaded.test_labels.dtype == np.uint8
    assert list(loaded.test_case_ids) == list(ids[::-1])
    np.savez_compressed(tmp_path / "other.npz", test_scores=scores)
    with pytest.raises(AblationError, match=r"other.npz: not an arm's scores file \(missing run_id, train_seconds"):
        ArmScores.load(str(tmp_path / "other.npz"))


def test_ablate_config_errors_stop_before_ray(tmp_path: Path) -> None:
    result = run_cli("ablate", "--set", "ablation.arms={a: {model.nope: 1}}",
                     "--set", f"train.storage_path={tmp_path}", cwd=REPO)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "ablation.arms.a" in result.stderr and "model.nope" in result.stderr
    result = run_cli("ablate", "--set", "ablation.comparisons=[[a, zz]]", "--set", "ablation.arms={a: {}}", cwd=REPO)
    assert result.returncode == 2 and "zz" in result.stderr
    assert not (tmp_path / "raddiag-ablation").exists()


def _tiny_benchmark(tmp: Path) -> list[str]:
    return [
        f"store.url={tmp / 'store'}", "synth.profile=benchmark", "synth.n_cases=400", "synth.n_labels=11",
        "synth.val_fraction=0.25", "synth.test_fraction=0.25", "synth.image_size=32", "synth.max_depth=4",
        "data.depth=4", "data.image_size=32", "model.embed_dim=32", "model.width=4", "model.ke.dim=32",
        "train.batch_size=16", "train.num_workers=1", "train.cpus_per_worker=1",
        f"train.storage_path={tmp / 'ray'}", f"tracking.tracking_uri=sqlite:///{tmp / 'mlflow.db'}", "tracking.experiment=tests",
    ]


@pytest.mark.slow
def test_tiny_ablation_end_to_end(tmp_path: Path) -> None:
    """2 arms x 1 seed through the console script: Tune grid, child runs, table, artifacts."""
    from raddiag import tracking

    # a ViT slice encoder: the ablation machinery is under test, not the backbone (each arm's Train worker and the
    # driver's model logging skip MONAI's import, ~10 s each on 2 cores)
    sets = [*_tiny_benchmark(tmp_path), "model.encoder=vit", "train.epochs=2", "ablation.name=tiny", "ablation.seeds=[3]", "ablation.n_bootstrap=50",
            "ablation.arms={late: {model.fusion: late, model.head: mlp}, fused: {model.fusion: transformer, model.head: ke}}"]
    args = ["ablate", "--output", str(tmp_path / "table.json")]
    for item in sets:
        args += ["--set", item]
    result = run_cli(*args, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "fused - late" in result.stdout and "| late |" in result.stdout
    document = json.loads((tmp_path / "table.json").read_text())
    assert document["arms"] == ["late", "fused"] and document["seeds"] == [3]
    assert 0 <= document["estimates"]["fused"]["all"]["auc"][0] <= 1
    assert (tmp_path / "table.md").read_text().startswith("**AUC**")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking.client(uri)
    experiment = client.get_experiment_by_name("tests")
    parents = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{Tags.ROLE}` = 'ablation'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"ablation.json", "ablation.md"}
    assert "fused.test_auc_all" in parent.data.metrics
    children = tracking.child_runs(uri, experiment.experiment_id, parent.info.run_id)
    assert sorted(c.data.tags[Tags.ARM] for c in children) == ["fused", "late"]
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags[Tags.SEED] == "3"
        assert "test_auc_macro" in child.data.metrics
        assert client.get_metric_history(child.info.run_id, "val_auc_macro")  # per-epoch validation
    assert {c.data.params["model.fusion"] for c in children} == {"late", "transformer"}


@pytest.mark.slow
def test_shuffled_training_labels_stay_at_chance(tmp_path: Path, ray_local) -> None:
    """Same images, training label sets permuted across cases: validation AUC at chance, while the
    true labels are learned by the same recipe (so the test can tell the two apart)."""
    from raddiag.config import load_config
    from raddiag.storage.store import Store
    from raddiag.storage.synth import generate
    from raddiag.train.trainer import run_train

    aucs = {}
    for shuffled in (False, True):
        tmp = tmp_path / f"shuffled-{shuffled}"
        cfg = load_config(None, [*_tiny_benchmark(tmp), "synth.n_cases=800", "train.epochs=6", "model.head=mlp",
                                 f"synth.shuffle_train_labels={str(shuffled).lower()}", "train.name=shuffle-check"])
        manifest = generate(cfg.synth, Store(cfg.store.url))
        assert manifest.info["benchmark"]["shuffle_train_labels"] is shuffled
        result = run_train(cfg)
        aucs[shuffled] = result.metrics["val_auc_macro"]  # the last epoch, not the best one
    assert aucs[False] > 0.7, aucs
    assert abs(aucs[True] - 0.5) < 0.08, aucs


def test_ablation_store_is_synthesised_once_and_a_different_spec_refused(tmp_path: Path) -> None:
    from raddiag.config import load_config
    from raddiag.tune.ablate import AblationError, ensure_store

    sets = [*_tiny_benchmark(tmp_path), "synth.n_cases=40", "synth.image_size=16", "synth.max_depth=2"]
    first = ensure_store(load_config(None, sets))  # no store yet: synthesised
    assert first.info["benchmark"]["splits"] == {"train": 20, "val": 10, "test": 10}
    again = ensure_store(load_config(None, sets))  # the same spec: reused as it is
    assert again.version == first.version
    with pytest.raises(AblationError, match="other synth settings"):
        ensure_store(load_config(None, [*sets, "synth.seed=5"]))
