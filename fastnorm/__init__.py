"""fastnorm: fast, exact CPU normalization kernels for NumPy arrays.

Batch, layer, instance and group normalization, forward and backward, float32 and float64
(float16/bfloat16 computed in float32), channels-first and channels-last, parallel with OpenMP.
Mergeable moments and dataset statistics (``fastnorm.moments``, ``fastnorm.channel_stats``),
input scalers (``fastnorm.preprocessing``) and synchronized batch norm over
``torch.distributed`` (``fastnorm.distributed``).
"""
from typing import Any, Dict, Optional, TextIO

from fastnorm._config import get_num_threads, set_buffer_cache, set_num_threads, threads
from fastnorm.functional import (
    batch_norm, batch_norm_backward, batch_norm_forward,
    group_norm, group_norm_backward, group_norm_forward,
    instance_norm, instance_norm_backward, instance_norm_forward,
    layer_norm, layer_norm_backward, layer_norm_forward,
    rms_norm, rms_norm_backward, rms_norm_forward,
)
from fastnorm.stats import Moments, channel_stats, moments
from fastnorm.inference import fold_batch_norm
from fastnorm import nn  # noqa: E402  (NumPy layers; fastnorm.torch is imported on demand)

__version__ = "0.1.0"

__all__ = [
    "__version__", "show_config", "get_num_threads", "set_num_threads", "threads",
    "set_buffer_cache",
    "batch_norm", "batch_norm_backward", "batch_norm_forward",
    "group_norm", "group_norm_backward", "group_norm_forward",
    "instance_norm", "instance_norm_backward", "instance_norm_forward",
    "layer_norm", "layer_norm_backward", "layer_norm_forward",
    "rms_norm", "rms_norm_backward", "rms_norm_forward",
    "Moments", "moments", "channel_stats",
    "fold_batch_norm", "nn",
]


def __getattr__(name):
    # submodules loaded on first use: fastnorm.preprocessing, and fastnorm.distributed, which
    # imports torch (``import fastnorm`` itself imports none of torch, dask or scikit-learn)
    if name in ("preprocessing", "distributed"):
        import importlib
        return importlib.import_module(f"fastnorm.{name}")
    raise AttributeError(f"module 'fastnorm' has no attribute {name!r}")


def show_config(file: Optional[TextIO] = None) -> Dict[str, Any]:
    """Print (and return as a dict) how this fastnorm was built and how it will run."""
    import sys

    import numpy as np

    from fastnorm._kernels import _norm

    try:
        from fastnorm import _build_info as bi
        cflags, ldflags, debug = bi.CFLAGS, bi.LDFLAGS, bi.DEBUG
    except ImportError:  # pragma: no cover - only when built without setup.py
        cflags, ldflags, debug = None, None, None
    info = {
        "version": __version__,
        "openmp": _norm.openmp_enabled(),
        "num_threads": get_num_threads(),
        "simd": _norm.simd_level(),
        "compile_args": cflags,
        "link_args": ldflags,
        "debug_build": debug,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
    }
    out = file if file is not None else sys.stdout
    for k, v in info.items():
        print(f"{k:>14}: {v}", file=out)
    return info
