"""Ray Train step overhead against a plain PyTorch loop with the same model, data and settings.

All sides train the same config (tiny by default; ``--set`` for others) on the same synthetic store
for the same epochs with one torch thread, the same batch assembly (``BlockAssembler``, uint8
images converted to float by the consumer) and the same per-epoch case order:
(a) plain PyTorch, batches assembled in the training thread; (a') plain PyTorch with
``data.read_parallelism`` ``DataLoader`` worker processes reading ahead (as many readers as Ray
Data's concurrent read tasks: the stronger baseline); (a'') the compute bound: the same steps on
batches assembled beforehand, no data cost at all;
(b) ``raddiag train``: TorchTrainer with 1 worker, Ray Data streaming (read tasks beside the
worker, next epoch read ahead), per-epoch validation, checkpoints and MLflow logging.
Throughput is compared on the training part of the epochs after the first (warm-up excluded):
cases/s of the faster plain loop vs ``train_cases_per_s`` of (b).

    .venv/bin/python bench/train_overhead.py [--cases 160] [--epochs 4] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


class EpochBatches:
    """Map-style dataset of one epoch's batches, assembled by the pipeline's own BlockAssembler
    (uint8 images; the consumer converts to float like ``iter_batches``); the reader opens lazily
    in whichever process reads (a DataLoader worker after the fork)."""

    def __init__(self, cfg, names: list[str], items: list, epoch: int) -> None:  # noqa: ANN001
        self.cfg, self.names, self.epoch = cfg, names, epoch
        size = cfg.train.batch_size
        self.batches = [items[i : i + size] for i in range(0, len(items), size)]
        self._reader = self._assembler = None

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict:
        from raddiag.data.pipeline import BlockAssembler
        from raddiag.data.read import SliceReader

        if self._reader is None:
            self._reader = SliceReader(self.cfg.store.ref(), max_gap_bytes=self.cfg.data.max_gap_kb * 1024)
            self._assembler = BlockAssembler(self.cfg.model_dump(mode="json"), self.names, None, train=True, epoch=self.epoch)
        return self._assembler(self.batches[index], self._reader)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value (repeatable), e.g. a bigger model")
    args = parser.parse_args()

    import torch

    from raddiag import tracking
    from raddiag.config import load_config
    from raddiag.data.pipeline import epoch_items
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
        "train.num_workers=1", "train.cpus_per_worker=1", "tracking.system_metrics=false", "train.name=bench", *args.overrides,
    ])
    manifest = generate(cfg.synth, Store(cfg.store.url))
    names, counts = manifest.label_names(), manifest.train_counts()
    records = manifest.case_records("train")

    torch.set_num_threads(1)
    loss_fn = build_loss(cfg.loss, counts, len(records))

    def plain(source: str) -> list[tuple[float, float]]:
        """Plain PyTorch, per epoch ``(cases/s, steady-state cases/s from the first batch's arrival)``.
        ``source``: "serial" assembles each batch in the training thread; "loader" uses
        ``data.read_parallelism`` ``DataLoader`` worker processes reading ahead (as many readers as
        Ray Data's concurrent read tasks); "memory" assembles the epoch beforehand, untimed (the
        compute bound)."""
        torch.manual_seed(0)
        model = build_model(cfg.model, len(names))
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
        rates = []
        for epoch in range(args.epochs):
            items = epoch_items(records, cfg, names, train=True, epoch=epoch)
            batches = EpochBatches(cfg, names, items, epoch)
            if source == "memory":
                stream: Any = [batches[i] for i in range(len(batches))]
            else:
                workers = cfg.data.read_parallelism if source == "loader" else 0
                stream = torch.utils.data.DataLoader(
                    batches, batch_size=None, num_workers=workers, prefetch_factor=cfg.train.prefetch_batches if workers else None,
                    collate_fn=lambda batch: batch,
                )
            started = time.perf_counter()
            first = None
            for batch in stream:
                if first is None:
                    first, first_cases = time.perf_counter(), len(batch["order"])
                tensors = to_tensors(batch)
                tensors["images"] = tensors["images"].float().div_(255.0)
                train_step(model, tensors, loss_fn, optimizer, None, cfg.loss.key_slice.weight)
            ended = time.perf_counter()
            rates.append((len(items) / (ended - started), (len(items) - first_cases) / (ended - first)))
        return rates

    serial_rates, serial_steady = zip(*plain("serial"))
    loader_rates, loader_steady = zip(*plain("loader"))
    bound_rates, _ = zip(*plain("memory"))

    started = time.perf_counter()
    result = run_train(cfg)
    ray_wall = time.perf_counter() - started
    client = tracking.client(cfg.tracking.resolved_uri())

    def history(key: str) -> list[float]:
        return [m.value for m in sorted(client.get_metric_history(result.run_id, key), key=lambda m: m.step)]

    ray_rates, waits = history("train_cases_per_s"), history("train_data_wait_s")
    serial, loader, bound, ray_rate = (float(np.mean(r[1:])) for r in (serial_rates, loader_rates, bound_rates, ray_rates))
    plain = max(serial, loader)  # the faster plain loop is the baseline
    print(json.dumps({
        "cases": args.cases, "train_cases": len(records), "epochs": args.epochs,
        "plain_serial_cases_per_s": round(serial, 2), "plain_dataloader_cases_per_s": round(loader, 2),
        "steady_state_excl_first_batch": {
            "plain_serial": round(float(np.mean(serial_steady[1:])), 2), "plain_dataloader": round(float(np.mean(loader_steady[1:])), 2),
        },
        "compute_bound_in_memory_cases_per_s": round(bound, 2),
        "plain_cases_per_s": round(plain, 2), "ray_train_cases_per_s": round(ray_rate, 2),
        "ray_over_compute_bound": round(ray_rate / bound, 3),
        "ray_over_plain_throughput": round(ray_rate / plain, 3),
        "step_overhead_pct": round(100 * (plain / ray_rate - 1), 1),
        "ray_data_wait_s_per_epoch": [round(w, 3) for w in waits],
        "ray_run_wall_s_incl_startup_val_ckpt": round(ray_wall, 1),
        "overrides": args.overrides,
        "note": "epochs after the first; baseline = the faster plain loop; Ray Data read tasks and the DataLoader worker run beside the training thread",
    }, indent=2))


if __name__ == "__main__":
    main()
