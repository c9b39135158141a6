"""Every public op behind one calling convention, for the tests that sweep all of them.

A case is (op, layout). Channel ops (batch, instance, group) take the layouts ``NCHW``,
``NHWC`` and ``NCHW-cl`` (declared NCHW, stored channels-last as a PyTorch ``channels_last``
tensor, so the channels-last kernel runs on it without a copy). Row ops (layer and RMS norm,
plain or with the fused residual add) take ``last`` (normalize the last axis) or ``all``
(every axis but the first). Shapes are always given channels-first, (N, C, *spatial).
"""
import numpy as np

import fastnorm as fn
import reference as ref

CHANNEL_OPS = ("batch", "instance", "group")
ROW_OPS = ("layer", "rms", "layer_res", "rms_res")
OPS = CHANNEL_OPS + ROW_OPS
CHANNEL_LAYOUTS = ("NCHW", "NHWC", "NCHW-cl")
ROW_LAYOUTS = ("last", "all")

CASES = ([(op, lay) for op in CHANNEL_OPS for lay in CHANNEL_LAYOUTS]
         + [(op, lay) for op in ROW_OPS for lay in ROW_LAYOUTS])


def case_id(case):
    return "-".join(case)


def groups(C):
    return 2 if C % 2 == 0 else 1


def declared(layout):
    """The ``layout=`` argument a channel case passes."""
    return "NHWC" if layout == "NHWC" else "NCHW"


def arrange(a, layout):
    """A channels-first array (N, C, *spatial) in the case's memory layout."""
    if layout == "NHWC":
        return np.ascontiguousarray(np.moveaxis(a, 1, -1))
    if layout == "NCHW-cl":
        return np.moveaxis(np.ascontiguousarray(np.moveaxis(a, 1, -1)), -1, 1)
    return np.ascontiguousarray(a)


def norm_shape(x, layout):
    return tuple(x.shape[-1:]) if layout == "last" else tuple(x.shape[1:])


def param_shape(op, x, layout):
    if op in CHANNEL_OPS:
        return (x.shape[-1] if layout == "NHWC" else x.shape[1],)
    return norm_shape(x, layout)


def make_inputs(op, layout, shape, dtype, rng, offset=0.0, scale=1.0):
    """x, w, b, dy and (residual ops) residual r and its gradient ds, as dtype."""
    x = arrange(offset + scale * rng.standard_normal(shape), layout)
    ps = param_shape(op, x, layout)
    d = {
        "x": x.astype(dtype),
        "w": (1 + 0.1 * rng.standard_normal(ps)).astype(dtype),
        "b": (0.1 * rng.standard_normal(ps)).astype(dtype),
        "dy": arrange(rng.standard_normal(shape), layout).astype(dtype),
        "r": None,
        "ds": None,
    }
    if layout == "NCHW-cl":  # astype keeps the memory format; check it did
        assert d["x"].transpose(0, *range(2, x.ndim), 1).flags.c_contiguous
    if op.endswith("_res"):
        # the residual carries the offset, x the spread: s = x + r is the normalized sum
        d["r"] = d["x"]
        d["x"] = rng.standard_normal(shape).astype(dtype)
        d["ds"] = rng.standard_normal(shape).astype(dtype)
    return d


def forward(op, layout, x, w=None, b=None, r=None, eps=1e-5, out=None):
    """(y, saved): saved is what the backward needs, (x or x + r, mean, rstd) or (s, rstd)."""
    if op in CHANNEL_OPS:
        lay = declared(layout)
        if op == "batch":
            y, m, s = fn.batch_norm_forward(x, w, b, eps=eps, layout=lay, out=out)
        elif op == "instance":
            y, m, s = fn.instance_norm_forward(x, w, b, eps=eps, layout=lay, out=out)
        else:
            C = param_shape(op, x, layout)[0]
            y, m, s = fn.group_norm_forward(x, groups(C), w, b, eps=eps, layout=lay, out=out)
        return y, (x, m, s)
    ns = norm_shape(x, layout)
    if op == "layer":
        y, m, s = fn.layer_norm_forward(x, ns, w, b, eps=eps, out=out)
        return y, (x, m, s)
    if op == "rms":
        y, s = fn.rms_norm_forward(x, ns, w, eps=eps, out=out)
        return y, (x, s)
    if op == "layer_res":
        y, m, s, xs = fn.layer_norm_forward(x, ns, w, b, eps=eps, residual=r, out=out)
        return y, (xs, m, s)
    y, s, xs = fn.rms_norm_forward(x, ns, w, eps=eps, residual=r, out=out)
    return y, (xs, s)


def backward(op, layout, dy, saved, w=None, ds=None, out=None):
    """Gradients: (dx, dweight, dbias), or (dx, dweight) for RMS norm."""
    x = saved[0]
    if op in CHANNEL_OPS:
        lay = declared(layout)
        _, m, s = saved
        if op == "batch":
            return fn.batch_norm_backward(dy, x, m, s, w, layout=lay, out=out)
        if op == "instance":
            return fn.instance_norm_backward(dy, x, m, s, w, layout=lay, out=out)
        C = param_shape(op, x, layout)[0]
        return fn.group_norm_backward(dy, x, m, s, groups(C), w, layout=lay, out=out)
    ns = norm_shape(x, layout)
    if op.startswith("layer"):
        _, m, s = saved
        return fn.layer_norm_backward(dy, x, m, s, ns, w, residual_grad=ds, out=out)
    return fn.rms_norm_backward(dy, x, saved[1], ns, w, residual_grad=ds, out=out)


def run_all(op, layout, d, eps=1e-5):
    """Forward then backward; every array produced, for bitwise comparisons."""
    y, saved = forward(op, layout, d["x"], d["w"], d["b"], d["r"], eps=eps)
    grads = backward(op, layout, d["dy"], saved, d["w"], d["ds"])
    return [y, *saved[1:], *grads] + ([saved[0]] if d["r"] is not None else [])


def _sum(x, r):
    x = np.asarray(x, dtype=np.float64)
    return x if r is None else x + np.asarray(r, dtype=np.float64)


def ref_forward(op, layout, x, w=None, b=None, r=None, eps=1e-5):
    """float64 y of the case, from tests/reference.py. The residual sum is taken in the input
    dtype (as the fused kernel stores it) before upcasting."""
    if op in CHANNEL_OPS:
        lay = declared(layout)
        G = groups(param_shape(op, x, layout)[0]) if op == "group" else None
        return ref.channel_forward(op, x, w, b, eps, lay, G)[0]
    s = x if r is None else x + r
    ns = norm_shape(x, layout)
    if op.startswith("layer"):
        return ref.layer_forward(s, ns, w, b, eps)[0]
    return ref.rms_forward(s, ns, w, eps)[0]


def ref_backward(op, layout, dy, x, w=None, ds=None, eps=1e-5):
    """float64 gradients of the case; x is the normalized input (x + r for residual ops)."""
    if op in CHANNEL_OPS:
        lay = declared(layout)
        G = groups(param_shape(op, x, layout)[0]) if op == "group" else None
        return ref.channel_backward(op, dy, x, w, eps, lay, G)
    ns = norm_shape(x, layout)
    if op.startswith("layer"):
        dx, dw, db = ref.layer_backward(dy, x, ns, w, eps)
        return (dx if ds is None else dx + ds), dw, db
    dx, dw = ref.rms_backward(dy, x, ns, w, eps)
    return (dx if ds is None else dx + ds), dw
