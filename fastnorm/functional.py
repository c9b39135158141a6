"""The normalization ops: training forwards (returning saved statistics), backwards, and
PyTorch-style convenience forwards.

Shapes: ``layout="NCHW"`` means channels at axis 1, ``"NHWC"`` channels last; both apply to any
rank >= 2, e.g. ``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)``, ``(N, C, D, H, W)``. ``mean`` and
``rstd`` are float64; ``rstd = 1 / sqrt(var + eps)`` with the biased variance.
"""
import math

import numpy as np

from fastnorm import _dispatch as D
from fastnorm._kernels import _norm as K

__all__ = [
    "batch_norm_forward", "batch_norm_backward", "batch_norm",
    "instance_norm_forward", "instance_norm_backward", "instance_norm",
    "group_norm_forward", "group_norm_backward", "group_norm",
    "layer_norm_forward", "layer_norm_backward", "layer_norm",
    "rms_norm_forward", "rms_norm_backward", "rms_norm",
]


# ---- shared drivers for the channel ops (batch / instance / group) ---------------------------

def _units(op, plan, G):
    """Kernel unit parameters: planes (nb, cb) or cols (G0, R, cg), and the stats shape."""
    N, C, S = plan.N, plan.C, plan.S
    if op == "batch":
        return (N, 1), (1, N * S, 1), (C,)
    if op == "instance":
        return (1, 1), (N, S, 1), (N, C)
    return (1, C // G), (N, S, C // G), (N, G)


_FAST_OPS = {"batch": 0, "instance": 1, "group": 2}


def _fast(op, x, groups, weight, bias, rmean, rvar, eps, layout, act, out, stats=False):
    """The small-tensor fast path (K.fast_forward) for a plain call, or None (then the full
    path runs: validation, layouts, dtypes, errors). Same kernels, same bits either way.
    stats=True (the training forwards, op 1-5): (y, mean, rstd) with the statistics in the
    full path's shapes."""
    r = K.fast_forward(op, x, groups, weight, bias, rmean, rvar, eps, layout, act,
                       D.get_num_threads(), D.PARALLEL_GRAIN_BYTES, out, D.STREAM_BYTES,
                       D.FRESH_BYTES, stats)
    if r is None or not stats or op == 5:
        return r
    y, m, rs = r
    shape = (y.shape[0], -1) if op in (1, 2) else y.shape[:-1]
    return y, m.reshape(shape), rs.reshape(shape)


def _fast_stats(op, x, groups, weight, bias, eps, layout, out):
    """(y, mean, rstd) of a training forward from the fast path, or None."""
    return _fast(op, x, groups, weight, bias, None, None, eps, layout, 0, out, True)


def _rms_eps(eps, x):
    """RMS norm's eps=None default (the machine epsilon of x's float dtype) where the fast path
    can see it; anything else is left for the full path to check."""
    if eps is None and isinstance(x, np.ndarray) and x.dtype.kind == "f":
        return float(np.finfo(x.dtype).eps)
    return eps


def _channel_forward(op, x, num_groups, weight, bias, eps, layout, out, act=0):
    x, ct, ot = D.input_array(x)
    layout = D.check_layout(layout)
    eps = D.check_eps(eps)
    plan = D.Plan(x, layout)
    N, C, S = plan.N, plan.C, plan.S
    G = D.num_groups_of(num_groups, C) if op == "group" else None
    w = D.param_array(weight, "weight", (C,), ct, 1)
    b = D.param_array(bias, "bias", (C,), ct, 0)
    out = D.check_out(out, x.shape, ot, [(x, "x"), (weight, "weight"), (bias, "bias")])
    (nb, cb), (G0, R, cg), sshape = _units(op, plan, G)
    if op == "batch" and N * S == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got x of shape {x.shape}")
    nstat = math.prod(sshape)
    mean = np.empty(nstat, dtype=np.float64)
    rstd = np.empty(nstat, dtype=np.float64)
    if x.size == 0:
        mean.fill(np.nan)  # statistics of an empty set
        rstd.fill(np.nan)
        y = out if out is not None else D.empty(x.shape, ot)
        return y, mean.reshape(sshape), rstd.reshape(sshape)
    xf = plan.flat(x, ct)
    yf, finish = D.output(plan, ct, ot, out)
    nt = D.threads(x.nbytes)
    if plan.kind != "planes" and not D.use_fused(G0, nt):
        nt = K.split_threads(x.nbytes, nt)
    if plan.kind == "planes":
        U = (N // nb) * (C // cb)
        K.planes_forward(xf, yf, N, C, S, nb, cb, w, b, False, eps, mean, rstd, act, nt,
                         D.use_fused(U, nt), stream=D.stream(yf, out))
    else:
        K.cols_forward(xf, yf, G0, R, C, cg, w, b, eps, mean, rstd, act, nt,
                       D.use_fused(G0, nt), stream=D.stream(yf, out))
    return finish(), mean.reshape(sshape), rstd.reshape(sshape)


def _channel_backward(op, dy, x, mean, rstd, num_groups, weight, layout, out, frozen=False):
    if op != "group" or (type(num_groups) is int and 0 < num_groups < 1 << 31):
        r = K.fast_channel_backward(_FAST_OPS[op], dy, x, mean, rstd,
                                    num_groups if op == "group" else 0, weight, layout, frozen,
                                    D.get_num_threads(), D.PARALLEL_GRAIN_BYTES, out,
                                    D.STREAM_BYTES, D.FRESH_BYTES)
        if r is not None:
            return r
    x, ct, ot = D.input_array(x)
    dy = D.check_same(dy, x, "dy")
    layout = D.check_layout(layout)
    plan = D.Plan(x, layout)
    N, C, S = plan.N, plan.C, plan.S
    G = D.num_groups_of(num_groups, C) if op == "group" else None
    (nb, cb), (G0, R, cg), sshape = _units(op, plan, G)
    m = D.stats_array(mean, "mean", sshape)
    r = D.stats_array(rstd, "rstd", sshape)
    w = D.param_array(weight, "weight", (C,), ct, 1)
    out = D.check_out(out, x.shape, ot, [(dy, "dy"), (x, "x"), (mean, "mean"),
                                         (rstd, "rstd"), (weight, "weight")])
    dweight = np.zeros(C, dtype=np.float64)
    dbias = np.zeros(C, dtype=np.float64)
    if x.size == 0:
        dx = out if out is not None else D.empty(x.shape, ot)
        return dx, dweight.astype(ct), dbias.astype(ct)
    xf = plan.flat(x, ct)
    dyf = plan.flat(dy, ct)
    dxf, finish = D.output(plan, ct, ot, out)
    nt = D.threads(x.nbytes)
    if plan.kind == "planes":
        U = (N // nb) * (C // cb)
        K.planes_backward(dyf, xf, dxf, N, C, S, nb, cb, w, m, r, dweight, dbias, nt,
                          D.use_fused(U, nt), stream=D.stream(dxf, out, True), frozen=frozen)
    else:
        K.cols_backward(dyf, xf, dxf, G0, R, C, cg, w, m, r, dweight, dbias, nt,
                        D.use_fused(G0, nt), stream=D.stream(dxf, out, True), frozen=frozen)
    return finish(), dweight.astype(ct), dbias.astype(ct)


def _apply_channels(x, mean, var, weight, bias, eps, layout, out, act, per_sample=False):
    """y = (x - mean) / sqrt(var + eps) * weight + bias with given per-channel statistics:
    one fused pass (batch norm inference, instance norm with running stats)."""
    x, ct, ot = D.input_array(x)
    plan = D.Plan(x, layout)
    C = plan.C
    m = D.param_array(mean, "running_mean", (C,), np.float64, 0)
    v = D.param_array(var, "running_var", (C,), np.float64, 1)
    w = D.param_array(weight, "weight", (C,), np.float64, 1)
    b = D.param_array(bias, "bias", (C,), ct, 0)
    out = D.check_out(out, x.shape, ot, [(x, "x"), (weight, "weight"), (bias, "bias"),
                                         (mean, "running_mean"), (var, "running_var")])
    if x.size == 0:
        return out if out is not None else D.empty(x.shape, ot)
    mh, ml, a = K.inference_coefficients(m, v, w, eps, b)
    xf = plan.flat(x, ct)
    yf, finish = D.output(plan, ct, ot, out)
    nt = D.threads(x.nbytes)
    if plan.kind == "planes":
        K.planes_apply(xf, yf, plan.N, C, plan.S, mh, ml, a, b, False, act, nt,
                       stream=D.stream(yf, out))
    else:
        K.cols_apply(xf, yf, 1, plan.N * plan.S, C, mh, ml, a, b, False, act, nt,
                     stream=D.stream(yf, out))
    return finish()


def _update_running(running_mean, running_var, mean, var, count, momentum):
    """PyTorch convention: running = (1 - momentum) * running + momentum * batch, with the
    unbiased (n / (n - 1)) variance going into running_var."""
    for name, buf in (("running_mean", running_mean), ("running_var", running_var)):
        if not isinstance(buf, np.ndarray) or buf.dtype.kind != "f":
            raise TypeError(f"{name} must be a floating numpy array to be updated in place")
        if not buf.flags.writeable:
            raise ValueError(f"{name} must be writeable to be updated in place")
        if buf.shape != mean.shape:
            raise ValueError(f"{name} must have shape {mean.shape}, got {buf.shape}")
    if count == 0:
        return
    unbiased = var * (count / (count - 1)) if count > 1 else var
    running_mean[...] = (1 - momentum) * running_mean + momentum * mean
    running_var[...] = (1 - momentum) * running_var + momentum * unbiased


def _check_momentum(momentum):
    if momentum is None:
        raise ValueError(
            "momentum=None (cumulative average) needs a batch counter: use fastnorm.nn layers, "
            "or pass momentum = 1 / num_batches_tracked")
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float, np.floating)):
        raise TypeError(f"momentum must be a float, got {type(momentum).__name__}")
    momentum = float(momentum)
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    return momentum


# ---- batch norm ------------------------------------------------------------------------------

def batch_norm_forward(x, weight=None, bias=None, *, eps=1e-5, layout="NCHW", out=None):
    """Training-mode batch normalization: statistics per channel over all other axes.

    Parameters
    ----------
    x : ndarray, (N, C, *spatial) for ``layout="NCHW"`` or (N, *spatial, C) for ``"NHWC"``
    weight, bias : ndarray (C,), optional
    eps : float > 0
    out : ndarray shaped like x, optional (may be x itself)

    Returns
    -------
    y : ndarray shaped like x
    mean, rstd : float64 ndarrays (C,)
    """
    r = _fast_stats(5, x, 0, weight, bias, eps, layout, out)
    if r is not None:
        return r
    return _channel_forward("batch", x, None, weight, bias, eps, layout, out)


def batch_norm_backward(dy, x, mean, rstd, weight=None, *, training=True, layout="NCHW",
                        out=None):
    """Backward of :func:`batch_norm_forward`: returns ``(dx, dweight, dbias)``.

    ``mean``/``rstd`` (C,) are the saved statistics. With ``training=False`` they are treated as
    constants (running statistics in eval mode): ``dx = dy * weight * rstd``.
    """
    return _channel_backward("batch", dy, x, mean, rstd, None, weight, layout, out,
                             frozen=not training)


def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, *,
               training=False, momentum=0.1, eps=1e-5, layout="NCHW", activation=None,
               out=None):
    """Batch normalization in PyTorch's argument order.

    In training (or without running buffers) the batch statistics are used and, when
    ``running_mean``/``running_var`` are given, updated in place with ``momentum`` and the
    unbiased variance. Otherwise the running statistics normalize in one fused pass
    ``y = x * a + b``; ``activation`` ("relu", "silu", "gelu") is fused into that pass.
    """
    act = D.activation_code(activation)
    if not training and running_mean is not None and running_var is not None:
        y = _fast(0, x, 0, weight, bias, running_mean, running_var, eps,
                  layout, act, out)
        if y is not None:
            return y
    eps = D.check_eps(eps)
    layout = D.check_layout(layout)
    if training or running_mean is None or running_var is None:
        if training and running_mean is not None:
            momentum = _check_momentum(momentum)
        y, mean, rstd = _channel_forward("batch", x, None, weight, bias, eps, layout, out, act)
        if training and (running_mean is not None or running_var is not None):
            if running_mean is None or running_var is None:
                raise ValueError("running_mean and running_var must be given together")
            count = x.size // max(mean.shape[0], 1)
            _update_running(running_mean, running_var, mean, 1.0 / (rstd * rstd) - eps, count,
                            momentum)
        return y
    return _apply_channels(x, running_mean, running_var, weight, bias, eps, layout, out, act)


# ---- instance norm ---------------------------------------------------------------------------

def instance_norm_forward(x, weight=None, bias=None, *, eps=1e-5, layout="NCHW", out=None):
    """Instance normalization: statistics per (sample, channel) over the spatial axes.

    Returns ``(y, mean, rstd)`` with mean/rstd of shape (N, C).
    """
    r = _fast_stats(1, x, 0, weight, bias, eps, layout, out)
    if r is not None:
        return r
    return _channel_forward("instance", x, None, weight, bias, eps, layout, out)


def instance_norm_backward(dy, x, mean, rstd, weight=None, *, layout="NCHW", out=None):
    """Backward of :func:`instance_norm_forward`; mean/rstd (N, C). Returns (dx, dweight, dbias)."""
    return _channel_backward("instance", dy, x, mean, rstd, None, weight, layout, out)


def instance_norm(x, running_mean=None, running_var=None, weight=None, bias=None,
                  use_input_stats=True, momentum=0.1, *, eps=1e-5, layout="NCHW",
                  activation=None, out=None):
    """Instance normalization in PyTorch's argument order (``F.instance_norm``).

    With ``use_input_stats`` the per-instance statistics are used and the running buffers, if
    given, move toward their average over the batch; otherwise the running statistics
    normalize every instance.
    """
    act = D.activation_code(activation)
    if use_input_stats and running_mean is None and running_var is None:
        y = _fast(1, x, 0, weight, bias, None, None, eps,
                  layout, act, out)
        if y is not None:
            return y
    eps = D.check_eps(eps)
    layout = D.check_layout(layout)
    if use_input_stats:
        if running_mean is not None:
            momentum = _check_momentum(momentum)
        y, mean, rstd = _channel_forward("instance", x, None, weight, bias, eps, layout, out,
                                         act)
        if running_mean is not None or running_var is not None:
            if running_mean is None or running_var is None:
                raise ValueError("running_mean and running_var must be given together")
            if mean.shape[0] > 0:
                N, C = mean.shape
                count = x.size // max(N * C, 1)
                _update_running(running_mean, running_var, mean.mean(axis=0),
                                (1.0 / (rstd * rstd) - eps).mean(axis=0), count, momentum)
        return y
    if running_mean is None or running_var is None:
        raise ValueError("use_input_stats=False needs running_mean and running_var")
    return _apply_channels(x, running_mean, running_var, weight, bias, eps, layout, out, act)


# ---- group norm ------------------------------------------------------------------------------

def group_norm_forward(x, num_groups, weight=None, bias=None, *, eps=1e-5, layout="NCHW",
                       out=None):
    """Group normalization: statistics per (sample, group of C/num_groups channels).

    Returns ``(y, mean, rstd)`` with mean/rstd of shape (N, num_groups).
    """
    if type(num_groups) is int and 0 < num_groups < 1 << 31:
        r = _fast_stats(2, x, num_groups, weight, bias, eps, layout, out)
        if r is not None:
            return r
    return _channel_forward("group", x, num_groups, weight, bias, eps, layout, out)


def group_norm_backward(dy, x, mean, rstd, num_groups, weight=None, *, layout="NCHW", out=None):
    """Backward of :func:`group_norm_forward`; mean/rstd (N, num_groups)."""
    return _channel_backward("group", dy, x, mean, rstd, num_groups, weight, layout, out)


def group_norm(x, num_groups, weight=None, bias=None, *, eps=1e-5, layout="NCHW",
               activation=None, out=None):
    """Group normalization returning only y (``F.group_norm``); ``activation`` is fused."""
    act = D.activation_code(activation)
    if type(num_groups) is int and 0 < num_groups < 1 << 31:
        y = _fast(2, x, num_groups, weight, bias, None, None, eps,
                  layout, act, out)
        if y is not None:
            return y
    return _channel_forward("group", x, num_groups, weight, bias, eps, layout, out, act)[0]


# ---- layer norm ------------------------------------------------------------------------------

def _layer_setup(x, normalized_shape, min_ndim=1):
    x, ct, ot = D.input_array(x, min_ndim=min_ndim)
    ns = D.normalized_shape_of(normalized_shape, x)
    lead = x.shape[:x.ndim - len(ns)]
    M = math.prod(lead)
    Dn = math.prod(ns)
    return x, ct, ot, ns, lead, M, Dn


def _rows_forward(x, normalized_shape, weight, bias, eps, out, act, rms=False, residual=None,
                  residual_out=None):
    """Layer norm or RMS norm over the trailing dims; optionally of x + residual."""
    x, ct, ot, ns, lead, M, Dn = _layer_setup(x, normalized_shape)
    if rms and eps is None:
        eps = float(np.finfo(ot).eps)  # PyTorch's default for RMSNorm
    eps = D.check_eps(eps)
    ew = weight is not None or bias is not None
    if ew:
        w = D.param_array(weight, "weight", ns, ct, 1).reshape(-1)
        b = D.param_array(bias, "bias", ns, ct, 0).reshape(-1)
    else:  # no affine: one scalar scale per row, no weight/bias streams to read
        w = np.ones(1, dtype=ct)
        b = np.zeros(1, dtype=ct)
    if residual is not None:
        residual = D.check_same(residual, x, "residual")
    inputs = [(x, "x"), (weight, "weight"), (bias, "bias"), (residual, "residual")]
    out = D.check_out(out, x.shape, ot, inputs)
    residual_out = D.check_out(residual_out, x.shape, ot, inputs + [(out, "out")],
                               name="residual_out")
    mean = np.empty(M, dtype=np.float64)
    rstd = np.empty(M, dtype=np.float64)
    plan = D.RowsPlan(x)
    if x.size == 0:
        mean.fill(np.nan)
        rstd.fill(np.nan)
        y = out if out is not None else D.empty(x.shape, ot)
        s = None
        if residual is not None:
            s = residual_out if residual_out is not None else D.empty(x.shape, ot)
        return y, mean.reshape(lead), rstd.reshape(lead), s
    xf = plan.flat(x, ct)
    yf, finish = D.output(plan, ct, ot, out)
    nt = D.threads(x.nbytes)
    if residual is None:
        K.planes_forward(xf, yf, M, 1, Dn, 1, 1, w, b, ew, eps, mean, rstd, act, nt,
                         D.use_fused(M, nt), rms, stream=D.stream(yf, out))
        return finish(), mean.reshape(lead), rstd.reshape(lead), None
    if ot != ct:
        # half precision: the sum is rounded to x's dtype where it is returned, so normalize
        # that rounded sum (what the backward is given), not the float32 one
        s = np.add(x, residual, out=residual_out)
        y, mean, rstd, _ = _rows_forward(s, normalized_shape, weight, bias, eps, out, act, rms)
        return y, mean, rstd, s
    rf = plan.flat(residual, ct)
    sf, sfinish = D.output(plan, ct, ot, residual_out)
    K.planes_forward(xf, yf, M, 1, Dn, 1, 1, w, b, ew, eps, mean, rstd, act, nt,
                     D.use_fused(M, nt), rms, rf, sf, stream=D.stream(yf, out))
    return finish(), mean.reshape(lead), rstd.reshape(lead), sfinish()


def _layer_forward(x, normalized_shape, weight, bias, eps, out, act):
    y, mean, rstd, _ = _rows_forward(x, normalized_shape, weight, bias, eps, out, act)
    return y, mean, rstd


def _rows_backward(dy, x, mean, rstd, normalized_shape, weight, out, rms, residual_grad):
    if residual_grad is None and _last_axis(normalized_shape, x):
        r = K.fast_rows_backward(dy, x, mean, rstd, weight, rms, D.get_num_threads(),
                                 D.PARALLEL_GRAIN_BYTES, out, D.STREAM_BYTES, D.FRESH_BYTES)
        if r is not None:
            return r
    x, ct, ot, ns, lead, M, Dn = _layer_setup(x, normalized_shape)
    dy = D.check_same(dy, x, "dy")
    m = np.zeros(M) if rms else D.stats_array(mean, "mean", lead)
    r = D.stats_array(rstd, "rstd", lead)
    w = D.param_array(weight, "weight", ns, ct, 1).reshape(-1)
    ds = None
    if residual_grad is not None:
        ds = D.check_same(residual_grad, x, "residual_grad")
    out = D.check_out(out, x.shape, ot, [(dy, "dy"), (x, "x"), (mean, "mean"),
                                         (rstd, "rstd"), (weight, "weight"),
                                         (residual_grad, "residual_grad")])
    dweight = D.empty(Dn, ct)  # the kernel sums in float64 and rounds once
    dbias = D.empty(Dn, ct)
    if x.size == 0:
        dx = out if out is not None else D.empty(x.shape, ot)
        dweight.fill(0)
        dbias.fill(0)
        return dx, dweight.reshape(ns), dbias.reshape(ns)
    plan = D.RowsPlan(x)
    xf = plan.flat(x, ct)
    dyf = plan.flat(dy, ct)
    dsf = plan.flat(ds, ct) if ds is not None else None
    dxf, finish = D.output(plan, ct, ot, out)
    K.rows_backward(dyf, xf, dxf, M, Dn, w, m, r, dweight, dbias, D.threads(x.nbytes), rms, dsf,
                    stream=D.stream(dxf, out, True))
    return finish(), dweight.reshape(ns), dbias.reshape(ns)


def layer_norm_forward(x, normalized_shape, weight=None, bias=None, *, eps=1e-5, residual=None,
                       out=None, residual_out=None):
    """Layer normalization over the trailing ``normalized_shape`` dims (PyTorch semantics).

    Parameters
    ----------
    x : ndarray (*, *normalized_shape)
    normalized_shape : int or tuple of ints
    weight, bias : ndarray of shape normalized_shape, optional
    residual : ndarray shaped like x, optional; normalizes ``s = x + residual`` (fused)

    Returns
    -------
    y : ndarray shaped like x
    mean, rstd : float64 ndarrays of shape ``x.shape[:-len(normalized_shape)]``
    s : ``x + residual``, only when ``residual`` is given (pass it as x to the backward)
    """
    if residual is None and _last_axis(normalized_shape, x):
        r = _fast_stats(3, x, 0, weight, bias, eps, "", out)
        if r is not None:
            return r
    y, mean, rstd, s = _rows_forward(x, normalized_shape, weight, bias, eps, out, 0,
                                     residual=residual, residual_out=residual_out)
    return (y, mean, rstd) if residual is None else (y, mean, rstd, s)


def layer_norm_backward(dy, x, mean, rstd, normalized_shape, weight=None, *,
                        residual_grad=None, out=None):
    """Backward of :func:`layer_norm_forward`: returns (dx, dweight, dbias), dweight/dbias
    shaped like ``normalized_shape``.

    For a fused add + norm, ``x`` is the saved sum ``x + residual`` and ``residual_grad`` the
    gradient reaching that sum through the residual stream; it is added to dx in the same pass,
    and dx is then the gradient of both the block input and the residual.
    """
    return _rows_backward(dy, x, mean, rstd, normalized_shape, weight, out, False,
                          residual_grad)


def layer_norm(x, normalized_shape, weight=None, bias=None, *, eps=1e-5, residual=None,
               activation=None, out=None, residual_out=None):
    """Layer normalization returning y (``F.layer_norm``); ``activation`` is fused.

    With ``residual=r`` it normalizes ``x + r`` and returns ``(y, x + r)`` from one pass over
    memory (read x and r, write the sum and y), the pre-norm transformer block pattern.
    """
    act = D.activation_code(activation)
    if residual is None and _last_axis(normalized_shape, x):
        y = _fast(3, x, 0, weight, bias, None, None, eps,
                  "", act, out)
        if y is not None:
            return y
    y, _, _, s = _rows_forward(x, normalized_shape, weight, bias, eps, out, act,
                               residual=residual, residual_out=residual_out)
    return y if residual is None else (y, s)


def _last_axis(normalized_shape, x):
    """normalized_shape names exactly x's last axis (the fast path's case)."""
    if type(x) is not np.ndarray or x.ndim == 0:
        return False
    if type(normalized_shape) is int:
        return normalized_shape == x.shape[-1]
    return (type(normalized_shape) is tuple and len(normalized_shape) == 1
            and normalized_shape[0] == x.shape[-1])


# ---- RMS norm --------------------------------------------------------------------------------

def rms_norm_forward(x, normalized_shape, weight=None, *, eps=None, residual=None, out=None,
                     residual_out=None):
    """RMS normalization over the trailing dims: ``y = x / sqrt(mean(x^2) + eps) * weight``.

    ``eps=None`` is the machine epsilon of x's dtype (PyTorch's default). Returns ``(y, rstd)``
    with rstd float64 of shape ``x.shape[:-len(normalized_shape)]``; with ``residual=r`` it
    normalizes ``x + r`` and returns ``(y, rstd, x + r)``.
    """
    if residual is None and _last_axis(normalized_shape, x):
        r = _fast_stats(4, x, 0, weight, None, _rms_eps(eps, x), "", out)
        if r is not None:
            return r[0], r[2]
    y, _, rstd, s = _rows_forward(x, normalized_shape, weight, None, eps, out, 0, rms=True,
                                  residual=residual, residual_out=residual_out)
    return (y, rstd) if residual is None else (y, rstd, s)


def rms_norm_backward(dy, x, rstd, normalized_shape, weight=None, *, residual_grad=None,
                      out=None):
    """Backward of :func:`rms_norm_forward`: returns ``(dx, dweight)``."""
    dx, dw, _ = _rows_backward(dy, x, None, rstd, normalized_shape, weight, out, True,
                               residual_grad)
    return dx, dw


def rms_norm(x, normalized_shape, weight=None, *, eps=None, residual=None, activation=None,
             out=None, residual_out=None):
    """RMS normalization returning y, or ``(y, x + r)`` with ``residual=r`` (one pass)."""
    act = D.activation_code(activation)
    if residual is None and _last_axis(normalized_shape, x):
        y = _fast(4, x, 0, weight, None, None, None, _rms_eps(eps, x),
                  "", act, out)
        if y is not None:
            return y
    y, _, _, s = _rows_forward(x, normalized_shape, weight, None, eps, out, act, rms=True,
                               residual=residual, residual_out=residual_out)
    return y if residual is None else (y, s)
