"""The key-slice attention loss (RadDiag): the slice transformer's CLS attention should peak at the
slice a radiologist marked. Training adds it to the classification loss with weight
``loss.key_slice.weight``; ``loss.key_slice.form`` picks the variant."""

from __future__ import annotations

import torch


def key_slice_target(
    key_slice: torch.Tensor, slice_mask: torch.Tensor, eps: float = 1e-8, sigma_depth: int | None = None
) -> torch.Tensor:
    """Gaussian over slice indices centred on ``key_slice`` with sigma = (#real slices) / 16, or
    ``sigma_depth / 16`` when given (the official code: the padded depth).

    ``key_slice`` (B, N) int64, ``slice_mask`` (B, N, D) bool -> (B, N, D) float32, normalised over
    the real slices of each scan (0 on padded slices; rows without real slices are 0).
    """
    depth = slice_mask.shape[-1]
    real = slice_mask.float()
    if sigma_depth is not None:
        sigma = torch.full_like(real[..., :1], sigma_depth / 16.0)
    else:
        sigma = (real.sum(-1, keepdim=True) / 16.0).clamp(min=1e-3)  # guard sigma > 0
    index = torch.arange(depth, device=slice_mask.device, dtype=torch.float32)
    centre = key_slice.clamp(0, depth - 1).float()[..., None]
    target = torch.exp(-0.5 * ((index - centre) / sigma) ** 2).clamp(min=eps) * real
    return target / target.sum(-1, keepdim=True).clamp(min=eps)


def key_slice_loss(
    slice_attention: torch.Tensor,
    key_slice: torch.Tensor,
    slice_mask: torch.Tensor,
    scan_mask: torch.Tensor,
    eps: float = 1e-8,
    form: str = "raddiag",
    max_depth: int | None = None,
) -> torch.Tensor:
    """Symmetric KL, ``KL(a||g) + KL(g||a)``, between slice attention ``a`` and the key-slice Gaussian ``g``.

    ``form="official"`` is the released code's variant: sigma = ``max_depth`` (the padded depth,
    default D) / 16, the *mean* of the two KL directions, both distributions floored at 1e-5 without
    renormalising, averaged over every real scan with a key slice (single-slice scans count, with a
    zero term).

    Args:
        slice_attention: (B, N, D) attention over slices (e.g. ``RadDiagNet(...)["slice_attention"]``).
        key_slice: (B, N) int64 key-slice index within the D slices; a negative index means "none"
            and excludes the scan.
        slice_mask: (B, N, D) bool, True for a real slice.
        scan_mask: (B, N) bool, True for a real scan.

    Both distributions are floored at ``eps`` and renormalised over the real slices. The mean is taken
    over real scans with more than one real slice; with no such scan the result is a zero that still
    carries a gradient. Computed in float32 (AMP-safe). Returns a scalar >= 0.
    """
    slice_mask = slice_mask.bool() & scan_mask.bool()[..., None]
    real = slice_mask.float()
    if form == "official":
        floor = 1e-5  # both distributions floored, not renormalised (as released)
        keyed = scan_mask.bool() & (key_slice >= 0) & (real.sum(-1) > 0)
        attention = slice_attention.float().clamp(min=floor)
        target = key_slice_target(key_slice, slice_mask, eps, sigma_depth=max_depth or slice_mask.shape[-1]).clamp(min=floor)
        log_ratio = (attention.log() - target.log()) * real
        per_scan = 0.5 * ((attention - target) * log_ratio).sum(-1)
        weight = keyed.float()
        return (per_scan * weight).sum() / weight.sum().clamp(min=1.0)
    if form != "raddiag":
        raise ValueError(f"key-slice loss form must be raddiag or official, got {form!r}")
    qualifies = scan_mask.bool() & (real.sum(-1) > 1) & (key_slice >= 0)
    attention = slice_attention.float().clamp(min=eps) * real
    attention = attention / attention.sum(-1, keepdim=True).clamp(min=eps)
    target = key_slice_target(key_slice, slice_mask, eps)
    log_ratio = (attention.clamp(min=eps).log() - target.clamp(min=eps).log()) * real
    per_scan = ((attention - target) * log_ratio).sum(-1)  # (B, N); >= 0 term by term
    weight = qualifies.float()
    return (per_scan * weight).sum() / weight.sum().clamp(min=1.0)
