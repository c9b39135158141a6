"""Mergeable moments: count, mean and M2 (sum of squared deviations) computed by the parallel
moment kernels and combined exactly with Chan's formula.

The same three numbers per statistic are what a batch norm needs across processes, what a
dataset scaler needs across batches, and what a Dask reduction needs across chunks, so one
object serves all three: :class:`Moments`.

Accuracy. The kernels do float32 block arithmetic on float32 data (about 1e-8 relative). Here
every non-float64 input is upcast to float64 one chunk at a time before the kernel, so moments
of float32, float16 or integer data are exact to float64 rounding (about 1e-15 relative), at the
price of one conversion pass over each chunk and no whole-array float64 copy.

Reductions. ``moments(x, axis)`` looks at ``x`` in its memory order (C order, Fortran order or
any permuted-contiguous view such as a channels-last image batch, without a copy), drops axes
of length 1 and joins neighbouring axes that are both reduced or both kept. These patterns map
onto a kernel directly (K kept, R reduced):

=========  ===================================================================
``R``      one statistic over everything
``K R``    per row: ``planes_moments`` with (N, C, S) = (A, 1, R)
``R K``    per column: ``cols_moments`` with (G0, R, C) = (1, R, B)
``K R K``  ``cols_moments`` with (G0, R, C) = (A, R, B)
``R K R``  per channel of a channels-first batch: ``planes_moments`` with nb = N
=========  ===================================================================

Any other pattern (for example ``K R K R``) is first copied to ``K R`` order; that copy is the
only one ``moments`` makes apart from the per-chunk upcast.
"""
import numbers
from typing import Any, Optional, Tuple, Union

import numpy as np

from fastnorm import _dispatch as D
from fastnorm._kernels import _norm as K

__all__ = ["Moments", "moments", "channel_stats"]

# Elements upcast to float64 per kernel call: 8 MB of float64, large enough that the kernel's
# parallel region dominates its setup, small enough to stay far below the size of any input
# worth streaming.
CHUNK_ELEMS = 1 << 20
# Below this many elements a kernel call runs on one thread: waking a team costs more than the
# work (and much more on a loaded machine, where a woken thread may wait for a core).
PARALLEL_MIN = 1 << 15


def n_threads_for(size):
    return D.threads() if size >= PARALLEL_MIN else 1


class Moments:
    """Count, mean and M2 (sum of squared deviations from the mean) per statistic.

    Parameters
    ----------
    count, mean, m2 : array_like, broadcastable to one shape
        Stored as float64 arrays of that shape. ``mean`` of an empty set is NaN.
    ddof : int, default 0
        Delta degrees of freedom of :attr:`var` and :attr:`std`.

    Two ``Moments`` of the same shape merge exactly (Chan et al.) with :meth:`merge` or ``+``;
    ``sum(list_of_moments)`` works too. :meth:`to_array` / :meth:`from_array` convert to and
    from one flat float64 buffer for an all-reduce or all-gather, and instances pickle.
    """

    __slots__ = ("count", "mean", "m2", "ddof")

    def __init__(self, count, mean, m2, ddof=0):
        mean = np.array(mean, dtype=np.float64)
        count = np.array(count, dtype=np.float64)
        m2 = np.array(m2, dtype=np.float64)
        try:
            shape = np.broadcast_shapes(count.shape, mean.shape, m2.shape)
        except ValueError:
            raise ValueError(
                f"count, mean and m2 must broadcast to one shape, got {count.shape}, "
                f"{mean.shape} and {m2.shape}") from None
        self.count = np.array(np.broadcast_to(count, shape))
        self.mean = np.array(np.broadcast_to(mean, shape))
        self.m2 = np.array(np.broadcast_to(m2, shape))
        self.ddof = _check_ddof(ddof)

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def empty(cls, shape=(), ddof=0):
        """Moments of an empty set: count 0, mean NaN, M2 0 (the identity of :meth:`merge`)."""
        return cls(np.zeros(shape), np.full(shape, np.nan), np.zeros(shape), ddof)

    @classmethod
    def from_array(cls, buf, shape=None, ddof=0):
        """Inverse of :meth:`to_array`: ``buf`` is ``[count, mean, m2]``, each of ``shape``
        flattened (``shape`` defaults to the 1-d ``(len(buf) // 3,)``)."""
        buf = np.asarray(buf, dtype=np.float64).reshape(-1)
        if buf.size % 3:
            raise ValueError(f"buf must hold 3 equal parts (count, mean, m2), got {buf.size} "
                             "values")
        n = buf.size // 3
        shape = (n,) if shape is None else tuple(shape)
        if int(np.prod(shape, dtype=np.int64)) != n:
            raise ValueError(f"shape {shape} does not hold the {n} values per part of buf")
        return cls(buf[:n].reshape(shape), buf[n:2 * n].reshape(shape),
                   buf[2 * n:].reshape(shape), ddof)

    def to_array(self) -> np.ndarray:
        """One flat float64 array ``[count, mean, m2]`` (length ``3 * size``)."""
        return np.concatenate([self.count.ravel(), self.mean.ravel(), self.m2.ravel()])

    def __reduce__(self):
        return (Moments, (self.count, self.mean, self.m2, self.ddof))

    # ---- derived statistics ------------------------------------------------------------------
    @property
    def shape(self):
        return self.mean.shape

    @property
    def var(self):
        """``m2 / (count - ddof)``; NaN where ``count <= ddof``."""
        d = self.count - self.ddof
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(d > 0, self.m2 / np.where(d > 0, d, 1), np.nan)

    @property
    def std(self):
        return np.sqrt(self.var)

    # ---- merging -----------------------------------------------------------------------------
    def merge(self, other: "Moments") -> "Moments":
        """Exact combination of two disjoint sets' moments (Chan, Golub and LeVeque):
        ``d = mean_b - mean_a; mean = mean_a + d * n_b / n; M2 = M2_a + M2_b + d^2 n_a n_b / n``.
        An empty side leaves the other unchanged."""
        if not isinstance(other, Moments):
            raise TypeError(f"other must be Moments, got {type(other).__name__}")
        if other.shape != self.shape:
            raise ValueError(f"other must have shape {self.shape}, got {other.shape}")
        mean, m2, n = _chan(self.count, self.mean, self.m2, other.count, other.mean, other.m2)
        return Moments(n, mean, m2, self.ddof)

    def __add__(self, other):
        if isinstance(other, numbers.Number) and other == 0:
            return self
        if not isinstance(other, Moments):
            return NotImplemented
        return self.merge(other)

    __radd__ = __add__

    def __repr__(self):
        if self.mean.size <= 6:
            return (f"Moments(count={self.count.tolist()}, mean={self.mean.tolist()}, "
                    f"m2={self.m2.tolist()}, ddof={self.ddof})")
        return f"Moments(shape={self.shape}, ddof={self.ddof})"


def _chan(na, ma, sa, nb, mb, sb):
    n = na + nb
    with np.errstate(divide="ignore", invalid="ignore"):
        f = nb / n
        d = mb - ma
        mean = ma + d * f
        m2 = sa + sb + d * d * (na * f)
    mean = np.where(na == 0, mb, np.where(nb == 0, ma, mean))
    m2 = np.where(na == 0, sb, np.where(nb == 0, sa, m2))
    return mean, m2, n


def _check_ddof(ddof):
    if isinstance(ddof, bool) or not isinstance(ddof, (numbers.Integral, np.integer)):
        raise TypeError(f"ddof must be an int, got {type(ddof).__name__}")
    if ddof < 0:
        raise ValueError(f"ddof must be >= 0, got {ddof}")
    return int(ddof)


def _is_dask(x):
    return type(x).__module__.split(".")[0] == "dask" and hasattr(x, "dask")


def _check_axis(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (numbers.Integral, np.integer)) and not isinstance(axis, bool):
        axis = (axis,)
    try:
        axes = tuple(axis)
    except TypeError:
        raise TypeError(f"axis must be None, an int or a tuple of ints, got "
                        f"{type(axis).__name__}") from None
    out = []
    for a in axes:
        if isinstance(a, bool) or not isinstance(a, (numbers.Integral, np.integer)):
            raise TypeError(f"axis must contain ints, got {axis!r}")
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of bounds for x with {ndim} dimensions")
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"axis contains a repeated axis: {axis!r}")
    return tuple(sorted(out))


def _memory_order(x):
    """Axes of x from outermost to innermost in memory, if x is a permuted C-contiguous array
    (C order, Fortran order, channels-last views...), else None."""
    if x.flags.c_contiguous:
        return tuple(range(x.ndim))
    perm = tuple(sorted(range(x.ndim), key=lambda i: -x.strides[i]))
    if x.transpose(perm).flags.c_contiguous:
        return perm
    return None


def _input(x, name="x"):
    x = D.as_array(x, name)
    if x.dtype == np.bool_ or (x.dtype.kind not in "fiu" and not D.is_half(x.dtype)):
        raise TypeError(f"{name} must be a real numeric array (float or integer), got dtype "
                        f"{x.dtype}")
    return x


def moments(x: Any, axis: Union[None, int, Tuple[int, ...]] = None, *, ddof: int = 0,
            keepdims: bool = False) -> "Moments":
    """Count, mean and M2 of ``x`` over ``axis``, by the parallel moment kernels.

    Parameters
    ----------
    x : ndarray or dask.array.Array, any real dtype
        Integers, float16 and float32 are upcast to float64 one chunk at a time, so the result
        is exact to float64 rounding for every dtype. A Dask array is reduced chunk by chunk
        with these kernels and merged by Chan's formula in a Dask reduction; the result is
        computed (on the active Dask scheduler or cluster) and returned in memory.
    axis : None, int or tuple of ints
        Axes reduced (None: all).
    ddof : int, default 0
        Delta degrees of freedom of the result's ``var``/``std``.
    keepdims : bool, default False
        Keep reduced axes with length 1, so the result broadcasts against ``x``.

    Returns
    -------
    Moments
        Arrays of the shape of ``x`` without the reduced axes.
    """
    ddof = _check_ddof(ddof)
    if _is_dask(x):
        from fastnorm._dask import dask_moments
        return dask_moments(x, axis, ddof, keepdims)
    x = _input(x)
    axes = _check_axis(axis, x.ndim)
    count, mean, m2 = _moments_array(x, axes)
    if keepdims:
        shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
        count, mean, m2 = count.reshape(shape), mean.reshape(shape), m2.reshape(shape)
    return Moments(count, mean, m2, ddof)


def _moments_array(x, axes):
    """(count, mean, m2) float64 arrays of the shape of x without ``axes``."""
    kept = [i for i in range(x.ndim) if i not in axes]
    out_shape = tuple(x.shape[i] for i in kept)
    n = int(np.prod([x.shape[i] for i in axes], dtype=np.int64))
    count = np.full(out_shape, float(n))
    if x.size == 0:
        return count, np.full(out_shape, np.nan), np.zeros(out_shape)
    order = _memory_order(x)
    if order is None:
        x = np.ascontiguousarray(x)
        order = tuple(range(x.ndim))
    xp = x.transpose(order)
    # physical groups: runs of neighbouring axes with the same label, length-1 axes dropped
    groups = []  # [reduced?, size, [axes]]
    for ax in order:
        if x.shape[ax] == 1:
            continue
        red = ax in axes
        if groups and groups[-1][0] == red:
            groups[-1][1] *= x.shape[ax]
            groups[-1][2].append(ax)
        else:
            groups.append([red, x.shape[ax], [ax]])
    labels = "".join("R" if g[0] else "K" for g in groups)
    if labels not in ("", "R", "K", "KR", "RK", "KRK", "RKR"):
        # bring kept axes first (one copy), then it is "K R"
        perm = [ax for ax in order if ax not in axes] + [ax for ax in order if ax in axes]
        xp = np.ascontiguousarray(x.transpose(perm))
        groups = [[False, int(np.prod(out_shape, dtype=np.int64)), [a for a in perm
                                                                  if a not in axes]],
                  [True, n, [a for a in perm if a in axes]]]
        labels = "KR"
    flat = xp.reshape(-1) if xp.flags.c_contiguous else np.ascontiguousarray(xp).reshape(-1)
    sizes = [g[1] for g in groups]
    if labels == "":
        mean = flat.astype(np.float64)
        m2 = np.zeros_like(mean)
    elif labels == "K":
        mean = flat.astype(np.float64)
        m2 = np.zeros_like(mean)
    else:
        mean, m2 = _kernel_moments(flat, labels, sizes)
    # result is in the physical order of the kept axes (length-1 ones dropped): back to x's
    phys_kept = [ax for g in groups if not g[0] for ax in g[2]]
    res_shape = [x.shape[ax] for ax in phys_kept]
    back = np.argsort(phys_kept)
    mean = mean.reshape(res_shape).transpose(back).reshape(out_shape)
    m2 = m2.reshape(res_shape).transpose(back).reshape(out_shape)
    return count, np.array(mean, order="C"), np.array(m2, order="C")


def _kernel_moments(flat, labels, sizes):
    """Moments of flat data in one of the kernel patterns; the outermost group is cut into
    chunks that are upcast to float64 (unless already float64), then concatenated (kept) or
    Chan-merged (reduced)."""
    outer = sizes[0]
    inner = int(np.prod(sizes[1:], dtype=np.int64)) if len(sizes) > 1 else 1
    if flat.dtype == np.float64:
        step = outer
    elif labels == "R":
        step = CHUNK_ELEMS
    else:
        step = max(1, CHUNK_ELEMS // max(inner, 1))
    nt = n_threads_for(flat.size)
    cnt = None
    mean = m2 = None
    means, m2s = [], []
    for s0 in range(0, outer, step):
        s1 = min(outer, s0 + step)
        part = flat[s0 * inner:s1 * inner]
        if part.dtype != np.float64:
            part = part.astype(np.float64)
        part = D.aligned(part)
        sz = [s1 - s0] + list(sizes[1:])
        pm, pm2, pn = _call_kernel(part, labels, sz, nt)
        if labels[0] == "K":
            means.append(pm)
            m2s.append(pm2)
        elif mean is None:
            cnt, mean, m2 = pn, pm, pm2
        else:
            mean, m2, cnt = _chan(cnt, mean, m2, pn, pm, pm2)
    if labels[0] == "K":
        return np.concatenate(means), np.concatenate(m2s)
    return mean, m2


def _call_kernel(part, labels, sz, nt):
    """(mean, m2, count) of one float64 chunk in the given pattern."""
    if labels == "R":
        (S,) = sz
        mean, m2 = np.empty(1), np.empty(1)
        K.planes_moments(part, 1, 1, S, 1, 1, mean, m2, nt)
        return mean, m2, float(S)
    if labels == "KR":
        A, R = sz
        mean, m2 = np.empty(A), np.empty(A)
        K.planes_moments(part, A, 1, R, 1, 1, mean, m2, nt)
        return mean, m2, float(R)
    if labels == "RK":
        R, B = sz
        mean, m2 = np.empty(B), np.empty(B)
        K.cols_moments(part, 1, R, B, 1, mean, m2, nt)
        return mean, m2, float(R)
    if labels == "KRK":
        A, R, B = sz
        mean, m2 = np.empty(A * B), np.empty(A * B)
        K.cols_moments(part, A, R, B, 1, mean, m2, nt)
        return mean, m2, float(R)
    # "RKR": per channel of (N, C, S), one unit per channel spanning all N
    N, C, S = sz
    mean, m2 = np.empty(C), np.empty(C)
    K.planes_moments(part, N, C, S, N, 1, mean, m2, nt)
    return mean, m2, float(N * S)


# ---- dataset statistics --------------------------------------------------------------------

def _batches_of(data, batch_size):
    """A lone array (or memmap) is read in batches along axis 0; anything else is iterated."""
    if isinstance(data, np.ndarray):
        per = int(np.prod(data.shape[1:], dtype=np.int64)) if data.ndim > 1 else 1
        if batch_size is None:
            batch_size = max(1, (8 * CHUNK_ELEMS) // max(per, 1))
        n = data.shape[0] if data.ndim else 1
        return (data[i:i + batch_size] for i in range(0, n, batch_size)), \
            -(-n // batch_size)
    try:
        total = len(data)
    except TypeError:
        total = None
    return iter(data), total


def channel_stats(batches: Any, layout: str = "NCHW", *, ddof: int = 0, progress: bool = False,
                  batch_size: Optional[int] = None) -> "Moments":
    """Per-channel count, mean and M2 of a dataset, batch by batch.

    Parameters
    ----------
    batches : ndarray, numpy.memmap or iterable of arrays
        A single array (a memmap larger than memory included) is read in slices of
        ``batch_size`` samples along axis 0; an iterable (a list, a generator, a data loader
        yielding arrays or ``(x, label)`` pairs, of which the first item is used) is consumed
        once. Each batch is ``(N, C, *spatial)`` for ``"NCHW"`` or ``(N, *spatial, C)`` for
        ``"NHWC"``, of any real dtype (uint8 images included).
    layout : "NCHW" or "NHWC"
    ddof : int, default 0
        For the result's ``var``/``std``.
    progress : bool
        Show a tqdm progress bar (needs the optional ``tqdm`` package).
    batch_size : int, optional
        Samples per slice when ``batches`` is one array (default: about 8M values).

    Returns
    -------
    Moments
        Shape (C,): ``.mean`` and ``.std`` are the dataset's per-channel mean and standard
        deviation in float64, exact to float64 rounding (batches are upcast before the
        kernels and merged with Chan's formula).
    """
    layout = D.check_layout(layout)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(
            batch_size, (numbers.Integral, np.integer)) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    it, total = _batches_of(batches, batch_size)
    if progress:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            raise ImportError("progress=True needs the optional tqdm package "
                              "(pip install fastnorm[progress])") from None
        it = tqdm(it, total=total, unit="batch", desc="channel_stats")
    acc = None
    C = None
    for i, b in enumerate(it):
        if isinstance(b, (tuple, list)) and b and not np.isscalar(b[0]):
            b = b[0]
        b = _input(b, f"batch {i}")
        if b.ndim < 2:
            raise ValueError(f"batch {i} must have at least 2 dimensions, got shape {b.shape}")
        cax = 1 if layout == "NCHW" else b.ndim - 1
        if C is None:
            C = b.shape[cax]
        elif b.shape[cax] != C:
            raise ValueError(f"batch {i} has {b.shape[cax]} channels on axis {cax}, the "
                             f"earlier batches {C}")
        red = tuple(a for a in range(b.ndim) if a != cax)
        m = moments(b, red, ddof=ddof)
        acc = m if acc is None else acc.merge(m)
    if acc is None:
        raise ValueError("batches is empty: no batch to compute statistics from")
    return acc
