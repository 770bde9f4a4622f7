"""RTL layers: drop-in ``nn.Linear`` / ``nn.Conv2d`` (and HF ``Conv1D``, ``nn.MultiheadAttention``) with K routed masks over one shared weight;
``RTLDeltaLinear`` / ``RTLDeltaConv2d`` hold K merged experts (base + masked, scaled delta)."""

from .attention import RTLMultiheadAttention
from .base import RTLLayer
from .conv import RTLConv2d
from .delta import RTLDeltaConv2d, RTLDeltaLayer, RTLDeltaLinear
from .hf_conv1d import RTLConv1DLinear
from .linear import RTLLinear
from .norm import RTLBatchNorm, RTLBatchNorm1d, RTLBatchNorm2d
from .transformer import RTLTransformerDecoderLayer, RTLTransformerEncoderLayer

__all__ = [
    "RTLBatchNorm",
    "RTLBatchNorm1d",
    "RTLBatchNorm2d",
    "RTLConv1DLinear",
    "RTLConv2d",
    "RTLDeltaConv2d",
    "RTLDeltaLayer",
    "RTLDeltaLinear",
    "RTLLayer",
    "RTLLinear",
    "RTLMultiheadAttention",
    "RTLTransformerDecoderLayer",
    "RTLTransformerEncoderLayer",
]
