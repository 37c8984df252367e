"""A state dict in the official RadDiag ``RadNet`` key/shape layout (random values), at any width.

Written from the layout of ``qiaoyu-zheng/RP3D-Diag`` ``src/Train/Model`` (torchvision-style
ResNet-50 as ``resnet2D``, ``attention1D`` and ``vitFuse`` encoders whose ``transformer_encoder``
holds template modules beside ``encoder.layers``, ``fc`` head); at width 64 the key set and every
shape equal those of the official model (checked against the official code outside this repository).
"""

from __future__ import annotations

import torch

_BLOCKS = [3, 4, 6, 3]


def _bn(prefix: str, channels: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": 0.5 + torch.rand(channels, generator=gen),
        f"{prefix}.bias": 0.2 * torch.randn(channels, generator=gen),
        f"{prefix}.running_mean": 0.1 * torch.randn(channels, generator=gen),
        f"{prefix}.running_var": 0.5 + torch.rand(channels, generator=gen),
        f"{prefix}.num_batches_tracked": torch.tensor(100),
    }


def _conv(out_c: int, in_c: int, k: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(out_c, in_c, k, k, generator=gen) * (2.0 / (in_c * k * k)) ** 0.5


def _linear(prefix: str, out_f: int, in_f: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": torch.randn(out_f, in_f, generator=gen) / in_f**0.5,
        f"{prefix}.bias": 0.1 * torch.randn(out_f, generator=gen),
    }


def _norm(prefix: str, dim: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {f"{prefix}.a": 1 + 0.1 * torch.randn(dim, generator=gen), f"{prefix}.b": 0.1 * torch.randn(dim, generator=gen)}


def _encoder(prefix: str, dim: int, layers: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}

    def layer(p: str) -> None:
        for i in range(4):
            state.update(_linear(f"{p}.self_attn.linears.{i}", dim, dim, gen))
        state.update(_linear(f"{p}.feed_forward.w_1", dim, dim, gen))
        state.update(_linear(f"{p}.feed_forward.w_2", dim, dim, gen))
        for i in range(2):
            state.update(_norm(f"{p}.sublayer.{i}.norm", dim, gen))

    base = f"{prefix}.transformer_encoder"
    for i in range(4):  # the template modules (unused by the forward)
        state.update(_linear(f"{base}.multi_headed_attention.linears.{i}", dim, dim, gen))
    state.update(_linear(f"{base}.feed_forward.w_1", dim, dim, gen))
    state.update(_linear(f"{base}.feed_forward.w_2", dim, dim, gen))
    layer(f"{base}.encoder_layer")
    for i in range(layers):
        layer(f"{base}.encoder.layers.{i}")
    state.update(_norm(f"{base}.encoder.norm", dim, gen))
    return state


def official_state_dict(
    width: int = 64, num_labels: int = 5569, depth: int = 32, fuse: str = "early", seed: int = 0, fusion_layers: int = 2
) -> dict[str, torch.Tensor]:
    """Random tensors named and shaped as the official ``RadNet(hid_dim=32*width, depth=depth)``."""
    gen = torch.Generator().manual_seed(seed)
    dim = 32 * width
    state: dict[str, torch.Tensor] = {"resnet2D.conv1.weight": _conv(width, 3, 7, gen)}
    state.update(_bn("resnet2D.bn1", width, gen))
    inplanes = width
    for stage, blocks in enumerate(_BLOCKS, start=1):
        planes = width * 2 ** (stage - 1)
        for b in range(blocks):
            p = f"resnet2D.layer{stage}.{b}"
            state[f"{p}.conv1.weight"] = _conv(planes, inplanes, 1, gen)
            state.update(_bn(f"{p}.bn1", planes, gen))
            state[f"{p}.conv2.weight"] = _conv(planes, planes, 3, gen)
            state.update(_bn(f"{p}.bn2", planes, gen))
            state[f"{p}.conv3.weight"] = _conv(planes * 4, planes, 1, gen)
            state.update(_bn(f"{p}.bn3", planes * 4, gen))
            if b == 0:
                state[f"{p}.downsample.0.weight"] = _conv(planes * 4, inplanes, 1, gen)
                state.update(_bn(f"{p}.downsample.1", planes * 4, gen))
            inplanes = planes * 4
    state.update(_linear("resnet2D.fc", 1000, dim, gen))
    state["attention1D.cls_token"] = torch.randn(1, 1, dim, generator=gen)
    state["attention1D.pos_emb"] = torch.randn(1 + depth, dim, generator=gen)
    state.update(_encoder("attention1D", dim, 1, gen))
    if fuse == "early":
        state["vitFuse.mod_embed"] = torch.randn(16, dim, generator=gen)
        state.update(_encoder("vitFuse", dim, fusion_layers, gen))
        state["vitFuse.cls_token"] = torch.randn(1, 1, dim, generator=gen)
    state.update(_linear("fc.0", dim, dim, gen))
    state.update(_linear("fc.2", num_labels, dim, gen))
    return state
