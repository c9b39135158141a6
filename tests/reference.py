"""Plain float64 NumPy reference for every op: the test oracle. Written for reading, not speed."""
import numpy as np


def to_nchw(a, layout):
    """A channels-last array (N, *spatial, C) as its channels-first view (N, C, *spatial)."""
    return a if layout == "NCHW" else np.moveaxis(a, -1, 1)


def from_nchw(a, layout):
    return a if layout == "NCHW" else np.moveaxis(a, 1, -1)


def _grouped(x, op, G):
    """x (N, C, *spatial) float64 -> (x viewed as (A, B, rest...), reduce axes, stat shape)."""
    N, C = x.shape[:2]
    if op == "batch":
        axes = (0,) + tuple(range(2, x.ndim))
        return x, axes
    if op == "instance":
        return x, tuple(range(2, x.ndim))
    xg = x.reshape((N, G, C // G) + x.shape[2:])
    return xg, tuple(range(2, xg.ndim))


def channel_forward(op, x, w=None, b=None, eps=1e-5, layout="NCHW", G=None):
    xc = to_nchw(np.asarray(x, dtype=np.float64), layout)
    N, C = xc.shape[:2]
    w = np.ones(C) if w is None else np.asarray(w, dtype=np.float64)
    b = np.zeros(C) if b is None else np.asarray(b, dtype=np.float64)
    xg, axes = _grouped(xc, op, G)
    mean = xg.mean(axis=axes, keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=axes, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    xhat = ((xg - mean) * rstd).reshape(xc.shape)
    shape = (1, C) + (1,) * (xc.ndim - 2)
    y = xhat * w.reshape(shape) + b.reshape(shape)
    return from_nchw(y, layout), np.squeeze(mean, axis=axes), np.squeeze(rstd, axis=axes)


def channel_backward(op, dy, x, w=None, eps=1e-5, layout="NCHW", G=None):
    """dx, dweight, dbias from the textbook formula, statistics recomputed in float64."""
    xc = to_nchw(np.asarray(x, dtype=np.float64), layout)
    dyc = to_nchw(np.asarray(dy, dtype=np.float64), layout)
    N, C = xc.shape[:2]
    w = np.ones(C) if w is None else np.asarray(w, dtype=np.float64)
    shape = (1, C) + (1,) * (xc.ndim - 2)
    xg, axes = _grouped(xc, op, G)
    mean = xg.mean(axis=axes, keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=axes, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    xhat = ((xg - mean) * rstd).reshape(xc.shape)
    red = (0,) + tuple(range(2, xc.ndim))
    dweight = (dyc * xhat).sum(axis=red)
    dbias = dyc.sum(axis=red)
    g = (dyc * w.reshape(shape)).reshape(xg.shape)
    xh = xhat.reshape(xg.shape)
    dx = rstd * (g - g.mean(axis=axes, keepdims=True)
                 - xh * (g * xh).mean(axis=axes, keepdims=True))
    return from_nchw(dx.reshape(xc.shape), layout), dweight, dbias


def layer_forward(x, ns, w=None, b=None, eps=1e-5):
    x = np.asarray(x, dtype=np.float64)
    axes = tuple(range(x.ndim - len(ns), x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    y = (x - mean) * rstd
    if w is not None:
        y = y * np.asarray(w, dtype=np.float64)
    if b is not None:
        y = y + np.asarray(b, dtype=np.float64)
    return y, np.squeeze(mean, axis=axes), np.squeeze(rstd, axis=axes)


def layer_backward(dy, x, ns, w=None, eps=1e-5):
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    axes = tuple(range(x.ndim - len(ns), x.ndim))
    lead = tuple(range(x.ndim - len(ns)))
    w = np.ones(ns) if w is None else np.asarray(w, dtype=np.float64)
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean) * rstd
    g = dy * w
    dx = rstd * (g - g.mean(axis=axes, keepdims=True)
                 - xhat * (g * xhat).mean(axis=axes, keepdims=True))
    return dx, (dy * xhat).sum(axis=lead), dy.sum(axis=lead)


def rms_forward(x, ns, w=None, eps=1e-6):
    x = np.asarray(x, dtype=np.float64)
    axes = tuple(range(x.ndim - len(ns), x.ndim))
    rstd = 1.0 / np.sqrt((x * x).mean(axis=axes, keepdims=True) + eps)
    y = x * rstd
    if w is not None:
        y = y * np.asarray(w, dtype=np.float64)
    return y, np.squeeze(rstd, axis=axes)


def rms_backward(dy, x, ns, w=None, eps=1e-6):
    """dx, dweight of y = x * rstd * w with rstd = 1 / sqrt(mean(x^2) + eps)."""
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    axes = tuple(range(x.ndim - len(ns), x.ndim))
    lead = tuple(range(x.ndim - len(ns)))
    w = np.ones(ns) if w is None else np.asarray(w, dtype=np.float64)
    rstd = 1.0 / np.sqrt((x * x).mean(axis=axes, keepdims=True) + eps)
    g = dy * w
    dx = rstd * g - x * rstd ** 3 * (g * x).mean(axis=axes, keepdims=True)
    return dx, (dy * x * rstd).sum(axis=lead)
