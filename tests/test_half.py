"""Half precision: float16 (NumPy) and bfloat16 (ml_dtypes, optional) in and out for every op,
computed in float32 with float64 statistics and float32 dweight/dbias.

Accuracy contract checked here: y and dx are the float64 reference on the same half-precision
input, rounded once to the output dtype (within half a unit in the last place, plus 2e-6
relative for the float32 computation); dweight and dbias are float32 within 1e-4 relative.
"""
import numpy as np
import pytest

import fastnorm as fn
import opcases as oc

SHAPES = [(4, 8, 9, 11), (2, 4, 120, 150)]


def _half_dtypes():
    out = [pytest.param(np.dtype(np.float16), id="float16")]
    try:
        import ml_dtypes
        out.append(pytest.param(np.dtype(ml_dtypes.bfloat16), id="bfloat16"))
    except ImportError:
        out.append(pytest.param(None, id="bfloat16",
                                marks=pytest.mark.skip(reason="ml_dtypes not installed")))
    return out


HALF = _half_dtypes()


def _ulp(a, dtype):
    """Spacing of dtype at |a| (a float64 array), as float64."""
    if dtype == np.float16:
        return np.spacing(np.abs(a).astype(np.float16)).astype(np.float64)
    import ml_dtypes
    fi = ml_dtypes.finfo(dtype)
    mag = np.maximum(np.abs(a), float(fi.smallest_normal))
    return 2.0 ** (np.floor(np.log2(mag)) - fi.nmant)


def assert_rounded_once(got, ref, dtype, what):
    got64 = np.asarray(got, dtype=np.float64)
    err = np.abs(got64 - ref)
    tol = 0.5 * _ulp(ref, dtype) + 2e-6 * np.maximum(1.0, np.abs(ref))
    bad = err > tol
    assert not np.any(bad), (f"{what}: {int(bad.sum())} values off by more than half an ulp, "
                             f"worst {float(np.max(err - tol)):.3g} over")


def _rel_err(a, b):
    b = np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("case", oc.CASES, ids=oc.case_id)
def test_half_forward_backward(case, shape, dtype, rng):
    op, layout = case
    d = oc.make_inputs(op, layout, shape, dtype, rng, offset=3.0, scale=2.0)
    y, saved = oc.forward(op, layout, d["x"], d["w"], d["b"], d["r"])
    assert y.dtype == dtype and y.shape == d["x"].shape
    for s in saved[1:]:
        assert s.dtype == np.float64
    if d["r"] is not None:
        assert saved[0].dtype == dtype
    # the reference sees exactly the half-precision data the op saw (x + r rounded to dtype)
    ref_x = saved[0]
    ry = oc.ref_forward(op, layout, ref_x, d["w"], d["b"])
    assert_rounded_once(y, ry, dtype, "y")
    grads = oc.backward(op, layout, d["dy"], saved, d["w"], d["ds"])
    rgrads = oc.ref_backward(op, layout, d["dy"], ref_x, d["w"], d["ds"])
    assert grads[0].dtype == dtype
    assert_rounded_once(grads[0], rgrads[0], dtype, "dx")
    for name, g, rg in zip(("dweight", "dbias"), grads[1:], rgrads[1:]):
        assert g.dtype == np.float32, name
        assert _rel_err(g, rg) <= 1e-4, name


@pytest.mark.parametrize("case", oc.CASES, ids=oc.case_id)
def test_float16_no_overflow_where_a_float16_sum_overflows(case, rng):
    """Values near 2e4 (x^2 = 4e8) over 24000 elements per group: every float16 sum and sum of
    squares overflows (max 65504); fastnorm accumulates in float32/float64 and stays finite."""
    op, layout = case
    shape = (2, 4, 80, 150)
    d = oc.make_inputs(op, layout, shape, np.float16, rng, offset=2e4, scale=300.0)
    if d["r"] is not None:  # keep the sum x + r near 2e4 too (no float16 overflow in x + r)
        d["x"] = (rng.standard_normal(shape) * 100).astype(np.float16)
    with np.errstate(over="ignore"):
        assert np.isinf(np.sum(d["x"] if d["r"] is None else d["r"], dtype=np.float16))
    y, saved = oc.forward(op, layout, d["x"], d["w"], d["b"], d["r"])
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(saved[-1]))
    ry = oc.ref_forward(op, layout, saved[0], d["w"], d["b"])
    assert_rounded_once(y, ry, np.float16, "y")
    grads = oc.backward(op, layout, d["dy"], saved, d["w"], d["ds"])
    rgrads = oc.ref_backward(op, layout, d["dy"], saved[0], d["w"], d["ds"])
    for g, rg in zip(grads, rgrads):
        assert np.all(np.isfinite(g))
        assert _rel_err(g, rg) <= 2e-3  # dx is float16; dweight/dbias float32


@pytest.mark.parametrize("dtype", HALF)
def test_half_inference_and_activation_forms(dtype, rng):
    """batch_norm (eval) and the fused activation keep the half dtype."""
    x = (rng.standard_normal((4, 6, 7, 5)) * 2 + 1).astype(dtype)
    rm, rv = rng.standard_normal(6), 1 + rng.random(6)
    w = rng.standard_normal(6).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    y = fn.batch_norm(x, rm, rv, w, b, activation="relu")
    assert y.dtype == dtype
    shape = (1, 6, 1, 1)
    expect = np.maximum(0, (x.astype(np.float64) - rm.reshape(shape))
                        / np.sqrt(rv.reshape(shape) + 1e-5) * w.astype(np.float64).reshape(shape)
                        + b.astype(np.float64).reshape(shape))
    assert_rounded_once(y, expect, dtype, "batch_norm eval")
    g = fn.group_norm(x, 3, w, b, activation="silu")
    assert g.dtype == dtype
    yl = fn.layer_norm(x, (7, 5))
    assert yl.dtype == dtype


def test_half_out_and_in_place(rng):
    x = rng.standard_normal((3, 4, 10)).astype(np.float16)
    y, m, r = fn.instance_norm_forward(x)
    out = np.empty_like(x)
    assert fn.instance_norm_forward(x, out=out)[0] is out
    np.testing.assert_array_equal(out, y)
    xi = x.copy()
    fn.instance_norm_forward(xi, out=xi)
    np.testing.assert_array_equal(xi, y)
    with pytest.raises(TypeError, match="out must have dtype float16"):
        fn.instance_norm_forward(x, out=np.empty(x.shape, np.float32))


@pytest.mark.parametrize("op", ["layer", "rms"])
def test_half_residual_normalizes_the_returned_sum(op, rng):
    """In half precision the fused add + norm normalizes x + r rounded to the dtype, the very
    sum it returns (and the backward is given): y equals the op on that sum, bit for bit."""
    x = (rng.standard_normal((6, 40)) * 30).astype(np.float16)
    r = (rng.standard_normal((6, 40)) * 30 + 500).astype(np.float16)
    w = rng.standard_normal(40).astype(np.float16)
    f = fn.layer_norm if op == "layer" else fn.rms_norm
    y, s = f(x, 40, w, residual=r)
    np.testing.assert_array_equal(s, x + r)
    np.testing.assert_array_equal(y, f(x + r, 40, w))


def test_import_leaves_ml_dtypes_alone():
    """`import fastnorm` (and its torch adapter) does not import ml_dtypes, whose import takes
    over a second; a bfloat16 array made after fastnorm's import still runs as bfloat16."""
    pytest.importorskip("ml_dtypes")
    import subprocess
    import sys
    code = ("import sys, fastnorm\n"
            "try:\n    import fastnorm.torch\nexcept ImportError:\n    pass\n"
            "assert 'ml_dtypes' not in sys.modules, 'imported by fastnorm'\n"
            "import numpy as np, ml_dtypes\n"
            "x = np.arange(24.0).reshape(2, 3, 4).astype(ml_dtypes.bfloat16)\n"
            "y = fastnorm.layer_norm(x, (4,))\n"
            "assert y.dtype == x.dtype, y.dtype\n"
            "y, m, r = fastnorm.layer_norm_forward(x, (4,))\n"
            "dx, dw, db = fastnorm.layer_norm_backward(y, x, m, r, (4,))\n"
            "assert dx.dtype == x.dtype, dx.dtype\n"
            "print('ok')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
