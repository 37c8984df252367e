"""RadDiagNet under ``torch.compile``: one graph without breaks, and the same numbers as eager.

The forward takes the real-slice/scan indices (:func:`real_index`) as inputs, so nothing in it has a
data-dependent shape. These tests trace it with dynamo on the CPU. Inductor compiles C++ here and
takes minutes for even a tiny ResNet, so the tests use ``aot_eager``: dynamo + AOTAutograd (the
forward and backward graphs inductor would get) executed by eager kernels. That makes the compiled
outputs and gradients comparable bit for bit. Inductor's speed-up is measured in bench, not here.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from raddiag.config import ModelConfig, load_config
from raddiag.model import build_model
from raddiag.model.nets.raddiag import compile_model, real_index
from raddiag.train.loop import forward

REPO = Path(__file__).resolve().parents[1]
SIZE = 16


def tiny_cfg(**overrides) -> ModelConfig:
    base = dict(width=4, embed_dim=16, slice_heads=2, fusion_heads=2, vit_heads=2, vit_patch_size=4, max_depth=8, head="mlp")
    base.update(overrides)
    return ModelConfig(**base)


def mixed_batch(real_slices: list[list[int]], depth: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch whose case ``b`` has scans with ``real_slices[b]`` real slices each (1 = a 2D image, more =
    a volume); cases with fewer scans than the widest case get padded scans, short scans padded slices."""
    g = torch.Generator().manual_seed(seed)
    b, n = len(real_slices), max(len(case) for case in real_slices)
    counts = torch.zeros(b, n, dtype=torch.long)
    for i, case in enumerate(real_slices):
        counts[i, : len(case)] = torch.tensor(case)
    scan_mask = counts > 0
    slice_mask = torch.arange(depth) < counts[..., None]
    images = torch.rand(b, n, depth, SIZE, SIZE, generator=g) * slice_mask[..., None, None]
    modality_ids = torch.randint(1, 16, (b, n), generator=g) * scan_mask
    return dict(images=images, scan_mask=scan_mask, slice_mask=slice_mask, modality_ids=modality_ids)


FILLS = (
    [[5, 1, 3], [1], [4, 2]],  # 3 cases: volumes, 2D images, padded scans and slices; R = 16, S = 6
    [[2, 5], [1, 1, 1], [5, 4, 1]],  # another fill of the same (B, N, D); R = 20, S = 8
)


def args(batch: dict[str, torch.Tensor], indices: bool = True) -> tuple[torch.Tensor, ...]:
    inputs = (batch["images"], batch["scan_mask"], batch["slice_mask"], batch["modality_ids"])
    return inputs + real_index(batch["scan_mask"], batch["slice_mask"]) if indices else inputs


def test_real_index_is_boolean_mask_order():
    batch = mixed_batch(FILLS[1])
    slice_index, scan_index = real_index(batch["scan_mask"], batch["slice_mask"])
    assert slice_index.dtype == scan_index.dtype == torch.int64
    assert torch.equal(batch["images"].flatten(0, 2)[slice_index], batch["images"][batch["slice_mask"]])
    assert torch.equal(batch["modality_ids"].flatten()[scan_index], batch["modality_ids"][batch["scan_mask"]])
    assert (len(slice_index), len(scan_index)) == (20, 8)


@pytest.mark.parametrize(
    "overrides",
    [
        # the paper's settings at a tiny size: BatchNorm in train mode, checkpointing, channels_last, KE-free
        dict(encoder="resnet", activation_checkpointing=True, channels_last=True),
        dict(encoder="vit", fusion="late"),
        dict(encoder="cnn3d", norm="group"),
    ],
    ids=["resnet-ckpt", "vit-late", "cnn3d"],
)
def test_forward_is_one_graph(overrides):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**overrides), 5).train()
    explained = torch._dynamo.explain(model)(*args(mixed_batch(FILLS[0])))
    assert explained.graph_break_count == 0, [str(reason.reason) for reason in explained.break_reasons]
    assert explained.graph_count == 1


def test_compiled_train_step_equals_eager_bit_for_bit():
    """Two batches of different fill through the loop's ``forward``: the compiled model (one graph,
    compiled once, ``R``/``S`` symbolic) gives the eager outputs, gradients and BatchNorm statistics
    exactly."""
    torch.manual_seed(0)
    eager = build_model(tiny_cfg(encoder="resnet", norm="batch"), 5).train()
    compiled = copy.deepcopy(eager)
    keys = set(compiled.state_dict())
    graphs: list[torch.fx.GraphModule] = []
    aot_eager = torch._dynamo.lookup_backend("aot_eager")

    def counting_backend(graph: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(graph)
        return aot_eager(graph, example_inputs)

    torch._dynamo.reset()
    compile_model(compiled, backend=counting_backend, fullgraph=True)
    assert set(compiled.state_dict()) == keys  # in place: checkpoints keep their key names
    for seed, fill in enumerate(FILLS):
        batch = mixed_batch(fill, seed=seed)
        outputs = {}
        for name, model in (("eager", eager), ("compiled", compiled)):
            model.zero_grad(set_to_none=True)
            out = forward(model, batch)
            (out["logits"].square().sum() + out["slice_attention"].sum() + out["embedding"].sum()).backward()
            grads = {key: p.grad.clone() for key, p in model.named_parameters() if p.grad is not None}
            outputs[name] = ({key: v.detach() for key, v in out.items()}, grads, copy.deepcopy(model.state_dict()))
        (out_e, grad_e, state_e), (out_c, grad_c, state_c) = outputs["eager"], outputs["compiled"]
        for key in out_e:
            assert torch.equal(out_e[key], out_c[key]), key
        assert grad_e.keys() == grad_c.keys() and len(grad_e) > 10
        for key in grad_e:
            assert torch.equal(grad_e[key], grad_c[key]), key
        for key in state_e:  # BatchNorm running statistics saw exactly the real slices in both
            assert torch.equal(state_e[key], state_c[key]), key
        assert torch.equal(out_c["slice_attention"] != 0, batch["slice_mask"])  # padding gets no attention
    assert len(graphs) == 1  # R and S are symbolic: a new fill did not recompile


def test_paper_job_compiles_the_model():
    cfg = load_config([REPO / "jobs" / "paper.yaml"], [])
    assert cfg.model.compile
