"""CPU micro-benchmark for issue 13 deliverable 2: eager vs torch.compile (inductor) train step of
RadDiagNet at a tiny shape, at full and realistic fill, measured side by side in one process.

    OMP_NUM_THREADS=2 PYTHONPATH=platform .venv/bin/python bench/compile_speed.py [out.json]
"""
from __future__ import annotations

import copy
import json
import sys
import time

import torch

from raddiag.config import ModelConfig
from raddiag.model import build_model
from raddiag.model.nets.raddiag import compile_model
from raddiag.train.loop import forward

B, N, D, SIZE, LABELS = 4, 4, 8, 32, 24


def batch(real_scans: int, real_slices: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scan_mask = torch.zeros(B, N, dtype=torch.bool)
    scan_mask[:, :real_scans] = True
    slice_mask = scan_mask[..., None] & (torch.arange(D) < real_slices)
    images = torch.rand(B, N, D, SIZE, SIZE, generator=g) * slice_mask[..., None, None]
    return dict(images=images, scan_mask=scan_mask, slice_mask=slice_mask,
                modality_ids=torch.randint(1, 16, (B, N), generator=g) * scan_mask)


def step(model, data, labels) -> None:
    out = forward(model, data)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out["logits"], labels) + 1e-3 * out["slice_attention"].sum()
    loss.backward()
    model.zero_grad(set_to_none=True)


def main() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(width=8, embed_dim=64, max_depth=D, head="mlp", stem="small")
    eager = build_model(cfg, LABELS).train()
    compiled = compile_model(copy.deepcopy(eager))
    labels = torch.zeros(B, LABELS)
    fills = {"full": batch(N, D, 0), "realistic": batch(2, 3, 1), "realistic_b": batch(2, 4, 2)}
    result: dict[str, object] = {
        "shape": f"B={B} N={N} D={D} {SIZE}x{SIZE}, ResNet-10 width 8 stem small, embed 64, {LABELS} labels, train step fwd+bwd",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "device": "cpu",
    }
    started = time.perf_counter()
    step(compiled, fills["realistic"], labels)  # first compile: train graph, R/S symbolic
    result["first_compile_s"] = time.perf_counter() - started
    started = time.perf_counter()
    step(compiled, fills["full"], labels)  # another fill: must not recompile
    result["second_fill_first_step_s"] = time.perf_counter() - started
    reps = 15
    for name, data in fills.items():
        times = {"eager": [], "compiled": []}
        for _ in range(2):
            step(eager, data, labels)
            step(compiled, data, labels)
        for _ in range(reps):  # interleaved, so load on the machine hits both alike
            for kind, model in (("eager", eager), ("compiled", compiled)):
                started = time.perf_counter()
                step(model, data, labels)
                times[kind].append(time.perf_counter() - started)
        med = {kind: sorted(values)[len(values) // 2] for kind, values in times.items()}
        result[name] = {
            "real_slices": int(data["slice_mask"].sum()), "slots": B * N * D,
            "eager_ms_per_step": 1e3 * med["eager"], "compiled_ms_per_step": 1e3 * med["compiled"],
            "speedup": med["eager"] / med["compiled"],
        }
    result["eager_full_over_realistic"] = result["full"]["eager_ms_per_step"] / result["realistic"]["eager_ms_per_step"]
    text = json.dumps(result, indent=2)
    print(text)
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
