"""Inputs that must work: strided views, read-only arrays, memmaps, Fortran order, axes of size
1, in-place outputs, zero-size tensors; and inputs are never modified unless they are ``out``.

Every test runs every op (batch, instance, group, layer, RMS, layer/RMS + residual) in every
layout through ``opcases``.
"""
import numpy as np
import pytest

import fastnorm as fn
import opcases as oc

KEYS = ("x", "w", "b", "dy", "r", "ds")
SHAPE = (3, 4, 5, 6)


def _run(op, layout, d, out=None, bout=None):
    y, saved = oc.forward(op, layout, d["x"], d["w"], d["b"], d["r"], out=out)
    grads = oc.backward(op, layout, d["dy"], saved, d["w"], d["ds"], out=bout)
    extra = [saved[0]] if d["r"] is not None else []
    return [y, *saved[1:], *grads, *extra]


def _copies(d):
    return {k: (None if v is None else np.array(v, copy=True)) for k, v in d.items()}


def _assert_unchanged(d, keep):
    for k in KEYS:
        if keep[k] is not None:
            np.testing.assert_array_equal(d[k], keep[k], err_msg=f"{k} was modified")


# ---- views and array kinds --------------------------------------------------------------------

def _negative(a):
    """a's values through negative strides on every axis."""
    sl = (slice(None, None, -1),) * a.ndim
    return np.ascontiguousarray(a[sl])[sl]


def _stepped(a):
    """a's values through a view with steps of 2 (and 3) in its memory."""
    big = np.zeros(tuple(2 * s for s in a.shape[:-1]) + (3 * a.shape[-1],), dtype=a.dtype)
    view = big[(slice(None, None, 2),) * (a.ndim - 1) + (slice(1, None, 3),)]
    view[...] = a
    return view


def _transposed(a):
    """a's values through a transposed view (axis order reversed in memory)."""
    perm = tuple(range(a.ndim))[::-1]
    return np.ascontiguousarray(a.transpose(perm)).transpose(np.argsort(perm))


def _readonly(a):
    a = np.array(a, copy=True)
    a.setflags(write=False)
    return a


VARIANTS = {
    "negative_strides": _negative,
    "stepped": _stepped,
    "transposed": _transposed,
    "fortran": np.asfortranarray,
    "readonly": _readonly,
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("case", oc.CASES, ids=oc.case_id)
def test_views_and_array_kinds(case, variant, rng):
    """Every input given as the variant (x, weight, bias, dy, residual, residual_grad, the saved
    statistics): the results equal those of C-contiguous inputs, and nothing is modified."""
    op, layout = case
    d = oc.make_inputs(op, layout, SHAPE, np.float64, rng, offset=3.0)
    expect = _run(op, layout, d)
    f = VARIANTS[variant]
    v = {k: (None if a is None else f(a)) for k, a in d.items()}
    for k in KEYS:
        if v[k] is not None:
            np.testing.assert_array_equal(v[k], d[k])
    keep = _copies(v)
    y, saved = oc.forward(op, layout, v["x"], v["w"], v["b"], v["r"])
    saved = (saved[0],) + tuple(f(s) for s in saved[1:])
    grads = oc.backward(op, layout, v["dy"], saved, v["w"], v["ds"])
    got = [y, *saved[1:], *grads] + ([saved[0]] if d["r"] is not None else [])
    _assert_unchanged(v, keep)
    for a, e in zip(got, expect):
        assert a.shape == e.shape and a.dtype == e.dtype
        # a strided view may reach the other memory format's kernel: equal to rounding
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["r", "r+", "c"])
@pytest.mark.parametrize("case", oc.CASES, ids=oc.case_id)
def test_memmap_inputs(case, mode, rng, tmp_path):
    op, layout = case
    d = oc.make_inputs(op, layout, SHAPE, np.float32, rng, offset=10.0)
    expect = _run(op, layout, d)
    v = dict(d)
    cl = layout == "NCHW-cl"  # the file holds the channels-last memory, mapped back to NCHW
    for k in ("x", "dy", "r"):
        if d[k] is not None:
            phys = np.moveaxis(d[k], 1, -1) if cl else d[k]
            path = tmp_path / f"{k}.bin"
            phys.tofile(path)
            mm = np.memmap(path, dtype=phys.dtype, mode=mode, shape=phys.shape)
            v[k] = np.moveaxis(mm, -1, 1) if cl else mm
    got = _run(op, layout, v)
    for a, e in zip(got, expect):
        np.testing.assert_array_equal(a, e)
    for k in ("x", "dy", "r"):
        if d[k] is not None:
            phys = np.moveaxis(d[k], 1, -1) if cl else d[k]
            np.testing.assert_array_equal(np.fromfile(tmp_path / f"{k}.bin", d[k].dtype),
                                          phys.reshape(-1))


def test_python_lists_and_scalars():
    x = [[1.0, 2.0, 4.0], [3.0, 5.0, 0.5]]
    y, m, r = fn.layer_norm_forward(x, 3, [1.0, 2.0, 3.0], [0.0, 0.5, 1.0])
    assert y.dtype == np.float64 and m.shape == (2,)
    y2, _, _ = fn.layer_norm_forward(np.array(x), 3, np.array([1.0, 2.0, 3.0]),
                                     np.array([0.0, 0.5, 1.0]))
    np.testing.assert_array_equal(y, y2)
    dx, dw, db = fn.layer_norm_backward(x, x, m.tolist(), r.tolist(), 3)
    assert dx.shape == (2, 3)
    y3, rs = fn.rms_norm_forward(x, [3], eps=1e-6)
    assert y3.shape == (2, 3)
    with pytest.raises(ValueError, match="x must have at least 2 dimensions"):
        fn.batch_norm_forward(1.0)
    with pytest.raises(TypeError, match="x must be"):
        fn.group_norm_forward("abc", 1)


# ---- shapes with axes of size 1 ---------------------------------------------------------------

SIZE1_SHAPES = [(1, 4, 5, 6), (3, 1, 5, 6), (3, 4, 1, 1), (3, 4, 1), (3, 4), (2, 1), (1, 6, 7),
                (5, 2, 1, 9)]


@pytest.mark.parametrize("shape", SIZE1_SHAPES, ids=str)
@pytest.mark.parametrize("case", oc.CASES, ids=oc.case_id)
def test_size_one_axes(case, shape, rng):
    """Samples, channels, spatial extents and normalized groups of size 1 against the float64
    reference (a group of one value normalizes to bias); a training batch norm with one value
    per channel is refused as PyTorch refuses it."""
    op, layout = case
    d = oc.make_inputs(op, layout, shape, np.float64, rng, offset=2.0)
    if op == "batch" and shape[0] * int(np.prod(shape[2:])) == 1:
        with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
            oc.forward(op, layout, d["x"], d["w"], d["b"])
        return
    y, saved = oc.forward(op, layout, d["x"], d["w"], d["b"], d["r"])
    ry = oc.ref_forward(op, layout, d["x"], d["w"], d["b"], d["r"])
    assert not np.any(np.isnan(y))
    np.testing.assert_allclose(y, ry, rtol=1e-10, atol=1e-10)
    grads = oc.backward(op, layout, d["dy"], saved, d["w"], d["ds"])
    rgrads = oc.ref_backward(op, layout, d["dy"], saved[0], d["w"], d["ds"])
    for g, rg in zip(grads, rgrads):
        np.testing.assert_allclose(g, rg, rtol=1e-9, atol=1e-9)


# ---- out= ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("case", oc.CASES, ids=oc.case_id)
def test_out_is_x_in_place(case, dtype, rng):
    """out=x: the statistics are taken before x is overwritten, so the result equals the
    out-of-place one bit for bit; the backward's out=dy likewise."""
    op, layout = case
    d = oc.make_inputs(op, layout, SHAPE, dtype, rng, offset=5.0)
    expect = _run(op, layout, d)
    xi = d["x"].copy(order="K")  # keeps a channels-last memory format
    y, saved = oc.forward(op, layout, xi, d["w"], d["b"], d["r"], out=xi)
    assert y is xi
    if d["r"] is None:
        saved = (d["x"],) + saved[1:]  # x itself now holds y
    dyi = d["dy"].copy(order="K")
    grads = oc.backward(op, layout, dyi, saved, d["w"], d["ds"], out=dyi)
    assert grads[0] is dyi
    got = [y, *saved[1:], *grads] + ([saved[0]] if d["r"] is not None else [])
    for a, e in zip(got, expect):
        np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("out_kind", ["fresh", "strided", "other_format"])
@pytest.mark.parametrize("case", oc.CASES, ids=oc.case_id)
def test_out_given(case, out_kind, rng):
    """A preallocated out for forward and backward (C-contiguous, strided, or in the other
    memory format) receives exactly the out-of-place result and is what is returned."""
    op, layout = case
    d = oc.make_inputs(op, layout, SHAPE, np.float32, rng)
    keep = _copies(d)
    expect = _run(op, layout, d)

    def make():
        if out_kind == "fresh":
            return np.full(d["x"].shape, np.nan, np.float32)
        if out_kind == "strided":
            return _stepped(np.full(d["x"].shape, np.nan, np.float32))
        return _transposed(np.full(d["x"].shape, np.nan, np.float32))

    out, bout = make(), make()
    got = _run(op, layout, d, out=out, bout=bout)
    assert got[0] is out
    assert got[2 if op.startswith("rms") else 3] is bout
    _assert_unchanged(d, keep)
    for a, e in zip(got, expect):
        np.testing.assert_allclose(a, e, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("op", ["layer", "rms"])
def test_residual_out_buffers(op, rng):
    """residual_out receives x + r; out and residual_out may be x and r themselves."""
    x = rng.standard_normal((4, 33))
    r = rng.standard_normal((4, 33))
    f = fn.layer_norm if op == "layer" else fn.rms_norm
    y, s = f(x, 33, residual=r)
    xi, ri = x.copy(), r.copy()
    y2, s2 = f(xi, 33, residual=ri, out=xi, residual_out=ri)
    assert y2 is xi and s2 is ri
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(s2, s)


# ---- zero-size ----------------------------------------------------------------------------------

ZERO_SHAPES = [(0, 4, 5, 6), (0, 4), (2, 4, 0, 3), (3, 0, 5)]


@pytest.mark.parametrize("shape", ZERO_SHAPES, ids=str)
@pytest.mark.parametrize("case", oc.CASES, ids=oc.case_id)
def test_zero_size(case, shape, rng):
    """Empty tensors give empty outputs of the right shapes and dtypes, forward and backward."""
    op, layout = case
    d = oc.make_inputs(op, layout, shape, np.float32, rng)
    y, saved = oc.forward(op, layout, d["x"], d["w"], d["b"], d["r"])
    assert y.shape == d["x"].shape and y.dtype == np.float32
    grads = oc.backward(op, layout, d["dy"], saved, d["w"], d["ds"])
    assert grads[0].shape == d["x"].shape and grads[0].dtype == np.float32
    for g in grads[1:]:
        assert g.shape == d["w"].shape and g.dtype == np.float32
        # nothing to sum: exactly zero
        np.testing.assert_array_equal(g, 0)
    if d["ds"] is not None:
        np.testing.assert_array_equal(grads[0], d["ds"])
