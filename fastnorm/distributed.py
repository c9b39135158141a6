"""Synchronized batch normalization across processes with ``torch.distributed`` (gloo on CPU).

Forward: every rank computes its per-channel moments ``(count, mean, M2)`` with the moment
kernels (float64, exact), one ``all_gather`` of those 3C numbers per rank follows, and every
rank merges the gathered moments in rank order with Chan's formula, so all ranks hold the same
statistics bit for bit whatever their batch sizes (an empty batch included). Then the local
batch is normalized by the apply kernel.

Backward: each rank reduces its ``(sum dy, sum dy * (x - mean))`` per channel (the batch norm
backward kernel, which also gives the local ``dx``), one ``all_reduce`` of those plus the local
count, and the local ``dx`` is corrected from local to global means by one affine pass:
``dx += (x - mean) * A + B`` with ``A = -r^3 w (S_dyx / n - s_dyx / n_local)`` and
``B = -r w (S_dy / n - s_dy / n_local)``.

Importing this module imports torch; ``import fastnorm`` does not.
"""
import numpy as np
import torch
import torch.distributed as dist

from fastnorm import _dispatch as D
from fastnorm import functional as F
from fastnorm.stats import Moments, moments

__all__ = ["sync_batch_norm_forward", "sync_batch_norm_backward", "SyncBatchNorm",
           "convert_sync_batchnorm"]


def _group(process_group):
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("torch.distributed is not initialized: call "
                           "torch.distributed.init_process_group first")
    return dist.group.WORLD if process_group is None else process_group


def _channel_axes(ndim, layout):
    cax = 1 if layout == "NCHW" else ndim - 1
    return tuple(a for a in range(ndim) if a != cax)


def sync_batch_norm_forward(x, weight=None, bias=None, *, eps=1e-5, layout="NCHW",
                            running_mean=None, running_var=None, momentum=0.1,
                            process_group=None, out=None):
    """Training-mode batch norm with statistics over the batches of all ranks of a group.

    Every rank of ``process_group`` (default: the whole world) must call it, in the same
    order relative to other collectives; ranks may hold different batch sizes, zero
    included.

    Parameters
    ----------
    x : ndarray, (N, C, *spatial) for ``layout="NCHW"`` or (N, *spatial, C) for ``"NHWC"``;
        this rank's part of the batch (N may differ between ranks)
    weight, bias : ndarray (C,), optional
    eps : float > 0
    running_mean, running_var : float ndarrays (C,), optional
        Updated in place as batch norm does (PyTorch convention: ``momentum`` weight on the
        new value, unbiased variance of the global batch), identically on every rank.
    momentum : float in [0, 1]
    process_group : torch.distributed ProcessGroup, optional
    out : ndarray shaped like x, optional

    Returns
    -------
    y : ndarray shaped like x
    mean, rstd : float64 ndarrays (C,), statistics of the global batch (the same on all ranks)
    """
    group = _group(process_group)
    x, ct, ot = D.input_array(x)
    layout = D.check_layout(layout)
    eps = D.check_eps(eps)
    C = x.shape[1] if layout == "NCHW" else x.shape[-1]
    if running_mean is not None or running_var is not None:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean and running_var must be given together")
        momentum = F._check_momentum(momentum)
    local = moments(x, _channel_axes(x.ndim, layout))
    buf = torch.from_numpy(local.to_array())
    world = dist.get_world_size(group)
    gathered = [torch.empty_like(buf) for _ in range(world)]
    dist.all_gather(gathered, buf, group=group)
    total = Moments.empty((C,))
    for g in gathered:  # rank order: the same merge, bit for bit, on every rank
        total = total.merge(Moments.from_array(g.numpy(), (C,)))
    n = float(total.count[0]) if C else 0.0
    if n <= 1:
        raise ValueError("Expected more than 1 value per channel when training, got "
                         f"{int(n)} over all ranks (this rank's x has shape {x.shape})")
    mean = total.mean
    var = total.m2 / n
    rstd = 1.0 / np.sqrt(var + eps)
    y = F._apply_channels(x, mean, var, weight, bias, eps, layout, out, 0)
    if running_mean is not None:
        F._update_running(running_mean, running_var, mean, var, n, momentum)
    return y, mean, rstd


def sync_batch_norm_backward(dy, x, mean, rstd, weight=None, *, layout="NCHW",
                             process_group=None, out=None):
    """Backward of :func:`sync_batch_norm_forward` on this rank's part of the batch.

    Returns
    -------
    dx : ndarray shaped like x, the gradient with respect to this rank's x under the global
        statistics
    dweight, dbias : ndarrays (C,), this rank's share: their sum over the ranks is the
        gradient of the summed loss (``torch.nn.SyncBatchNorm`` returns the same, leaving the
        averaging to DistributedDataParallel)
    """
    group = _group(process_group)
    x, ct, ot = D.input_array(x)
    dy = D.check_same(dy, x, "dy")
    layout = D.check_layout(layout)
    C = x.shape[1] if layout == "NCHW" else x.shape[-1]
    m = D.stats_array(mean, "mean", (C,))
    r = D.stats_array(rstd, "rstd", (C,))
    w = D.param_array(weight, "weight", (C,), np.float64, 1)
    n_local = x.size // C if C else 0
    dx, dw, db = F.batch_norm_backward(dy, x, m, r, weight, layout=layout, out=out)
    s_dy = np.asarray(db, dtype=np.float64)
    s_dyx = np.asarray(dw, dtype=np.float64) / r  # dweight = sum dy * (x - mean) * r
    buf = torch.from_numpy(np.concatenate([[float(n_local)], s_dy, s_dyx]))
    dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
    tot = buf.numpy()
    n = tot[0]
    if n_local and C:
        S_dy, S_dyx = tot[1:C + 1], tot[C + 1:]
        A = -r ** 3 * w * (S_dyx / n - s_dyx / n_local)
        B = -r * w * (S_dy / n - s_dy / n_local)
        corr = F._apply_channels(x, m, np.ones(C), A, B, 0.0, layout, None, 0)
        np.add(dx, corr, out=dx, casting="unsafe")
    return dx, dw, db


# ---- torch module ----------------------------------------------------------------------------

class _SyncBatchNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum, group, layout):
        xn = x.detach().numpy()
        wn = None if weight is None else weight.detach().numpy()
        bn = None if bias is None else bias.detach().numpy()
        rm = None if running_mean is None else running_mean.detach().numpy()
        rv = None if running_var is None else running_var.detach().numpy()
        y, mean, rstd = sync_batch_norm_forward(
            xn, wn, bn, eps=eps, layout=layout, running_mean=rm, running_var=rv,
            momentum=momentum, process_group=group)
        ctx.save_for_backward(x, weight)
        ctx.stats = (mean, rstd)
        ctx.group, ctx.layout = group, layout
        return torch.from_numpy(np.asarray(y))

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        mean, rstd = ctx.stats
        dy = grad_out.detach().to(x.dtype).numpy()
        wn = None if weight is None else weight.detach().numpy()
        dx, dw, db = sync_batch_norm_backward(dy, x.detach().numpy(), mean, rstd, wn,
                                              layout=ctx.layout, process_group=ctx.group)
        gw = gb = None
        if weight is not None and ctx.needs_input_grad[1]:
            gw = torch.from_numpy(np.asarray(dw)).to(weight.dtype)
        if ctx.needs_input_grad[2]:
            gb = torch.from_numpy(np.asarray(db)).to(x.dtype)
        gx = torch.from_numpy(np.asarray(dx)) if ctx.needs_input_grad[0] else None
        return gx, gw, gb, None, None, None, None, None, None


class SyncBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """Batch normalization synchronized over a process group, for CPU tensors (gloo).

    A drop-in for ``torch.nn.SyncBatchNorm`` (same constructor, buffers, state dict and
    training/eval behaviour) that runs where PyTorch's requires an accelerator: in training
    with an initialized process group of more than one rank, statistics come from the whole
    group's batch through :func:`sync_batch_norm_forward`; otherwise it is plain batch norm.
    Inputs are (N, C, *spatial), contiguous or ``channels_last``; float32 or float64.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, process_group=None, device=None, dtype=None, *,
                 bias=True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         device=device, dtype=dtype, bias=bias)
        self.process_group = process_group

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input):
        self._check_input_dim(input)
        if input.size(1) == 0:
            raise ValueError("SyncBatchNorm number of input channels should be non-zero")
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked.item())
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        running_mean = self.running_mean if not self.training or self.track_running_stats \
            else None
        running_var = self.running_var if not self.training or self.track_running_stats \
            else None
        group = dist.group.WORLD if self.process_group is None else self.process_group
        need_sync = (bn_training and self.training and dist.is_available()
                     and dist.is_initialized() and dist.get_world_size(group) > 1)
        if not need_sync:
            return torch.nn.functional.batch_norm(input, running_mean, running_var,
                                                  self.weight, self.bias, bn_training, factor,
                                                  self.eps)
        if input.device.type != "cpu":
            raise ValueError(f"fastnorm SyncBatchNorm runs on CPU tensors, got device "
                             f"{input.device}")
        if input.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"input must be float32 or float64, got {input.dtype}")
        layout = "NCHW"
        return _SyncBatchNormFn.apply(input, self.weight, self.bias, running_mean, running_var,
                                      self.eps, factor, group, layout)

    @classmethod
    def convert_sync_batchnorm(cls, module, process_group=None):
        """Replace every ``torch.nn`` batch norm layer (``BatchNorm1d/2d/3d``,
        ``SyncBatchNorm``) in ``module`` by this class, sharing parameters and buffers.
        Returns the converted module (a new object if ``module`` itself is a batch norm)."""
        out = module
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            out = cls(module.num_features, module.eps, module.momentum, module.affine,
                      module.track_running_stats, process_group, bias=module.bias is not None)
            if module.affine:
                with torch.no_grad():
                    out.weight = module.weight
                    out.bias = module.bias
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.training = module.training
            if hasattr(module, "qconfig"):
                out.qconfig = module.qconfig
        for name, child in module.named_children():
            out.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return out


def convert_sync_batchnorm(module, process_group=None):
    """:meth:`SyncBatchNorm.convert_sync_batchnorm` as a function."""
    return SyncBatchNorm.convert_sync_batchnorm(module, process_group)
