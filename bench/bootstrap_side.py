"""Benchmark: ``evaluate_scores`` bootstrap at RP3D test size, this code beside an earlier commit's.

The test split of ``bench/rp3d_scale.py`` (6,000 cases × 5,569 labels, float32 sigmoid scores, ~2,800
evaluable classes) is scored with ``n_bootstrap`` replicates by ``raddiag.metrics`` as checked out and
by ``platform/raddiag/metrics.py`` of ``--before`` (read with ``git show``, loaded as its own module),
one after the other in one process, each with no, ``R`` and ``2R`` replicates (per replicate from
the difference, so a one-off set-up is not counted per replicate); every draw of the two must agree
within 1e-12 (AP sums in another order; the other metrics are equal). ``--full N`` also times this code alone with N replicates (the
issue's ``evaluate --bootstrap 1000``); ``--plot`` times ``plots.roc_by_group`` on the validation split
with either module's band replicates. CPU seconds are given beside wall seconds: the machine is
shared. Prints one JSON object.

    PYTHONPATH=platform .venv/bin/python bench/bootstrap_side.py [--before 95e2ee5~1] [--replicates 10] [--full 1000] [--plot]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from raddiag import metrics  # noqa: E402
from rp3d_scale import eval_data, make_records  # noqa: E402


def load_before(commit: str) -> Any:
    """``raddiag/metrics.py`` as of ``commit``, as a module of its own."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "-C", str(root), "show", f"{commit}:platform/raddiag/metrics.py"],
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "metrics_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("metrics_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["metrics_before"] = module
    spec.loader.exec_module(module)
    return module


def timed(fn: Any) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="95e2ee5~1", help="commit whose metrics.py is the baseline")
    parser.add_argument("--replicates", type=int, default=10, help="R: replicates timed side by side (and 2R)")
    parser.add_argument("--full", type=int, default=0, help="also time this code alone with this many replicates")
    parser.add_argument("--plot", action="store_true", help="also time the ROC-by-group plot (100-resample band) with each")
    args = parser.parse_args()
    before = load_before(args.before)

    records, names, _ = make_records(40_936, 195_010, 5_569, 930)
    test, train = records[2_077:8_077], records[8_077:]
    index = {name: i for i, name in enumerate(names)}
    counts = np.zeros(len(names), dtype=np.int64)
    for record in train:
        for name in record["disorders"]:
            counts[index[name]] += 1
    truth, score = eval_data(test, names, 3)
    out: dict[str, Any] = {"machine": f"{os.cpu_count()} CPUs", "shape": list(truth.shape), "before": args.before,
                           "replicates": args.replicates, "bootstrap_threads": metrics.BOOTSTRAP_THREADS,
                           "load_average_start": [round(x, 1) for x in os.getloadavg()]}
    draws = {}
    # plain, R and 2R replicates: per replicate = (T(2R) - T(R)) / R; the rest of T(R) - plain is the
    # one-off set-up of the replicates (sorting is in plain; the new code prepares each block once).
    for name, module in (("before", before), ("after", metrics)):
        plain, wall0, cpu0 = timed(lambda m=module: m.evaluate_scores(truth, score, counts))
        report, wall1, cpu1 = timed(lambda m=module: m.evaluate_scores(truth, score, counts, n_bootstrap=args.replicates, seed=0))
        _, wall2, cpu2 = timed(lambda m=module: m.evaluate_scores(truth, score, counts, n_bootstrap=2 * args.replicates, seed=0))
        per_wall, per_cpu = (wall2 - wall1) / args.replicates, (cpu2 - cpu1) / args.replicates
        setup_wall, setup_cpu = wall1 - wall0 - args.replicates * per_wall, cpu1 - cpu0 - args.replicates * per_cpu
        out[name] = {"plain_s": round(wall0, 2), "plain_cpu_s": round(cpu0, 2), "setup_s": round(setup_wall, 2), "setup_cpu_s": round(setup_cpu, 2),
                     "per_replicate_s": round(per_wall, 4), "per_replicate_cpu_s": round(per_cpu, 4),
                     "extrapolated_1000_s": round(wall1 + (1000 - args.replicates) * per_wall, 1),
                     "extrapolated_1000_cpu_s": round(cpu1 + (1000 - args.replicates) * per_cpu, 1)}
        out["evaluable_classes"] = int(plain.per_class["evaluated"].sum())
        draws[name] = report.draws
        print(name, out[name], file=sys.stderr, flush=True)
    diffs = [np.abs(draws["before"][g][m] - draws["after"][g][m]) for g in draws["before"] for m in draws["before"][g]]
    same_nan = all(np.array_equal(np.isnan(draws["before"][g][m]), np.isnan(draws["after"][g][m])) for g in draws["before"] for m in draws["before"][g])
    out["draws_max_abs_diff"] = float(max(np.nanmax(d) if np.isfinite(d).any() else 0.0 for d in diffs))
    out["draws_agree"] = bool(same_nan and out["draws_max_abs_diff"] <= 1e-12)
    out["speedup_per_replicate_cpu"] = round(out["before"]["per_replicate_cpu_s"] / out["after"]["per_replicate_cpu_s"], 2)
    if args.plot:
        # The final ROC-by-group plot (validation split, 100-resample band), its band replicates from
        # either module's interpolated_roc_replicates.
        from raddiag import plots
        from raddiag.metrics import group_of_counts

        val_true, val_score = eval_data(records[:2_077], names, 2)
        current = plots.interpolated_roc_replicates
        with tempfile.TemporaryDirectory() as directory:
            for name, fn in (("before", before.interpolated_roc_replicates), ("after", current)):
                plots.interpolated_roc_replicates = fn
                _, wall, cpu = timed(lambda n=name: plots.roc_by_group(val_true, val_score, counts, os.path.join(directory, f"{n}.png"),
                                                                       groups=group_of_counts(counts)))
                out[f"roc_plot_{name}"] = {"seconds": round(wall, 2), "cpu_s": round(cpu, 2)}
        plots.interpolated_roc_replicates = current
        grid = np.linspace(0.0, 1.0, 101)
        weights = [np.bincount(np.random.default_rng(b).integers(0, 2_077, 2_077), minlength=2_077) for b in range(5)]
        pairs = zip(before.interpolated_roc_replicates(val_true, val_score, grid, weights), current(val_true, val_score, grid, weights), strict=True)
        out["roc_band_max_abs_diff"] = float(max(np.nanmax(np.abs(a - b)) for a, b in pairs))
    if args.full:
        _, wall, cpu = timed(lambda: metrics.evaluate_scores(truth, score, counts, n_bootstrap=args.full, seed=0))
        out["full"] = {"replicates": args.full, "seconds": round(wall, 1), "cpu_s": round(cpu, 1)}
    out["load_average_end"] = [round(x, 1) for x in os.getloadavg()]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
