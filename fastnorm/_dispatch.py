"""Validation and dispatch: every public op checks its arguments here, once, then picks the
kernel by (pattern, memory format, dtype) and allocates the outputs.

Memory formats. A tensor declared ``layout="NCHW"`` that is stored channels-last (the
``x.transpose(0, 2, 3, 1)`` view is C-contiguous, as a PyTorch ``channels_last`` tensor is) runs
the channels-last kernel on its memory as it is, and its output comes back in the same format;
likewise an ``NHWC``-declared tensor stored channels-first. Any other strided input is copied
once to C order of its declared layout.
"""
import math
import numbers
import os
import sys

import numpy as np

from fastnorm._config import get_num_threads

LAYOUTS = ("NCHW", "NHWC")
_F16 = np.dtype(np.float16)


def is_half(dtype):
    """float16, or ml_dtypes' bfloat16. fastnorm does not import ml_dtypes itself (its import
    takes over a second on a small machine): an array of bfloat16 exists only once whoever made
    it has imported ml_dtypes, so its module is looked up, not imported."""
    if dtype == _F16:
        return True
    ml = sys.modules.get("ml_dtypes")
    return ml is not None and dtype == ml.bfloat16

# ---- dtypes ----------------------------------------------------------------------------------

_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)
_NATIVE = {_F32: (_F32, _F32), _F64: (_F64, _F64)}


def compute_dtype(dtype, name="x"):
    """(compute dtype, output dtype) for an input dtype, or TypeError.

    float32/float64 compute in their own precision; float16/bfloat16 compute in float32 and
    return their own dtype; integers are promoted to float64.
    """
    hit = _NATIVE.get(dtype)
    if hit is not None:
        return hit
    dtype = np.dtype(dtype)
    if dtype == np.float32 or dtype == np.float64:
        return dtype, dtype
    if is_half(dtype):
        return np.dtype(np.float32), dtype
    if dtype.kind in "iu":
        return np.dtype(np.float64), np.dtype(np.float64)
    raise TypeError(
        f"{name} must be a floating array (float16, bfloat16, float32 or float64; integers are "
        f"promoted to float64), got dtype {dtype}")


def as_array(a, name):
    if isinstance(a, np.ndarray):
        return a
    if isinstance(a, (str, bytes)) or a is None:
        raise TypeError(f"{name} must be an array, got {type(a).__name__}")
    try:
        arr = np.asarray(a)
    except Exception as e:  # ragged lists and the like
        raise TypeError(f"{name} must be array-like: {e}") from None
    return arr


def input_array(x, name="x", min_ndim=2):
    x = as_array(x, name)
    ct, ot = compute_dtype(x.dtype, name)
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions, got shape {x.shape}")
    return x, ct, ot


def check_eps(eps):
    if type(eps) is float and 0.0 < eps < math.inf:
        return eps
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a real number, got {type(eps).__name__}")
    eps = float(eps)
    if not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be finite and > 0, got {eps}")
    return eps


def check_layout(layout):
    if layout == "NCHW" or layout == "NHWC":
        return layout
    if not isinstance(layout, str) or layout.upper() not in LAYOUTS:
        raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    return layout.upper()


_DEFAULTS = {}
_DEFAULT_MAX_BYTES = 16 << 20


def _default(shape, ct, fill):
    """A cached read-only array of fill (a weight or bias left as None). For layer norm over
    (C, H, W) it is as large as a sample: making it anew on every call (fresh pages, faulted in
    and zeroed) cost a quarter of a copy of the whole tensor in the backward."""
    key = (tuple(shape), np.dtype(ct).str, fill)
    a = _DEFAULTS.get(key)
    if a is None:
        a = np.full(shape, fill, dtype=ct)
        a.setflags(write=False)
        if a.nbytes <= _DEFAULT_MAX_BYTES:  # kept: at most 32 of at most 16 MiB
            if len(_DEFAULTS) >= 32:
                _DEFAULTS.clear()
            _DEFAULTS[key] = a
    return a


def param_array(a, name, shape, ct, fill):
    """weight/bias/running stats -> C-contiguous array of dtype ct and the given shape
    (read-only when a is None)."""
    if a is None:
        return _default(shape, ct, fill)
    if (type(a) is np.ndarray and a.dtype == ct and a.shape == shape
            and a.flags.c_contiguous and a.flags.aligned):
        return a
    a = as_array(a, name)
    if a.dtype.kind not in "fiu" and not is_half(a.dtype):
        raise TypeError(f"{name} must be a real floating array, got dtype {a.dtype}")
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {a.shape}")
    return aligned(np.ascontiguousarray(a, dtype=ct))


def stats_array(a, name, shape):
    """Saved mean/rstd for a backward: float array of the expected shape, as float64."""
    a = as_array(a, name)
    if a.dtype.kind not in "fiu" and not is_half(a.dtype):
        raise TypeError(f"{name} must be a real floating array, got dtype {a.dtype}")
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {a.shape}")
    return aligned(np.ascontiguousarray(a, dtype=np.float64)).ravel()


def check_same(a, x, name, xname="x"):
    a = as_array(a, name)
    if a.shape != x.shape:
        raise ValueError(f"{name} must have the shape of {xname} {x.shape}, got {a.shape}")
    if a.dtype != x.dtype:
        raise TypeError(f"{name} must have the dtype of {xname} ({x.dtype}), got {a.dtype}")
    return a


def check_out(out, shape, dtype, inputs, name="out"):
    """out must be a writable ndarray of the result's shape and dtype; it may be one of the
    inputs exactly (in place), but must not partly overlap any of them."""
    if out is None:
        return None
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {out.shape}")
    if out.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name} must be writeable")
    for a, an in inputs:
        if a is None or not isinstance(a, np.ndarray) or not np.may_share_memory(out, a):
            continue
        same = (a.__array_interface__["data"][0] == out.__array_interface__["data"][0]
                and a.strides == out.strides and a.shape == out.shape)
        if not same and np.shares_memory(out, a):
            raise ValueError(f"{name} overlaps {an} without being the same array")
    return out


def aligned(a):
    """a, or an aligned copy: NumPy allows arrays whose data is not aligned to their itemsize
    (views into bytes, buffers received from another process), and the kernels read whole
    elements and vectors."""
    return a if a.flags.aligned else a.copy()


# ---- memory formats --------------------------------------------------------------------------

def _perm_to_last(r):
    return (0,) + tuple(range(2, r)) + (1,)


def _perm_to_first(r):
    return (0, r - 1) + tuple(range(1, r - 1))


class Plan:
    """How a channel tensor is laid out in memory for the kernels.

    kind: "planes" (flat data is (N, C, S)) or "cols" (flat data is (N, S, C)).
    """

    def __init__(self, x, layout):
        r = x.ndim
        self.shape = x.shape
        self.N = x.shape[0]
        if layout == "NCHW":
            self.C = x.shape[1]
            spatial = x.shape[2:]
        else:
            self.C = x.shape[-1]
            spatial = x.shape[1:-1]
        self.S = math.prod(spatial)
        self.layout = layout
        # perm maps the user's axes to the physical (C-contiguous) order
        if layout == "NCHW":
            alt_kind, alt_perm = "cols", _perm_to_last(r)
            own_kind = "planes"
        else:
            alt_kind, alt_perm = "planes", _perm_to_first(r)
            own_kind = "cols"
        if x.flags.c_contiguous:
            self.kind, self.perm = own_kind, None
        elif r > 2 and x.transpose(alt_perm).flags.c_contiguous:
            self.kind, self.perm = alt_kind, alt_perm
        else:
            self.kind, self.perm = own_kind, None
        if self.S == 1:
            # (N, C) memory: channels-first and channels-last coincide; columns vectorize over C
            self.kind = "cols"

    def flat(self, a, dtype):
        """a (shaped like x) as a flat C-contiguous array in the plan's physical order."""
        if self.perm is not None:
            phys = a.transpose(self.perm)
        else:
            phys = a
        return aligned(np.ascontiguousarray(phys, dtype=dtype)).reshape(-1)

    def empty(self, dtype):
        """Flat output buffer and the user-facing view of it."""
        if self.perm is None:
            buf = empty(self.shape, dtype)
            return buf.reshape(-1), buf
        phys_shape = tuple(self.shape[i] for i in self.perm)
        buf = empty(phys_shape, dtype)
        inv = np.argsort(self.perm)
        return buf.reshape(-1), buf.transpose(inv)

    def direct_out(self, out, dtype):
        """Flat view of out if the kernel can write into it directly, else None."""
        if out is None or out.dtype != dtype:
            return None
        phys = out.transpose(self.perm) if self.perm is not None else out
        if not (phys.flags.c_contiguous and phys.flags.aligned):
            return None
        return phys.reshape(-1)


def output(plan, ct, ot, out):
    """(flat compute buffer, finish) -- finish() returns the user-facing result."""
    flat = plan.direct_out(out, ct)
    if flat is not None:
        return flat, (lambda: out)
    flat, view = plan.empty(ct)

    def finish():
        if out is not None:
            np.copyto(out, view, casting="unsafe")
            return out
        if ot != ct:
            return view.astype(ot, order="K")
        return view

    return flat, finish


from fastnorm._kernels._norm import use_fused, stream_flag, bwd_stream_bytes  # noqa: E402  (rules shared with the kernels)
from fastnorm._kernels._buffers import empty as _buf_empty  # noqa: E402
from fastnorm._config import set_buffer_cache  # noqa: E402

set_buffer_cache(None)  # FASTNORM_BUFFER_CACHE, read once at import


# Below this many bytes per thread a parallel region costs more than it saves: small tensors
# (edge inference) run on one thread, as the results are the same for any thread count.
PARALLEL_GRAIN_BYTES = 1 << 16


def _stream_bytes():
    env = os.environ.get("FASTNORM_STREAM_BYTES", "").strip()
    try:
        return max(0, int(env)) if env else 16 << 20
    except ValueError:
        return 16 << 20


# Outputs at least this large are written with non-temporal stores. A normal store first reads
# the line it overwrites (read-for-ownership): a third stream of traffic that memcpy (the
# floor) does not pay once the data is out of cache. Measured here, forward / copy at one
# thread with and without streaming: group norm (32, 64, 56, 56) float32 1.13 vs 1.36, float64
# 0.91 vs 1.64; batch norm inference float64 0.67 vs 1.18. Below the threshold the output stays
# in cache for whatever reads it next. FASTNORM_STREAM_BYTES overrides it (0: never stream).
# A backward's dx streams from two thirds of it (bwd_stream_bytes: three streams, not two).
STREAM_BYTES = _stream_bytes()


# An output fastnorm allocates itself of this size or more would come fresh from the OS on every
# call (glibc serves it by mmap and never keeps it for reuse past 32 MiB): its first write faults
# each page in and the kernel zeroes it, through the cache. fastnorm takes such outputs from
# blocks it keeps for reuse (_buffers, bounded by set_buffer_cache). Into a block whose pages
# are still new, streaming stores only add to the faults, so they are not used there.
# Measured, batch norm inference (32, 64, 56, 56) float64 at one thread, into fresh pages:
# 15.8 ms streaming, 10.1 ms not (3.8 ms into a reused out=).
FRESH_BYTES = 32 << 20


def empty(shape, dtype):
    """np.empty for outputs: from the reusable blocks at FRESH_BYTES and more."""
    return _buf_empty(shape, dtype)


def stream(out_flat, user_out=False, backward=False):
    """Whether a kernel writing out_flat should use non-temporal stores (an int flag).
    user_out: the out= the caller passed (None: fastnorm allocated out_flat just now).
    backward: out_flat is a backward's dx, which streams from two thirds of STREAM_BYTES (it
    moves three streams to a forward's two: bwd_stream_bytes)."""
    sb = bwd_stream_bytes(STREAM_BYTES) if backward else STREAM_BYTES
    return stream_flag(out_flat.nbytes, user_out, out_flat, sb, FRESH_BYTES)


def threads(nbytes=None):
    """Threads for an op moving about nbytes (None: the configured count)."""
    n = get_num_threads()
    if nbytes is None or n == 1:
        return n
    return max(1, min(n, nbytes // PARALLEL_GRAIN_BYTES))


class RowsPlan:
    """Layer-norm rows: x as C-contiguous (M, D)."""

    kind = "rows"
    perm = None

    def __init__(self, x):
        self.shape = x.shape

    def flat(self, a, dtype):
        return aligned(np.ascontiguousarray(a, dtype=dtype)).reshape(-1)

    def empty(self, dtype):
        buf = empty(self.shape, dtype)
        return buf.reshape(-1), buf

    def direct_out(self, out, dtype):
        if (out is None or out.dtype != dtype or not out.flags.c_contiguous
                or not out.flags.aligned):
            return None
        return out.reshape(-1)


def normalized_shape_of(normalized_shape, x):
    if isinstance(normalized_shape, (numbers.Integral, np.integer)) and not isinstance(
            normalized_shape, bool):
        ns = (int(normalized_shape),)
    else:
        try:
            ns = tuple(normalized_shape)
        except TypeError:
            raise TypeError("normalized_shape must be an int or a tuple of ints, got "
                            f"{type(normalized_shape).__name__}") from None
        for d in ns:
            if isinstance(d, bool) or not isinstance(d, (numbers.Integral, np.integer)):
                raise TypeError(f"normalized_shape must contain ints, got {normalized_shape!r}")
        ns = tuple(int(d) for d in ns)
    if len(ns) == 0:
        raise ValueError("normalized_shape must have at least one dimension")
    if any(d < 0 for d in ns):
        raise ValueError(f"normalized_shape must be non-negative, got {ns}")
    if len(ns) > x.ndim or tuple(x.shape[x.ndim - len(ns):]) != ns:
        raise ValueError(
            f"normalized_shape {ns} must match the trailing dimensions of x, got x of shape "
            f"{x.shape}")
    return ns


def num_groups_of(num_groups, C):
    if isinstance(num_groups, bool) or not isinstance(num_groups, (numbers.Integral, np.integer)):
        raise TypeError(f"num_groups must be an int, got {type(num_groups).__name__}")
    G = int(num_groups)
    if G < 1:
        raise ValueError(f"num_groups must be >= 1, got {G}")
    if C % G != 0:
        raise ValueError(f"num_groups ({G}) must divide the number of channels ({C})")
    return G


_ACTIVATIONS = {None: 0, "none": 0, "relu": 1, "silu": 2, "gelu": 3}


def activation_code(activation):
    key = activation.lower() if isinstance(activation, str) else activation
    if key not in _ACTIVATIONS:
        raise ValueError(
            f"activation must be None, 'relu', 'silu' or 'gelu', got {activation!r}")
    return _ACTIVATIONS[key]
