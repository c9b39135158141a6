"""The float32 activation epilogue itself: accuracy of silu and gelu over their whole range,
special values, independence from where a chunk starts, both code paths (the CPU-specific one
and the portable one), and the chunked apply paths of every layout."""
from math import erfc

import numpy as np
import pytest

import fastnorm as fn
from fastnorm._kernels import _norm as K

RELU, SILU, GELU = 1, 2, 3
PATHS = [False, True]  # portable=False: AVX-512 where the CPU has it


def _silu64(x):
    x = np.asarray(x, np.float64)
    with np.errstate(over="ignore"):
        return x / (1.0 + np.exp(-x))


_erfc = np.frompyfunc(erfc, 1, 1)


def _gelu64(x):
    x = np.asarray(x, np.float64)
    return 0.5 * x * _erfc(-x / np.sqrt(2.0)).astype(np.float64)


def _act(x, act, portable):
    out = np.empty_like(x)
    K.activation_f32(x, out, act, portable)
    return out


@pytest.mark.parametrize("portable", PATHS, ids=["native", "portable"])
def test_silu_accuracy_over_the_range(portable):
    x = np.linspace(-120, 40, 400_001).astype(np.float32)
    y = _act(x, SILU, portable).astype(np.float64)
    ref = _silu64(x)
    err = np.abs(y - ref)
    assert np.max(err / np.maximum(1.0, np.abs(x))) < 2.5e-7
    # relative accuracy wherever the value is a normal float32 (portable: until e^-87)
    keep = np.abs(ref) > 1e-30
    if portable:
        keep &= x > -86
    assert np.max(err[keep] / np.abs(ref[keep])) < 5e-7


@pytest.mark.parametrize("portable", PATHS, ids=["native", "portable"])
def test_gelu_accuracy_over_the_range(portable):
    x = np.linspace(-30, 30, 200_001).astype(np.float32)
    y = _act(x, GELU, portable).astype(np.float64)
    ref = _gelu64(x)
    # the erfc approximation's absolute error (1.5e-7) scaled by |x| / 2, plus rounding
    assert np.max(np.abs(y - ref) / np.maximum(1.0, np.abs(x))) < 3e-7


@pytest.mark.parametrize("portable", PATHS, ids=["native", "portable"])
def test_relu_is_exact_and_keeps_nan(portable):
    x = np.array([-2.0, -0.0, 0.0, 1e-42, -1e-42, np.inf, -np.inf, np.nan, 3.5], np.float32)
    y = _act(x, RELU, portable)
    np.testing.assert_array_equal(y, np.where(x < 0, np.float32(0), x))


@pytest.mark.parametrize("act", [SILU, GELU])
@pytest.mark.parametrize("portable", PATHS, ids=["native", "portable"])
def test_special_values(act, portable):
    x = np.array([0.0, np.inf, -np.inf, np.nan, 1e30, -1e30, 3.4e38, -3.4e38, -200.0, 1e-40],
                 np.float32)
    y = _act(x, act, portable)
    assert y[0] == 0
    assert y[1] == np.inf
    assert np.isnan(y[2]) and np.isnan(y[3])  # -inf * 0, as PyTorch gives
    assert y[4] == np.float32(1e30) and y[6] == np.float32(3.4e38)
    assert y[5] == 0 and y[7] == 0 and abs(y[8]) < 1e-36
    assert abs(y[9] - np.float32(5e-41)) <= np.float32(1e-44)


@pytest.mark.parametrize("act", [RELU, SILU, GELU])
@pytest.mark.parametrize("portable", PATHS, ids=["native", "portable"])
def test_value_does_not_depend_on_position(act, portable, rng):
    """Heads, vector bodies and masked tails give an element the same bits."""
    src = (rng.standard_normal(300) * 4).astype(np.float32)
    whole = _act(src, act, portable)
    for k in range(18):
        for n in (1, 5, 16, 17, 63, 200):
            part = _act(src[k:k + n].copy(), act, portable)
            np.testing.assert_array_equal(part, whole[k:k + n])
            dst = np.empty(n + 1, np.float32)[1:]  # a store that starts unaligned
            K.activation_f32(src[k:k + n], dst, act, portable)
            np.testing.assert_array_equal(dst, whole[k:k + n])


@pytest.mark.parametrize("act", [SILU, GELU])
def test_paths_agree(act, rng):
    x = (rng.standard_normal(10_000) * 3).astype(np.float32)
    a, b = _act(x, act, False), _act(x, act, True)
    assert np.max(np.abs(a - b) / np.maximum(1.0, np.abs(x))) < 4e-7


def test_activation_kernel_validates():
    x = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="dst"):
        K.activation_f32(x, np.zeros(3, np.float32), SILU)
    with pytest.raises(ValueError, match="act"):
        K.activation_f32(x, x.copy(), 7)


# ---- the chunked apply paths, on shapes that cross the L1 chunk and the long-row path ------

def _cases(rng, dtype):
    C = 3
    x = (rng.standard_normal((2, C, 50, 47)) * 2).astype(dtype)  # planes of 2350 > one chunk
    xl = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    w, b = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    wide = (rng.standard_normal((2, 5, 2500)) * 2).astype(dtype)  # NHWC rows of 2500 > chunk
    ww, wb = rng.standard_normal(2500).astype(dtype), rng.standard_normal(2500).astype(dtype)
    rows = (rng.standard_normal((3, 4100)) + 1).astype(dtype)  # layer norm rows of 2+ chunks
    rw, rb = rng.standard_normal(4100).astype(dtype), rng.standard_normal(4100).astype(dtype)
    rm, rv = rng.standard_normal(C), rng.uniform(0.5, 2, C)
    return {
        "batch_eval": lambda a: fn.batch_norm(x, rm, rv, w, b, activation=a),
        "batch_eval_nhwc": lambda a: fn.batch_norm(xl, rm, rv, w, b, layout="NHWC",
                                                   activation=a),
        "group_nhwc_wide": lambda a: fn.group_norm(wide, 50, ww, wb, layout="NHWC",
                                                   activation=a),
        "instance_wide": lambda a: fn.instance_norm(wide, None, None, ww, wb, layout="NHWC",
                                                    activation=a),
        "layer": lambda a: fn.layer_norm(rows, 4100, rw, rb, activation=a),
        "rms": lambda a: fn.rms_norm(rows, 4100, rw, eps=1e-6, activation=a),
    }


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_chunked_paths_equal_activation_of_plain(dtype, rng, nthreads):
    tol = 4e-7 if dtype == np.float32 else 1e-13
    for name, call in _cases(rng, dtype).items():
        plain = call(None)
        np.testing.assert_array_equal(call("relu"), np.where(plain < 0, dtype(0), plain),
                                      err_msg=name)
        for act, ref in (("silu", _silu64), ("gelu", _gelu64)):
            got = call(act).astype(np.float64)
            want = ref(plain)
            assert np.max(np.abs(got - want) / np.maximum(1.0, np.abs(plain))) < tol, (name, act)


def test_activation_same_bits_at_any_thread_count(rng):
    for name, call in _cases(rng, np.float32).items():
        for act in ("relu", "silu", "gelu"):
            with fn.threads(1):
                one = call(act)
            with fn.threads(2):
                two = call(act)
            np.testing.assert_array_equal(one, two, err_msg=f"{name} {act}")
