"""A fresh Ray's first training epoch: how long it waits for data, with augmentation in the read tasks or on the device.

Each arm is one ``raddiag train`` in a fresh process (so a fresh local Ray: cold read-task processes, as a test, the demo
or a newly provisioned cluster has them) on the same tiny synthetic store: ``data.augment.on=workers`` (a MONAI
``Compose`` per scan in the Ray Data read tasks: each fresh read process first imports MONAI) against
``data.augment.on=device`` (one batched call per batch in the training worker; the default). Arms alternate,
``--repeats`` times each. Reported per run, from the run's MLflow metrics: epoch 0's ``train_data_wait_s`` and
``epoch_time_s``, later epochs' mean data wait, the MLflow run's duration and the command's wall time.

    .venv/bin/python bench/first_epoch.py [--repeats 2] [--epochs 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ["synth.n_cases=60", "synth.n_labels=8", "synth.image_size=16", "synth.max_depth=4", "data.image_size=16", "data.depth=4",
        "model.embed_dim=32", "model.width=4", "train.batch_size=8", "train.num_workers=2", "train.cpus_per_worker=0.5",
        "tracking.experiment=bench"]


def _sets(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def run_arm(work: Path, store: str, on: str, epochs: int, index: int) -> dict:
    """One ``raddiag train`` (fresh process, fresh Ray) with augmentation ``on``; its first-epoch figures."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{work / f'mlflow-{on}-{index}.db'}"
    overrides = [*TINY, f"store.url={store}", f"train.epochs={epochs}", f"data.augment.on={on}",
                 f"train.storage_path={work / f'ray-{on}-{index}'}", f"tracking.tracking_uri={uri}", f"train.name=first-epoch-{on}"]
    exe = str(Path(sys.executable).with_name("raddiag"))
    started = time.perf_counter()
    done = subprocess.run([exe, "train", *_sets(overrides)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"raddiag train ({on}) failed:\n{done.stderr[-3000:]}")
    client = MlflowClient(uri)
    run = next(r for e in client.search_experiments() for r in client.search_runs([e.experiment_id]))
    wait = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train_data_wait_s")}
    epoch = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "epoch_time_s")}
    later = [wait[step] for step in sorted(wait) if step > 0]
    return {"on": on, "epoch0_data_wait_s": round(wait[0], 2), "epoch0_time_s": round(epoch[0], 2),
            "later_data_wait_s": round(statistics.mean(later), 3) if later else None,
            "run_s": round((run.info.end_time - run.info.start_time) / 1000, 1), "wall_s": round(wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--json", default="", help="write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="first-epoch-") as tmp:
        work = Path(tmp)
        store = str(work / "store")
        exe = str(Path(sys.executable).with_name("raddiag"))
        subprocess.run([exe, "synth", *_sets([*TINY, f"store.url={store}"])], cwd=REPO, check=True, capture_output=True)
        runs = []
        for index in range(args.repeats):
            for on in (("workers", "device") if index % 2 == 0 else ("device", "workers")):
                runs.append(run_arm(work, store, on, args.epochs, index))
                print(json.dumps(runs[-1]), flush=True)
    summary = {on: {key: round(statistics.median(r[key] for r in runs if r["on"] == on), 2)
                    for key in ("epoch0_data_wait_s", "epoch0_time_s", "run_s", "wall_s")} for on in ("workers", "device")}
    result = {"runs": runs, "median": summary, "epochs": args.epochs, "repeats": args.repeats,
              "env": {"cpus": os.cpu_count(), "load_avg_1m_at_end": round(os.getloadavg()[0], 2), "python": sys.version.split()[0]}}
    print(json.dumps(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
