"""Reusable network parts: masked attention, visual backbones, classification heads."""

from raddiag.model.blocks.attention import MaskedSelfAttention, MaskedTransformer, MaskedTransformerLayer
from raddiag.model.blocks.encoders import ResNetBackbone, ViTBackbone
from raddiag.model.blocks.heads import KEHead, MLPHead

__all__ = [
    "KEHead",
    "MLPHead",
    "MaskedSelfAttention",
    "MaskedTransformer",
    "MaskedTransformerLayer",
    "ResNetBackbone",
    "ViTBackbone",
]
