"""``torch.nn`` normalization modules that run fastnorm on CPU tensors.

Each class subclasses its ``torch.nn`` namesake: same constructor, parameters, buffers,
``state_dict`` and semantics (momentum, ``num_batches_tracked``, eval with running statistics);
only ``forward`` changes, and it hands anything fastnorm does not run (other devices, other
dtypes) to the PyTorch implementation. :func:`convert` swaps the layers of an existing model.
"""
from __future__ import annotations

import warnings
from typing import Dict, Optional, Type

import torch
from torch import Tensor, nn

from fastnorm.torch import _ops

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "InstanceNorm1d", "InstanceNorm2d",
           "InstanceNorm3d", "GroupNorm", "LayerNorm", "RMSNorm", "convert"]


class _FastBatchNorm:
    """forward for the BatchNorm classes; the rest comes from ``torch.nn``."""

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        tracking = self.training and self.track_running_stats
        factor = self.momentum if self.momentum is not None else 0.0
        if tracking and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative average of the batch statistics
                factor = 1.0 / float(self.num_batches_tracked)
        # batch statistics in training, and in eval when there is nothing to normalize with
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        # the buffers are read in eval, and written only while tracking in training
        keep = tracking or not self.training
        return _ops.batch_norm(input, self.running_mean if keep else None,
                               self.running_var if keep else None, self.weight, self.bias,
                               use_batch, factor, self.eps)


class BatchNorm1d(_FastBatchNorm, nn.BatchNorm1d):
    """``torch.nn.BatchNorm1d`` on fastnorm: input (N, C) or (N, C, L)."""


class BatchNorm2d(_FastBatchNorm, nn.BatchNorm2d):
    """``torch.nn.BatchNorm2d`` on fastnorm: input (N, C, H, W), either memory format."""


class BatchNorm3d(_FastBatchNorm, nn.BatchNorm3d):
    """``torch.nn.BatchNorm3d`` on fastnorm: input (N, C, D, H, W), either memory format."""


class _FastInstanceNorm:
    """``_apply_instance_norm`` for the InstanceNorm classes (``torch.nn`` handles unbatched
    input and the channel-count checks around it)."""

    def _apply_instance_norm(self, input: Tensor) -> Tensor:
        # PyTorch's InstanceNorm reads momentum=None as 0 (the running statistics stay put)
        momentum = self.momentum if self.momentum is not None else 0.0
        return _ops.instance_norm(input, self.running_mean, self.running_var, self.weight,
                                  self.bias, self.training or not self.track_running_stats,
                                  momentum, self.eps)


class InstanceNorm1d(_FastInstanceNorm, nn.InstanceNorm1d):
    """``torch.nn.InstanceNorm1d`` on fastnorm: input (N, C, L) or (C, L)."""


class InstanceNorm2d(_FastInstanceNorm, nn.InstanceNorm2d):
    """``torch.nn.InstanceNorm2d`` on fastnorm: input (N, C, H, W) or (C, H, W)."""


class InstanceNorm3d(_FastInstanceNorm, nn.InstanceNorm3d):
    """``torch.nn.InstanceNorm3d`` on fastnorm: input (N, C, D, H, W) or (C, D, H, W)."""


class GroupNorm(nn.GroupNorm):
    """``torch.nn.GroupNorm`` on fastnorm: input (N, C, *), either memory format."""

    def forward(self, input: Tensor) -> Tensor:
        return _ops.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)


class LayerNorm(nn.LayerNorm):
    """``torch.nn.LayerNorm`` on fastnorm: input (*, *normalized_shape)."""

    def forward(self, input: Tensor) -> Tensor:
        return _ops.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


class RMSNorm(nn.RMSNorm):
    """``torch.nn.RMSNorm`` on fastnorm: input (*, *normalized_shape)."""

    def forward(self, x: Tensor) -> Tensor:
        return _ops.rms_norm(x, self.normalized_shape, self.weight, self.eps)


_SWAPS: Dict[Type[nn.Module], Type[nn.Module]] = {
    nn.BatchNorm1d: BatchNorm1d, nn.BatchNorm2d: BatchNorm2d, nn.BatchNorm3d: BatchNorm3d,
    nn.InstanceNorm1d: InstanceNorm1d, nn.InstanceNorm2d: InstanceNorm2d,
    nn.InstanceNorm3d: InstanceNorm3d, nn.GroupNorm: GroupNorm, nn.LayerNorm: LayerNorm,
    nn.RMSNorm: RMSNorm,
}


def convert(model: nn.Module, *, verbose: bool = False) -> nn.Module:
    """Make every supported norm layer of ``model`` (the model itself included) run fastnorm, in
    place; returns ``model``.

    Only the exact ``torch.nn`` classes are converted (BatchNorm1d/2d/3d, InstanceNorm1d/2d/3d,
    GroupNorm, LayerNorm, RMSNorm); user subclasses and other norms (SyncBatchNorm, lazy
    modules) are left alone. A converted layer keeps its identity: the same object, parameters,
    buffers and hooks, so optimizers and references made before the call still apply. Only its
    class changes, to the fastnorm subclass, which adds no state.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    count = 0
    for name, module in model.named_modules():
        target: Optional[Type[nn.Module]] = _SWAPS.get(type(module))
        if target is not None:
            module.__class__ = target
            count += 1
            if verbose:
                print(f"fastnorm.torch.convert: {name or '<model>'} -> {target.__name__}")
    if count == 0 and verbose:
        warnings.warn("fastnorm.torch.convert: no supported norm layer found", stacklevel=2)
    return model
