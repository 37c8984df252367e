"""Parity of ``raddiag import-checkpoint`` (preset rp3d_reference) against the OFFICIAL RadNet code.

Needs a checkout of https://github.com/qiaoyu-zheng/RP3D-Diag (MIT; not part of this repository) and
``einops`` importable (``pip install --target DIR einops`` and ``--pylib DIR`` keeps it out of the
venv). The official model is built with random weights (BatchNorm statistics accumulated on random
slices, the head scaled so logits spread like a trained model's), saved as ``pytorch_model.bin`` and
``model.safetensors``, imported by raddiag, and both networks score the same two cases (CT in three
planes + an X-ray; an MRI + an X-ray + two padded scans). A control swaps one table entry of ours
to show the comparison is sensitive. Only torchvision's weight-metadata helpers (its wheel does not
import beside the CPU torch here) and the ``transformers`` import (used only by the KE variant) are
stubbed; the network code runs as published.

    PYTHONPATH=platform python bench/rp3d_parity.py --official ../RP3D-Diag [--pylib DIR] [--size 256] [--fuse early|late]
"""

from __future__ import annotations

import argparse
import enum
import json
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

OFFICIAL = Path()  # set from --official
PYLIB: list[str] = []


def _stub_modules() -> None:
    def module(name: str, **attrs):
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        sys.modules[name] = mod
        return mod

    class Weights:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    class WeightsEnum(enum.Enum):
        @classmethod
        def verify(cls, obj):  # never resolve/download pretrained weights
            return None

    module("torchvision")
    module("torchvision.transforms")
    module("torchvision.transforms._presets", ImageClassification=object)
    module("torchvision.utils", _log_api_usage_once=lambda *a, **k: None)
    module("torchvision.models")
    module("torchvision.models._api", Weights=Weights, WeightsEnum=WeightsEnum)
    module("torchvision.models._meta", _IMAGENET_CATEGORIES=[str(i) for i in range(1000)])
    module("torchvision.models._utils", _ovewrite_named_param=lambda kw, k, v: kw.__setitem__(k, v),
           handle_legacy_interface=lambda **kw: (lambda fn: fn))
    module("transformers", AutoModel=None, BertConfig=None, AutoTokenizer=None)
    module("Utils")
    module("Utils.utils", visual_augment=None)
    sys.path[:0] = [str(OFFICIAL), str(OFFICIAL / "Model"), *PYLIB]


def official_model(num_labels: int, fuse: str, seed: int):
    _stub_modules()
    import modelRadNet  # noqa: E402  (official)

    torch.manual_seed(seed)
    model = modelRadNet.RadNet(num_cls=num_labels, backbone="resnet", size=256, depth=32, hid_dim=2048,
                               ltype="MultiLabel", augment=False, fuse=fuse, ke=False)
    # realistic BatchNorm statistics: accumulate them in train mode on random slices, then freeze
    for m in model.resnet2D.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    model.resnet2D.train()
    with torch.no_grad():
        for _ in range(3):
            model.resnet2D(torch.rand(16, 3, 64, 64))
    with torch.no_grad():  # logits of a trained model's spread (std ~ several units), not ~0.2
        model.fc[2].weight.mul_(30.0)
    model.eval()
    return model


def make_case_batch(size: int, seed: int):
    """Two cases; ours (B, N, D, H, W) + masks + our modality ids, and the official layout."""
    rng = np.random.default_rng(seed)
    b, n, d = 2, 4, 32
    fill = [[32, 20, 7, 1], [12, 1, 0, 0]]  # real slices per scan (0 = padded scan)
    ours_mod = [[1, 2, 3, 7], [15, 7, 0, 0]]  # CT axial/coronal/sagittal + X-ray; MRI (plane unknown) + X-ray
    images = np.zeros((b, n, d, size, size), np.float32)
    slice_mask = np.zeros((b, n, d), bool)
    for i in range(b):
        for j in range(n):
            k = fill[i][j]
            if k:
                images[i, j, :k] = rng.random((k, size, size), dtype=np.float32)
                slice_mask[i, j, :k] = True
    scan_mask = slice_mask.any(-1)
    return images, scan_mask, slice_mask, np.asarray(ours_mod, np.int64)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--labels", type=int, default=5569)
    parser.add_argument("--fuse", default="early")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--official", type=Path, required=True, help="checkout of qiaoyu-zheng/RP3D-Diag")
    parser.add_argument("--pylib", default=None, help="extra import path (e.g. where einops is installed)")
    parser.add_argument("--work", type=Path, default=Path(".rp3d-parity"), help="where the generated checkpoints go")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    global OFFICIAL
    OFFICIAL = args.official / "src" / "Train"
    if not (OFFICIAL / "Model" / "modelRadNet.py").is_file():
        sys.exit(f"--official {args.official}: no src/Train/Model/modelRadNet.py (a checkout of qiaoyu-zheng/RP3D-Diag)")
    if args.pylib:
        PYLIB.append(args.pylib)
    torch.set_num_threads(2)

    official = official_model(args.labels, args.fuse, args.seed)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    state = official.state_dict()
    torch.save(state, work / "pytorch_model.bin")
    from safetensors.torch import save_model  # drops shared duplicates, as HF's Trainer does

    save_model(official, str(work / "model.safetensors"))

    from raddiag.config import load_config
    from raddiag.reference import OFFICIAL_MODALITY_ROW, PRESET, build_from_checkpoint

    results = {}
    for fname in ("pytorch_model.bin", "model.safetensors"):
        cfg = load_config(None, None, base=PRESET)
        ours, _, mapping, _ = build_from_checkpoint(cfg, work / fname)
        images, scan_mask, slice_mask, mods = make_case_batch(args.size, args.seed)
        if args.fuse != "early":  # the official late model takes one scan per sample
            images, scan_mask, slice_mask, mods = images[:, :1], scan_mask[:, :1], slice_mask[:, :1], mods[:, :1]
        t0 = time.perf_counter()
        with torch.no_grad():
            out = ours(torch.tensor(images), torch.tensor(scan_mask), torch.tensor(slice_mask), torch.tensor(mods))["logits"]
        t_ours = time.perf_counter() - t0
        # official layout: image_x (b, n, 1, h, w, d), mods (b, n, 1) in its own ids, marks (b, n, d), keys (b, n, 1)
        official_mods = np.vectorize(OFFICIAL_MODALITY_ROW.get)(mods) * scan_mask
        image_x = torch.tensor(images).permute(0, 1, 3, 4, 2).unsqueeze(2)
        marks = torch.tensor(slice_mask.astype(np.int64))
        keys = torch.tensor(np.where(scan_mask, 0, -1)[..., None])
        labels = torch.zeros(images.shape[0], args.labels)
        t0 = time.perf_counter()
        with torch.no_grad():
            if args.fuse == "early":
                ref = official(image_x, torch.tensor(official_mods[..., None]), marks, keys, labels)["logits"]
            else:
                ref = official(image_x[:, 0], None, marks[:, 0], keys[:, 0], labels)["logits"]
        t_ref = time.perf_counter() - t0
        diff = (out - ref).abs()
        # sensitivity: the same comparison must fail when one modality row of ours is wrong
        if args.fuse == "early":
            with torch.no_grad():
                table = ours.modality_embedding.weight
                saved = table[1].clone()
                table[1] = table[2]
                wrong = ours(torch.tensor(images), torch.tensor(scan_mask), torch.tensor(slice_mask), torch.tensor(mods))["logits"]
                table[1] = saved
        else:  # late: the same comparison must fail when the slice position table is shifted by one
            with torch.no_grad():
                saved = ours.slice_pos.clone()
                ours.slice_pos.copy_(torch.roll(saved, 1, dims=1))
                wrong = ours(torch.tensor(images), torch.tensor(scan_mask), torch.tensor(slice_mask), torch.tensor(mods))["logits"]
                ours.slice_pos.copy_(saved)
        sensitivity = float((wrong - ref).abs().max())
        results[fname] = {
            "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "logit_std": float(ref.std()), "logit_absmax": float(ref.abs().max()),
            "mapped": len(mapping.rows) - len(mapping.unused), "unused": mapping.summary(),
            "max_abs_diff_when_one_table_is_wrong": sensitivity,
            "seconds_ours": round(t_ours, 2), "seconds_official": round(t_ref, 2),
        }
    summary = {"fuse": args.fuse, "size": args.size, "labels": args.labels, "seed": args.seed,
               "torch": torch.__version__, "results": results,
               "pass_1e-4": all(r["max_abs_diff"] <= 1e-4 for r in results.values())}
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print("PASS" if summary["pass_1e-4"] else "FAIL")


if __name__ == "__main__":
    main()
