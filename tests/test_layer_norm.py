"""Layer norm over trailing dims: forward and backward against the float64 reference."""
import numpy as np
import pytest

import fastnorm as fn
import reference as ref
from conftest import assert_close, cached_and_streamed
from fastnorm._kernels import _norm as K

CASES = [
    ((4, 10), (10,)),
    ((3, 5, 7), (7,)),
    ((2, 3, 4, 5), (3, 4, 5)),     # over (C, H, W)
    ((2, 6, 5, 3), (3,)),          # NHWC tensor, per-pixel channel LayerNorm
    ((7,), (7,)),                  # a single row
    ((1, 70000), (70000,)),        # one long row: split schedule, several chunks
    ((5, 1), (1,)),                # rows of one element
    ((64, 33), (33,)),             # SIMD tail
    ((300, 20), (20,)),            # dweight partials flushed every 64 rows
    ((3, 9000), (9000,)),          # long rows: dweight by column chunks
    ((70, 8300), (8300,)),         # long rows, more than 64: flushed per chunk, tail chunk
    ((40, 1024), (1024,)),         # rows of 4 / 8 KiB: the next row prefetched (past the end too)
    ((24, 2000), (2000,)),         # rows of 8000 / 16000 bytes, a tail in every row
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,ns", CASES)
def test_forward(shape, ns, dtype, rng, nthreads):
    x = rng.standard_normal(shape).astype(dtype)
    w = (1 + 0.1 * rng.standard_normal(ns)).astype(dtype)
    b = (0.1 * rng.standard_normal(ns)).astype(dtype)
    y, mean, rstd = fn.layer_norm_forward(x, ns, w, b)
    ry, rm, rr = ref.layer_forward(x, ns, w, b)
    assert y.dtype == dtype and mean.shape == shape[:len(shape) - len(ns)]
    assert_close(y, ry, dtype, scale=1.0, what="y")
    assert_close(mean, rm, dtype, what="mean")
    assert_close(rstd, rr, dtype, what="rstd")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,ns", CASES)
def test_backward(shape, ns, dtype, rng, nthreads):
    x = rng.standard_normal(shape).astype(dtype)
    w = (1 + 0.1 * rng.standard_normal(ns)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    _, mean, rstd = fn.layer_norm_forward(x, ns, w)
    dx, dw, db = fn.layer_norm_backward(dy, x, mean, rstd, ns, w)
    rdx, rdw, rdb = ref.layer_backward(dy, x, ns, w)
    assert dw.shape == tuple(ns) and db.shape == tuple(ns)
    assert_close(dx, rdx, dtype, what="dx")
    assert_close(dw, rdw, dtype, what="dweight")
    assert_close(db, rdb, dtype, what="dbias")


def test_backward_finite_differences(rng):
    x = rng.standard_normal((3, 6))
    w = rng.standard_normal(6)
    b = rng.standard_normal(6)
    dy = rng.standard_normal(x.shape)
    _, mean, rstd = fn.layer_norm_forward(x, 6, w, b)
    dx, dw, db = fn.layer_norm_backward(dy, x, mean, rstd, 6, w)

    def loss(xv, wv, bv):
        return float(np.sum(fn.layer_norm(xv, 6, wv, bv) * dy))

    h = 1e-6
    num = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        num[i] = (loss(xp, w, b) - loss(xm, w, b)) / (2 * h)
    np.testing.assert_allclose(dx, num, rtol=1e-5, atol=1e-7)
    e = np.eye(6) * h
    numw = [(loss(x, w + e[j], b) - loss(x, w - e[j], b)) / (2 * h) for j in range(6)]
    numb = [(loss(x, w, b + e[j]) - loss(x, w, b - e[j])) / (2 * h) for j in range(6)]
    np.testing.assert_allclose(dw, numw, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(db, numb, rtol=1e-5, atol=1e-7)


def test_large_offset_float32(rng):
    x = (1e4 + rng.standard_normal((64, 300))).astype(np.float32)
    y, mean, rstd = fn.layer_norm_forward(x, 300)
    ry, _, _ = ref.layer_forward(x, (300,))
    assert np.max(np.abs(y - ry)) <= 1e-4


def test_constant_rows_give_beta():
    x = np.full((5, 16), -3.5, dtype=np.float32)
    b = np.linspace(-1, 1, 16).astype(np.float32)
    y = fn.layer_norm(x, 16, None, b, eps=1e-6)
    np.testing.assert_array_equal(y, np.broadcast_to(b, y.shape))


def test_zero_rows():
    x = np.zeros((0, 8), dtype=np.float32)
    y, mean, rstd = fn.layer_norm_forward(x, 8)
    assert y.shape == (0, 8) and mean.shape == (0,)
    dx, dw, db = fn.layer_norm_backward(x, x, mean, rstd, 8)
    assert dx.shape == (0, 8)
    np.testing.assert_array_equal(dw, 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(70, 8300), (5, 70000)])
def test_long_rows_backward_same_bits_at_any_thread_count(shape, dtype, rng):
    """Long rows go by in blocks of rows, each thread over its own column chunks: dx, dweight
    and dbias must not depend on how many threads share the chunks (70 rows: three blocks
    of rows and a dweight flush inside the last one)."""
    x = (3 + rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w = (1 + 0.1 * rng.standard_normal(shape[1])).astype(dtype)
    _, mean, rstd = fn.layer_norm_forward(x, shape[1], w)
    runs = []
    for t in (1, 2, 3, 4):
        with fn.threads(t):
            runs.append(fn.layer_norm_backward(dy, x, mean, rstd, shape[1], w))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a, b)
    rdx, rdw, rdb = ref.layer_backward(dy, x, (shape[1],), w)
    assert_close(runs[0][0], rdx, dtype, what="dx")
    assert_close(runs[0][1], rdw, dtype, scale=shape[0], what="dweight")
    assert_close(runs[0][2], rdb, dtype, scale=shape[0], what="dbias")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 70001), (2, 9001), (70, 8300)])
def test_long_rows_dweight_from_zero_same_bits(shape, dtype, rng):
    """The long rows' dweight/dbias accumulators start each flush from zero in the sums pass
    itself (no zeroing pass, no read): dx, dweight and dbias are bitwise those with the zeroing
    pass, at one and two threads, and a dy of -0.0 gives dbias +0.0 (0 + -0.0), as PyTorch's
    sum does."""
    x = (3 + rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    dy[:, 5::7] = -0.0
    w = (1 + 0.1 * rng.standard_normal(shape[1])).astype(dtype)
    _, mean, rstd = fn.layer_norm_forward(x, shape[1], w)
    runs = []
    for fresh in (0, 1):
        for t in (1, 2):
            prev = K._set_fresh(fresh)
            try:
                with fn.threads(t):
                    runs.append(fn.layer_norm_backward(dy, x, mean, rstd, shape[1], w))
            finally:
                K._set_fresh(prev)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a, b)
    db = runs[-1][2]
    assert not np.signbit(db[5::7]).any()
    rdx, rdw, rdb = ref.layer_backward(dy, x, (shape[1],), w)
    assert_close(runs[-1][0], rdx, dtype, what="dx")
    assert_close(runs[-1][1], rdw, dtype, scale=shape[0], what="dweight")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("D", [9000, 9001, 9002])
def test_long_rows_dx_sweep_streamed_or_not_same_bits(D, dtype, rng, monkeypatch):
    """The long rows' dx goes by groups of rows in one sweep; with streaming stores the rows
    of a group must reach a 16-byte boundary together (rows of a whole number of 16-byte
    units), otherwise they go one by one. Forced to stream or not, into an aligned or a
    misaligned out=, with and without residual_grad: the same bits, close to the reference."""
    shape = (7, D)  # blocks of 7 rows: a group of four, then of three
    x = (2 + rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    ds = rng.standard_normal(shape).astype(dtype)
    w = (1 + 0.1 * rng.standard_normal(D)).astype(dtype)
    _, mean, rstd = fn.layer_norm_forward(x, D, w)

    def run():
        res = []
        for t in (1, 2):
            with fn.threads(t):
                for r in (None, ds):
                    for off in (0, 1):
                        out = np.empty(x.size + off, dtype)[off:].reshape(shape)
                        dx, dw, db = fn.layer_norm_backward(dy, x, mean, rstd, D, w,
                                                            residual_grad=r, out=out)
                        assert dx is out
                        res += [dx.copy(), dw, db]
        return res

    cached = cached_and_streamed(run, monkeypatch)
    # results in order (threads, residual_grad, out offset): same bits at 1 and 2 threads and
    # for either out=
    plain, resid = [cached[k] for k in (0, 3, 12, 15)], [cached[k] for k in (6, 9, 18, 21)]
    for a in plain[1:]:
        np.testing.assert_array_equal(a, plain[0])
    for a in resid[1:]:
        np.testing.assert_array_equal(a, resid[0])
    rdx, rdw, rdb = ref.layer_backward(dy, x, (D,), w)
    assert_close(plain[0], rdx, dtype, what="dx")
    assert_close(resid[0], rdx + ds, dtype, what="dx + residual_grad")
    assert_close(cached[1], rdw, dtype, scale=shape[0], what="dweight")
    assert_close(cached[2], rdb, dtype, scale=shape[0], what="dbias")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("D", [40000, 40001])
def test_long_units_forward_in_pairs_same_bits(D, dtype, rng, monkeypatch):
    """Layer-norm units of 32768 values and more are normalized two at a time (w and b read
    once for both; three units: a pair, then one alone). Streamed or not (rows that do not
    keep 16-byte alignment go one at a time when streamed), into an aligned or misaligned
    out=, with ReLU or not, at 1 and 2 threads: the same bits, close to the reference."""
    shape = (3, D)
    x = (5 + 2 * rng.standard_normal(shape)).astype(dtype)
    w = (1 + 0.1 * rng.standard_normal(D)).astype(dtype)
    b = (0.1 * rng.standard_normal(D)).astype(dtype)

    def run():
        res = []
        for t in (1, 2):
            with fn.threads(t):
                for off in (0, 1):
                    out = np.empty(x.size + off, dtype)[off:].reshape(shape)
                    y, m, r = fn.layer_norm_forward(x, D, w, b, out=out)
                    assert y is out
                    res += [y.copy(), m, r,
                            fn.layer_norm(x, D, w, b, activation="relu")]
        return res

    cached = cached_and_streamed(run, monkeypatch)
    for k in range(4, len(cached), 4):
        for j in range(4):
            np.testing.assert_array_equal(cached[k + j], cached[j])
    ry, rm, rr = ref.layer_forward(x, (D,), w, b)
    assert_close(cached[0], ry, dtype, scale=1.0, what="y")
    assert_close(cached[1], rm, dtype, what="mean")
    assert_close(cached[2], rr, dtype, what="rstd")
    np.testing.assert_array_equal(cached[3], np.maximum(cached[0], 0))


@pytest.mark.parametrize("D", [3, 64, 100, 128])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_short_rows_backward_in_groups(D, dtype, rng):
    """Short rows go eight at a time through one C loop (fn_rows_group_bwd): row counts that
    leave a partial group, cross the 64-row flush of the dweight accumulators, or make one
    row; with and without weight, residual_grad and RMS norm, against the reference, and the
    same bits at 1 and 2 threads."""
    for M in (1, 7, 9, 130, 1029):
        x = (rng.standard_normal((M, D)) * 2 + 5).astype(dtype)
        dy = rng.standard_normal((M, D)).astype(dtype)
        ds = rng.standard_normal((M, D)).astype(dtype)
        w = rng.standard_normal(D).astype(dtype)
        _, m, r = fn.layer_norm_forward(x, D, w)
        dx_ref, dw_ref, db_ref = ref.layer_backward(dy, x, (D,), w)
        runs = []
        for t in (1, 2):
            with fn.threads(t):
                runs.append(fn.layer_norm_backward(dy, x, m, r, D, w)
                            + fn.layer_norm_backward(dy, x, m, r, D, None, residual_grad=ds)
                            + fn.rms_norm_backward(dy, x, fn.rms_norm_forward(x, D, w)[1], D,
                                                   w))
        dx, dw, db = runs[0][:3]
        assert_close(dx, dx_ref, dtype, what=f"dx M={M}")
        assert_close(dw, dw_ref, dtype, scale=max(1.0, np.abs(dw_ref).max()) * np.sqrt(M),
                     what=f"dweight M={M}")
        assert_close(db, db_ref, dtype, scale=max(1.0, np.abs(db_ref).max()) * np.sqrt(M),
                     what=f"dbias M={M}")
        dx1 = ref.layer_backward(dy, x, (D,), None)[0]
        assert_close(runs[0][3], dx1 + ds, dtype, what=f"dx residual M={M}")
        for a, c in zip(runs[0], runs[1]):
            np.testing.assert_array_equal(a, c)
