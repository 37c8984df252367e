"""RadDiagNet speed: fwd+bwd time per case, achieved FLOP/s and MFU against a matmul peak measured in
the same run, and the KE head's share of the step time, at the demo (tiny) and paper shapes.

    PYTHONPATH=platform python bench/model_speed.py [--shapes tiny paper] [--device cpu|cuda]

FLOPs are counted with ``torch.utils.flop_counter`` (matmul/conv/attention, fwd+bwd; with
activation checkpointing the recomputed forward is counted too, so MFU is hardware utilisation). On CUDA the step runs under bf16 autocast and the peak is a bf16 matmul.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from raddiag.config import load_config
from raddiag.losses import key_slice_loss
from raddiag.model import build_model

REPO = Path(__file__).resolve().parents[1]
SHAPES = {  # name: (config files, batch, labels)
    "tiny": ([], 8, 24),
    "paper": ([REPO / "jobs" / "paper.yaml"], 1, 5569),
}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: str, dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """Best FLOP/s of an n x n matmul on this device, now."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    for _ in range(reps + 1):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def make_batch(b: int, n: int, d: int, size: int, device: str) -> dict[str, torch.Tensor]:
    return {
        "images": torch.rand(b, n, d, size, size, device=device),
        "scan_mask": torch.ones(b, n, dtype=torch.bool, device=device),
        "slice_mask": torch.ones(b, n, d, dtype=torch.bool, device=device),
        "modality_ids": torch.randint(1, 16, (b, n), device=device),
        "key_slice": torch.full((b, n), d // 2, device=device),
    }


def step(model, batch, labels, autocast: bool) -> None:
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        out = model(batch["images"], batch["scan_mask"], batch["slice_mask"], batch["modality_ids"])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out["logits"].float(), labels)
        loss = loss + 1e-3 * key_slice_loss(out["slice_attention"], batch["key_slice"], batch["slice_mask"], batch["scan_mask"])
    loss.backward()


def bench_shape(name: str, device: str, reps: int) -> dict[str, float]:
    files, batch_size, n_labels = SHAPES[name]
    cfg = load_config(files, ["model.head=ke"])
    torch.manual_seed(0)
    table = torch.nn.functional.normalize(torch.randn(n_labels, cfg.model.ke.dim), dim=-1)
    model = build_model(cfg.model, n_labels, label_embeddings=table).to(device).train()
    batch = make_batch(batch_size, cfg.data.n_image, cfg.data.depth, cfg.data.image_size, device)
    labels = torch.zeros(batch_size, n_labels, device=device)
    autocast = device == "cuda"
    with FlopCounterMode(display=False) as counter:  # doubles as the warm-up step
        step(model, batch, labels, autocast)
    flops = counter.get_total_flops()
    times = []
    for _ in range(reps):
        model.zero_grad(set_to_none=True)
        sync(device)
        start = time.perf_counter()
        step(model, batch, labels, autocast)
        sync(device)
        times.append(time.perf_counter() - start)
    step_time = min(times)
    # KE head alone (fwd+bwd) on the same batch of case embeddings
    embedding = torch.randn(batch_size, cfg.model.embed_dim, device=device, requires_grad=True)
    head_times = []
    for _ in range(max(reps, 5)):
        sync(device)
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            logits = model.head(embedding)
        logits.float().sum().backward()
        sync(device)
        head_times.append(time.perf_counter() - start)
    return {"batch": batch_size, "step_s": step_time, "per_case_s": step_time / batch_size, "flops": flops,
            "flops_per_s": flops / step_time, "ke_share": min(head_times) / step_time}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reps", type=int, default=0, help="timed steps (0 = 5 tiny, 1 paper)")
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    peak = matmul_peak(args.device, dtype)
    print(f"device={args.device} threads={torch.get_num_threads()} matmul peak {peak / 1e9:.1f} GFLOP/s ({dtype})")
    print("| shape | batch | fwd+bwd s/step | s/case | GFLOP/step | GFLOP/s | MFU | KE head share |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.shapes:
        r = bench_shape(name, args.device, args.reps or (5 if name == "tiny" else 1))
        print(f"| {name} | {r['batch']} | {r['step_s']:.3f} | {r['per_case_s']:.3f} | {r['flops'] / 1e9:.1f} | "
              f"{r['flops_per_s'] / 1e9:.1f} | {r['flops_per_s'] / peak:.1%} | {r['ke_share']:.2%} |")
        peak = max(peak, matmul_peak(args.device, dtype))  # re-measure: contention varies


if __name__ == "__main__":
    main()
