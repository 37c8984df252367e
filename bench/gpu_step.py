"""The training step at the paper shape, on a GPU: ms per case eager / compiled, the share of the
step that device augmentation takes (batched vs the per-scan reference it replaced), peak memory,
counted FLOP/s, and the data CPU cores one GPU needs at that rate.

Paper shape (``jobs/paper.yaml``): 4 scans x 32 slices x 256², ResNet-50 slice encoder, 5,569 labels,
KE head, bf16 autocast on CUDA. Two fills: ``full`` (every slot real) and ``realistic`` (2 real scans
x 12 real slices of the 4 x 32 slots; tiny shape: 2 x 3 of 4 x 8). On a machine without CUDA a tiny
shape runs by default (CI imports and runs it in seconds); ``--shape paper`` forces the paper shape.

    .venv/bin/python bench/gpu_step.py [--shape tiny|paper] [--batch 4] [--steps 5] [--compile]
        [--set model.activation_checkpointing=false ...]   # config overrides on top of jobs/paper.yaml
        [--augment-only]                                    # time only the augmentation (no model)
        [--data-json dp.json | --data-cases-per-core 58.2] # bench/data_pipeline.py: data cores per GPU
        [--json out.json]

Augmentation is timed at the configuration's strengths (``jobs/paper.yaml``: p = 0.15 for each of
affine, elastic, noise, contrast) and with every transform firing on every scan (``all_fire``), the
batched call (:func:`raddiag.data.augment.augment_batch`, including its copy of the batch) and the
per-scan MONAI loop (``augment_batch_reference``, in place) interleaved, same seeds, median of
``--augment-repeats``. The step is ``train_step`` (forward, loss, backward, clip, AdamW) on a fixed
batch; its FLOPs are counted with ``torch.utils.flop_counter`` (with activation checkpointing the
recomputed forward counts too). "Data cores per GPU" = the data path's CPU seconds per case
(uint8 batches, ``a_local`` of ``bench/data_pipeline.py``; augmentation runs on the GPU) x the
realistic-fill cases/s of the fastest step here including batched augmentation.

Prints one JSON object; every figure of one run comes from the same process and machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
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
FILLS = ("full", "realistic")


def load(shape: str, overrides: list[str], compile_model: bool = False) -> Any:
    from raddiag.config import load_config

    base = TINY if shape == "tiny" else []
    return load_config([REPO / "jobs" / "paper.yaml"], base + overrides + [f"model.compile={'true' if compile_model else 'false'}"])


def build(cfg: Any, n_labels: int) -> Any:
    from raddiag.model import build_model

    table = torch.randn(n_labels, cfg.model.ke.dim) if cfg.model.head == "ke" else None
    return build_model(cfg.model, n_labels, label_embeddings=table, label_prior=torch.full((n_labels,), 0.01))


def fill_mask(cfg: Any, batch: int, fill: str) -> torch.Tensor:
    """(B, N, D) slice mask: every slot real, or 2 real scans x 12 real slices of 4 x 32 (3/8 of D)."""
    n, d = cfg.data.n_image, cfg.data.depth
    real_scans, real_slices = (n, d) if fill == "full" else (max(1, n // 2), max(1, (d * 3) // 8))
    slice_mask = torch.zeros(batch, n, d, dtype=torch.bool)
    slice_mask[:, :real_scans, :real_slices] = True
    return slice_mask


def make_batch(cfg: Any, batch: int, fill: str, n_labels: int, device: torch.device) -> dict[str, torch.Tensor]:
    size = cfg.data.image_size
    slice_mask = fill_mask(cfg, batch, fill)
    scan_mask = slice_mask.any(-1)
    images = torch.randint(0, 256, (*slice_mask.shape, size, size), dtype=torch.uint8) * slice_mask[..., None, None]
    return {
        "images": images.to(device).float() / 255.0,
        "scan_mask": scan_mask.to(device),
        "slice_mask": slice_mask.to(device),
        "modality_ids": ((torch.arange(cfg.data.n_image)[None] % 15 + 1) * scan_mask).to(device),
        "key_slice": torch.zeros(*scan_mask.shape, dtype=torch.long, device=device),
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
        train_step(model, batch, loss_fn, optimizer, None, cfg.loss.key_slice.weight, amp_dtype,
                   key_slice_form=cfg.loss.key_slice.form, max_depth=cfg.model.max_depth)
        _sync(device)
        if step >= 2:
            times.append(time.perf_counter() - start)
    median = float(np.median(times))
    cases = batch["labels"].shape[0]
    return {"ms_per_step": 1000 * median, "ms_per_case": 1000 * median / cases, "cases_per_s": cases / median}


def time_augment(augment: Any, images: torch.Tensor, slice_mask: torch.Tensor, repeats: int, device: torch.device) -> dict[str, float]:
    """Median ms per batch of the batched call and of the per-scan reference, interleaved, same seeds."""
    from raddiag.data.augment import augment_batch, augment_batch_reference

    times: dict[str, list[float]] = {"batched": [], "per_scan_reference": []}
    for i in range(repeats + 1):  # the first round warms both up
        for name, fn in (("batched", augment_batch), ("per_scan_reference", augment_batch_reference)):
            batch = images.clone() if name == "per_scan_reference" else images  # the reference works in place
            _sync(device)
            start = time.perf_counter()
            fn(batch, slice_mask, augment, seed=i)
            _sync(device)
            if i:
                times[name].append(time.perf_counter() - start)
    out = {f"{name}_ms_per_batch": 1000 * float(np.median(t)) for name, t in times.items()}
    out["speedup"] = out["per_scan_reference_ms_per_batch"] / out["batched_ms_per_batch"]
    return out


def augment_figures(cfg: Any, batch: int, fill: str, repeats: int, device: torch.device) -> dict[str, Any]:
    """Augmentation at the configuration's strengths and with every transform firing on every scan."""
    slice_mask = fill_mask(cfg, batch, fill).to(device)
    size = cfg.data.image_size
    generator = torch.Generator().manual_seed(1)
    images = (torch.rand(*slice_mask.shape, size, size, generator=generator) * slice_mask[..., None, None].cpu()).to(device)
    configured = cfg.data.augment
    all_fire = configured.model_copy(update={"affine_p": 1.0, "elastic_p": 1.0, "noise_p": 1.0, "contrast_p": 1.0})
    probabilities = {k: getattr(configured, k) for k in ("affine_p", "elastic_p", "noise_p", "contrast_p")}
    return {"configured": {**probabilities, **time_augment(configured, images, slice_mask, repeats, device)},
            "all_fire": time_augment(all_fire, images, slice_mask, max(1, repeats // 2), device)}


def count_flops(model: Any, batch: dict, amp: bool) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from raddiag.train.loop import forward

    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(device_type=batch["images"].device.type, dtype=torch.bfloat16, enabled=amp):
        out = forward(model, batch)
        out["logits"].float().sum().backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def data_seconds_per_case(args: argparse.Namespace, parser: argparse.ArgumentParser) -> float | None:
    """CPU seconds per case of the uint8 data path, from --data-cases-per-core or --data-json (checked first)."""
    if args.data_cases_per_core is not None:
        if args.data_cases_per_core <= 0:
            parser.error(f"--data-cases-per-core must be > 0, got {args.data_cases_per_core}")
        return 1.0 / args.data_cases_per_core
    if args.data_json is None:
        return None
    try:
        rate = json.loads(args.data_json.read_text())["a_local"]["cases_per_cpu_s"]
    except FileNotFoundError:
        parser.error(f"--data-json {args.data_json}: no such file (write it with bench/data_pipeline.py --json)")
    except (json.JSONDecodeError, KeyError, TypeError):
        parser.error(f"--data-json {args.data_json}: not bench/data_pipeline.py output (needs a_local.cases_per_cpu_s)")
    if not isinstance(rate, (int, float)) or rate <= 0:
        parser.error(f"--data-json {args.data_json}: a_local.cases_per_cpu_s must be a positive number, got {rate!r}")
    return 1.0 / float(rate)


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["tiny", "paper"], default=None, help="default: paper on CUDA, tiny otherwise")
    parser.add_argument("--batch", type=int, default=4, help="cases per step (default 4)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration, after 2 warm-up steps")
    parser.add_argument("--labels", type=int, default=None, help="default: 5569 (paper) / 64 (tiny)")
    parser.add_argument("--compile", action="store_true", help="also time model.compile (torch.compile of the forward)")
    parser.add_argument("--augment-repeats", type=int, default=10, help="timed augmentation calls per variant (default 10)")
    parser.add_argument("--augment-only", action="store_true", help="time only the augmentation (no model, no step)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override on top of jobs/paper.yaml (repeatable)")
    parser.add_argument("--data-json", type=Path, default=None, help="bench/data_pipeline.py --json output: data cores per GPU")
    parser.add_argument("--data-cases-per-core", type=float, default=None, help="or the data path's cases/s per core directly")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    for name in ("batch", "steps", "augment_repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.labels is not None and args.labels < 1:
        parser.error(f"--labels must be >= 1, got {args.labels}")
    return args, parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args, parser = parse(argv)
    data_s = data_seconds_per_case(args, parser)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = args.shape or ("paper" if device.type == "cuda" else "tiny")
    n_labels = args.labels or (5569 if shape == "paper" else 64)
    from raddiag.config import ConfigError

    try:
        cfg = load(shape, args.overrides)
    except ConfigError as exc:
        parser.error(f"--set: {exc}")
    amp = device.type == "cuda"
    torch.manual_seed(0)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        "torch": torch.__version__, "shape": shape, "batch": args.batch, "labels": n_labels, "steps": args.steps,
        "bf16": amp, "overrides": args.overrides,
        "tensor": [args.batch, cfg.data.n_image, cfg.data.depth, cfg.data.image_size, cfg.data.image_size],
        "activation_checkpointing": cfg.model.activation_checkpointing,
    }
    for fill in FILLS:
        entry: dict[str, Any] = {"real_slices_per_case": int(fill_mask(cfg, 1, fill).sum())}
        augment = augment_figures(cfg, args.batch, fill, args.augment_repeats, device)
        entry["augment"] = augment
        if args.augment_only:
            result[fill] = entry
            continue
        for compiled in ([False, True] if args.compile else [False]):
            cfg_run = load(shape, args.overrides, compiled)
            model = build(cfg_run, n_labels).to(device).train()
            batch = make_batch(cfg_run, args.batch, fill, n_labels, device)
            if compiled:
                from raddiag.model.nets.raddiag import compile_model

                compile_model(model)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            key = "compiled" if compiled else "eager"
            timing = time_steps(model, cfg_run, batch, args.steps, device, amp)
            if device.type == "cuda":
                timing["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            if not compiled:
                entry["flop_per_step"] = count_flops(model, batch, amp)
            timing["tflop_per_s"] = entry["flop_per_step"] / (timing["ms_per_step"] / 1000) / 1e12
            step_ms = timing["ms_per_step"]
            batched = augment["configured"]["batched_ms_per_batch"]
            timing["augment_over_step_batched"] = batched / step_ms  # the target: <= 0.10 at the paper shape
            timing["augment_over_step_per_scan_reference"] = augment["configured"]["per_scan_reference_ms_per_batch"] / step_ms
            timing["cases_per_s_with_batched_augment"] = args.batch / ((step_ms + batched) / 1000)
            entry[key] = timing
            del model, batch
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if "compiled" in entry:
            entry["compile_speedup"] = entry["eager"]["ms_per_step"] / entry["compiled"]["ms_per_step"]
        result[fill] = entry
    if data_s is not None and not args.augment_only:
        rate = max(result["realistic"][k]["cases_per_s_with_batched_augment"] for k in ("eager", "compiled") if k in result["realistic"])
        result["data"] = {"cpu_seconds_per_case": data_s, "realistic_cases_per_s": rate, "cores_per_gpu": data_s * rate}
    result["env"] = {"cpus": os.cpu_count(), "load_avg_1m_at_end": round(os.getloadavg()[0], 2), "python": platform.python_version()}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
