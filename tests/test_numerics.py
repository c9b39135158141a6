"""Data that breaks naive statistics: large offsets, tiny spreads, skewed blocks."""
import numpy as np
import pytest

import fastnorm as fn
import opcases as oc
import reference as ref
from conftest import assert_close


def _run(op, x, layout="NCHW"):
    if op == "layer":
        ns = x.shape[1:]
        return fn.layer_norm_forward(x, ns)[0], ref.layer_forward(x, ns)[0]
    G = 2 if op == "group" else None
    args = (G,) if G else ()
    y = getattr(fn, f"{op}_norm_forward")(x, *args, layout=layout)[0]
    return y, ref.channel_forward(op, x, layout=layout, G=G)[0]


OFFSETS = [0.0, 1e3, 1e4, 1e5]
# the second shape has planes (S = 37500) longer than one kernel chunk
OFFSET_SHAPES = [(4, 8, 16, 20), (2, 4, 150, 250)]


def _rel_err(a, b):
    """max |a - b| / max |b|: the relative error of a gradient array."""
    b = np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("shape", OFFSET_SHAPES, ids=str)
@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("case", oc.CASES, ids=oc.case_id)
def test_offset_float32_forward_backward(case, offset, shape, rng):
    """offset + N(0, 1) in float32, every op and layout: forward max abs error <= 1e-5 and
    backward dx, dweight, dbias relative error <= 1e-4 against the float64 reference."""
    op, layout = case
    d = oc.make_inputs(op, layout, shape, np.float32, rng, offset=offset)
    y, saved = oc.forward(op, layout, d["x"], d["w"], d["b"], d["r"])
    assert y.dtype == np.float32
    ry = oc.ref_forward(op, layout, d["x"], d["w"], d["b"], d["r"])
    assert np.max(np.abs(y - ry)) <= 1e-5
    grads = oc.backward(op, layout, d["dy"], saved, d["w"], d["ds"])
    rgrads = oc.ref_backward(op, layout, d["dy"], saved[0], d["w"], d["ds"])
    for name, g, rg in zip(("dx", "dweight", "dbias"), grads, rgrads):
        assert g.dtype == np.float32
        assert _rel_err(g, rg) <= 1e-4, name


@pytest.mark.parametrize("op", ["batch", "instance", "group", "layer"])
def test_tiny_spread_float32(op, rng):
    """1e4 + 1e-2 * N(0, 1): the spread is 1e-6 of the value."""
    x = (1e4 + 1e-2 * rng.standard_normal((3, 4, 40, 50))).astype(np.float32)
    y, ry = _run(op, x)
    # float32 stores x to 1e4 * 2^-24 = 6e-4 = 0.06 spreads: the reference sees the same data
    assert np.max(np.abs(y - ry)) <= 1e-5


@pytest.mark.parametrize("op,layout", [(op, lay) for op in ("batch", "instance", "group")
                                       for lay in ("NCHW", "NHWC")] + [("layer", "NCHW")])
def test_skewed_blocks(op, layout, rng):
    """Sorted data and a block whose first values are unlike the rest: the pivot of the one-pass
    moments is poor there, and the block must fall back to the exact two-pass."""
    x = np.sort(100 + 3 * rng.standard_normal((2, 4, 64, 80)), axis=None).reshape(2, 4, 64, 80)
    x[:, :, :1, :] -= 50.0
    x = x.astype(np.float32)
    xl = np.ascontiguousarray(ref.from_nchw(x, layout))
    y, ry = _run(op, xl, layout)
    assert np.max(np.abs(y - ry)) <= 1e-5


def test_backward_offset_float32(rng):
    for offset in (1e3, 1e5):
        x = (offset + rng.standard_normal((4, 8, 16, 16))).astype(np.float32)
        dy = rng.standard_normal(x.shape).astype(np.float32)
        _, m, r = fn.group_norm_forward(x, 4)
        dx, dw, db = fn.group_norm_backward(dy, x, m, r, 4)
        rdx, rdw, rdb = ref.channel_backward("group", dy, x, G=4)
        for a, b in ((dx, rdx), (dw, rdw), (db, rdb)):
            assert np.max(np.abs(a - b)) <= 1e-4 * np.max(np.abs(b))


# ---- constant groups, eps ---------------------------------------------------------------------

def _constant_input(op, layout, shape, dtype):
    """Every normalization group constant (per channel and group for the channel ops, per
    sample for the row ops), at values whose float32 and float64 forms differ."""
    N, C = shape[:2]
    if op in oc.CHANNEL_OPS:
        cg = C // oc.groups(C)
        v = 12345.678 * (1 + np.arange(C) // cg) - 7e3
        x = np.broadcast_to(v.reshape((1, C) + (1,) * (len(shape) - 2)), shape)
    else:
        v = 9876.54321 * np.arange(N) - 1e4
        x = np.broadcast_to(v.reshape((N,) + (1,) * (len(shape) - 1)), shape)
    return oc.arrange(x, layout).astype(dtype)


CONST_CASES = [c for c in oc.CASES if not c[0].startswith("rms")]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(4, 6, 7, 9), (3, 4, 40000)], ids=str)
@pytest.mark.parametrize("case", CONST_CASES, ids=oc.case_id)
def test_constant_groups_give_exactly_bias(case, shape, dtype, rng, nthreads):
    """Variance 0 with eps=1e-6: y is exactly bias (no NaN), mean exactly the value, rstd
    1/sqrt(eps); the backward stays finite and matches the reference."""
    op, layout = case
    d = oc.make_inputs(op, layout, shape, dtype, rng)
    x = _constant_input(op, layout, shape, dtype)
    r = None
    if op.endswith("_res"):
        r = np.zeros_like(x)
    y, saved = oc.forward(op, layout, x, d["w"], d["b"], r, eps=1e-6)
    if op in oc.CHANNEL_OPS:
        bias = d["b"].reshape((1, -1) + (1,) * (len(shape) - 2))
        bias = oc.arrange(np.broadcast_to(bias, shape), layout)
    else:
        bias = np.broadcast_to(d["b"], x.shape)
    np.testing.assert_array_equal(y, bias)
    xs, mean, rstd = saved
    np.testing.assert_array_equal(rstd, np.full(rstd.shape, 1 / np.sqrt(1e-6)))
    dx, dw, db = oc.backward(op, layout, d["dy"], saved, d["w"], d["ds"])
    # xhat is exactly 0, so dweight is exactly 0. The reference on zeros has the same
    # gradients (the float64 reference's own mean of a constant is not always exact)
    np.testing.assert_array_equal(dw, 0)
    rdx, _, rdb = oc.ref_backward(op, layout, d["dy"], np.zeros(xs.shape, dtype), d["w"],
                                  d["ds"], eps=1e-6)
    assert_close(dx, rdx, dtype, what="dx")
    assert_close(db, rdb, dtype, what="dbias")


@pytest.mark.parametrize("layout", oc.ROW_LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rms_zero_rows(layout, dtype, rng):
    """RMS norm of an all-zero row: y exactly 0, rstd 1/sqrt(eps), finite gradients."""
    x = rng.standard_normal((4, 3, 50)).astype(dtype)
    x[1] = 0
    w = rng.standard_normal(oc.norm_shape(x, layout)).astype(dtype)
    y, rstd = fn.rms_norm_forward(x, oc.norm_shape(x, layout), w, eps=1e-6)
    np.testing.assert_array_equal(y[1], 0)
    np.testing.assert_array_equal(rstd[1], 1 / np.sqrt(1e-6))
    dx, dw = fn.rms_norm_backward(x, x, rstd, oc.norm_shape(x, layout), w)
    assert np.all(np.isfinite(dx)) and np.all(np.isfinite(dw))


@pytest.mark.parametrize("eps", [0.0, -1e-5, float("nan"), float("inf")])
@pytest.mark.parametrize("case", oc.CASES, ids=oc.case_id)
def test_eps_zero_or_invalid_is_an_error(case, eps, rng):
    """eps=0 (with or without variance 0) is refused before anything runs, never garbage."""
    op, layout = case
    d = oc.make_inputs(op, layout, (2, 4, 3, 5), np.float32, rng)
    x = _constant_input(op, layout, (2, 4, 3, 5), np.float32)
    with pytest.raises(ValueError, match="eps must be finite and > 0"):
        oc.forward(op, layout, x, d["w"], d["b"], d["r"], eps=eps)


# ---- inference forms at large offsets ---------------------------------------------------------

@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("offset", OFFSETS)
def test_offset_running_stats_forms(offset, layout, rng):
    """batch_norm (eval) and instance_norm(use_input_stats=False) with running statistics at
    the data's offset: the mean is split in two float32 parts, so nothing cancels."""
    x = (offset + rng.standard_normal((4, 6, 10, 12))).astype(np.float32)
    rm = offset + 0.1 * rng.standard_normal(6)
    rv = 1 + 0.1 * rng.random(6)
    w = rng.standard_normal(6).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    shape = (1, 6, 1, 1)
    expect = ((x.astype(np.float64) - rm.reshape(shape)) / np.sqrt(rv.reshape(shape) + 1e-5)
              * w.reshape(shape) + b.reshape(shape))
    xl = oc.arrange(x, layout)
    y1 = fn.batch_norm(xl, rm, rv, w, b, layout=layout)
    y2 = fn.instance_norm(xl, rm, rv, w, b, use_input_stats=False, layout=layout)
    for y in (y1, y2):
        assert np.max(np.abs(y - ref.from_nchw(expect, layout))) <= 1e-5


# ---- determinism ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(6, 4, 30, 31), (1, 2, 200, 190), (3, 4, 5)], ids=str)
@pytest.mark.parametrize("case", oc.CASES, ids=oc.case_id)
def test_bitwise_identical_for_1_to_4_threads(case, shape):
    """Every output of forward and backward (y, statistics, dx, dweight, dbias, x + r) is
    bitwise identical for 1, 2, 3 and 4 threads (fused and split schedules included)."""
    op, layout = case
    d = oc.make_inputs(op, layout, shape, np.float32, np.random.default_rng(7), offset=100.0)
    runs = []
    for t in (1, 2, 3, 4):
        with fn.threads(t):
            runs.append(oc.run_all(op, layout, d))
    for t, other in zip((2, 3, 4), runs[1:]):
        for a, b in zip(runs[0], other):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b, err_msg=f"{t} threads vs 1")


def test_channels_last_chunk_layout():
    """The chunks a channels-last unit is cut into: whole row blocks, at most 64 of them and
    1 MiB (but 16 blocks may be more), as equal as blocks allow; at most 16 while the tensor
    has fewer than 16 chunks in all; never fewer than 9 (17 blocks cut in two) unless the unit
    is shorter."""
    from fastnorm._kernels import _norm as K
    for G0 in (1, 2, 3, 4, 7, 16, 32, 200):
        for C, isz in ((1, 4), (3, 4), (8, 8), (64, 4), (64, 8), (100, 4), (256, 4), (3000, 8)):
            for R in (1, 31, 32, 33, 511, 513, 2048, 3136, 6272, 34560, 100352):
                rb, ch, k = K.cols_chunks(G0, R, C, isz)
                nb = -(-R // rb)
                assert ch % rb == 0 and 0 < ch <= 64 * rb
                assert ch <= 16 * rb or ch * C * isz <= 1024 * 1024
                assert (k - 1) * ch < R <= k * ch
                assert ch >= min(nb, 9) * rb  # at most nb / 16 chunks, rounded up
                blocks = ch // rb
                if G0 * k < 16:  # few chunks to share out: none longer than 16 blocks
                    assert blocks <= 16, (G0, R, C)
                # as equal as whole blocks allow: no chunk more than one block per chunk longer
                # than the last
                assert blocks - (nb - (k - 1) * blocks) <= k, (G0, R, C)
    assert K.cols_chunks(1, 100352, 64, 4) == (32, 2048, 49)  # batch norm (32, 64, 56, 56)
    assert K.cols_chunks(1, 100352, 64, 8) == (32, 2048, 49)  # float64: 1 MiB
    assert K.cols_chunks(1, 100352, 256, 8) == (32, 512, 196)  # 16 blocks of 64 KiB
    assert K.cols_chunks(1, 6272, 64, 4) == (32, 512, 13)  # (8, 64, 28, 28): 13 chunks to share


@pytest.mark.parametrize("op, shape, chunks", [("batch", (8, 64, 72, 60), (2048, 17)),
                                               ("instance", (4, 64, 56, 56), (800, 4)),
                                               ("group", (2, 64, 56, 56), (448, 7))], ids=str)
def test_channels_last_long_chunks(op, shape, chunks):
    """Channels-last tensors cut into chunks of many blocks with a shorter last one (batch: 17
    chunks of 2048 rows, the last 1792; instance: 4 of 800, the last 736; group: 7 of 448):
    every output has the same bits at 1 to 4 threads and the float64 reference's values
    (forward and backward), and cols_moments (the moments alone) gives the forward's statistics
    bit for bit."""
    from fastnorm._kernels import _norm as K
    d = oc.make_inputs(op, "NHWC", shape, np.float32, np.random.default_rng(5), offset=50.0)
    runs = []
    for t in (1, 2, 3, 4):
        with fn.threads(t):
            runs.append(oc.run_all(op, "NHWC", d))
    for t, other in zip((2, 3, 4), runs[1:]):
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a, b, err_msg=f"{t} threads vs 1")
    y, saved = oc.forward(op, "NHWC", d["x"], d["w"], d["b"])
    ry, rmean, rrstd = ref.channel_forward(op, d["x"], d["w"], d["b"], 1e-5, "NHWC",
                                           oc.groups(shape[1]) if op == "group" else None)
    assert np.max(np.abs(y - ry)) < 2e-5
    np.testing.assert_allclose(saved[1].ravel(), np.ravel(rmean), rtol=0, atol=1e-6)
    np.testing.assert_allclose(saved[2].ravel(), np.ravel(rrstd), rtol=1e-6)
    grads = oc.backward(op, "NHWC", d["dy"], saved, d["w"])
    for g, r in zip(grads, oc.ref_backward(op, "NHWC", d["dy"], d["x"], d["w"])):
        assert np.max(np.abs(g - r)) <= 1e-4 * max(1.0, np.max(np.abs(r)))
    N, C = shape[0], shape[1]
    G0, cg = {"batch": (1, 1), "instance": (N, 1), "group": (N, C // oc.groups(C))}[op]
    R = d["x"].size // (G0 * C)
    assert K.cols_chunks(G0, R, C, 4)[1:] == chunks
    mean = np.empty(G0 * (C // cg))
    m2 = np.empty_like(mean)
    K.cols_moments(d["x"].reshape(-1), G0, R, C, cg, mean, m2, 2)
    np.testing.assert_array_equal(mean, saved[1].ravel())
    np.testing.assert_array_equal(1 / np.sqrt(m2 / (R * cg) + 1e-5), saved[2].ravel())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 2048, 7, 7), (2, 1000, 5, 5), (2, 4100, 3, 3),
                                   (3, 520, 11, 13)], ids=str)
def test_channels_last_short_units_many_channels(shape, dtype):
    """Channels-last units of few rows and many channels (a 7 x 7 plane of 2048 channels: one
    block per chunk, the group's moments from its columns' in two sums, the backward's sums of
    wide rows in column tiles, 4100 channels being more than one tile and 1000 and 4100 not
    whole vectors), data at 1e5 times its spread: group norm with 1, 4 and C groups and
    instance norm match the float64 reference forward and backward, give the same bits at one
    and two threads, and cols_moments gives the forward's statistics bit for bit."""
    from fastnorm._kernels import _norm as K
    rng = np.random.default_rng(12)
    N, C = shape[:2]
    xl = 1e5 + rng.uniform(-3, 3, (1, C, 1, 1)) + rng.standard_normal(shape)
    x = np.ascontiguousarray(np.moveaxis(xl, 1, -1)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    w = (1 + 0.1 * rng.standard_normal(C)).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    R = x.size // (N * C)
    tol = 2e-5 if dtype == np.float32 else 1e-10
    for G in (1, 4, C, None):
        op = "instance" if G is None else "group"
        fwd = fn.instance_norm_forward if G is None else (
            lambda a, *k, G=G, **kw: fn.group_norm_forward(a, G, *k, **kw))
        bwd = fn.instance_norm_backward if G is None else (
            lambda d, a, m, r, *k, G=G, **kw: fn.group_norm_backward(d, a, m, r, G, *k, **kw))
        runs = []
        for t in (1, 2):
            with fn.threads(t):
                y, m, r = fwd(x, w, b, layout="NHWC")
                runs.append((y, m, r) + tuple(bwd(dy, x, m, r, w, layout="NHWC")))
        for a, c in zip(*runs):
            np.testing.assert_array_equal(a, c, err_msg=f"G={G}: 2 threads vs 1")
        y, m, r, dx, dw, db = runs[0]
        ry, rm, rr = ref.channel_forward(op, x, w, b, 1e-5, "NHWC", G)
        assert np.max(np.abs(y - ry)) < tol * 4, G
        np.testing.assert_allclose(np.ravel(m), np.ravel(rm), rtol=0,
                                   atol=1e-5 if dtype == np.float32 else 1e-9)
        np.testing.assert_allclose(np.ravel(r), np.ravel(rr), rtol=tol)
        rdx, rdw, rdb = ref.channel_backward(op, dy, x, w, 1e-5, "NHWC", G)
        for g, rg in ((dx, rdx), (dw, rdw), (db, rdb)):
            assert np.max(np.abs(g - rg)) <= 5 * tol * max(1.0, np.max(np.abs(rg))), G
        cg = 1 if G is None else C // G
        mean = np.empty(N * (C // cg))
        m2 = np.empty_like(mean)
        K.cols_moments(x.reshape(-1), N, R, C, cg, mean, m2, 2)
        np.testing.assert_array_equal(mean, np.ravel(m))
        np.testing.assert_array_equal(1 / np.sqrt(m2 / (R * cg) + 1e-5), np.ravel(r))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("op", ["batch", "instance", "group"])
def test_parameter_gradients_over_many_channels_same_bits_at_any_thread_count(op, layout):
    """dweight / dbias from N * C = 40000 (sample, channel) sums, which the threads share out
    by channel (with 3 threads a thread starts mid-group: 200 channels, groups of 8): the same
    bits for 1 to 4 threads, and the float64 reference's values."""
    rng = np.random.default_rng(11)
    shape = (200, 200, 2, 3)
    G = 25 if op == "group" else None
    x = oc.arrange(3 + rng.standard_normal(shape), layout)
    dy = oc.arrange(rng.standard_normal(shape), layout)
    w = 1 + 0.1 * rng.standard_normal(200)
    lay = "NHWC" if layout == "NHWC" else "NCHW"
    fwd = {"batch": fn.batch_norm_forward, "instance": fn.instance_norm_forward,
           "group": lambda a, *k, **kw: fn.group_norm_forward(a, G, *k, **kw)}[op]
    bwd = {"batch": fn.batch_norm_backward, "instance": fn.instance_norm_backward,
           "group": lambda d, a, m, r, *k, **kw: fn.group_norm_backward(d, a, m, r, G, *k,
                                                                        **kw)}[op]
    _, rdw, rdb = ref.channel_backward(op, ref.to_nchw(dy, layout), ref.to_nchw(x, layout), w,
                                       G=G)
    for dtype, tol in ((np.float32, 2e-3), (np.float64, 1e-9)):
        runs = []
        for t in (1, 2, 3, 4):
            with fn.threads(t):
                _, m, r = fwd(x.astype(dtype), w.astype(dtype), layout=lay)
                runs.append(bwd(dy.astype(dtype), x.astype(dtype), m, r, w.astype(dtype),
                                layout=lay))
        for t, other in zip((2, 3, 4), runs[1:]):
            for a, b in zip(runs[0], other):
                np.testing.assert_array_equal(a, b, err_msg=f"{t} threads vs 1")
        scale = np.max(np.abs(rdw)) + np.max(np.abs(rdb))
        assert np.max(np.abs(runs[0][1] - rdw)) <= tol * scale
        assert np.max(np.abs(runs[0][2] - rdb)) <= tol * scale


# ---- long reductions --------------------------------------------------------------------------

BIG = 41_000_000  # elements in one reduction: more than 4e7


@pytest.mark.parametrize("form", ["batch-NCHW", "batch-NHWC", "layer-row"])
def test_reduction_over_4e7_elements(form):
    """One statistic over 4.1e7 float32 values at offset 1e4: the same 1e-5 forward tolerance,
    and mean/rstd within 1e-9 / 1e-6 relative of the float64 reference."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(BIG, dtype=np.float32)
    x += np.float32(1e4)
    if form == "batch-NCHW":  # one channel, 41 planes of 1e6: split schedule over chunks
        xs = x.reshape(41, 1, 1000, 1000)
        y, mean, rstd = fn.batch_norm_forward(xs)
    elif form == "batch-NHWC":  # one column, 4.1e7 rows of the channels-last kernel
        xs = x.reshape(BIG, 1)
        y, mean, rstd = fn.batch_norm_forward(xs, layout="NHWC")
    else:
        xs = x.reshape(1, BIG)
        y, mean, rstd = fn.layer_norm_forward(xs, BIG)
    x64 = x.astype(np.float64)
    m = x64.mean()
    x64 -= m
    r = 1 / np.sqrt(np.dot(x64, x64) / BIG + 1e-5)
    assert abs(mean.item() - m) <= 1e-9 * abs(m)
    assert abs(rstd.item() / r - 1) <= 1e-6
    x64 *= r
    x64 -= y.reshape(-1)
    assert np.max(np.abs(x64)) <= 1e-5



@pytest.mark.parametrize("offset", [1e4, 1e5])
@pytest.mark.parametrize("spread", [1.0, 4.0, 30.0])
@pytest.mark.parametrize("C", [3, 32, 64])
def test_channels_last_offset_statistics_float32(C, spread, offset):
    """Channels-last batch norm of float32 data far from zero: rstd within 1.8e-7 relative and
    y within 1.2e-6 of the float64 statistics of the same float32 values (measured: at most
    1.1e-7 and 9.2e-7). Each column's float32 sums run over at most FN_COL_SUM_ROWS rows; with
    the 256-row sums of 3 channels before, rstd was off by up to 9.5e-7 and y by 4.4e-6, with
    the 64-row sums of 32 channels 2.3e-7 and 1.2e-6."""
    rng = np.random.default_rng(11)
    shape = (16, 40, 40, C)
    sd = spread * rng.uniform(0.5, 2.0, C)
    x = (rng.standard_normal(shape) * sd + offset * rng.uniform(0.5, 2.0, C)).astype(np.float32)
    y, mean, rstd = fn.batch_norm_forward(x, layout="NHWC", eps=1e-12)
    x64 = x.astype(np.float64).reshape(-1, C)
    m = x64.mean(axis=0)
    r = 1 / np.sqrt(((x64 - m) ** 2).mean(axis=0) + 1e-12)
    assert np.max(np.abs(mean - m) / sd) <= 1e-8
    assert np.max(np.abs(rstd / r - 1)) <= 1.8e-7
    assert np.max(np.abs(y.reshape(-1, C) - (x64 - m) * r)) <= 1.2e-6


MEAN_CASES = [c for c in oc.CASES if not c[0].startswith("rms")]


@pytest.mark.parametrize("bad", [np.inf, np.nan])
@pytest.mark.parametrize("case", MEAN_CASES, ids=oc.case_id)
def test_float64_nonfinite_unit(case, bad, rng):
    """One inf or NaN in float64 data: y and dx are NaN exactly where the float64 reference's
    are (the units whose statistics it reaches) and match the reference elsewhere. (The
    float64 loops take the deviation as x - mean with no low part: a non-finite mean must
    still give NaN, not +-inf.)"""
    op, layout = case
    shape = (3, 4, 6, 7)
    d = oc.make_inputs(op, layout, shape, np.float64, rng)
    key = "r" if op.endswith("_res") else "x"
    a = np.moveaxis(d[key], -1, 1) if layout == "NHWC" else d[key]
    a[1, 2, 3, 4] = bad
    y, saved = oc.forward(op, layout, d["x"], d["w"], d["b"], d["r"])
    dx = oc.backward(op, layout, d["dy"], saved, d["w"], d["ds"])[0]
    with np.errstate(invalid="ignore"):
        ey = oc.ref_forward(op, layout, d["x"], d["w"], d["b"], d["r"])
        edx = oc.ref_backward(op, layout, d["dy"], saved[0], d["w"], d["ds"])[0]
    for got, want in ((y, ey), (dx, edx)):
        want = np.asarray(want)
        assert np.isnan(want).any() and np.isfinite(want).any()
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        ok = ~np.isnan(want)
        np.testing.assert_allclose(got[ok], want[ok], rtol=1e-10, atol=1e-10)
