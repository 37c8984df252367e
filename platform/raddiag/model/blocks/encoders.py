"""Visual backbones: one image (2D slice or 3D volume) in, one feature vector out.

All take ``(R, 1, *spatial)`` float and return ``(R, out_dim)``; ``spatial`` is ``(H, W)`` for
``spatial_dims=2`` and ``(D, H, W)`` for ``spatial_dims=3``. Nothing here knows about scans, cases or
masks: :mod:`raddiag.model.nets.raddiag` gathers the real slices/scans and calls a backbone once.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from raddiag.model.blocks.attention import MaskedTransformer

#: depth -> (MONAI block type, blocks per stage)
RESNET_LAYOUTS: dict[int, tuple[str, list[int]]] = {
    10: ("basic", [1, 1, 1, 1]),
    18: ("basic", [2, 2, 2, 2]),
    34: ("basic", [3, 4, 6, 3]),
    50: ("bottleneck", [3, 4, 6, 3]),
}


class ResNetBackbone(nn.Module):
    """MONAI :class:`~monai.networks.nets.ResNet` without its classifier, 2D or 3D.

    Stage widths are ``width * (1, 2, 4, 8)`` (``width=64`` is the standard ResNet); ``stem="imagenet"``
    is the standard 7x7 stride-2 conv + max-pool (maps / 4), ``stem="small"`` a 3x3 stride-1 conv
    without pooling, which keeps the detail of small images (32 px: 32x32 maps instead of 8x8). ``norm="group"`` swaps BatchNorm for GroupNorm (independent
    of batch composition). With ``checkpointing`` every residual block is recomputed in backward.
    """

    def __init__(
        self,
        spatial_dims: int,
        depth: int,
        width: int,
        norm: str = "batch",
        checkpointing: bool = False,
        channels_last: bool = False,
        stem: str = "imagenet",
    ) -> None:
        super().__init__()
        if stem not in ("imagenet", "small"):
            raise ValueError(f"ResNet stem {stem!r} not supported; use 'imagenet' or 'small'")
        if depth not in RESNET_LAYOUTS:
            raise ValueError(f"ResNet depth {depth} not supported; use one of {sorted(RESNET_LAYOUTS)}")
        from monai.networks.nets import ResNet  # here, not at import: MONAI takes seconds to import, a ViT needs none of it

        block, layers = RESNET_LAYOUTS[depth]
        norm_arg: str | tuple = "batch" if norm == "batch" else ("group", {"num_groups": math.gcd(width, 8)})
        self.net = ResNet(
            block=block,
            layers=layers,
            block_inplanes=[width, 2 * width, 4 * width, 8 * width],
            spatial_dims=spatial_dims,
            n_input_channels=1,
            conv1_t_size=7 if stem == "imagenet" else 3,
            conv1_t_stride=2 if stem == "imagenet" else 1,
            no_max_pool=stem != "imagenet",
            feed_forward=False,
            bias_downsample=False,
            norm=norm_arg,
        )
        self.out_dim = 8 * width * (4 if block == "bottleneck" else 1)
        self.checkpointing = checkpointing
        self.batch_norm = norm == "batch"
        self.memory_format = None
        if channels_last:
            self.memory_format = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
            self.net.to(memory_format=self.memory_format)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (R, 1, *spatial) -> (R, out_dim)."""
        if self.training and self.batch_norm and x.shape[0] == 1:
            # BatchNorm cannot train on one sample whose last feature map is 1x1 (one 2D image in the
            # whole batch at a small image size): run it twice, keep one copy.
            return self.forward(torch.cat([x, x]))[:1]
        if self.memory_format is not None:
            x = x.contiguous(memory_format=self.memory_format)
        net = self.net
        x = net.act(net.bn1(net.conv1(x)))
        if not net.no_max_pool:
            x = net.maxpool(x)
        recompute = self.checkpointing and self.training and torch.is_grad_enabled()
        for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
            for block in stage:
                x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
        return net.avgpool(x).flatten(1)


def sincos_2d(height: int, width: int, dim: int, device: torch.device) -> torch.Tensor:
    """Fixed 2D sine-cosine position table ``(height * width, dim)`` (any grid size, no parameters)."""
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / max(quarter, 1)))
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=torch.float32),
        torch.arange(width, device=device, dtype=torch.float32),
        indexing="ij",
    )
    angles_y = ys.reshape(-1, 1) * omega
    angles_x = xs.reshape(-1, 1) * omega
    table = torch.cat([angles_y.sin(), angles_y.cos(), angles_x.sin(), angles_x.cos()], dim=1)
    return nn.functional.pad(table, (0, dim - table.shape[1]))


class ViTBackbone(nn.Module):
    """A small ViT on one 2D slice: conv patch embedding + fixed 2D sin-cos positions + transformer,
    mean-pooled over patches. Accepts any ``H, W`` (a remainder smaller than a patch is dropped).
    """

    def __init__(self, dim: int, patch_size: int, layers: int, heads: int, dropout: float = 0.0,
                 checkpointing: bool = False) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, dim, kernel_size=patch_size, stride=patch_size)
        self.transformer = MaskedTransformer(dim, heads, layers, dropout=dropout, checkpointing=checkpointing)
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (R, 1, H, W) -> (R, dim)."""
        if x.shape[-1] < self.patch.kernel_size[0] or x.shape[-2] < self.patch.kernel_size[0]:
            raise ValueError(f"ViT encoder: image {tuple(x.shape[-2:])} smaller than patch {self.patch.kernel_size}")
        tokens = self.patch(x)  # (R, E, h, w)
        _, dim, height, width = tokens.shape
        tokens = tokens.flatten(2).transpose(1, 2) + sincos_2d(height, width, dim, x.device).to(tokens.dtype)
        tokens, _ = self.transformer(tokens, None)
        return tokens.mean(dim=1)
