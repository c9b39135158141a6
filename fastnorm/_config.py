"""Thread-count and output-cache settings: the only global state fastnorm keeps.

The count is passed to every kernel call (``num_threads=`` of each parallel region); fastnorm
never calls ``omp_set_num_threads``, so it does not change the thread count of other OpenMP
libraries in the process.
"""
import os
import threading

_lock = threading.Lock()
_num_threads = None


def _default_threads():
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env:
        try:
            n = int(env)
            if n >= 1:
                return n
        except ValueError:
            pass
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def get_num_threads():
    """Number of threads fastnorm kernels use (``OMP_NUM_THREADS`` or the usable CPUs)."""
    global _num_threads
    if _num_threads is None:
        with _lock:
            if _num_threads is None:
                _num_threads = _default_threads()
    return _num_threads


def set_num_threads(n):
    """Set the number of threads for fastnorm kernels; returns the previous setting.

    ``n=None`` restores the default (``OMP_NUM_THREADS`` or the number of usable CPUs).
    Results do not depend on this setting: they are bitwise identical for any thread count.
    """
    global _num_threads
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) and not hasattr(n, "__index__"):
            raise TypeError(f"n must be an int >= 1 or None, got {type(n).__name__}")
        n = int(n)
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
    prev = get_num_threads()
    with _lock:
        _num_threads = n if n is not None else _default_threads()
    return prev


class threads:
    """Context manager: ``with fastnorm.threads(1): ...`` runs the block with n threads."""

    def __init__(self, n):
        self.n = n
        self.prev = None

    def __enter__(self):
        self.prev = set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        set_num_threads(self.prev)
        return False


def _default_cache_bytes():
    env = os.environ.get("FASTNORM_BUFFER_CACHE", "").strip()
    if env:
        try:
            return max(0, int(env))
        except ValueError:
            pass
    return 256 << 20


def set_buffer_cache(nbytes):
    """Bytes of large output buffers fastnorm may keep for reuse; returns the previous limit.

    Outputs of 256 KiB or more that fastnorm allocates come from blocks it keeps when the last
    array using one is freed, so the next output of the same size does not fault in and zero
    fresh pages (which costs more than the normalization itself). At most ``nbytes`` of freed
    blocks are kept (default 256 MiB, or ``FASTNORM_BUFFER_CACHE``); ``0`` turns the cache off
    and returns what it holds to the OS. ``None`` restores the default.
    """
    from fastnorm._kernels import _buffers
    if nbytes is None:
        nbytes = _default_cache_bytes()
    if isinstance(nbytes, bool) or not hasattr(nbytes, "__index__"):
        raise TypeError(f"nbytes must be an int >= 0 or None, got {type(nbytes).__name__}")
    nbytes = int(nbytes)
    if nbytes < 0:
        raise ValueError(f"nbytes must be >= 0, got {nbytes}")
    return _buffers.configure(limit=nbytes)[0]
