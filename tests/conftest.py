import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import fastnorm  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run the tests marked slow (large tensors, minutes, ~10 GB)")


def pytest_collection_modifyitems(config, items):
    """Deselect the slow tests unless --runslow (or an explicit -m expression) asks for them."""
    if config.getoption("--runslow") or config.getoption("markexpr"):
        return
    slow = [item for item in items if "slow" in item.keywords]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if "slow" not in item.keywords]


def pytest_report_header(config):
    from fastnorm._kernels import _norm
    return (f"fastnorm {fastnorm.__version__}: openmp={_norm.openmp_enabled()}, "
            f"threads={fastnorm.get_num_threads()}, simd={_norm.simd_level()}")


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(params=[1, 2], ids=["1T", "2T"])
def nthreads(request):
    with fastnorm.threads(request.param):
        yield request.param


TOL = {np.float32: 1e-5, np.float64: 1e-10}


def assert_close(actual, expected, dtype, scale=None, what=""):
    """max |actual - expected| <= tol * scale (scale: max |expected|, at least 1)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    if scale is None:
        scale = max(1.0, float(np.max(np.abs(expected))) if expected.size else 1.0)
    err = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    tol = TOL[np.dtype(dtype).type] * scale
    assert err <= tol, f"{what}: max abs error {err:.3g} > {tol:.3g}"


def cached_and_streamed(run, monkeypatch):
    """run() with the kernels' streaming stores turned off, then forced on for every output:
    both lists of results must be bitwise equal (non-temporal stores change where bytes go,
    never their values). Returns the first list."""
    from fastnorm import _dispatch
    monkeypatch.setattr(_dispatch, "STREAM_BYTES", 0)
    cached = run()
    monkeypatch.setattr(_dispatch, "STREAM_BYTES", 1)
    streamed = run()
    assert len(cached) == len(streamed)
    for a, b in zip(cached, streamed):
        np.testing.assert_array_equal(a, b)
    return cached
