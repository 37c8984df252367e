"""Batch scoring throughput: `raddiag score` (Ray Data actor pool) beside the in-process scorer.

    .venv/bin/python bench/score_throughput.py [--cases 600] [--split train] [--json out.json]

A benchmark store (the demo's RP3D-LT profile at ``--cases``) and a default-config model with random
weights, registered in a throwaway MLflow (sqlite). The split is scored three ways, side by side in
one run: in-process (``score.score_records``, what ``evaluate`` runs), then ``run_score`` with 1 and
2 actors (each 1 CPU). Reported: wall cases/s (Ray Data and actor start-up included — what a user
waits for), per actor, and the steady state of one actor (cases / seconds actors spent scoring and
writing chunks), each beside in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))


def _register(cfg, manifest, tmp: Path) -> None:
    import mlflow
    import torch

    from raddiag import tracking
    from raddiag.model import build_model
    from raddiag.serve.pyfunc import log_pyfunc
    from raddiag.train.trainer import label_embeddings

    names = manifest.label_names("disorder")
    table = label_embeddings(cfg, names, manifest.label_codes("disorder"))
    torch.manual_seed(0)
    network = build_model(cfg.model, len(names), label_embeddings=torch.tensor(np.asarray(table, np.float32)) if table else None)
    checkpoint = tmp / "checkpoint"
    checkpoint.mkdir()
    torch.save(network.state_dict(), checkpoint / "best.pt")
    (checkpoint / "meta.json").write_text(json.dumps({
        "config": cfg.model_dump(mode="json"), "label_names": names, "train_counts": manifest.train_counts("disorder").tolist(),
        "label_embeddings": table, "dataset_version": manifest.version,
    }))
    n, d, s = cfg.data.n_image, cfg.data.depth, cfg.data.image_size
    example = {"images": np.zeros((1, n, d, s, s), np.float32), "scan_mask": np.ones((1, n), bool),
               "slice_mask": np.ones((1, n, d), bool), "modality_ids": np.ones((1, n), np.int64)}
    with mlflow.start_run(experiment_id=tracking.setup(cfg.tracking)):
        info = log_pyfunc(str(checkpoint), example, registered_model=cfg.tracking.registered_model)
    tracking.client(cfg.tracking.resolved_uri()).set_registered_model_alias(
        cfg.tracking.registered_model, "champion", info.registered_model_version
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=600, help="cases in the benchmark store")
    parser.add_argument("--split", default="train")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from raddiag.config import load_config
    from raddiag.runtime import quiet
    from raddiag.score import run_score, score_records
    from raddiag.serve.bundle import ModelBundle
    from raddiag.storage.store import Store
    from raddiag.storage.synth import generate

    quiet(False)
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        cfg = load_config(None, [
            f"store.url={tmp / 'store'}", f"synth.n_cases={args.cases}", f"tracking.tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
            "tracking.experiment=bench", "tracking.registered_model=bench", f"train.storage_path={tmp / 'ray'}",
        ])
        manifest = generate(cfg.synth, Store(cfg.store.url))
        _register(cfg, manifest, tmp)
        uri = "models:/bench@champion"
        records = manifest.case_records(args.split)

        bundle = ModelBundle.load(uri).on_store(cfg.store.ref())
        torch.set_num_threads(1)
        started = time.perf_counter()
        score_records(bundle, records)
        in_process = len(records) / (time.perf_counter() - started)

        results = {"in_process": {"cases_per_s": round(in_process, 2), "threads": 1}}
        for actors in (1, 2):
            run = run_score(cfg, uri, args.split, str(tmp / f"scores-{actors}"), actors=actors, cpus_per_actor=1, chunk_cases=64)
            results[f"ray_{actors}_actors"] = {
                "cases_per_s": round(run.cases_per_s, 2), "cases_per_s_per_actor": round(run.cases_per_s / actors, 2),
                "ratio_to_in_process": round(run.cases_per_s / in_process, 3), "seconds": round(run.seconds, 2),
                "steady_cases_per_actor_s": round(run.cases_per_actor_s, 2),
                "steady_ratio_to_in_process": round(run.cases_per_actor_s / in_process, 3),
            }
        import ray

        ray.shutdown()
    report = {
        "benchmark": "score_throughput", "cases": len(records), "split": args.split, "image_size": cfg.data.image_size,
        "depth": cfg.data.depth, "n_image": cfg.data.n_image, "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "results": results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
