"""Batch, instance and group norm: forward and backward against the float64 reference."""
import numpy as np
import pytest

import fastnorm as fn
import reference as ref
from conftest import assert_close

SHAPES_NCHW = [
    (2, 3, 5, 7),      # odd spatial
    (4, 1, 6),         # C = 1, rank 3
    (3, 4),            # rank 2 (N, C)
    (1, 6, 9, 11),     # N = 1
    (2, 6, 3, 5, 2),   # rank 5
    (5, 16, 33, 17),   # SIMD tails
    (2, 4, 1, 1),      # spatial size 1
    (1, 2, 190, 190),  # planes longer than one chunk
]

OPS = ["batch", "instance", "group"]


def _groups(C):
    out = {1, C}
    if C % 2 == 0 and C > 2:
        out.add(C // 2)
    return sorted(out)


def _cases():
    for shape in SHAPES_NCHW:
        for op in OPS:
            N, C = shape[:2]
            S = int(np.prod(shape[2:]))
            if op == "batch" and N * S == 1:
                continue
            groups = _groups(C) if op == "group" else [None]
            for G in groups:
                yield op, shape, G


CASES = list(_cases())


def _to_layout(x_nchw, layout):
    return np.ascontiguousarray(ref.from_nchw(x_nchw, layout))


def _make(rng, shape, dtype, layout, offset=0.0):
    x = (offset + rng.standard_normal(shape)).astype(dtype)
    C = shape[1]
    w = (1 + 0.1 * rng.standard_normal(C)).astype(dtype)
    b = (0.1 * rng.standard_normal(C)).astype(dtype)
    return _to_layout(x, layout), w, b


def _fwd(op, x, G, w, b, layout, **kw):
    if op == "batch":
        return fn.batch_norm_forward(x, w, b, layout=layout, **kw)
    if op == "instance":
        return fn.instance_norm_forward(x, w, b, layout=layout, **kw)
    return fn.group_norm_forward(x, G, w, b, layout=layout, **kw)


def _bwd(op, dy, x, mean, rstd, G, w, layout, **kw):
    if op == "batch":
        return fn.batch_norm_backward(dy, x, mean, rstd, w, layout=layout, **kw)
    if op == "instance":
        return fn.instance_norm_backward(dy, x, mean, rstd, w, layout=layout, **kw)
    return fn.group_norm_backward(dy, x, mean, rstd, G, w, layout=layout, **kw)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("op,shape,G", CASES)
def test_forward(op, shape, G, layout, dtype, rng, nthreads):
    x, w, b = _make(rng, shape, dtype, layout)
    y, mean, rstd = _fwd(op, x, G, w, b, layout)
    ry, rm, rr = ref.channel_forward(op, x, w, b, 1e-5, layout, G)
    assert y.dtype == dtype and y.shape == x.shape
    assert mean.dtype == np.float64 and rstd.dtype == np.float64
    assert_close(y, ry, dtype, scale=1.0, what="y")
    assert_close(mean, rm, dtype, what="mean")
    assert_close(rstd, rr, dtype, what="rstd")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("op,shape,G", CASES)
def test_backward(op, shape, G, layout, dtype, rng, nthreads):
    x, w, b = _make(rng, shape, dtype, layout)
    dy = rng.standard_normal(x.shape).astype(dtype)
    _, mean, rstd = _fwd(op, x, G, w, b, layout)
    dx, dw, db = _bwd(op, dy, x, mean, rstd, G, w, layout)
    rdx, rdw, rdb = ref.channel_backward(op, dy, x, w, 1e-5, layout, G)
    assert dx.dtype == dtype and dw.dtype == dtype and db.dtype == dtype
    assert_close(dx, rdx, dtype, what="dx")
    assert_close(dw, rdw, dtype, what="dweight")
    assert_close(db, rdb, dtype, what="dbias")


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("op,G", [("batch", None), ("instance", None), ("group", 2)])
def test_backward_finite_differences(op, G, layout, rng):
    """Central differences of L = sum(y * dy) in float64."""
    shape = (3, 4, 5)
    x, w, b = _make(rng, shape, np.float64, layout)
    dy = rng.standard_normal(x.shape)
    _, mean, rstd = _fwd(op, x, G, w, b, layout)
    dx, dw, db = _bwd(op, dy, x, mean, rstd, G, w, layout)

    def loss(xv, wv, bv):
        return float(np.sum(_fwd(op, xv, G, wv, bv, layout)[0] * dy))

    h = 1e-6
    num = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        num[i] = (loss(xp, w, b) - loss(xm, w, b)) / (2 * h)
    np.testing.assert_allclose(dx, num, rtol=1e-5, atol=1e-7)
    numw = np.zeros_like(w)
    numb = np.zeros_like(b)
    for c in range(w.size):
        e = np.zeros_like(w)
        e[c] = h
        numw[c] = (loss(x, w + e, b) - loss(x, w - e, b)) / (2 * h)
        numb[c] = (loss(x, w, b + e) - loss(x, w, b - e)) / (2 * h)
    np.testing.assert_allclose(dw, numw, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(db, numb, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("op,G", [("batch", None), ("instance", None), ("group", 4)])
def test_layouts_agree(op, G, rng):
    """NCHW and NHWC give the same result for the same logical tensor."""
    x = rng.standard_normal((3, 8, 6, 5)).astype(np.float32)
    w = rng.standard_normal(8).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    y1, m1, r1 = _fwd(op, x, G, w, b, "NCHW")
    xl = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    y2, m2, r2 = _fwd(op, xl, G, w, b, "NHWC")
    np.testing.assert_allclose(y2.transpose(0, 3, 1, 2), y1, atol=2e-6)
    np.testing.assert_allclose(m1, m2, rtol=0, atol=1e-6)
    np.testing.assert_allclose(r1, r2, rtol=1e-6)
    d1 = _bwd(op, dy, x, m1, r1, G, w, "NCHW")
    d2 = _bwd(op, np.ascontiguousarray(dy.transpose(0, 2, 3, 1)), xl, m2, r2, G, w, "NHWC")
    np.testing.assert_allclose(d2[0].transpose(0, 3, 1, 2), d1[0], atol=1e-5)
    np.testing.assert_allclose(d2[1], d1[1], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(d2[2], d1[2], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("op,G", [("batch", None), ("instance", None), ("group", 4)])
def test_large_offset_float32(op, G, layout, rng):
    """x = 1e4 + N(0, 1) in float32 normalizes with max error <= 1e-4 (forward)."""
    x, w, b = _make(rng, (4, 8, 12, 13), np.float32, layout, offset=1e4)
    y, mean, rstd = _fwd(op, x, G, w, b, layout)
    ry, rm, rr = ref.channel_forward(op, x, w, b, 1e-5, layout, G)
    assert np.max(np.abs(y - ry)) <= 1e-4
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx, dw, db = _bwd(op, dy, x, mean, rstd, G, w, layout)
    rdx, rdw, rdb = ref.channel_backward(op, dy, x, w, 1e-5, layout, G)
    assert np.max(np.abs(dx - rdx)) <= 1e-4 * np.max(np.abs(rdx))
    assert np.max(np.abs(dw - rdw)) <= 1e-4 * np.max(np.abs(rdw))


def test_weight_none_is_identity_affine(rng):
    x = rng.standard_normal((2, 4, 3, 3))
    y0, m0, r0 = fn.group_norm_forward(x, 2)
    y1, m1, r1 = fn.group_norm_forward(x, 2, np.ones(4), np.zeros(4))
    np.testing.assert_array_equal(y0, y1)
    dy = rng.standard_normal(x.shape)
    d0 = fn.group_norm_backward(dy, x, m0, r0, 2)
    d1 = fn.group_norm_backward(dy, x, m1, r1, 2, np.ones(4))
    for a, b in zip(d0, d1):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("op", OPS)
def test_zero_size_batch(op, layout):
    shape = (0, 4, 3, 3) if layout == "NCHW" else (0, 3, 3, 4)
    x = np.zeros(shape, dtype=np.float32)
    G = 2 if op == "group" else None
    y, mean, rstd = _fwd(op, x, G, None, None, layout)
    assert y.shape == shape and y.dtype == np.float32
    dx, dw, db = _bwd(op, x, x, mean, rstd, G, None, layout)
    assert dx.shape == shape
    np.testing.assert_array_equal(dw, 0)
    np.testing.assert_array_equal(db, 0)


def test_constant_channel_gives_beta():
    x = np.full((4, 3, 5, 5), 7.25, dtype=np.float32)
    b = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    for op, G in (("batch", None), ("instance", None), ("group", 3)):
        for layout in ("NCHW", "NHWC"):
            xl = np.ascontiguousarray(ref.from_nchw(x, layout))
            y, _, _ = _fwd(op, xl, G, np.ones(3, np.float32), b, layout, eps=1e-6)
            expect = np.broadcast_to(ref.from_nchw(b.reshape(1, 3, 1, 1), layout), y.shape)
            np.testing.assert_array_equal(y, expect)


def test_nan_and_inf_propagate():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4))
    x[0, 1, 2, 2] = np.nan
    x[1, 2, 0, 0] = np.inf
    y, mean, rstd = fn.instance_norm_forward(x)
    assert np.isnan(y[0, 1]).all() and not np.isnan(y[0, 0]).any()
    assert not np.isfinite(y[1, 2]).any() and np.isfinite(y[1, 0]).all()


def _channels_last_inputs(rng, shape, dtype, scale, offset):
    """x (scale * N(0, 1) + offset), dy, weight and bias for a channels-last shape."""
    C = shape[-1]
    x = (rng.standard_normal(shape) * scale + offset).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, dy, rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)


# Channel counts that put every case of the channels-last column reductions to work (float32:
# groups of eight column vectors, then 1-7 vectors, forward rows of more than 16 vectors in one
# sweep with the sums in L1; float64: one sweep of 1-16 vectors, wider forward rows in L1, the
# backward's in sweeps of up to 16; then single columns; the rows as four streams plus a tail
# block) and of the applies (rows of 1-8 whole
# vectors with their coefficients in registers, longer rows, tails), float32 vectors holding
# 8 values and float64 vectors 4.
@pytest.mark.parametrize("C", [1, 7, 8, 16, 24, 40, 48, 56, 64, 72, 80, 96, 112, 128, 136, 144,
                               200, 259])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_channels_last_column_groups(C, dtype, rng):
    x, dy, w, b = _channels_last_inputs(rng, (3, 5, 7, C), dtype, 2, 100)
    for op in ("batch", "instance"):
        F = getattr(fn, f"{op}_norm_forward")
        B = getattr(fn, f"{op}_norm_backward")
        y, m, r = F(x, w, b, layout="NHWC")
        ry, rm, rr = ref.channel_forward(op, x, w, b, layout="NHWC")
        assert_close(y, ry, dtype, what=f"{op} y")
        assert_close(m, rm, dtype, scale=100, what=f"{op} mean")
        dx, dw, db = B(dy, x, m, r, w, layout="NHWC")
        rdx, rdw, rdb = ref.channel_backward(op, dy, x, w, layout="NHWC")
        assert_close(dx, rdx, dtype, what=f"{op} dx")
        assert_close(dw, rdw, dtype, what=f"{op} dweight")
        assert_close(db, rdb, dtype, what=f"{op} dbias")


# Batch norm over planes of under 640 bytes goes by blocks of adjacent channels, the moments down
# the columns of each block's runs (small_planes_run): these shapes cover one and several
# blocks of 64 samples, units of one channel and of many, and column tails.
SMALL_PLANES = [(32, 40, 7, 7), (130, 3, 5, 5), (3, 70, 8, 8), (66, 2, 13), (2, 600, 2, 2)]


@pytest.mark.parametrize("shape", SMALL_PLANES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_small_planes_forward(shape, dtype, rng):
    """y, mean and rstd against the float64 reference, with data 1e4 times its spread off
    zero (the shifted sums keep float32's precision), and the same bits at 1 and 2 threads
    and with a fused ReLU."""
    C = shape[1]
    x = (1e4 + rng.standard_normal(shape)).astype(dtype)
    w = rng.standard_normal(C).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    y_ref, m_ref, r_ref = ref.channel_forward("batch", x, w, b)
    outs = []
    for t in (1, 2):
        with fn.threads(t):
            outs.append(fn.batch_norm_forward(x, w, b))
    y, m, r = outs[0]
    assert_close(y, y_ref, dtype, what="y")
    np.testing.assert_allclose(m, m_ref, rtol=1e-12 if dtype == np.float64 else 1e-7)
    np.testing.assert_allclose(r, r_ref, rtol=1e-9 if dtype == np.float64 else 2e-4)
    for a, c in zip(outs[0], outs[1]):
        np.testing.assert_array_equal(a, c)
    relu = fn.batch_norm(x, np.zeros(C), np.ones(C), w, b, training=True, activation="relu")
    np.testing.assert_array_equal(relu, np.maximum(y, 0))


def test_batch_norm_small_planes_far_pivot(rng):
    """A channel whose first plane sits far from the rest (the pivot more than a standard
    deviation from the block's mean) goes through the exact two-pass; a constant channel gives
    exactly its bias."""
    x = (5 + 0.01 * rng.standard_normal((80, 4, 6, 6))).astype(np.float32)
    x[0, 1] = -300.0  # first plane of channel 1: the pivot of its first block
    x[64:, 2] += 1e3  # the second block of channel 2 far from the first's running mean
    x[:, 3] = 7.0
    w = np.ones(4, np.float32)
    b = np.arange(4, dtype=np.float32)
    y_ref, m_ref, r_ref = ref.channel_forward("batch", x, w, b)
    y, m, r = fn.batch_norm_forward(x, w, b)
    assert_close(y, y_ref, np.float32, what="y")
    assert np.max(np.abs(m - m_ref) * r_ref) < 1e-6  # in standard deviations
    np.testing.assert_allclose(r, r_ref, rtol=1e-4)
    assert np.all(y[:, 3] == 3.0)


@pytest.mark.parametrize("shape", SMALL_PLANES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_small_planes_backward(shape, dtype, rng):
    """dx, dweight, dbias against the float64 reference (data far off zero), the same bits at
    1 and 2 threads and written over dy (out=dy); eval mode gives dx = dy * w * rstd."""
    C = shape[1]
    x = (1e3 + rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(C).astype(dtype)
    _, m, r = fn.batch_norm_forward(x, w)
    dx_ref, dw_ref, db_ref = ref.channel_backward("batch", dy, x, w)
    outs = []
    for t in (1, 2):
        with fn.threads(t):
            outs.append(fn.batch_norm_backward(dy, x, m, r, w))
    dx, dw, db = outs[0]
    assert_close(dx, dx_ref, dtype, what="dx")
    assert_close(dw, dw_ref, dtype, scale=max(1.0, np.abs(dw_ref).max()) * np.sqrt(x.size),
                 what="dweight")
    assert_close(db, db_ref, dtype, scale=np.sqrt(x.size), what="dbias")
    for a, c in zip(outs[0], outs[1]):
        np.testing.assert_array_equal(a, c)
    d2 = dy.copy()
    res = fn.batch_norm_backward(d2, x, m, r, w, out=d2)
    assert res[0] is d2
    np.testing.assert_array_equal(d2, dx)
    frozen = fn.batch_norm_backward(dy, x, m, r, w, training=False)[0]
    expect = dy * (w.reshape((1, C) + (1,) * (len(shape) - 2))
                   * r.astype(dtype).reshape((1, C) + (1,) * (len(shape) - 2)))
    np.testing.assert_allclose(frozen, expect, rtol=1e-6 if dtype == np.float32 else 1e-14)


@pytest.mark.parametrize("op", ["instance", "group"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_small_units_backward_in_groups(op, dtype, rng):
    """One-sample units of up to 2 KiB go eight at a time through one C loop
    (fn_units_group_bwd): unit counts that leave a partial group, against the reference, and
    the same bits at 1 and 2 threads."""
    for shape in ((3, 5, 7, 7), (2, 12, 4, 5), (1, 9, 13), (5, 16, 3, 3)):
        C = shape[1]
        G = C if op == "instance" else (C // 2 if C % 2 == 0 else 1)
        x = (rng.standard_normal(shape) * 2 + 50).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        w = rng.standard_normal(C).astype(dtype)
        fwd = fn.instance_norm_forward if op == "instance" else \
            (lambda a, ww: fn.group_norm_forward(a, G, ww))
        bwd = fn.instance_norm_backward if op == "instance" else \
            (lambda d, a, m, r, ww: fn.group_norm_backward(d, a, m, r, G, ww))
        _, m, r = fwd(x, w)
        dx_ref, dw_ref, db_ref = ref.channel_backward(op, dy, x, w, G=G)
        runs = []
        for t in (1, 2):
            with fn.threads(t):
                runs.append(bwd(dy, x, m, r, w))
        assert_close(runs[0][0], dx_ref, dtype, what=f"dx {shape}")
        assert_close(runs[0][1], dw_ref, dtype, scale=np.sqrt(x.size), what="dweight")
        assert_close(runs[0][2], db_ref, dtype, scale=np.sqrt(x.size), what="dbias")
        for a, c in zip(runs[0], runs[1]):
            np.testing.assert_array_equal(a, c)


# Channel counts that are not a whole number of vectors but whose rows tile 64-byte lines in at
# most 128 values (fn_lanes): the moments and the forward apply read rows * C / L rows of
# L = lcm(C, 64 / itemsize) lanes, then the rows left over (here R is not a multiple of
# L / C) on their own; so do the backward's sums and apply.
@pytest.mark.parametrize("C", [2, 3, 5, 6, 7, 12, 20, 28])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_channels_last_lanes(C, dtype, rng):
    x, dy, w, b = _channels_last_inputs(rng, (3, 37, 41, C), dtype, 3, 1000)
    cases = [("batch", None), ("instance", None)] + [("group", G) for G in (1, C // 2)
                                                     if G and C % G == 0]
    for op, G in cases:
        args = (G,) if G else ()
        y, m, r = getattr(fn, f"{op}_norm_forward")(x, *args, w, b, layout="NHWC")
        ry, rm, rr = ref.channel_forward(op, x, w, b, layout="NHWC", G=G)
        assert_close(y, ry, dtype, what=f"{op} y")
        assert_close(m, rm, dtype, scale=1000, what=f"{op} mean")
        assert_close(r, rr, dtype, what=f"{op} rstd")
        dx, dw, db = getattr(fn, f"{op}_norm_backward")(dy, x, m, r, *args, w, layout="NHWC")
        rdx, rdw, rdb = ref.channel_backward(op, dy, x, w, layout="NHWC", G=G)
        assert_close(dx, rdx, dtype, what=f"{op} dx")
        assert_close(dw, rdw, dtype, what=f"{op} dweight")
        assert_close(db, rdb, dtype, what=f"{op} dbias")
    rm = rng.standard_normal(C) * 3 + 1000
    rv = rng.uniform(0.5, 2, C)
    y = fn.batch_norm(x, rm, rv, w, b, training=False, layout="NHWC", activation="relu")
    a = w / np.sqrt(rv + 1e-5)
    ry = np.maximum((x.astype(np.float64) - rm) * a + b, 0)
    assert_close(y, ry, dtype, scale=10, what="inference relu")
