"""Building blocks shared by the model families: attention, norms, MLPs, positions, init."""

from pretrain.models.common.attention import Attention, KVCache, attention_mask
from pretrain.models.common.mlp import GeluMLP, SwiGLU, swiglu_hidden_dim
from pretrain.models.common.norms import make_norm
from pretrain.models.common.positions import RotaryEmbedding, apply_rotary

__all__ = [
    "Attention",
    "GeluMLP",
    "KVCache",
    "RotaryEmbedding",
    "SwiGLU",
    "apply_rotary",
    "attention_mask",
    "make_norm",
    "swiglu_hidden_dim",
]
