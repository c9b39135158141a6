"""pytest-benchmark suite: ``pytest bench/ --benchmark-only`` (``--benchmark-disable`` runs each
case once, as CI does). One group per (op, layout, dtype, shape); in each group fastnorm, the
NumPy formula, PyTorch CPU and ONNX Runtime (when installed) and a parallel copy of the same
tensor at the same thread count. GB/s (bytes an op must move / time) goes to extra_info."""
import numpy as np
import pytest

import fastnorm as fn
from fastnorm import bench as B
from fastnorm._kernels import _norm as K

SHAPES = {"img": (32, 64, 56, 56), "edge": (1, 64, 14, 14)}
ROWS = {"img": (8192, 1024), "edge": (197, 768)}
THREADS = sorted({1, fn.get_num_threads()})

CASES = []
for size in SHAPES:
    for name, op, layout, _, extra in B.cases(quick=False):
        shape = ROWS[size] if layout == "rows" else SHAPES[size]
        if op == "layer":
            extra = {"ns": shape[1:]}
        CASES.append((f"{name}-{layout}-{size}", op, layout, shape, extra))

IMPLS = ["copy", "fastnorm_fwd", "fastnorm_bwd", "numpy_fwd", "torch_fwd", "torch_bwd",
         "onnxruntime_fwd"]


def _setup(op, layout, shape, extra, dtype):
    rng = np.random.default_rng(0)
    phys = shape if layout == "rows" else B._phys_shape(shape, layout)
    x = rng.standard_normal(phys).astype(dtype)
    dy = rng.standard_normal(phys).astype(dtype)
    C = shape[1]
    return x, dy, np.ones(C, dtype=dtype), np.zeros(C, dtype=dtype)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("threads", THREADS, ids=lambda t: f"{t}T")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_norm(benchmark, case, dtype, threads, impl):
    label, op, layout, shape, extra = case
    benchmark.group = f"{label}-{dtype}-{threads}T"
    x, dy, w, b = _setup(op, layout, shape, extra, dtype)
    nbytes = 2 * x.nbytes
    with fn.threads(threads):
        if impl == "copy":
            flat = x.reshape(-1)
            dst = np.empty_like(flat)
            f = B.copy_call(flat, dst, threads)
        elif impl.startswith("fastnorm"):
            fwd, bwd = B._fastnorm_calls(op, x, layout, extra, w, b, dy)
            f = fwd if impl.endswith("fwd") else bwd
            if impl.endswith("bwd"):
                nbytes = 3 * x.nbytes
        elif impl == "numpy_fwd":
            f = lambda: B._numpy_forward(op, x, layout, extra, w, b)  # noqa: E731
        elif impl.startswith("torch"):
            torch = pytest.importorskip("torch")
            torch.set_num_threads(threads)
            fwd, bwd = B._torch_calls(op, x, layout, extra, w, b, dy)
            f = fwd if impl.endswith("fwd") else bwd
        else:
            f = B._onnx_call(op, x, layout, extra, threads)
        if f is None:
            pytest.skip(f"{impl} has no {op} {layout} form")
        benchmark.extra_info["bytes_moved"] = nbytes
        benchmark(f)
        if benchmark.stats is not None and benchmark.stats.stats.min > 0:
            benchmark.extra_info["GB/s"] = nbytes / benchmark.stats.stats.min / 1e9
