"""PyTorch CPU backend: fastnorm kernels as ``torch.library`` custom ops (autograd and
``torch.compile`` aware), drop-in ``torch.nn`` modules and :func:`convert`.

Needs PyTorch; ``import fastnorm`` alone never imports it. The ops are registered under
``torch.ops.fastnorm`` when this module is imported.
"""
from fastnorm.torch._ops import (
    batch_norm, group_norm, instance_norm, layer_norm, rms_norm, supported,
)
from fastnorm.torch.modules import (
    BatchNorm1d, BatchNorm2d, BatchNorm3d, GroupNorm, InstanceNorm1d, InstanceNorm2d,
    InstanceNorm3d, LayerNorm, RMSNorm, convert,
)
from fastnorm.distributed import SyncBatchNorm, convert_sync_batchnorm

__all__ = [
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "GroupNorm", "InstanceNorm1d",
    "InstanceNorm2d", "InstanceNorm3d", "LayerNorm", "RMSNorm", "convert",
    "batch_norm", "group_norm", "instance_norm", "layer_norm", "rms_norm", "supported",
    "SyncBatchNorm", "convert_sync_batchnorm",
]
