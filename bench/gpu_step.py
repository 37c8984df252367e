"""The training step at the paper shape, on a GPU: ms per case eager / compiled, the share of the
step that device augmentation takes (batched vs the per-scan reference), peak memory, counted FLOP/s,
and the data CPU cores one GPU needs at that rate.

Paper shape (``jobs/paper.yaml``): 4 scans x 32 slices x 256², ResNet-50 slice encoder, 5,569 labels,
KE head, bf16 autocast on CUDA. Two fills: ``full`` (every slot real) and ``realistic`` (2 real scans
x 12 real slices of the 4 x 32 slots). On a machine without CUDA a tiny shape runs by default (so CI
can import and run it in seconds); ``--shape paper`` forces the paper shape anywhere.

    .venv/bin/python bench/gpu_step.py [--shape tiny|paper] [--batch 4] [--steps 5] [--compile]
        [--data-json bench-data.json]   # output of bench/data_pipeline.py: data CPU-seconds per case

Prints one JSON object; every figure of one run comes from the same process and machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "data.n_image=4", "data.depth=8", "data.image_size=32", "model.width=8", "model.embed_dim=64",
    "model.ke.dim=32", "model.activation_checkpointing=false", "model.channels_last=false",
]


def build(shape: str, n_labels: int, compile_model: bool) -> tuple[Any, Any]:
    from raddiag.config import load_config
    from raddiag.model import build_model

    overrides = (TINY if shape == "tiny" else []) + [f"model.compile={'true' if compile_model else 'false'}"]
    cfg = load_config([REPO / "jobs" / "paper.yaml"], overrides)
    table = torch.randn(n_labels, cfg.model.ke.dim) if cfg.model.head == "ke" else None
    model = build_model(cfg.model, n_labels, label_embeddings=table, label_prior=torch.full((n_labels,), 0.01))
    return cfg, model


def make_batch(cfg: Any, batch: int, fill: str, n_labels: int, device: torch.device) -> dict[str, torch.Tensor]:
    n, d, size = cfg.data.n_image, cfg.data.depth, cfg.data.image_size
    real_scans, real_slices = (n, d) if fill == "full" else (max(1, n // 2), max(1, (d * 3) // 8))
    slice_mask = torch.zeros(batch, n, d, dtype=torch.bool)
    slice_mask[:, :real_scans, :real_slices] = True
    images = torch.randint(0, 256, (batch, n, d, size, size), dtype=torch.uint8) * slice_mask[..., None, None]
    return {
        "images": images.to(device).float() / 255.0,
        "scan_mask": slice_mask.any(-1).to(device),
        "slice_mask": slice_mask.to(device),
        "modality_ids": (torch.arange(n)[None].expand(batch, n) % 15 + 1).to(device) * slice_mask.any(-1).to(device),
        "key_slice": torch.zeros(batch, n, dtype=torch.long, device=device),
        "labels": (torch.rand(batch, n_labels) < 0.01).float().to(device),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(model: Any, cfg: Any, batch: dict, steps: int, device: torch.device, amp: bool) -> dict[str, float]:
    from raddiag.losses import build_loss
    from raddiag.train.loop import train_step

    n_labels = batch["labels"].shape[1]
    loss_fn = build_loss(cfg.loss, np.full(n_labels, 10), 1000).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    amp_dtype = torch.bfloat16 if amp else None
    times = []
    for step in range(steps + 2):  # two warm-up steps (compilation happens there)
        _sync(device)
        start = time.perf_counter()
        train_step(model, batch, loss_fn, optimizer, None, cfg.loss.key_slice_weight, amp_dtype,
                   key_slice_form=cfg.loss.key_slice_form, max_depth=cfg.model.max_depth)
        _sync(device)
        if step >= 2:
            times.append(time.perf_counter() - start)
    median = float(np.median(times))
    cases = batch["labels"].shape[0]
    return {"ms_per_step": 1000 * median, "ms_per_case": 1000 * median / cases, "cases_per_s": cases / median}


def time_augment(cfg: Any, batch: dict, repeats: int, device: torch.device) -> dict[str, float]:
    from raddiag.data.augment import augment_batch, augment_batch_reference

    out: dict[str, float] = {}
    for name, fn in (("batched", augment_batch), ("per_scan_reference", augment_batch_reference)):
        times = []
        for i in range(repeats):
            images = batch["images"].clone()
            _sync(device)
            start = time.perf_counter()
            fn(images, batch["slice_mask"], cfg.data.augment, seed=i)
            _sync(device)
            times.append(time.perf_counter() - start)
        out[f"{name}_ms_per_batch"] = 1000 * float(np.median(times))
    return out


def count_flops(model: Any, batch: dict) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from raddiag.train.loop import forward

    counter = FlopCounterMode(display=False)
    with counter:
        out = forward(model, batch)
        out["logits"].float().sum().backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", choices=["tiny", "paper"], default=None, help="default: paper on CUDA, tiny otherwise")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--labels", type=int, default=None, help="default: 5569 (paper) / 64 (tiny)")
    parser.add_argument("--compile", action="store_true", help="also time model.compile (torch.compile of the forward)")
    parser.add_argument("--data-json", type=Path, default=None, help="bench/data_pipeline.py output, for data cores per GPU")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = args.shape or ("paper" if device.type == "cuda" else "tiny")
    n_labels = args.labels or (5569 if shape == "paper" else 64)
    torch.manual_seed(0)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        "torch": torch.__version__, "shape": shape, "batch": args.batch, "labels": n_labels, "steps": args.steps,
        "bf16": device.type == "cuda",
    }
    for fill in ("full", "realistic"):
        entry: dict[str, Any] = {}
        for compiled in ([False, True] if args.compile else [False]):
            cfg, model = build(shape, n_labels, compiled)
            model.to(device).train()
            batch = make_batch(cfg, args.batch, fill, n_labels, device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            if compiled:
                from raddiag.model.nets.raddiag import compile_model

                compile_model(model)
            timing = time_steps(model, cfg, batch, args.steps, device, amp=device.type == "cuda")
            key = "compiled" if compiled else "eager"
            entry[key] = timing
            if device.type == "cuda":
                entry[key]["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            if not compiled:
                flops = count_flops(model, batch)
                entry["flop_per_step"] = flops
                entry["tflop_per_s_eager"] = flops / (timing["ms_per_step"] / 1000) / 1e12
                augment = time_augment(cfg, batch, 3, device)
                augment["batched_share_of_step"] = augment["batched_ms_per_batch"] / timing["ms_per_step"]
                augment["per_scan_share_of_step"] = augment["per_scan_reference_ms_per_batch"] / timing["ms_per_step"]
                augment["speedup"] = augment["per_scan_reference_ms_per_batch"] / augment["batched_ms_per_batch"]
                entry["augment"] = augment
        if "compiled" in entry:
            entry["compile_speedup"] = entry["eager"]["ms_per_step"] / entry["compiled"]["ms_per_step"]
        result[fill] = entry
    if args.data_json is not None:
        data = json.loads(args.data_json.read_text())
        cpu_s = data.get("cpu_seconds_per_case")
        if cpu_s:
            rate = result["realistic"]["eager"]["cases_per_s"]
            result["data_cpu_seconds_per_case"] = cpu_s
            result["data_cores_per_gpu"] = cpu_s * rate
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
