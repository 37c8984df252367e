"""Sweep efficiency at equal budget: ASHA + Optuna TPE against random search without early stopping.

One synthetic store at demo scale (``jobs/demo.yaml``: 400 cases, 32x32x8, tiny ResNet), the search
space of ``jobs/sweep.yaml``, and for each seed two sweeps with the same trial-epoch budget
(``sweep.max_trial_epochs``) and the same ``sweep.seed`` / ``train.seed``:

* ``asha_tpe``: ``searcher=optuna`` + ``scheduler=asha`` (grace period 1, reduction factor 2), with
  ``num_samples`` high enough that the budget, not the sample cap, ends the sweep;
* ``random``: ``searcher=random`` + ``scheduler=none`` (every trial runs all its epochs).

Both search, select and checkpoint on the validation tail AUC (``val_auc_tail``: macro AUC over
the tail classes, fewer than 30 training cases each). After each sweep every child run's per-epoch
history is read back from MLflow, all epoch results are ordered by their MLflow timestamp and the
anytime curve is built: best validation tail AUC so far against cumulative trial-epochs, truncated
at the budget. Trial-epochs are counted as logged to MLflow, which includes epochs Tune never saw:
a trial that ASHA or the budget stops may finish the epoch it was in before it is killed. The
stopper counts only the epochs Tune received, so a sweep logs a few epochs past its budget; those
are reported as overshoot and left out of the curve. The pick (the trial with the best validation
tail AUC within the budget) is then packaged from its checkpoint and evaluated on the test split
with ``raddiag.evaluate.evaluate_model``: selection is on validation, the reported figure on test.

    .venv/bin/python bench/sweep_efficiency.py [--seeds 3] [--trials 4] [--epochs 8] [--output r.json]

Budget = ``--trials`` x ``--epochs`` trial-epochs (default 4 x 8 = 32). Everything (store, Ray
results, MLflow sqlite and artifacts) goes to a fresh temporary directory (``--workdir``). After
every sweep the placement groups still held by stopped trials are counted
(``leaked_placement_groups``) and released.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
METRIC = "val_auc_tail"
FRACTIONS = (0.25, 0.5, 1.0)
METHODS = {
    "asha_tpe": ["sweep.searcher=optuna", "sweep.scheduler=asha", "sweep.grace_period=1", "sweep.reduction_factor=2"],
    "random": ["sweep.searcher=random", "sweep.scheduler=none"],
}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def epoch_results(uri: str, experiment_id: str, parent_run_id: str) -> list[dict[str, Any]]:
    """Every epoch every trial of the sweep reported, ordered by MLflow timestamp: run id, epoch
    (step), timestamp (ms) and the validation tail AUC (NaN when it was not finite, e.g. no tail
    class had a positive validation case; MLflow skips those values)."""
    from raddiag import tracking

    client = tracking.client(uri)
    rows = []
    for run in tracking.child_runs(uri, experiment_id, parent_run_id):
        values = {m.step: m.value for m in client.get_metric_history(run.info.run_id, METRIC)}
        for epoch in client.get_metric_history(run.info.run_id, "epoch"):  # always logged, one per epoch
            rows.append({"run_id": run.info.run_id, "trial_id": run.data.tags.get(tracking.Tags.TRIAL_ID, ""),
                         "epoch": epoch.step, "timestamp": epoch.timestamp, "value": values.get(epoch.step, math.nan)})
    return sorted(rows, key=lambda r: (r["timestamp"], r["epoch"]))


def anytime_curve(rows: list[dict[str, Any]], budget: int) -> tuple[list[list[float]], dict[str, float], str | None]:
    """([[trial_epochs, best value so far], ...] up to ``budget``, best value at each budget
    fraction, run id holding the best value within the budget)."""
    best, best_run, points = math.nan, None, []
    for count, row in enumerate(rows[:budget], start=1):
        if _finite(row["value"]) and not (row["value"] <= best):
            best, best_run = row["value"], row["run_id"]
        points.append([count, best])
    at = {}
    for fraction in FRACTIONS:
        reached = [value for count, value in points if count <= math.ceil(fraction * budget)]
        at[f"{int(fraction * 100)}%"] = reached[-1] if reached else math.nan
    return points, at, best_run


def test_tail_auc(cfg: Any, run_id: str) -> dict[str, float]:
    """Package the run's checkpoint (its best-validation weights) as a pyfunc and evaluate it on
    the test split with the same code as ``raddiag evaluate``."""
    from raddiag import tracking
    from raddiag.evaluate import evaluate_model
    from raddiag.registry import log_model_from_checkpoint

    checkpoint = tracking.client(cfg.tracking.resolved_uri()).get_run(run_id).data.tags[tracking.Tags.CHECKPOINT]
    meta = json.loads(Path(checkpoint, "meta.json").read_text()) if "://" not in checkpoint else {}
    info = log_model_from_checkpoint(cfg, run_id, checkpoint)
    flat = evaluate_model(info.model_uri, cfg, "test").report.flat()
    return {"test_auc_tail": flat["auc_tail"], "test_auc_macro": flat["auc_macro"],
            "test_n_evaluated_tail": flat.get("n_evaluated_tail", math.nan),
            # the packaged weights: best validation value the checkpoint holds and its last epoch
            "pick_checkpoint_best_value": meta.get("best_value", math.nan), "pick_checkpoint_epoch": meta.get("epoch")}


def one_sweep(base: list[str], method: str, seed: int, budget: int, num_samples: int) -> dict[str, Any]:
    from raddiag.config import load_config
    from raddiag.tune.sweep import run_sweep

    overrides = [*base, *METHODS[method], f"sweep.name={method}-s{seed}", f"sweep.seed={seed}", f"train.seed={seed}",
                 f"sweep.max_trial_epochs={budget}", f"sweep.num_samples={num_samples}"]
    cfg = load_config([REPO / "jobs" / "demo.yaml", REPO / "jobs" / "sweep.yaml"], overrides)
    started = time.perf_counter()
    result = run_sweep(cfg)
    wall = time.perf_counter() - started
    rows = epoch_results(cfg.tracking.resolved_uri(), result.experiment_id, result.parent_run_id)
    points, at, pick = anytime_curve(rows, budget)
    trials = {r["run_id"] for r in rows}
    out = {
        "method": method, "seed": seed, "sweep": cfg.sweep.name, "wall_s": round(wall, 1),
        "curve": points, "best_val_tail_auc": at,
        "trials_started": len(trials), "trials_in_budget": len({r["run_id"] for r in rows[:budget]}),
        "full_trials": sum(1 for t in result.trials if t["epochs"] >= cfg.train.epochs),
        "trial_epochs_used": min(len(rows), budget), "trial_epochs_logged": len(rows),
        "overshoot_epochs": max(0, len(rows) - budget),
        "pick_run_id": pick, "pick_is_sweep_best": pick == result.best_run_id, "pick_val_tail_auc": at["100%"],
        "pick_params": next((t["params"] for t in result.trials if t["run_id"] == pick), {}),
    }
    out["leaked_placement_groups"] = release_placement_groups()
    out.update(test_tail_auc(cfg, pick) if pick else {"test_auc_tail": math.nan, "test_auc_macro": math.nan})
    return out


def release_placement_groups(wait_s: float = 90.0) -> int:
    """Between sweeps (no trial is running): wait for Ray Train's cleaners to remove the placement
    groups of the trials Tune stopped (they need the State API: ``ray.state_api``, on by default);
    remove what is left, so one sweep cannot starve the next, and return how many that was."""
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    def live() -> list[str]:
        return [pg_id for pg_id, info in ray.util.placement_group_table().items() if info["state"] != "REMOVED"]

    deadline = time.time() + wait_s
    while live() and time.time() < deadline:
        time.sleep(2)
    leaked = live()
    for pg_id in leaked:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))
    return len(leaked)


def _mean(values: list[float]) -> float:
    finite = [v for v in values if _finite(v)]
    return statistics.fmean(finite) if finite else math.nan


def _sd(values: list[float]) -> float:
    finite = [v for v in values if _finite(v)]
    return statistics.stdev(finite) if len(finite) > 1 else math.nan


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for method in METHODS:
        mine = [r for r in runs if r["method"] == method]
        if not mine:
            continue
        keys = ("test_auc_tail", "test_auc_macro", "trials_started", "trial_epochs_used", "overshoot_epochs", "wall_s",
                "leaked_placement_groups")
        summary[method] = {
            "best_val_tail_auc_mean": {k: _mean([r["best_val_tail_auc"][k] for r in mine]) for k in mine[0]["best_val_tail_auc"]},
            "best_val_tail_auc_sd": {k: _sd([r["best_val_tail_auc"][k] for r in mine]) for k in mine[0]["best_val_tail_auc"]},
            **{f"{k}_mean": _mean([r[k] for r in mine]) for k in keys},
            "test_auc_tail_sd": _sd([r["test_auc_tail"] for r in mine]),
        }
    if {"asha_tpe", "random"} <= summary.keys():
        a, b = summary["asha_tpe"], summary["random"]
        pairs = {}
        for fraction in a["best_val_tail_auc_mean"]:
            diffs = [ra["best_val_tail_auc"][fraction] - rb["best_val_tail_auc"][fraction]
                     for ra in runs if ra["method"] == "asha_tpe" for rb in runs
                     if rb["method"] == "random" and rb["seed"] == ra["seed"]]
            pairs[fraction] = {"mean_diff": _mean(diffs), "per_seed_diff": diffs,
                               "ratio_of_means": a["best_val_tail_auc_mean"][fraction] / b["best_val_tail_auc_mean"][fraction]}
        test_diffs = [ra["test_auc_tail"] - rb["test_auc_tail"] for ra in runs if ra["method"] == "asha_tpe"
                      for rb in runs if rb["method"] == "random" and rb["seed"] == ra["seed"]]
        summary["asha_tpe_vs_random"] = {
            "best_val_tail_auc": pairs,
            "test_auc_tail": {"mean_diff": _mean(test_diffs), "per_seed_diff": test_diffs},
            "trials_started_ratio": a["trials_started_mean"] / b["trials_started_mean"],
            "wall_s_ratio": a["wall_s_mean"] / b["wall_s_mean"],
        }
    return summary


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="seed pairs (sweep.seed = train.seed = 0..N-1)")
    parser.add_argument("--trials", type=int, default=4, help="budget in full trials: budget = trials x epochs")
    parser.add_argument("--epochs", type=int, default=8, help="train.epochs (ASHA's max_t)")
    parser.add_argument("--num-samples", type=int, default=64, help="cap on trials per sweep (the budget should end it)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--workdir", default="", help="'' = a fresh temporary directory")
    parser.add_argument("--output", default="", help="also write the JSON here")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for the store and every sweep (repeatable), e.g. synth.n_cases=80")
    args = parser.parse_args()

    import raddiag
    from raddiag.config import load_config
    from raddiag.runtime import init_ray
    from raddiag.storage.store import Store
    from raddiag.storage.synth import generate

    work = Path(args.workdir or tempfile.mkdtemp(prefix="raddiag-sweep-bench-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    budget = args.trials * args.epochs
    base = [
        f"store.url={work / 'store'}", f"train.storage_path={work / 'ray_results'}",
        f"tracking.tracking_uri=sqlite:///{work / 'mlflow.db'}", "tracking.experiment=sweep-efficiency",
        f"train.epochs={args.epochs}", f"sweep.metric={METRIC}", f"train.metric={METRIC}", "sweep.mode=max",
        *args.overrides,
    ]
    cfg = load_config([REPO / "jobs" / "demo.yaml", REPO / "jobs" / "sweep.yaml"], base)
    started = time.perf_counter()
    manifest = generate(cfg.synth, Store(cfg.store.url))
    synth_s = time.perf_counter() - started
    init_ray(cfg.ray)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    commit = commit or os.environ.get("RADDIAG_BENCH_COMMIT", "")  # a `git archive` export has no .git
    runs = []
    for seed in range(args.seeds):
        for method in args.methods.split(","):
            runs.append(one_sweep(base, method, seed, budget, args.num_samples))
            print(json.dumps(_json_safe({k: v for k, v in runs[-1].items() if k != "curve"})), flush=True)
    report = {
        "setup": {
            "commit": commit or "unknown", "raddiag": str(Path(raddiag.__file__).parent), "workdir": str(work),
            "budget_trial_epochs": budget, "trials": args.trials, "epochs": args.epochs, "seeds": args.seeds,
            "num_samples": args.num_samples, "metric": METRIC, "overrides": args.overrides, "methods": {m: METHODS[m] for m in args.methods.split(",")},
            "store_version": manifest.version, "cases": manifest.info["n_cases"], "splits": manifest.info["splits"],
            "synth_s": round(synth_s, 1),
        },
        "runs": runs,
        "summary": summarise(runs),
    }
    report = _json_safe(report)
    text = json.dumps(report, indent=1)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
