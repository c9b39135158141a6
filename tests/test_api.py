"""Package surface, threads, memory formats, out=, dtypes and determinism."""
import re

import numpy as np
import pytest

import fastnorm as fn
import reference as ref
from conftest import assert_close, cached_and_streamed
from fastnorm._kernels import _norm as K


def test_version_and_config(capsys):
    assert isinstance(fn.__version__, str)
    info = fn.show_config()
    assert set(info) >= {"openmp", "num_threads", "compile_args"}
    assert "openmp" in capsys.readouterr().out


def test_set_num_threads_roundtrip():
    prev = fn.get_num_threads()
    assert fn.set_num_threads(1) == prev
    assert fn.get_num_threads() == 1
    fn.set_num_threads(prev)
    assert fn.get_num_threads() == prev
    with pytest.raises(ValueError, match="n must be >= 1"):
        fn.set_num_threads(0)
    with pytest.raises(TypeError):
        fn.set_num_threads("2")


def test_omp_num_threads_is_honoured(monkeypatch):
    from fastnorm import _config
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert _config._default_threads() == 3


def _all_ops(x, layout="NCHW"):
    """Every op's forward and backward on x; returns a list of arrays."""
    rng = np.random.default_rng(1)
    dy = rng.standard_normal(x.shape).astype(x.dtype)
    C = x.shape[1] if layout == "NCHW" else x.shape[-1]
    w = rng.standard_normal(C).astype(x.dtype)
    res = []
    for fwd, bwd, extra in (
            (fn.batch_norm_forward, fn.batch_norm_backward, ()),
            (fn.instance_norm_forward, fn.instance_norm_backward, ()),
            (fn.group_norm_forward, fn.group_norm_backward, (2 if C % 2 == 0 else 1,))):
        if extra:
            y, m, r = fwd(x, *extra, w, layout=layout)
            d = bwd(dy, x, m, r, *extra, w, layout=layout)
        else:
            y, m, r = fwd(x, w, layout=layout)
            d = bwd(dy, x, m, r, w, layout=layout)
        res += [y, m, r, *d]
    ns = x.shape[1:]
    y, m, r = fn.layer_norm_forward(x, ns)
    res += [y, m, r, *fn.layer_norm_backward(dy, x, m, r, ns)]
    return res


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("shape", [(6, 4, 30, 31), (1, 2, 200, 190), (3, 4, 5), (1, 8, 150, 160)])
def test_bitwise_identical_across_thread_counts(shape, layout):
    x = (100 + np.random.default_rng(2).standard_normal(shape)).astype(np.float32)
    runs = []
    for t in (1, 2, 3, 4):
        with fn.threads(t):
            runs.append(_all_ops(x, layout))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("op", ["batch", "instance", "group"])
def test_channels_last_strides_stay_channels_last(op, rng):
    """An NCHW-declared tensor stored channels-last runs without a copy and comes back so."""
    xl = rng.standard_normal((2, 5, 6, 4))
    x = xl.transpose(0, 3, 1, 2)  # logical NCHW, memory NHWC
    G = 2 if op == "group" else None
    f = {"batch": fn.batch_norm_forward, "instance": fn.instance_norm_forward,
         "group": lambda a, *w, **k: fn.group_norm_forward(a, 2, *w, **k)}[op]
    y, m, r = f(x)
    assert y.transpose(0, 2, 3, 1).flags.c_contiguous
    ry, _, _ = ref.channel_forward(op, x, G=G)
    np.testing.assert_allclose(y, ry, atol=1e-10)


def test_noncontiguous_inputs(rng):
    base = rng.standard_normal((4, 6, 10, 12))
    x = base[:, ::2, ::-1, 1::2]
    y, m, r = fn.instance_norm_forward(x)
    ry, _, _ = ref.channel_forward("instance", np.ascontiguousarray(x))
    np.testing.assert_allclose(y, ry, atol=1e-10)
    xf = np.asfortranarray(base)
    y2 = fn.layer_norm(xf, (6, 10, 12))
    np.testing.assert_allclose(y2, ref.layer_forward(base, (6, 10, 12))[0], atol=1e-10)


def test_inputs_not_modified(rng):
    x = rng.standard_normal((3, 4, 5, 5)).astype(np.float32)
    keep = x.copy()
    res = _all_ops(x)
    np.testing.assert_array_equal(x, keep)
    assert all(isinstance(a, np.ndarray) for a in res)


def test_readonly_input(rng):
    x = rng.standard_normal((3, 4, 5))
    x.setflags(write=False)
    y, _, _ = fn.batch_norm_forward(x)
    assert y.flags.writeable


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_out_in_place(layout, rng):
    x = rng.standard_normal((3, 4, 7, 6)).astype(np.float32)
    expect, m, r = fn.group_norm_forward(x, 2, layout=layout)
    xi = x.copy()
    y, m2, r2 = fn.group_norm_forward(xi, 2, layout=layout, out=xi)
    assert y is xi
    np.testing.assert_array_equal(y, expect)
    np.testing.assert_array_equal(m, m2)


def test_out_backward_and_noncontiguous_out(rng):
    x = rng.standard_normal((3, 4, 6))
    dy = rng.standard_normal(x.shape)
    _, m, r = fn.batch_norm_forward(x)
    dx, _, _ = fn.batch_norm_backward(dy, x, m, r)
    out = np.empty((3, 4, 12))[:, :, ::2]
    got, _, _ = fn.batch_norm_backward(dy, x, m, r, out=out)
    assert got is out
    np.testing.assert_array_equal(out, dx)


def test_integer_input_promotes_to_float64():
    x = np.arange(24).reshape(2, 3, 4)
    y, m, r = fn.batch_norm_forward(x)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, ref.channel_forward("batch", x)[0], atol=1e-12)


@pytest.mark.parametrize("op", ["batch", "instance", "group", "layer"])
def test_float16_in_float16_out(op, rng):
    x = (rng.standard_normal((4, 8, 9, 9)) * 3 + 5).astype(np.float16)
    if op == "layer":
        y, m, r = fn.layer_norm_forward(x, (8, 9, 9))
        ry = ref.layer_forward(x, (8, 9, 9))[0]
    elif op == "group":
        y, m, r = fn.group_norm_forward(x, 4)
        ry = ref.channel_forward(op, x, G=4)[0]
    else:
        y, m, r = getattr(fn, f"{op}_norm_forward")(x)
        ry = ref.channel_forward(op, x)[0]
    assert y.dtype == np.float16
    assert np.max(np.abs(y.astype(np.float64) - ry)) <= 4e-3  # float16 rounding of |y| <= 4


def test_batch_norm_running_stats_update(rng):
    x = rng.standard_normal((8, 3, 4, 4)) * 2 + 1
    rm = np.zeros(3)
    rv = np.ones(3)
    fn.batch_norm(x, rm, rv, training=True, momentum=0.1)
    n = 8 * 16
    xm = x.mean(axis=(0, 2, 3))
    xv = x.var(axis=(0, 2, 3)) * n / (n - 1)
    np.testing.assert_allclose(rm, 0.1 * xm, rtol=1e-12)
    np.testing.assert_allclose(rv, 0.9 + 0.1 * xv, rtol=1e-12)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_batch_norm_inference(layout, rng):
    x = rng.standard_normal((4, 3, 5, 6)).astype(np.float32) + 50
    rm = np.array([50.0, 49.0, 51.0])
    rv = np.array([1.0, 2.0, 0.5])
    w = np.array([1.0, -2.0, 0.5], dtype=np.float32)
    b = np.array([0.0, 1.0, -1.0], dtype=np.float32)
    xl = np.ascontiguousarray(ref.from_nchw(x, layout))
    y = fn.batch_norm(xl, rm, rv, w, b, layout=layout)
    shape = (1, 3, 1, 1)
    expect = ((x.astype(np.float64) - rm.reshape(shape)) / np.sqrt(rv.reshape(shape) + 1e-5)
              * w.reshape(shape) + b.reshape(shape))
    np.testing.assert_allclose(y, ref.from_nchw(expect, layout), atol=2e-6)
    relu = fn.batch_norm(xl, rm, rv, w, b, layout=layout, activation="relu")
    np.testing.assert_allclose(relu, np.maximum(ref.from_nchw(expect, layout), 0), atol=2e-6)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_batch_norm_eval_backward(layout, rng):
    x = rng.standard_normal((4, 3, 5))
    dy = rng.standard_normal(x.shape)
    rm = np.array([0.1, -0.2, 0.3])
    rstd = np.array([1.5, 0.7, 2.0])
    w = np.array([1.0, 2.0, -1.0])
    if layout == "NHWC":  # the same logical tensor, channels last
        t = lambda a: np.ascontiguousarray(a.transpose(0, 2, 1))  # noqa: E731
        dxl, dwl, dbl = fn.batch_norm_backward(t(dy), t(x), rm, rstd, w, training=False,
                                               layout="NHWC")
        dxc, dwc, dbc = fn.batch_norm_backward(dy, x, rm, rstd, w, training=False)
        np.testing.assert_allclose(dxl, t(dxc), rtol=1e-13)
        np.testing.assert_allclose(dwl, dwc, rtol=1e-12)
        np.testing.assert_allclose(dbl, dbc, rtol=1e-12)
    dx, dw, db = fn.batch_norm_backward(dy, x, rm, rstd, w, training=False)
    np.testing.assert_allclose(dx, dy * (w * rstd).reshape(1, 3, 1), rtol=1e-12)
    xhat = (x - rm.reshape(1, 3, 1)) * rstd.reshape(1, 3, 1)
    np.testing.assert_allclose(dw, (dy * xhat).sum(axis=(0, 2)), rtol=1e-10)
    np.testing.assert_allclose(db, dy.sum(axis=(0, 2)), rtol=1e-10)


def test_instance_norm_running_stats(rng):
    x = rng.standard_normal((4, 3, 10)) + 2
    rm = np.zeros(3)
    rv = np.ones(3)
    y = fn.instance_norm(x, rm, rv, momentum=0.5)
    np.testing.assert_allclose(y, ref.channel_forward("instance", x)[0], atol=1e-10)
    var_u = x.var(axis=2) * 10 / 9
    np.testing.assert_allclose(rm, 0.5 * x.mean(axis=2).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(rv, 0.5 + 0.5 * var_u.mean(axis=0), rtol=1e-12)
    y2 = fn.instance_norm(x, rm, rv, use_input_stats=False)
    expect = (x - rm.reshape(1, 3, 1)) / np.sqrt(rv.reshape(1, 3, 1) + 1e-5)
    np.testing.assert_allclose(y2, expect, atol=1e-12)


def test_convenience_forwards_match(rng):
    x = rng.standard_normal((2, 4, 6))
    np.testing.assert_array_equal(fn.group_norm(x, 2), fn.group_norm_forward(x, 2)[0])
    np.testing.assert_array_equal(fn.layer_norm(x, 6), fn.layer_norm_forward(x, 6)[0])
    np.testing.assert_array_equal(fn.batch_norm(x), fn.batch_norm_forward(x)[0])
    np.testing.assert_array_equal(fn.instance_norm(x), fn.instance_norm_forward(x)[0])


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 64, 14, 14), (2, 8, 3), (4, 32), (8, 64, 40, 40)])
def test_fast_path_equals_full_path(shape, dtype, layout, rng, nthreads):
    """The small-tensor fast path (plain arrays) and the full path (here forced by a strided
    out=) run the same kernels: results are bitwise equal."""
    x = rng.standard_normal(shape).astype(dtype)
    C = shape[1] if layout == "NCHW" else shape[-1]
    w = rng.standard_normal(C).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    rm = rng.standard_normal(C)
    rv = rng.random(C) + 0.5
    G = 4 if C % 4 == 0 else 1
    calls = [
        lambda **k: fn.batch_norm(x, rm, rv, w, b, layout=layout, **k),
        lambda **k: fn.batch_norm(x, rm, rv, None, b, layout=layout, activation="relu", **k),
        lambda **k: fn.instance_norm(x, weight=w, bias=b, layout=layout, **k),
        lambda **k: fn.group_norm(x, G, w, b, layout=layout, **k),
        lambda **k: fn.group_norm(x, G, layout=layout, activation="silu", **k),
        lambda **k: fn.layer_norm(x, shape[-1], **k),
        lambda **k: fn.layer_norm(x, (shape[-1],), x[0].reshape(-1)[:shape[-1]].copy(), **k),
        lambda **k: fn.rms_norm(x, shape[-1], **k),
    ]
    for f in calls:
        if shape[0] * (x.size // (shape[0] * C)) == 1 and f is calls[2]:
            continue
        fast = f()
        fast_out = np.empty_like(x)
        assert f(out=fast_out) is fast_out
        full = f(out=np.empty(x.shape + (2,), dtype=x.dtype)[..., 0])
        np.testing.assert_array_equal(fast, full)
        np.testing.assert_array_equal(fast, fast_out)


# the last two are large enough for two threads: channels-last batch norm (and, with N = 1,
# instance/group norm) on the split schedule, N = 3 channels-last units fused over threads
@pytest.mark.parametrize("shape", [(2, 8, 5, 3), (1, 4, 7), (3, 16, 2, 2), (4, 6), (1, 64, 14, 14),
                                   (1, 48, 40, 40), (3, 32, 33, 31)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_training_forwards_fast_path_equals_full_path(shape, dtype, layout, rng, nthreads):
    """The training forwards take the fast path for plain arrays too (returning the
    statistics); a strided out= forces the full path: y, mean and rstd are bitwise equal, with
    the same shapes and dtypes."""
    x = rng.standard_normal(shape).astype(dtype) + 3
    C = shape[1] if layout == "NCHW" else shape[-1]
    w = rng.standard_normal(C).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    G = 4 if C % 4 == 0 else 1
    D = shape[-1]
    calls = [
        lambda **k: fn.batch_norm_forward(x, w, b, layout=layout, **k),
        lambda **k: fn.instance_norm_forward(x, w, b, layout=layout, **k),
        lambda **k: fn.group_norm_forward(x, G, w, b, layout=layout, **k),
        lambda **k: fn.group_norm_forward(x, G, layout=layout, **k),
        lambda **k: fn.layer_norm_forward(x, D, **k),
        lambda **k: fn.layer_norm_forward(x, (D,), w[:1].repeat(D), b[:1].repeat(D), **k),
        lambda **k: fn.rms_norm_forward(x, D, **k),
        lambda **k: fn.rms_norm_forward(x, D, np.linspace(-1, 1, D).astype(dtype), eps=1e-6,
                                        **k),
    ]
    for i, f in enumerate(calls):
        try:
            full = f(out=np.empty(x.shape + (2,), dtype=x.dtype)[..., 0])
        except ValueError as err:  # e.g. batch norm with one value per channel
            with pytest.raises(ValueError, match=re.escape(str(err)[:20])):
                f()
            continue
        fast = f()
        assert len(fast) == len(full)
        for a, e in zip(fast, full):
            assert a.shape == e.shape and a.dtype == e.dtype, (i, a.shape, e.shape)
            np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_moment_kernels(dtype, rng):
    """The statistics-only kernels agree with float64 NumPy and with each other's layouts, and
    do not depend on the thread count."""
    x = (50 + 2 * rng.standard_normal((6, 8, 3000))).astype(dtype)
    tol = 1e-7 if dtype == np.float32 else 1e-13
    res = []
    for t in (1, 2, 3):
        m, s = np.empty(4), np.empty(4)
        K.planes_moments(x.ravel(), 6, 8, 3000, 6, 2, m, s, t)
        xl = np.ascontiguousarray(x.transpose(0, 2, 1)).reshape(1, 6 * 3000, 8)
        ml, sl = np.empty(4), np.empty(4)
        # cols: one unit of all rows, groups of 2 columns == planes with nb = N, cb = 2
        K.cols_moments(xl.ravel(), 1, 6 * 3000, 8, 2, ml, sl, t)
        res.append((m, s, ml, sl))
    xg = x.astype(np.float64).transpose(1, 0, 2).reshape(4, -1)
    for m, s, ml, sl in res:
        np.testing.assert_allclose(m, xg.mean(axis=1), rtol=tol)
        np.testing.assert_allclose(s, xg.var(axis=1) * xg.shape[1], rtol=tol * 100)
        np.testing.assert_allclose(ml, m, rtol=tol)
        np.testing.assert_allclose(sl, s, rtol=tol * 100)
    for other in res[1:]:
        for a, b in zip(res[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_streaming_stores_give_the_same_bits(layout, rng, monkeypatch):
    """Non-temporal stores (used for outputs past the last-level cache) change where bytes
    go, never their values: every op, forced to stream, equals the cached-store result,
    including outputs that do not start 16-byte aligned and rows of odd length."""
    shape = (3, 12, 7, 9) if layout == "NCHW" else (3, 7, 9, 12)
    x = rng.standard_normal(shape).astype(np.float32)
    x5 = rng.standard_normal((3, 5, 4, 6)).astype(np.float32)  # C = 5 or 6: odd rows
    dy = rng.standard_normal(shape).astype(np.float32)

    def run():
        res = []
        for a, lay in ((x, layout), (x5, layout)):
            d = dy if a is x else np.ones_like(a)
            C = a.shape[1] if lay == "NCHW" else a.shape[-1]
            G = 3 if C % 3 == 0 else 1
            for fwd, bwd, extra in ((fn.batch_norm_forward, fn.batch_norm_backward, ()),
                                    (fn.instance_norm_forward, fn.instance_norm_backward, ()),
                                    (fn.group_norm_forward, fn.group_norm_backward, (G,))):
                out = np.empty(a.size + 1, a.dtype)[1:].reshape(a.shape)  # misaligned
                y, m, r = fwd(a, *extra, layout=lay, out=out)
                res += [y.copy(), bwd(d, a, m, r, *extra, layout=lay)[0]]
            res.append(fn.batch_norm(a, np.zeros(C), np.ones(C), layout=lay, activation="silu"))
            y, m, r = fn.layer_norm_forward(a, a.shape[-1], np.ones(a.shape[-1], a.dtype))
            res += [y, fn.layer_norm_backward(d, a, m, r, a.shape[-1])[0]]
            res.append(fn.rms_norm(a, a.shape[1:]))
        return res

    cached_and_streamed(run, monkeypatch)


def _unaligned(a):
    """A copy of a whose data does not start on an itemsize boundary (as a view into bytes
    or a buffer received from another process can be)."""
    buf = np.zeros(a.nbytes + 1, dtype=np.uint8)
    u = np.frombuffer(buf.data, dtype=a.dtype, count=a.size, offset=1).reshape(a.shape)
    np.copyto(u, a)
    assert not u.flags.aligned
    return u


def test_unaligned_arrays(rng):
    """Unaligned inputs, weights and outputs give the aligned result (the kernels read whole
    elements and vectors, so the dispatch hands them aligned copies)."""
    x = rng.standard_normal((3, 8, 5, 7))
    w = rng.standard_normal(8)
    dy = rng.standard_normal(x.shape)
    xu, wu, dyu = _unaligned(x), _unaligned(w), _unaligned(dy)
    for f in (lambda a, ww, **k: fn.group_norm(a, 4, ww, **k),
              lambda a, ww, **k: fn.batch_norm(a, np.zeros(8), np.ones(8), ww, **k),
              lambda a, ww, **k: fn.layer_norm(a, 7, **k),
              lambda a, ww, **k: fn.instance_norm_forward(a, layout="NHWC", **k)[0]):
        want = f(x, w)
        np.testing.assert_array_equal(f(xu, wu), want)
        out = _unaligned(np.zeros_like(x))
        np.testing.assert_array_equal(f(xu, wu, out=out), want)
        np.testing.assert_array_equal(out, want)
    _, m, r = fn.batch_norm_forward(x, w)
    for a, b in zip(fn.batch_norm_backward(dyu, xu, _unaligned(m), _unaligned(r), wu),
                    fn.batch_norm_backward(dy, x, m, r, w)):
        np.testing.assert_array_equal(a, b)
    mo = fn.moments(xu, axis=(0, 2, 3))
    np.testing.assert_allclose(mo.mean, x.mean(axis=(0, 2, 3)), rtol=1e-13)


def test_stream_rule_spares_fresh_allocations():
    """Streaming stores are used for large outputs the caller passed, not for outputs fastnorm
    just allocated past FRESH_BYTES (their pages fault in through the cache anyway)."""
    from fastnorm import _dispatch as D
    if D.STREAM_BYTES <= 0:
        pytest.skip("streaming turned off by FASTNORM_STREAM_BYTES=0")
    big = np.empty(max(D.FRESH_BYTES, D.STREAM_BYTES) // 4, np.float32)
    mid = big[: max(D.STREAM_BYTES // 4, 1)]
    small = big[: max(D.STREAM_BYTES // 4 - 1, 0)]
    assert D.stream(big, big) == 1 and D.stream(big, None) == 0
    assert D.stream(mid, mid) == 1
    assert D.stream(mid, None) == (1 if mid.nbytes < D.FRESH_BYTES else 0)
    assert D.stream(small, small) == 0


def test_backward_streams_from_two_thirds_of_the_threshold():
    """A backward's dx (three streams moved, not two) streams from two thirds of STREAM_BYTES,
    rounded up; 0 still means never."""
    from fastnorm import _dispatch as D
    from fastnorm._kernels import _norm as K
    assert K.bwd_stream_bytes(16 << 20) == 11184811
    assert K.bwd_stream_bytes(3) == 2 and K.bwd_stream_bytes(1) == 1
    assert K.bwd_stream_bytes(0) == 0
    if D.STREAM_BYTES <= 0:
        pytest.skip("streaming turned off by FASTNORM_STREAM_BYTES=0")
    t = K.bwd_stream_bytes(D.STREAM_BYTES)
    a = np.empty(D.STREAM_BYTES // 4, np.float32)
    at, under = a[: (t + 3) // 4], a[: t // 4 - 1]
    assert at.nbytes >= t and at.nbytes < D.STREAM_BYTES
    assert D.stream(at, at, backward=True) == 1 and D.stream(at, at) == 0
    assert D.stream(under, under, backward=True) == 0


@pytest.mark.parametrize("shape", [(7,), (5, 33), (2, 3, 256), (512, 256), (3, 40000)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_backward_fast_path_equals_full_path(shape, dtype, rng, nthreads):
    """Layer and RMS norm backward over the last axis take a fast path for plain arrays; a
    strided out= forces the full path: dx, dweight, dbias bitwise equal."""
    x = (rng.standard_normal(shape) + 2).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    D = shape[-1]
    w = rng.standard_normal(D).astype(dtype)
    _, m, r = fn.layer_norm_forward(x, D, w)
    _, rr = fn.rms_norm_forward(x, D, w, eps=1e-6)
    strided = np.empty(shape + (2,), dtype=dtype)[..., 0]
    for f in (lambda **k: fn.layer_norm_backward(dy, x, m, r, D, w, **k),
              lambda **k: fn.layer_norm_backward(dy, x, m, r, (D,), **k),
              lambda **k: fn.rms_norm_backward(dy, x, rr, D, w, **k),
              lambda **k: fn.rms_norm_backward(dy, x, rr, D, **k)):
        fast, full = f(), f(out=strided)
        assert len(fast) == len(full)
        for a, e in zip(fast, full):
            assert a.shape == e.shape and a.dtype == e.dtype
            np.testing.assert_array_equal(a, e)
    with pytest.raises(ValueError, match="mean"):
        fn.layer_norm_backward(dy, x, m.reshape(-1)[:-1] if m.size > 1 else np.zeros(2), r, D)
    with pytest.raises(TypeError, match="dy"):
        fn.layer_norm_backward(dy.astype(np.float16), x, m, r, D)


@pytest.mark.parametrize("shape", [(2, 8, 5, 3), (1, 64, 14, 14), (3, 16, 7), (4, 6), (2, 8, 40, 40)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_channel_backward_fast_path_equals_full_path(shape, dtype, layout, rng, nthreads):
    """Batch (training and eval), instance and group norm backward take a fast path for plain
    arrays; a strided out= forces the full path: dx, dweight, dbias bitwise equal."""
    x = (rng.standard_normal(shape) + 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    C = shape[1] if layout == "NCHW" else shape[-1]
    w = rng.standard_normal(C).astype(dtype)
    G = 4 if C % 4 == 0 else 1
    strided = np.empty(shape + (2,), dtype=dtype)[..., 0]
    cases = []
    if x.size // C > 1:
        _, bm, br = fn.batch_norm_forward(x, w, layout=layout)
        cases += [lambda **k: fn.batch_norm_backward(dy, x, bm, br, w, layout=layout, **k),
                  lambda **k: fn.batch_norm_backward(dy, x, bm, br, training=False,
                                                     layout=layout, **k)]
    _, gm, gr = fn.group_norm_forward(x, G, w, layout=layout)
    cases.append(lambda **k: fn.group_norm_backward(dy, x, gm, gr, G, w, layout=layout, **k))
    if x.size // (shape[0] * C) > 1:
        _, im, ir = fn.instance_norm_forward(x, w, layout=layout)
        cases.append(lambda **k: fn.instance_norm_backward(dy, x, im, ir, None, layout=layout,
                                                           **k))
    for f in cases:
        fast, full = f(), f(out=strided)
        for a, e in zip(fast, full):
            assert a.shape == e.shape and a.dtype == e.dtype
            np.testing.assert_array_equal(a, e)
    with pytest.raises(ValueError, match="mean"):
        fn.group_norm_backward(dy, x, gm.reshape(-1), gr, G, w, layout=layout)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,C,S,cb,ew,act", [
    (64, 1, 1024, 1, True, 0),     # layer norm rows (element-wise affine)
    (197, 1, 768, 1, False, 1),    # rows without weight, relu
    (9, 1, 37, 1, True, 0),        # a tail in every row, rows not 64-byte aligned
    (3, 64, 30, 2, False, 0),      # group norm units of two planes: channel inside a vector
    (5, 8, 256, 8, False, 1),      # one unit per sample (FN_BLK values)
    (2, 6, 16, 1, False, 0),       # instance norm, tiny planes
    (3, 8, 1500, 2, False, 1),     # float32 units of two blocks, a channel ending in the first
    (4, 1, 4000, 1, True, 0),      # float32 rows of two blocks, the last one short
    (2, 4, 3136, 1, False, 0),     # instance norm 56 x 56 planes
    (2, 2, 20000, 2, False, 0),    # units past PIPE_MAX_BYTES: unit by unit
    (301, 1, 64, 1, True, 0),      # short rows in groups of UNIT_GROUP, the last one partial
    (13, 1, 128, 1, True, 1),      # rows of 128 (float64: 1 KiB, still grouped), relu
    (7, 12, 20, 3, False, 0),      # group norm units of 60 values in groups
    (9, 8, 49, 1, False, 0),       # instance norm 7 x 7: a vector tail in every unit
    (5, 16, 49, 2, False, 1),      # group norm units of two 7 x 7 planes, relu
    (4, 3, 9, 1, False, 0),        # planes of fewer than 16 values: the scalar pivot
])
def test_pipelined_units_same_bits(N, C, S, cb, ew, act, dtype, rng):
    """One-sample units run pipelined (a unit's apply fused with the next unit's statistics;
    forced, and as the CPU, dtype and size decide), short ones in groups (statistics of a group
    of units, then their applies, in one C loop, the group's statistics side by side or unit
    by unit) or not: y, mean and rstd are bitwise those of the unit-by-unit schedule and of
    the split one, for layer and RMS norm, and where a unit's pivot is far from its mean."""
    x = (3 + rng.standard_normal(N * C * S)).astype(dtype)
    w = rng.standard_normal(S if ew else C).astype(dtype)
    b = rng.standard_normal(S if ew else C).astype(dtype)
    U = N * (C // cb)
    far = x.copy()  # every other unit's pivot (the mean of its first 16) far from its mean
    far.reshape(U, -1)[::2, :min(16, cb * S // 2)] += 8
    for rms, x in ((False, x), (True, x), (False, far)):
        got = []
        for fuse, pipe, grouped, vec in ((True, 2, True, -1), (True, 0, False, -1),
                                         (True, 0, True, 1), (True, 0, True, 0),
                                         (True, 1, True, -1), (True, 1, False, -1),
                                         (False, 0, True, -1)):
            for t in (1, 2):
                y = np.empty_like(x)
                m, r = np.empty(U), np.empty(U)
                prev = K._set_pipeline(pipe)
                prev_g = K._set_grouped(grouped)
                prev_v = K._set_group_vec(vec)
                try:
                    K.planes_forward(x, y, N, C, S, 1, cb, w, b, ew, 1e-5, m, r, act, t, fuse,
                                     rms=rms)
                finally:
                    K._set_pipeline(prev)
                    K._set_grouped(prev_g)
                    K._set_group_vec(prev_v)
                got.append((y, m, r))
        for other in got[1:]:
            for a, o in zip(got[0], other):
                np.testing.assert_array_equal(a, o)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,C,S", [(5, 3, 37), (4, 2, 40000), (7, 4, 3136), (1, 2, 100)])
def test_batch_planes_two_at_a_time_same_bits(N, C, S, dtype, rng):
    """A batch-norm channel's planes are read two at a time (forward moments, backward sums),
    an odd last plane alone: mean, rstd, y, dx, dweight and dbias are bitwise those of the
    split schedule, which takes every plane on its own (planes of two FN_CHUNKs included)."""
    x = (100 + rng.standard_normal(N * C * S)).astype(dtype)
    dy = rng.standard_normal(N * C * S).astype(dtype)
    w = rng.standard_normal(C).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    got = []
    for fuse in (True, False):
        y, dx = np.empty_like(x), np.empty_like(x)
        m, r = np.empty(C), np.empty(C)
        dw, db = np.empty(C), np.empty(C)
        K.planes_forward(x, y, N, C, S, N, 1, w, b, False, 1e-5, m, r, 0, 1, fuse)
        K.planes_backward(dy, x, dx, N, C, S, N, 1, w, m, r, dw, db, 1, fuse)
        got.append((y, m, r, dx, dw, db))
    for a, o in zip(*got):
        np.testing.assert_array_equal(a, o)


def _check_batch_planes_reference(x, dy, w, b, N, C, S, y, m, dx, dw, db):
    """Batch norm of x (N, C, S) with weight w and bias b: the mean m and y against float64
    NumPy, dx, dweight and dbias against the reference backward."""
    x64 = x.astype(np.float64).reshape(N, C, S)
    mu = x64.mean((0, 2))
    np.testing.assert_allclose(m, mu, rtol=1e-12)
    ry = ((x64 - mu[:, None]) / np.sqrt(x64.var((0, 2))[:, None] + 1e-5) * w[:, None]
          + b[:, None])
    tol = 2e-5 if x.dtype == np.float32 else 1e-10
    assert np.max(np.abs(y.reshape(N, C, S) - ry)) < tol * max(1, np.abs(ry).max())
    rdx, rdw, rdb = ref.channel_backward("batch", dy.reshape(N, C, S), x.reshape(N, C, S), w)
    assert np.max(np.abs(dx.reshape(N, C, S) - rdx)) < tol * 10 * max(1, np.abs(rdx).max())
    np.testing.assert_allclose(db, rdb, rtol=tol * 10, atol=tol * 10 * N * S)
    np.testing.assert_allclose(dw, rdw, rtol=tol * 10, atol=tol * 10 * N * S)


def _batch_planes_backwards(dy, x, N, C, S, w, m, r, t, fuse, stream):
    """Batch norm (N, C, S) backward through planes_backward, with and without frozen
    statistics, into a new dx and over dy: [dx, dweight, dbias, dx over dy] for each."""
    res = []
    for frozen in (False, True):
        dx = np.empty_like(x)
        dw, db = np.empty(C), np.empty(C)
        K.planes_backward(dy, x, dx, N, C, S, N, 1, w, m, r, dw, db, t, fuse, stream=stream,
                          frozen=frozen)
        di = dy.copy()  # dx over dy
        K.planes_backward(di, x, di, N, C, S, N, 1, w, m, r, dw.copy(), db.copy(), t, fuse,
                          stream=stream, frozen=frozen)
        res += [dx, dw, db, di]
    return res


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,C,S", [(5, 37, 169), (4, 300, 196), (2, 9, 481), (3, 7, 81),
                                   (6, 1, 200), (33, 40, 170)])
def test_batch_mid_planes_same_bits(N, C, S, dtype, rng):
    """Batch norm over planes of 640 bytes to 2 KiB goes by runs of adjacent channels
    (mid_planes: a unit's samples' runs read in turn, y and dx run by run with each plane's
    coefficients): mean, rstd, y, dx, dweight and dbias (eval-mode dx too) are bitwise those
    of the channel-by-channel schedule and of the split one, at 1-3 threads, streamed or not,
    in place, with relu; odd N, a last unit of fewer channels, planes that are not whole
    vectors, data at 1e5 times its spread. Planes under 640 bytes (3, 7, 81) go by the small
    planes' schedule in both passes, with the switch on or off: the same bits at every thread
    count, streamed or not, and the reference's values."""
    x = (1e5 + rng.standard_normal(N * C * S)).astype(dtype)
    dy = rng.standard_normal(N * C * S).astype(dtype)
    w = rng.standard_normal(C).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    configs = ((1, True, 1, 0, 0), (0, True, 1, 0, 0), (0, False, 2, 0, 0), (1, True, 2, 1, 0),
               (1, True, 3, 1, 0), (0, True, 3, 1, 0), (1, True, 2, 0, 1), (0, True, 1, 0, 1))
    fwd, bwd = {0: [], 1: []}, []
    for mid, fuse, t, stream, act in configs:
        prev = K._set_mid(mid)
        try:
            y = np.empty_like(x)
            m, r = np.empty(C), np.empty(C)
            K.planes_forward(x, y, N, C, S, N, 1, w, b, False, 1e-5, m, r, act, t, fuse,
                             stream=stream)
            fwd[act].append([y, m, r])
            if act == 0:
                yi = x.copy()  # in place
                K.planes_forward(yi, yi, N, C, S, N, 1, w, b, False, 1e-5, m.copy(), r.copy(),
                                 0, t, fuse, stream=stream)
                fwd[act][-1].append(yi)
                bwd.append(_batch_planes_backwards(dy, x, N, C, S, w, m, r, t, fuse, stream))
        finally:
            K._set_mid(prev)
    for runs in (fwd[0], fwd[1], bwd):
        for other in runs[1:]:
            for a, o in zip(runs[0], other):
                np.testing.assert_array_equal(a, o)
    _check_batch_planes_reference(x, dy, w, b, N, C, S, fwd[0][0][0], fwd[0][0][1], *bwd[0][:3])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,C,S", [(9, 37, 49), (6, 64, 8), (13, 5, 7), (4, 3, 2), (70, 10, 25)])
def test_batch_small_planes_four_rows_a_sweep_same_bits(N, C, S, dtype, rng):
    """Batch norm over small planes sweeps four samples' runs at a time (fn_col_rows): the
    moments' and the sums' column accumulators, and the applies' coefficients, loaded once
    for four rows. mean, rstd, y (relu too, in place too), dx, dweight, dbias and the frozen
    dx are bitwise those of the row-by-row sweep, at 1 and 2 threads, streamed or not: N not a
    multiple of 4, more rows than a block (70 > 64), runs with a scalar tail or shorter than a
    vector, rows a multiple of 2 KiB apart (6, 64, 8: the applies go row by row there, the
    sums by four), data at 1e5 times its spread. The values match the reference."""
    x = (1e5 + rng.standard_normal(N * C * S)).astype(dtype)
    dy = rng.standard_normal(N * C * S).astype(dtype)
    w = rng.standard_normal(C).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    assert S * x.itemsize < 640 and N > 1  # the small planes' schedule
    out = {}
    for rows in (4, 1):
        prev = K._set_col_rows(rows)
        try:
            for t, stream in ((1, 0), (2, 1), (2, 0)):
                got = []
                for act in (0, 1):
                    y = np.empty_like(x)
                    m, r = np.empty(C), np.empty(C)
                    K.planes_forward(x, y, N, C, S, N, 1, w, b, False, 1e-5, m, r, act, t, True,
                                     stream=stream)
                    got += [y, m, r]
                yi = x.copy()  # in place
                K.planes_forward(yi, yi, N, C, S, N, 1, w, b, False, 1e-5, m.copy(), r.copy(),
                                 0, t, True, stream=stream)
                got.append(yi)
                got += _batch_planes_backwards(dy, x, N, C, S, w, got[1], got[2], t, True, stream)
                out[rows, t, stream] = got
        finally:
            K._set_col_rows(prev)
    first = out[4, 1, 0]
    for key, got in out.items():
        for a, o in zip(first, got):
            np.testing.assert_array_equal(a, o, err_msg=str(key))
    np.testing.assert_array_equal(first[3], np.maximum(first[0], 0))
    _check_batch_planes_reference(x, dy, w, b, N, C, S, first[0], first[1], *first[7:10])
    with pytest.raises(ValueError, match="n must be 1 or 4"):
        K._set_col_rows(2)


@pytest.mark.parametrize("N,C,S,dtype", [(9, 236, 1001, np.float32), (160, 14, 1000, np.float32),
                                         (8, 131, 1001, np.float64)])
def test_batch_channel_schedule_same_bits(N, C, S, dtype, rng):
    """Batch norm over a tensor past the caches with planes of at most 16 KiB
    (CHAN_ORDER_NOTE: the moments and the backward's sums prefetch across planes, dx goes last
    plane first and prefetches the next channel only as far as L2 has room; here an odd N, a
    channel that fits L2 and one that does not, planes that are not whole vectors): y, mean,
    rstd, dx, dweight and dbias bitwise those of the schedules before, at one and two threads,
    streamed or not, dx over dy, and the reference's values."""
    x = (1e5 + rng.standard_normal(N * C * S)).astype(dtype)
    dy = rng.standard_normal(N * C * S).astype(dtype)
    w = rng.standard_normal(C).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    m = x.astype(np.float64).reshape(N, C, S).mean((0, 2))
    r = 1 / np.sqrt(x.astype(np.float64).reshape(N, C, S).var((0, 2)) + 1e-5)
    got, fwd = [], []
    for on in (False, True):
        prev = K._set_chan_order(on)
        try:
            for t, stream in ((1, 0), (1, 1), (2, 1), (2, 0)):
                y, fm, fr = np.empty_like(x), np.empty(C), np.empty(C)
                K.planes_forward(x, y, N, C, S, N, 1, w, b, False, 1e-5, fm, fr, 0, t, True,
                                 stream=stream)
                fwd.append((y, fm, fr))
                dx = np.empty_like(x)
                dw, db = np.empty(C), np.empty(C)
                K.planes_backward(dy, x, dx, N, C, S, N, 1, w, m, r, dw, db, t, True,
                                  stream=stream)
                di = dy.copy()
                K.planes_backward(di, x, di, N, C, S, N, 1, w, m, r, np.empty(C), np.empty(C),
                                  t, True, stream=stream)
                got.append((dx, dw, db, di))
        finally:
            K._set_chan_order(prev)
    for runs in (fwd, got):
        for other in runs[1:]:
            for a, o in zip(runs[0], other):
                np.testing.assert_array_equal(a, o)
    tol = 2e-4 if dtype == np.float32 else 1e-9
    y, fm, fr = fwd[-1]
    np.testing.assert_allclose(fm, m, rtol=1e-12)
    np.testing.assert_allclose(fr, r, rtol=tol)
    ry = (x.reshape(N, C, S) - m[:, None]) * r[:, None] * w[:, None] + b[:, None]
    assert np.max(np.abs(y.reshape(N, C, S) - ry)) < tol * max(1, np.abs(ry).max())
    rdx, rdw, rdb = ref.channel_backward("batch", dy.reshape(N, C, S), x.reshape(N, C, S), w)
    dx, dw, db = got[-1][:3]
    assert np.max(np.abs(dx.reshape(N, C, S) - rdx)) < tol * max(1, np.abs(rdx).max())
    np.testing.assert_allclose(db, rdb, rtol=tol, atol=tol * N * S)
    np.testing.assert_allclose(dw, rdw, rtol=tol, atol=tol * N * S)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,C,S,cb", [(3, 128, 49, 64), (2, 256, 9, 64), (2, 40, 37, 10),
                                      (1, 16, 2048, 2), (2, 6, 300, 3)])
def test_group_units_of_small_planes_backward_same_bits(N, C, S, cb, dtype, rng):
    """A group-norm unit of several planes, past the grouped units' 2 KiB, takes its planes'
    sums eight side by side and its dx in one C loop (fn_planes_bwd_sums / _apply): dx,
    dweight and dbias are bitwise those of the split schedule, which sums every plane on its
    own (partial last eight, planes shorter than one vector, planes of exactly one block), and
    match the reference."""
    x = (50 + 2 * rng.standard_normal(N * C * S)).astype(dtype)
    dy = rng.standard_normal(N * C * S).astype(dtype)
    w = rng.standard_normal(C).astype(dtype)
    b = np.zeros(C, dtype)
    U = N * (C // cb)
    m, r = np.empty(U), np.empty(U)
    K.planes_forward(x, np.empty_like(x), N, C, S, 1, cb, w, b, False, 1e-5, m, r, 0, 1, True)
    got = []
    for fuse in (True, False):
        for t in (1, 2):
            dx = np.empty_like(x)
            dw, db = np.empty(C), np.empty(C)
            K.planes_backward(dy, x, dx, N, C, S, 1, cb, w, m, r, dw, db, t, fuse)
            got.append((dx, dw, db))
    for other in got[1:]:
        for a, o in zip(got[0], other):
            np.testing.assert_array_equal(a, o)
    G = C // cb
    dx_ref, dw_ref, db_ref = ref.channel_backward("group", dy.reshape(N, C, S),
                                                  x.reshape(N, C, S), w, G=G)
    assert_close(got[0][0].reshape(N, C, S), dx_ref, dtype, what="dx")
    assert_close(got[0][1], dw_ref, dtype, scale=np.sqrt(x.size), what="dweight")
    assert_close(got[0][2], db_ref, dtype, scale=np.sqrt(x.size), what="dbias")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,C,S,cb", [(3, 128, 49, 64), (2, 256, 9, 64), (2, 40, 37, 10),
                                      (2, 64, 5, 64), (1, 16, 300, 2), (2, 6, 300, 3),
                                      (4, 20, 49, 1), (3, 32, 9, 4), (2, 24, 5, 1)])
def test_group_units_of_small_planes_one_run_same_bits(N, C, S, cb, dtype, rng):
    """A group-norm unit of several planes (past the grouped units' 1 KiB) is normalized as one
    run of vectors across its planes, a vector over a plane boundary taking each lane's
    coefficients from its own plane (fn_planes_apply; the backward's dx likewise,
    fn_planes_bwd_apply), and so, when streaming, are the planes of a group of small units
    (the last three cases): y and dx are bitwise those of the split schedule's plane-by-plane
    loop, with streaming stores or not, into an output one element off its alignment (a
    scalar head) or not, with relu or not, and match the reference."""
    x = (50 + 2 * rng.standard_normal(N * C * S)).astype(dtype)
    dy = rng.standard_normal(N * C * S).astype(dtype)
    w = rng.standard_normal(C).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    U = N * (C // cb)
    for act in (0, 1):
        got = []
        for fuse, t, stream, off in ((False, 1, 0, 0), (True, 1, 0, 0), (True, 2, 1, 0),
                                     (True, 1, 1, 1), (False, 2, 1, 1)):
            y = np.empty(x.size + off, dtype)[off:]
            dx = np.empty(x.size + off, dtype)[off:]
            m, r = np.empty(U), np.empty(U)
            dw, db = np.empty(C), np.empty(C)
            K.planes_forward(x, y, N, C, S, 1, cb, w, b, False, 1e-5, m, r, act, t, fuse,
                             stream=stream)
            K.planes_backward(dy, x, dx, N, C, S, 1, cb, w, m, r, dw, db, t, fuse,
                              stream=stream)
            got.append((y.copy(), m, r, dx.copy(), dw, db))
        for other in got[1:]:
            for a, o in zip(got[0], other):
                np.testing.assert_array_equal(a, o)
    ry, _, _ = ref.channel_forward("group", x.reshape(N, C, S), w, b, G=C // cb)
    assert_close(got[0][0].reshape(N, C, S), np.maximum(ry, 0), dtype, what="y")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,C,S", [(3, 7, 49), (2, 5, 3), (2, 9, 16), (1, 13, 200),
                                   (2, 6, 201), (5, 3, 100), (1, 4, 101), (4, 2, 24)])
def test_instance_small_planes_backward_four_at_a_time_same_bits(N, C, S, dtype, rng):
    """Instance-norm planes of up to 800 bytes take their backward four side by side (sums,
    psum and coefficients in float64 lanes, fn_units1_bwd): dx, dweight and dbias are bitwise
    those of the split schedule (every plane on its own) at one and two threads, with a last
    step of fewer than four planes, channels wrapping to the next sample inside a step, planes
    shorter than a vector or of whole pairs of vectors, either side of the 800 bytes, frozen
    statistics or not, and match the reference."""
    x = (50 + 2 * rng.standard_normal(N * C * S)).astype(dtype)
    dy = rng.standard_normal(N * C * S).astype(dtype)
    w = rng.standard_normal(C).astype(dtype)
    b = np.zeros(C, dtype)
    U = N * C
    m, r = np.empty(U), np.empty(U)
    K.planes_forward(x, np.empty_like(x), N, C, S, 1, 1, w, b, False, 1e-5, m, r, 0, 1, True)
    for frozen in (False, True):
        got = []
        for fuse, t in ((False, 1), (True, 1), (True, 2)):
            dx = np.empty_like(x)
            dw, db = np.empty(C), np.empty(C)
            K.planes_backward(dy, x, dx, N, C, S, 1, 1, w, m, r, dw, db, t, fuse,
                              frozen=frozen)
            got.append((dx, dw, db))
        for other in got[1:]:
            for a, o in zip(got[0], other):
                np.testing.assert_array_equal(a, o)
        if frozen:  # the statistics held constant: dx = dy * w * rstd
            want = (dy.reshape(N, C, S) * w[:, None] * r.reshape(N, C)[:, :, None])
            assert_close(got[0][0].reshape(N, C, S), want, dtype, what="frozen dx")
            continue
        dx_ref, dw_ref, db_ref = ref.channel_backward("instance", dy.reshape(N, C, S),
                                                      x.reshape(N, C, S), w)
        assert_close(got[0][0].reshape(N, C, S), dx_ref, dtype, what="dx")
        assert_close(got[0][1], dw_ref, dtype, scale=np.sqrt(x.size), what="dweight")
        assert_close(got[0][2], db_ref, dtype, scale=np.sqrt(x.size), what="dbias")


def _at_page_offset(like, other, d):
    """An empty array like `like` whose address is d bytes past other's modulo a page."""
    n = like.size * like.itemsize
    buf = np.empty(n + 8192, np.uint8)
    o = (other.ctypes.data + d - buf.ctypes.data) % 4096
    return buf[o:o + n].view(like.dtype).reshape(like.shape)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 3, 3, 2048), (3, 2, 2, 1031), (1, 5, 1, 1100),
                                   (2, 1, 1, 700), (1, 1, 2, 4096)])
def test_wide_channels_last_rows_in_column_tiles_same_bits(shape, dtype, rng):
    """Channels-last passes over rows wider than a tile (fn_row_tiles) take the rows in column
    tiles: the forward's apply (batch, group, instance; inference with relu) and the
    backward's dx (batch: no per-column P; group: with it) are bitwise those of whole rows,
    with tiles of one or two vectors (many tiles, a last partial one, the scalar tail), with
    outputs placed just past an input in the page (the descending order, tiles last first),
    and match the reference."""
    C = shape[-1]
    x = (50 + 2 * rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(C).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    rm, rv = rng.standard_normal(C), rng.random(C) + 0.5
    G = C // 2 if C % 2 == 0 else C
    runs = {}
    prev = K._set_row_tiles(4096, 512)
    try:
        for tiles in ((1 << 40, 1 << 40), (4096, 512), (64, 8), (32, 16)):
            K._set_row_tiles(*tiles)
            for d in (0, 256):
                got = []
                y = np.empty_like(x) if d == 0 else _at_page_offset(x, x, d)
                got.append(fn.batch_norm_forward(x, w, b, layout="NHWC", out=y)[0].copy())
                got.append(fn.instance_norm_forward(x, w, b, layout="NHWC", out=y)[0].copy())
                got.append(fn.group_norm_forward(x, G, w, b, layout="NHWC", out=y)[0].copy())
                got.append(fn.batch_norm(x, rm, rv, w, b, layout="NHWC", activation="relu",
                                         out=y).copy())
                _, m, r = fn.batch_norm_forward(x, w, b, layout="NHWC")
                dx = np.empty_like(x) if d == 0 else _at_page_offset(x, dy, d)
                got += [a.copy() for a in fn.batch_norm_backward(dy, x, m, r, w,
                                                                 layout="NHWC", out=dx)]
                _, m, r = fn.group_norm_forward(x, G, w, b, layout="NHWC")
                got += [a.copy() for a in fn.group_norm_backward(dy, x, m, r, G, w,
                                                                 layout="NHWC", out=dx)]
                runs[tiles, d] = got
    finally:
        K._set_row_tiles(*prev)
    first = runs[(1 << 40, 1 << 40), 0]
    for key, got in runs.items():
        for a, o in zip(first, got):
            np.testing.assert_array_equal(a, o, err_msg=str(key))
    xc, dyc = np.moveaxis(x, -1, 1), np.moveaxis(dy, -1, 1)
    ry, _, _ = ref.channel_forward("batch", xc, w, b)
    assert_close(np.moveaxis(first[0], -1, 1), ry, dtype, what="y")
    rdx, rdw, rdb = ref.channel_backward("group", dyc, xc, w, G=G)
    assert_close(np.moveaxis(first[7], -1, 1), rdx, dtype, what="group dx")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 15, 4097, 3 * 4096 * 4 + 21])
def test_parallel_copy(n, dtype, rng):
    """The benchmarks' floor copies every element, memcpy or streaming (four-page blocks, a
    head up to a 64-byte line and tails), at any offset and thread count."""
    src = rng.standard_normal(n).astype(dtype)
    for off in (0, 1, 3):
        for t in (1, 2, 3):
            for stream in (False, True):
                dst = np.zeros(n + off, dtype)[off:]
                K.parallel_copy(src, dst, t, stream)
                np.testing.assert_array_equal(dst, src)
    with pytest.raises(ValueError, match="dst"):
        K.parallel_copy(src, np.empty(n + 1, dtype), 1)


@pytest.mark.parametrize("nways", [1, 8])
def test_pipelined_ways_same_bits(nways, rng):
    """A thread's run of 32 MiB or more may be taken from several regions in turn (Intel's
    default is eight, one elsewhere): same bits as the unit-by-unit schedule, at one thread
    (one run of 33 MiB) and at two (two of 16 MiB)."""
    x = rng.standard_normal((8200, 1024)).astype(np.float32)
    w = rng.standard_normal(1024).astype(np.float32)
    prev = K._set_ways(nways)
    try:
        for t in (1, 2):
            with fn.threads(t):
                pipe = K._set_pipeline(2)
                try:
                    got = fn.layer_norm_forward(x, 1024, w, w)
                    K._set_pipeline(0)
                    ref = fn.layer_norm_forward(x, 1024, w, w)
                finally:
                    K._set_pipeline(pipe)
            for a, b in zip(got, ref):
                np.testing.assert_array_equal(a, b)
    finally:
        K._set_ways(prev)


def test_default_weight_is_cached_and_read_only(rng):
    """A weight or bias left as None is a cached read-only array (a layer norm over (C, H, W)
    would otherwise make one as large as a sample on every call); results are unchanged."""
    from fastnorm import _dispatch as D
    a = D.param_array(None, "weight", (3, 4), np.float32, 1)
    assert a is D.param_array(None, "weight", (3, 4), np.float32, 1)
    assert not a.flags.writeable and a.dtype == np.float32 and np.all(a == 1)
    assert D.param_array(None, "bias", (3, 4), np.float32, 0) is not a
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    y1 = fn.layer_norm(x, (3, 4))
    y2 = fn.layer_norm(x, (3, 4), np.ones((3, 4), np.float32), np.zeros((3, 4), np.float32))
    np.testing.assert_array_equal(y1, y2)


def _fake_timeit(monkeypatch, bench, seq):
    """Replace bench.timeit: each call returns the next time of seq[name], name being what the
    timed callable returns; the returned dict counts the calls per name."""
    made = {}

    def fake_timeit(f, budget=1.0, repeat=5):
        name = f()
        made[name] = made.get(name, 0) + 1
        return seq[name][made[name] - 1]

    monkeypatch.setattr(bench, "timeit", fake_timeit)
    return made


def test_bench_rounds_go_on_while_the_best_still_moves(monkeypatch):
    """The report's timing takes more rounds (up to max_rounds) while the last round still
    lowered a watched call's best by more than 3%, and stops at ``rounds`` otherwise."""
    from fastnorm import bench
    seq = {"a": [5.0, 4.0, 3.0, 2.9, 2.9, 2.9, 2.9, 2.9], "b": [1.0] * 8}
    made = _fake_timeit(monkeypatch, bench, seq)
    calls = {"a": lambda: "a", "b": lambda: "b"}
    # rounds 3 (-25%) and 4 (-3.3%) still improve a; round 5 does not: stop after it
    best = bench.timeit_rounds(calls, rounds=2, max_rounds=6)
    assert made == {"a": 5, "b": 5} and best == {"a": 2.9, "b": 1.0}
    made.clear()
    assert bench.timeit_rounds(calls, rounds=2, max_rounds=3)["a"] == 3.0
    assert made["a"] == 3
    made.clear()
    bench.timeit_rounds(calls, rounds=2, max_rounds=6, watch=("b",))
    assert made["a"] == 2
    made.clear()
    bench.timeit_rounds(calls, rounds=2)
    assert made["a"] == 2


def test_bench_paired_ratio_is_the_median_of_the_rounds(monkeypatch):
    """The ratio to the copy pairs each round's kernel time with the faster copy of the same
    round: a spell that slows both divides out, and one that catches a single side in one round
    is outvoted by the median. The best times stay the minimum over the rounds."""
    from fastnorm import bench
    seq = {"copy_memcpy": [2.0, 1.0, 2.0, 2.0, 2.0], "copy_stream": [1.0, 0.5, 1.2, 1.0, 1.0],
           "op": [1.5, 0.75, 1.5, 1.6, 3.0]}
    made = _fake_timeit(monkeypatch, bench, seq)
    calls = {k: (lambda k=k: k) for k in seq}
    best = bench.timeit_rounds(calls, rounds=5, paired=("op",))
    # per round op / min(copies): 1.5, 1.5, 1.25, 1.6, 3.0 -> median 1.5; best / best: 1.5
    assert best["ratio_op"] == 1.5 and best["op"] == 0.75 and best["copy"] == 0.5
    made.clear()
    seq["op"] = [1.2, 0.9, 1.3, 1.25, 3.0]  # the fast round caught the copy only
    best = bench.timeit_rounds(calls, rounds=5, paired=("op",))
    assert best["op"] / best["copy"] == 1.8 and best["ratio_op"] == 1.25
    made.clear()
    assert "ratio_op" not in bench.timeit_rounds({"op": calls["op"]}, rounds=2, paired=("op",))


def test_bench_table_median_of_runs():
    """With several runs the report prints, for every number, the median over the runs of
    that number, each a ratio taken within its own run (not a ratio of median times)."""
    from fastnorm import bench

    def row(t, fwd, copy, torch=None):
        return {"name": "op", "layout": "NCHW", "dtype": "float32", "threads": t,
                "bytes": 10**9, "fastnorm_fwd": fwd, "fastnorm_fwd_out": fwd, "copy": copy,
                "fastnorm_bwd": None, "fastnorm_bwd_out": None, "torch_fwd": torch}

    runs = [[row(1, 2.0, 1.0, 4.0), row(2, 0.8, 0.5)],    # fwd/copy 2.0, 1.6; 2T/1T 2.5
            [row(1, 3.0, 2.0, 3.0), row(2, 3.0, 1.0)],    # 1.5, 3.0; 1.0
            [row(1, 10.0, 1.0), row(2, 5.0, 1.0)]]        # 10.0, 5.0; 2.0 (no torch)
    lines = bench.table(runs[0], runs).splitlines()
    one = lines[2].split()
    two = lines[3].split()
    assert one[4] == "2.00" and two[4] == "3.00"   # medians of (2, 1.5, 10) and (1.6, 3, 5)
    assert one[8] == "1.50x"                        # of (2.0, 1.0): the runs with torch
    assert two[-2:] == ["2.00", "(2.00)"]           # of (2.5, 1, 2) and the copy's (2, 2, 1)
    assert bench.table(runs[1]).splitlines()[2].split()[4] == "1.50"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streaming_stores_start_on_a_whole_line(dtype):
    """Where a streamed segment's streaming stores start (fn_nt_head): a segment of whole
    vectors from a 16-byte boundary streams from its start (consecutive such segments fill
    every line with streaming stores alone); any other segment stores values one by one up to
    the next 64-byte boundary and streams only whole lines from there (a line half streamed by
    one plane and half written by its neighbour costs several times a copy); a start off the
    item size never streams."""
    K = pytest.importorskip("fastnorm._kernels._norm")
    item = np.dtype(dtype).itemsize
    vl = K.VECTOR_BYTES // item
    base = np.zeros(4096, dtype=np.uint8)
    start = (-base.ctypes.data) % 64  # base[start] is on a line boundary
    for off in range(0, 72, item):
        a = base[start + off:start + off + 512 * item].view(dtype)
        for n in (1, 5, vl, 3 * vl, 100):
            h = K._stream_head(a, n)
            if off % 16 == 0 and n % vl == 0:
                assert h == 0
                continue
            assert 0 <= h <= n
            assert h == n or (a.ctypes.data + h * item) % 64 == 0
            assert h == min(n, ((-a.ctypes.data) % 64) // item)
    odd = base[start + 1:start + 1 + 64 * item].view(dtype)
    assert K._stream_head(odd, 64) == -1


@pytest.mark.parametrize("shape", [(2, 24, 14, 14), (3, 20, 7, 7), (2, 8, 13, 13)])
def test_streamed_planes_that_share_lines_give_the_same_bits(shape, rng, monkeypatch):
    """Planes of 14 x 14, 7 x 7 or 13 x 13 values end inside a line, which the next plane
    begins: forced to stream, every op's forward and backward equal the cached-store result
    and the reference, at one and two threads."""
    x = (rng.standard_normal(shape) * 2 + 3).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    C = shape[1]
    w = rng.standard_normal(C).astype(np.float32)

    def run():
        res = []
        for t in (1, 2):
            with fn.threads(t):
                for fwd, bwd, extra in ((fn.batch_norm_forward, fn.batch_norm_backward, ()),
                                        (fn.instance_norm_forward, fn.instance_norm_backward,
                                         ()),
                                        (fn.group_norm_forward, fn.group_norm_backward, (4,))):
                    y, m, r = fwd(x, *extra, w)
                    res += [y, bwd(dy, x, m, r, *extra, w)[0]]
        return res

    res = cached_and_streamed(run, monkeypatch)
    xg = x.astype(np.float64).reshape(shape[0], 4, -1)
    yg = (xg - xg.mean(-1, keepdims=True)) / np.sqrt(xg.var(-1, keepdims=True) + 1e-5)
    ref = yg.reshape(shape) * w[:, None, None]
    np.testing.assert_allclose(res[4], ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(res[:6], res[6:]):
        np.testing.assert_array_equal(a, b)


def test_bench_shapes_runs_every_case(monkeypatch):
    """The report's --shapes section: every shape case of the quick list runs (fastnorm
    forward and backward, the copy and PyTorch when installed, each call made for real with a
    fake clock), gives one row with its paired ratios, and a table line."""
    from fastnorm import bench
    monkeypatch.setattr(bench, "timeit", lambda f, budget=1.0, repeat=5: (f(), 1e-3)[1])
    cases = bench.shape_cases(quick=True)
    rows = bench.shapes(quick=True, dtypes=("float32", "float64"), progress=False)
    assert len(rows) == 2 * len(cases)
    for r, (op, layout, shape, _) in zip(rows[::2], cases):
        assert (r["op"], r["layout"], tuple(r["shape"])) == (op, layout, shape)
        assert r["ratio_fastnorm_fwd_out"] == 1.0 and r["ratio_fastnorm_bwd_out"] == 1.0
    lines = bench.shapes_table(rows).splitlines()
    assert len(lines) == 2 + len(rows) and "x".join(map(str, cases[0][2])) in lines[2]
    for op, layout, shape, extra in bench.shape_cases(quick=False):
        assert op != "group" or shape[1] % extra["G"] == 0
