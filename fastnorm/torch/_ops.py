"""fastnorm kernels as PyTorch custom ops (``torch.ops.fastnorm.*``), and the functional forms.

Design: each op is a pure function of CPU tensors registered with ``torch.library.custom_op``,
with a fake (meta) implementation for ``torch.compile`` and an autograd formula that calls the
matching backward op. Tensors cross to NumPy with ``.numpy()`` (no copy, strides kept; bfloat16
is reinterpreted through ``ml_dtypes``), and outputs are allocated here as torch tensors and
handed to fastnorm as ``out=``, so the kernels write straight into them and the fake and real
outputs have the same strides by construction: a channels-last input gives a channels-last
output. Running statistics are updated outside the ops, in the functional wrappers, so the ops
never mutate their inputs.

The functional forms take ``torch.nn.functional``'s arguments and fall back to it for anything
fastnorm does not run: other devices, other dtypes, sparse or quantized tensors.
"""
from __future__ import annotations

import importlib.util
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from fastnorm import functional as FN

__all__ = ["batch_norm", "instance_norm", "group_norm", "layer_norm", "rms_norm", "supported"]

# bfloat16 tensors are viewed as ml_dtypes.bfloat16 arrays; ml_dtypes is imported on the first
# bfloat16 tensor, not here (its import takes over a second on a small machine)
_DTYPES = {torch.float32, torch.float64, torch.float16}
if importlib.util.find_spec("ml_dtypes") is not None:
    _DTYPES.add(torch.bfloat16)


def _bf16() -> np.dtype:
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)

ShapeArg = Union[int, Sequence[int]]


def supported(x: Tensor, *others: Optional[Tensor]) -> bool:
    """True when fastnorm runs this call: CPU strided tensors of a supported dtype."""
    for t in (x,) + others:  # attribute checks only: this runs on every call
        if t is None:
            continue
        if not t.is_cpu or t.layout is not torch.strided or t.is_quantized:
            return False
    return x.dtype in _DTYPES


# ---- tensor <-> array ------------------------------------------------------------------------

def _np(t: Optional[Tensor]) -> Optional[np.ndarray]:
    """The tensor's memory as a NumPy array (no copy)."""
    if t is None:
        return None
    if t.requires_grad:
        t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(_bf16())
    return t.numpy()


def _perm_last(ndim: int) -> Tuple[int, ...]:
    return (0,) + tuple(range(2, ndim)) + (1,)


def _empty_like_kernel(x: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
    """An output in the memory format the channel kernels give x: channels-last when x is stored
    channels-last (and not also plain contiguous), C order otherwise."""
    dtype = x.dtype if dtype is None else dtype
    if x.is_contiguous():
        return torch.empty_like(x, dtype=dtype, memory_format=torch.contiguous_format)
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.empty_like(x, dtype=dtype, memory_format=torch.channels_last)
    if x.dim() >= 3:
        perm = _perm_last(x.dim())
        if x.permute(perm).is_contiguous():
            inv = [0] * x.dim()
            for i, p in enumerate(perm):
                inv[p] = i
            return x.new_empty([x.shape[p] for p in perm], dtype=dtype).permute(inv)
    return x.new_empty(x.shape, dtype=dtype)


def _stats_dtype(x: Tensor) -> torch.dtype:
    """dtype of dweight/dbias from fastnorm: the compute dtype (float32 for 16-bit floats)."""
    return x.dtype if x.dtype == torch.float64 else torch.float32


def _from(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def _t(a: np.ndarray) -> Tensor:
    """A tensor on an array fastnorm allocated (no copy; strides kept, so a channels-last
    result is a channels_last tensor). Outputs are allocated by NumPy rather than as torch
    tensors written through out=: measured inside an autograd.Function, torch's allocation
    of a 2 MB output page-faulted on every call (group norm (32, 64, 16, 16): 112 us a call
    against 90)."""
    if a.dtype.name == "bfloat16" and a.dtype == _bf16():
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


# ---- channel ops: batch / instance (per (n, c)) / group --------------------------------------

def _batch_norm_fwd_impl(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                         eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    y, m, r = FN.batch_norm_forward(_np(x), _np(weight), _np(bias), eps=eps)
    return _t(y), _from(m), _from(r)


batch_norm_fwd = torch.library.custom_op(
    "fastnorm::batch_norm_fwd", mutates_args=())(_batch_norm_fwd_impl)


@batch_norm_fwd.register_fake
def _(x, weight, bias, eps):
    C = x.shape[1]
    return (_empty_like_kernel(x), x.new_empty((C,), dtype=torch.float64),
            x.new_empty((C,), dtype=torch.float64))


def _instance_norm_fwd_impl(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                            eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    y, m, r = FN.instance_norm_forward(_np(x), _np(weight), _np(bias), eps=eps)
    return _t(y), _from(m), _from(r)


instance_norm_fwd = torch.library.custom_op(
    "fastnorm::instance_norm_fwd", mutates_args=())(_instance_norm_fwd_impl)


@instance_norm_fwd.register_fake
def _(x, weight, bias, eps):
    s = (x.shape[0], x.shape[1])
    return (_empty_like_kernel(x), x.new_empty(s, dtype=torch.float64),
            x.new_empty(s, dtype=torch.float64))


def _group_norm_fwd_impl(x: Tensor, num_groups: int, weight: Optional[Tensor],
                         bias: Optional[Tensor],
                         eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    y, m, r = FN.group_norm_forward(_np(x), num_groups, _np(weight), _np(bias), eps=eps)
    return _t(y), _from(m), _from(r)


group_norm_fwd = torch.library.custom_op(
    "fastnorm::group_norm_fwd", mutates_args=())(_group_norm_fwd_impl)


@group_norm_fwd.register_fake
def _(x, num_groups, weight, bias, eps):
    s = (x.shape[0], num_groups)
    return (_empty_like_kernel(x), x.new_empty(s, dtype=torch.float64),
            x.new_empty(s, dtype=torch.float64))


def _channel_norm_bwd_impl(dy: Tensor, x: Tensor, mean: Tensor, rstd: Tensor,
                           weight: Optional[Tensor],
                           op: str, num_groups: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Backward of the channel ops. op: "batch", "batch_eval" (statistics are constants),
    "instance" or "group"."""
    a = (_np(dy), _np(x), _np(mean), _np(rstd))
    if op == "batch" or op == "batch_eval":
        dx, dw, db = FN.batch_norm_backward(*a, _np(weight), training=op == "batch")
    elif op == "instance":
        dx, dw, db = FN.instance_norm_backward(*a, _np(weight))
    else:
        dx, dw, db = FN.group_norm_backward(*a, num_groups, _np(weight))
    return _t(dx), _from(dw), _from(db)


channel_norm_bwd = torch.library.custom_op(
    "fastnorm::channel_norm_bwd", mutates_args=())(_channel_norm_bwd_impl)


@channel_norm_bwd.register_fake
def _(dy, x, mean, rstd, weight, op, num_groups):
    C = x.shape[1]
    dt = _stats_dtype(x)
    return _empty_like_kernel(x), x.new_empty((C,), dtype=dt), x.new_empty((C,), dtype=dt)


def _channel_norm_eval_impl(x: Tensor, running_mean: Tensor, running_var: Tensor,
                            weight: Optional[Tensor], bias: Optional[Tensor], eps: float) -> Tensor:
    """Normalize with given per-channel statistics in one fused pass (batch/instance norm eval)."""
    return _t(FN.batch_norm(_np(x), _np(running_mean), _np(running_var), _np(weight),
                            _np(bias), training=False, eps=eps))


channel_norm_eval = torch.library.custom_op(
    "fastnorm::channel_norm_eval", mutates_args=())(_channel_norm_eval_impl)


@channel_norm_eval.register_fake
def _(x, running_mean, running_var, weight, bias, eps):
    return _empty_like_kernel(x)


def _bwd(ctx, op, impl):
    """The backward to call: the implementation itself in eager mode (the forward ran through
    _eager), the registered op when torch.compile traces the custom op's autograd."""
    return impl if getattr(ctx, "eager", False) else op


def _channel_setup(ctx, x, weight, bias, mean, rstd, op, num_groups):
    ctx.save_for_backward(x, weight, mean, rstd)
    ctx.op, ctx.num_groups = op, num_groups
    ctx.has_weight, ctx.has_bias = weight is not None, bias is not None


def _channel_grads(ctx, dy):
    x, weight, mean, rstd = ctx.saved_tensors
    bwd = _bwd(ctx, channel_norm_bwd, _channel_norm_bwd_impl)
    dx, dw, db = bwd(dy, x, mean, rstd, weight, ctx.op, ctx.num_groups)
    dw = dw.to(weight.dtype) if ctx.has_weight else None
    db = db.to(weight.dtype if ctx.has_weight else x.dtype) if ctx.has_bias else None
    return dx, dw, db


def _bn_setup(ctx, inputs, output):
    x, weight, bias, _ = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    _channel_setup(ctx, x, weight, bias, mean, rstd, "batch", 0)


def _in_setup(ctx, inputs, output):
    x, weight, bias, _ = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    _channel_setup(ctx, x, weight, bias, mean, rstd, "instance", 0)


def _gn_setup(ctx, inputs, output):
    x, G, weight, bias, _ = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    _channel_setup(ctx, x, weight, bias, mean, rstd, "group", G)


def _fwd3_backward(ctx, dy, _dmean, _drstd):
    dx, dw, db = _channel_grads(ctx, dy)
    return dx, dw, db, None


def _gn_backward(ctx, dy, _dmean, _drstd):
    dx, dw, db = _channel_grads(ctx, dy)
    return dx, None, dw, db, None


def _eval_setup(ctx, inputs, output):
    x, rm, rv, weight, bias, eps = inputs
    mean = rm.detach().to(torch.float64)
    rstd = torch.rsqrt(rv.detach().to(torch.float64) + eps)
    _channel_setup(ctx, x, weight, bias, mean, rstd, "batch_eval", 0)


def _eval_backward(ctx, dy):
    dx, dw, db = _channel_grads(ctx, dy)
    return dx, None, None, dw, db, None


batch_norm_fwd.register_autograd(_fwd3_backward, setup_context=_bn_setup)
instance_norm_fwd.register_autograd(_fwd3_backward, setup_context=_in_setup)
group_norm_fwd.register_autograd(_gn_backward, setup_context=_gn_setup)
channel_norm_eval.register_autograd(_eval_backward, setup_context=_eval_setup)


# ---- row ops: layer norm and RMS norm over the trailing dims --------------------------------

def _layer_norm_fwd_impl(x: Tensor, normalized_shape: List[int], weight: Optional[Tensor],
                         bias: Optional[Tensor], eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    y, m, r = FN.layer_norm_forward(_np(x), tuple(normalized_shape), _np(weight), _np(bias),
                                    eps=eps)
    return _t(y), _from(m), _from(r)


layer_norm_fwd = torch.library.custom_op(
    "fastnorm::layer_norm_fwd", mutates_args=())(_layer_norm_fwd_impl)


@layer_norm_fwd.register_fake
def _(x, normalized_shape, weight, bias, eps):
    lead = x.shape[:x.dim() - len(normalized_shape)]
    return (x.new_empty(x.shape), x.new_empty(lead, dtype=torch.float64),
            x.new_empty(lead, dtype=torch.float64))


def _layer_norm_bwd_impl(dy: Tensor, x: Tensor, mean: Tensor, rstd: Tensor,
                         normalized_shape: List[int],
                         weight: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    dx, dw, db = FN.layer_norm_backward(_np(dy), _np(x), _np(mean), _np(rstd),
                                        tuple(normalized_shape), _np(weight))
    return _t(dx), _from(dw), _from(db)


layer_norm_bwd = torch.library.custom_op(
    "fastnorm::layer_norm_bwd", mutates_args=())(_layer_norm_bwd_impl)


@layer_norm_bwd.register_fake
def _(dy, x, mean, rstd, normalized_shape, weight):
    dt = _stats_dtype(x)
    ns = list(normalized_shape)
    return x.new_empty(x.shape), x.new_empty(ns, dtype=dt), x.new_empty(ns, dtype=dt)


def _ln_setup(ctx, inputs, output):
    x, ns, weight, bias, _ = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(x, weight, mean, rstd)
    ctx.ns, ctx.has_weight, ctx.has_bias = list(ns), weight is not None, bias is not None


def _ln_backward(ctx, dy, _dmean, _drstd):
    x, weight, mean, rstd = ctx.saved_tensors
    dx, dw, db = _bwd(ctx, layer_norm_bwd, _layer_norm_bwd_impl)(dy, x, mean, rstd, ctx.ns, weight)
    dw = dw.to(weight.dtype) if ctx.has_weight else None
    db = db.to(weight.dtype if ctx.has_weight else x.dtype) if ctx.has_bias else None
    return dx, None, dw, db, None


layer_norm_fwd.register_autograd(_ln_backward, setup_context=_ln_setup)


def _rms_norm_fwd_impl(x: Tensor, normalized_shape: List[int], weight: Optional[Tensor],
                       eps: Optional[float]) -> Tuple[Tensor, Tensor]:
    y, r = FN.rms_norm_forward(_np(x), tuple(normalized_shape), _np(weight), eps=eps)
    return _t(y), _from(r)


rms_norm_fwd = torch.library.custom_op(
    "fastnorm::rms_norm_fwd", mutates_args=())(_rms_norm_fwd_impl)


@rms_norm_fwd.register_fake
def _(x, normalized_shape, weight, eps):
    lead = x.shape[:x.dim() - len(normalized_shape)]
    return x.new_empty(x.shape), x.new_empty(lead, dtype=torch.float64)


def _rms_norm_bwd_impl(dy: Tensor, x: Tensor, rstd: Tensor, normalized_shape: List[int],
                       weight: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    dx, dw = FN.rms_norm_backward(_np(dy), _np(x), _np(rstd), tuple(normalized_shape),
                                  _np(weight))
    return _t(dx), _from(dw)


rms_norm_bwd = torch.library.custom_op(
    "fastnorm::rms_norm_bwd", mutates_args=())(_rms_norm_bwd_impl)


@rms_norm_bwd.register_fake
def _(dy, x, rstd, normalized_shape, weight):
    return x.new_empty(x.shape), x.new_empty(list(normalized_shape), dtype=_stats_dtype(x))


def _rms_setup(ctx, inputs, output):
    x, ns, weight, _ = inputs
    _, rstd = output
    ctx.mark_non_differentiable(rstd)
    ctx.save_for_backward(x, weight, rstd)
    ctx.ns, ctx.has_weight = list(ns), weight is not None


def _rms_backward(ctx, dy, _drstd):
    x, weight, rstd = ctx.saved_tensors
    dx, dw = _bwd(ctx, rms_norm_bwd, _rms_norm_bwd_impl)(dy, x, rstd, ctx.ns, weight)
    return dx, None, (dw.to(weight.dtype) if ctx.has_weight else None), None


rms_norm_fwd.register_autograd(_rms_backward, setup_context=_rms_setup)


# ---- eager mode: the same implementations without the custom-op dispatch ------------------
# A call through torch.library's Python custom op costs 15-30 us of dispatch (measured:
# batch norm eval on (1, 64, 14, 14) 20.9 us against 3.3 us for the kernel), more than the
# whole PyTorch op on a small tensor. Outside torch.compile the functional forms therefore run
# the implementations directly: through an autograd.Function with the same setup and backward
# formulas when a gradient is needed, bare otherwise. Under torch.compile they call the
# registered ops, which the compiler traces with their fake implementations.

def _eager(impl, setup, backward):
    class _Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            out = impl(*args)
            ctx.eager = True  # the backward calls the implementation, not the op
            setup(ctx, args, out)
            return out

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads)

    _Fn.__name__ = _Fn.__qualname__ = impl.__name__.strip("_").replace("_impl", "") + "_fn"
    _Fn.impl = staticmethod(impl)
    return _Fn


_BatchNormFwd = _eager(_batch_norm_fwd_impl, _bn_setup, _fwd3_backward)
_InstanceNormFwd = _eager(_instance_norm_fwd_impl, _in_setup, _fwd3_backward)
_GroupNormFwd = _eager(_group_norm_fwd_impl, _gn_setup, _gn_backward)
_ChannelNormEval = _eager(_channel_norm_eval_impl, _eval_setup, _eval_backward)
_LayerNormFwd = _eager(_layer_norm_fwd_impl, _ln_setup, _ln_backward)
_RmsNormFwd = _eager(_rms_norm_fwd_impl, _rms_setup, _rms_backward)


def _group_norm_y(x, num_groups, weight, bias, eps):
    return _t(FN.group_norm(_np(x), num_groups, _np(weight), _np(bias), eps=eps))


def _layer_norm_y(x, normalized_shape, weight, bias, eps):
    return _t(FN.layer_norm(_np(x), tuple(normalized_shape), _np(weight), _np(bias), eps=eps))


def _rms_norm_y(x, normalized_shape, weight, eps):
    return _t(FN.rms_norm(_np(x), tuple(normalized_shape), _np(weight), eps=eps))


def _run(op, fn, *args, y_only=None):
    """op(*args) under torch.compile; otherwise its implementation, with autograd only when
    some argument requires a gradient. y_only: return the normalized output alone, and
    without autograd compute it with y_only, the plain forward that skips the saved
    statistics (and takes the small-tensor fast path)."""
    if torch.compiler.is_compiling():
        out = op(*args)
    elif torch.is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad
                                         for a in args):
        out = fn.apply(*args)
    else:
        return y_only(*args) if y_only is not None else fn.impl(*args)
    return out[0] if y_only is not None else out


# ---- functional forms (torch.nn.functional's signatures) ------------------------------------

def _kernel_format(x: Tensor) -> Tensor:
    """x itself when the channel kernels read it in place (C order or channels-last), else a
    C-order copy; keeps the fake and real output strides identical under torch.compile."""
    if x.is_contiguous():
        return x
    if x.dim() >= 3 and x.permute(_perm_last(x.dim())).is_contiguous():
        return x
    return x.contiguous()


def _update_running(running_mean: Tensor, running_var: Tensor, mean: Tensor, var: Tensor,
                    momentum: float) -> None:
    """PyTorch's rule: running = (1 - momentum) * running + momentum * batch (unbiased var)."""
    with torch.no_grad():
        running_mean.mul_(1.0 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
        running_var.mul_(1.0 - momentum).add_(var.to(running_var.dtype), alpha=momentum)


def batch_norm(input: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
               weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
               training: bool = False, momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """``torch.nn.functional.batch_norm`` on fastnorm kernels: input (N, C, *), stats per channel.

    Training updates ``running_mean``/``running_var`` in place (unbiased variance), as PyTorch
    does. Falls back to PyTorch for tensors fastnorm does not run.
    """
    if input.dim() < 2 or not supported(input, running_mean, running_var, weight, bias):
        return torch.nn.functional.batch_norm(input, running_mean, running_var, weight, bias,
                                              training, momentum, eps)
    x = _kernel_format(input)
    if not training:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean and running_var are needed when training=False")
        return _run(channel_norm_eval, _ChannelNormEval, x, running_mean, running_var, weight,
                    bias, eps)
    y, mean, rstd = _run(batch_norm_fwd, _BatchNormFwd, x, weight, bias, eps)
    if running_mean is not None and running_var is not None:
        n = x.numel() // x.shape[1]
        var = (rstd.pow(-2) - eps) * (n / max(n - 1, 1))
        _update_running(running_mean, running_var, mean, var, momentum)
    return y


def instance_norm(input: Tensor, running_mean: Optional[Tensor] = None,
                  running_var: Optional[Tensor] = None, weight: Optional[Tensor] = None,
                  bias: Optional[Tensor] = None, use_input_stats: bool = True,
                  momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """``torch.nn.functional.instance_norm`` on fastnorm kernels: input (N, C, *spatial)."""
    spatial = input.numel() // max(input.shape[0] * input.shape[1], 1) if input.dim() >= 2 else 0
    if (input.dim() < 3 or (use_input_stats and spatial <= 1)
            or not supported(input, running_mean, running_var, weight, bias)):
        # PyTorch raises its own error for one spatial element in training
        return torch.nn.functional.instance_norm(input, running_mean, running_var, weight, bias,
                                                 use_input_stats, momentum, eps)
    x = _kernel_format(input)
    if not use_input_stats:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean and running_var are needed when use_input_stats=False")
        return _run(channel_norm_eval, _ChannelNormEval, x, running_mean, running_var, weight,
                    bias, eps)
    y, mean, rstd = _run(instance_norm_fwd, _InstanceNormFwd, x, weight, bias, eps)
    if running_mean is not None and running_var is not None:
        var = (rstd.pow(-2) - eps) * (spatial / (spatial - 1))
        _update_running(running_mean, running_var, mean.mean(0), var.mean(0), momentum)
    return y


def group_norm(input: Tensor, num_groups: int, weight: Optional[Tensor] = None,
               bias: Optional[Tensor] = None, eps: float = 1e-5) -> Tensor:
    """``torch.nn.functional.group_norm`` on fastnorm kernels: input (N, C, *)."""
    if (input.dim() < 2 or input.shape[1] % num_groups
            or not supported(input, weight, bias)):
        return torch.nn.functional.group_norm(input, num_groups, weight, bias, eps)
    return _run(group_norm_fwd, _GroupNormFwd, _kernel_format(input), num_groups, weight,
                bias, eps, y_only=_group_norm_y)


def _ns_list(normalized_shape: ShapeArg) -> List[int]:
    if isinstance(normalized_shape, int):
        return [normalized_shape]
    return [int(d) for d in normalized_shape]


def layer_norm(input: Tensor, normalized_shape: ShapeArg, weight: Optional[Tensor] = None,
               bias: Optional[Tensor] = None, eps: float = 1e-5) -> Tensor:
    """``torch.nn.functional.layer_norm`` on fastnorm kernels: input (*, *normalized_shape)."""
    ns = _ns_list(normalized_shape)
    if (not supported(input, weight, bias) or input.dim() < len(ns)
            or list(input.shape[input.dim() - len(ns):]) != ns):
        return torch.nn.functional.layer_norm(input, ns, weight, bias, eps)
    return _run(layer_norm_fwd, _LayerNormFwd, input, ns, weight, bias, eps,
                y_only=_layer_norm_y)


def rms_norm(input: Tensor, normalized_shape: ShapeArg, weight: Optional[Tensor] = None,
             eps: Optional[float] = None) -> Tensor:
    """``torch.nn.functional.rms_norm`` on fastnorm kernels; ``eps=None`` is the machine
    epsilon of the input's dtype."""
    ns = _ns_list(normalized_shape)
    if (not supported(input, weight) or input.dim() < len(ns)
            or list(input.shape[input.dim() - len(ns):]) != ns):
        return torch.nn.functional.rms_norm(input, ns, weight, eps)
    return _run(rms_norm_fwd, _RmsNormFwd, input, ns, weight, eps, y_only=_rms_norm_y)
