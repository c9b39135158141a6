"""Moments of a Dask array: per-chunk moments by the fastnorm kernels, merged by Chan's formula
in a ``dask.array.reduction`` tree, so the work runs wherever the Dask scheduler puts it (a
``distributed`` cluster included).

Each chunk's partial travels as a structured float64 array ``(n, mean, m2)`` of the kept shape
(with length-1 reduced axes), which Dask can concatenate along the kept axes like any array.
Imported only when a Dask array is passed, so ``import fastnorm`` does not import Dask.
"""
import numpy as np

PARTIAL = np.dtype([("n", "f8"), ("mean", "f8"), ("m2", "f8")])


def _flatten(parts):
    if isinstance(parts, (list, tuple)):
        for p in parts:
            yield from _flatten(p)
    else:
        yield parts


def _chunk(block, axis=None, keepdims=True, computing_meta=False, **kwargs):
    from fastnorm.stats import _moments_array

    if computing_meta:  # Dask probes with an empty block of the input's type
        return block
    shape = tuple(1 if i in axis else d for i, d in enumerate(block.shape))
    count, mean, m2 = _moments_array(np.asarray(block), tuple(axis))
    out = np.empty(shape, dtype=PARTIAL)
    out["n"] = count.reshape(shape)
    out["mean"] = mean.reshape(shape)
    out["m2"] = m2.reshape(shape)
    return out


def _merge(parts, axis=None, keepdims=True, computing_meta=False, **kwargs):
    from fastnorm.stats import _chan

    parts = list(_flatten(parts))
    if computing_meta:
        return parts[0] if parts else np.empty((), dtype=PARTIAL)
    # partials of one output block share its kept shape; merge them in the order given
    first = parts[0]
    n, mean, m2 = first["n"].copy(), first["mean"].copy(), first["m2"].copy()
    for p in parts[1:]:
        mean, m2, n = _chan(n, mean, m2, p["n"], p["mean"], p["m2"])
    out = np.empty(n.shape, dtype=PARTIAL)
    out["n"], out["mean"], out["m2"] = n, mean, m2
    if not keepdims:
        out = out.reshape(tuple(d for i, d in enumerate(out.shape) if i not in axis))
    return out


def dask_moments(x, axis, ddof, keepdims):
    import dask
    import dask.array as da

    from fastnorm.stats import Moments, _check_axis, _input

    _input(np.empty(0, dtype=x.dtype))  # the dtype check of the in-memory path
    axes = _check_axis(axis, x.ndim)
    ndim = x.ndim if keepdims else x.ndim - len(axes)
    red = da.reduction(x, _chunk, _merge, combine=_merge, axis=axes, keepdims=keepdims,
                       dtype=PARTIAL, concatenate=False, name="fastnorm-moments",
                       meta=np.empty((0,) * ndim, dtype=PARTIAL))
    (res,) = dask.compute(red)
    res = np.asarray(res)
    return Moments(res["n"], res["mean"], res["m2"], ddof)
