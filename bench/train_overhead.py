"""Ray Train step overhead against a plain PyTorch loop with the same model, data and settings.

Both sides train the same tiny config on the same synthetic store for the same epochs, one process
each with one torch thread: (a) a plain loop that assembles batches in-process (the same BlockAssembler) and
calls ``train_step``; (b) ``raddiag train`` machinery: TorchTrainer with 1 worker, data streamed by
Ray Data, per-epoch validation, checkpoints and MLflow logging. Throughput is compared on the
training part of epochs after the first (warm-up excluded): cases/s (a) vs ``train_cases_per_s`` (b).

    .venv/bin/python bench/train_overhead.py [--cases 160] [--epochs 4]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()

    import torch

    from raddiag import tracking
    from raddiag.config import load_config
    from raddiag.data.pipeline import BlockAssembler, epoch_items
    from raddiag.data.read import SliceReader
    from raddiag.losses import build_loss
    from raddiag.model import build_model
    from raddiag.storage.store import Store
    from raddiag.storage.synth import generate
    from raddiag.train.loop import to_tensors, train_step
    from raddiag.train.trainer import run_train

    tmp = Path(tempfile.mkdtemp(prefix="raddiag-bench-"))
    cfg = load_config(None, [
        f"store.url={tmp / 'store'}", f"synth.n_cases={args.cases}", f"train.epochs={args.epochs}",
        f"train.storage_path={tmp / 'ray'}", f"tracking.tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
        "train.num_workers=1", "train.cpus_per_worker=1", "tracking.system_metrics=false", "train.name=bench",
    ])
    manifest = generate(cfg.synth, Store(cfg.store.url))
    names, counts = manifest.label_names(), manifest.train_counts()
    records = manifest.case_records("train")

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(cfg.model, len(names))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    loss_fn = build_loss(cfg.loss, counts, len(records))
    plain_rates = []
    reader = SliceReader(cfg.store.url, cfg.store.endpoint_url, max_gap_bytes=cfg.data.max_gap_kb * 1024)
    for epoch in range(args.epochs):
        assembler = BlockAssembler(cfg.model_dump(mode="json"), names, None, train=True, epoch=epoch)
        items = epoch_items(records, cfg, names, train=True, epoch=epoch)
        started = time.perf_counter()
        for start in range(0, len(items), cfg.train.batch_size):
            batch = assembler(items[start : start + cfg.train.batch_size], reader, image_dtype="float32")
            train_step(model, to_tensors(batch), loss_fn, optimizer, None, cfg.loss.key_slice_weight)
        plain_rates.append(len(items) / (time.perf_counter() - started))
    reader.close()

    started = time.perf_counter()
    result = run_train(cfg)
    ray_wall = time.perf_counter() - started
    history = tracking.client(cfg.tracking.resolved_uri()).get_metric_history(result.run_id, "train_cases_per_s")
    ray_rates = [m.value for m in sorted(history, key=lambda m: m.step)]
    plain, ray_rate = float(np.mean(plain_rates[1:])), float(np.mean(ray_rates[1:]))
    print(json.dumps({
        "cases": args.cases, "train_cases": len(records), "epochs": args.epochs,
        "plain_cases_per_s": round(plain, 2), "ray_train_cases_per_s": round(ray_rate, 2),
        "ray_over_plain_throughput": round(ray_rate / plain, 3),
        "step_overhead_pct": round(100 * (plain / ray_rate - 1), 1),
        "ray_run_wall_s_incl_startup_val_ckpt": round(ray_wall, 1),
        "note": "epochs after the first; (b) reads through Ray Data tasks that run beside the worker",
    }, indent=2))


if __name__ == "__main__":
    main()
