"""Where the output sits relative to the inputs within a 4 KiB page does not change a bit.

The apply loops over long segments (and layer-norm rows of any length) go down the addresses
instead of up when out= sits a little past an input in its page (4 KiB aliasing, see fn_alias
and fn_desc_hot in _core.h), and group norm's streamed runs go through an L1 buffer there
(fn_run_apply_bounce). Every placement here, descending or not, streaming stores or not, must
give the bits of a fresh output."""
import numpy as np
import pytest

import fastnorm as fn
from fastnorm import _dispatch as D

PAGE = 4096
# out= at these bytes past x within a page (x itself 16 bytes into a page, as NumPy puts its
# large arrays): -16 and 0 ascend; 32 to 1008 descend; 2048 ascends again.
OFFSETS = [-16, 0, 32, 64, 128, 1008, 2048]


def placed(a, off, base=16):
    """A copy of a whose data starts base + off bytes into a page (off may be negative)."""
    raw = np.empty(a.nbytes + 3 * PAGE, np.uint8)
    start = (-raw.ctypes.data) % PAGE + PAGE + base + off
    v = np.frombuffer(raw.data, a.dtype, count=a.size, offset=start).reshape(a.shape)
    v[...] = a
    return v


def empty_at(a, off):
    v = placed(np.zeros_like(a), off)
    assert (v.ctypes.data - 16 - off) % PAGE == 0
    return v


CASES = [  # (op, layout, shape): planes (long ones descend), runs of small planes,
    ("batch", "NCHW", (3, 8, 20, 20)),      # channels-last (K <= 8 vectors and wider rows),
    ("batch", "NCHW", (2, 4, 48, 48)),      # layer-norm rows and (C, H, W) samples
    ("instance", "NCHW", (2, 6, 7, 9)),
    ("instance", "NCHW", (2, 3, 50, 50)),
    ("group", "NCHW", (2, 16, 5, 5)),
    ("group", "NCHW", (2, 64, 2, 3)),       # planes shorter than a vector
    ("group", "NCHW", (2, 32, 30, 30)),
    ("group", "NCHW", (2, 64, 13, 13)),     # runs streamed in pieces that start inside planes
    ("group", "NCHW", (2, 256, 3, 3)),
    ("batch", "NHWC", (4, 9, 9, 16)),
    ("batch", "NHWC", (2, 5, 7, 100)),
    ("instance", "NHWC", (2, 6, 6, 72)),
    ("group", "NHWC", (2, 5, 5, 64)),
    ("group", "NHWC", (2, 3, 3, 160)),
    ("layer", "rows", (64, 1000)),
    ("layer", "rows", (48, 64)),            # rows in groups (forward and backward)
    ("layer", "rows", (20, 250)),
    ("layer", "rows", (6, 4096)),
    ("layer", "chw", (4, 16, 24, 24)),
    ("layer", "chw", (4, 64, 40, 40)),
]


def run(op, layout, x, dy, w, b, out, dxout):
    if op == "layer":
        ns = x.shape[1:] if layout == "chw" else x.shape[-1:]
        wl = np.resize(w, ns).astype(x.dtype)
        bl = np.resize(b, ns).astype(x.dtype)
        y, m, r = fn.layer_norm_forward(x, ns, wl, bl, out=out)
        dx = fn.layer_norm_backward(dy, x, m, r, ns, wl, out=dxout)
        return y, dx
    C = x.shape[1] if layout == "NCHW" else x.shape[-1]
    args = (4,) if op == "group" else ()
    fwd = getattr(fn, op + "_norm_forward")
    bwd = getattr(fn, op + "_norm_backward")
    y, m, r = fwd(x, *args, w[:C], b[:C], layout=layout, out=out)
    dx = bwd(dy, x, m, r, *args, w[:C], layout=layout, out=dxout)
    return y, dx


@pytest.mark.parametrize("stream", [False, True], ids=["cached", "streaming"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op,layout,shape", CASES)
def test_out_placement_keeps_bits(op, layout, shape, dtype, stream, rng, nthreads, monkeypatch):
    if stream:
        monkeypatch.setattr(D, "STREAM_BYTES", 4096)
    x = placed((rng.standard_normal(shape) * 2 + 50).astype(dtype), 0)
    dy = placed(rng.standard_normal(shape).astype(dtype), 0)
    w = rng.standard_normal(256).astype(dtype)
    b = rng.standard_normal(256).astype(dtype)
    y0, dx0 = run(op, layout, x, dy, w, b, None, None)
    dx0 = [np.array(t) for t in dx0]
    for off in OFFSETS:
        out, dxout = empty_at(x, off), empty_at(x, off)
        y, dx = run(op, layout, x, dy, w, b, out, dxout)
        assert y is out
        np.testing.assert_array_equal(y, y0, err_msg=f"forward, out= {off} bytes past x")
        np.testing.assert_array_equal(dx[0], dx0[0], err_msg=f"dx, out= {off} bytes past x")
        for got, want in zip(dx[1:], dx0[1:]):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout,shape", [("NCHW", (2, 8, 9, 9)), ("NHWC", (3, 5, 5, 40)),
                                          ("NCHW", (2, 3, 48, 48))])  # planes of 9-18 KiB
def test_inference_out_placement_keeps_bits(layout, shape, dtype, rng, nthreads, monkeypatch):
    monkeypatch.setattr(D, "STREAM_BYTES", 4096)
    C = shape[1] if layout == "NCHW" else shape[-1]
    x = placed(rng.standard_normal(shape).astype(dtype), 0)
    rm, rv = rng.standard_normal(C), rng.random(C) + 0.5
    w, b = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    y0 = fn.batch_norm(x, rm, rv, w, b, training=False, layout=layout)
    for off in OFFSETS:
        out = empty_at(x, off)
        y = fn.batch_norm(x, rm, rv, w, b, training=False, layout=layout, out=out,
                          activation="relu")
        np.testing.assert_array_equal(y, np.maximum(y0, 0), err_msg=f"out= {off} bytes past x")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_residual_grad_placement_keeps_bits(dtype, rng, nthreads):
    """Layer-norm rows backward with the residual's own gradient added (ds), dx placed past
    dy, x and ds."""
    x = placed(rng.standard_normal((16, 520)).astype(dtype), 0)
    dy = placed(rng.standard_normal(x.shape).astype(dtype), 0)
    ds = placed(rng.standard_normal(x.shape).astype(dtype), 0)
    w = rng.standard_normal(520).astype(dtype)
    _, m, r = fn.layer_norm_forward(x, 520, w)
    want = [np.array(t) for t in fn.layer_norm_backward(dy, x, m, r, 520, w, residual_grad=ds)]
    for off in OFFSETS:
        got = fn.layer_norm_backward(dy, x, m, r, 520, w, residual_grad=ds, out=empty_at(x, off))
        for g, t in zip(got, want):
            np.testing.assert_array_equal(g, t, err_msg=f"out= {off} bytes past x")


@pytest.mark.parametrize("stream", [False, True], ids=["cached", "streaming"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(48, 64), (24, 250), (8, 1024)])
def test_layer_rows_weight_placement_keeps_bits(shape, dtype, stream, rng, nthreads,
                                                 monkeypatch):
    """Layer-norm rows read their weight and bias with every vector: out= just past x and
    just before (or past) the weight picks the direction of the apply (fn_desc_hot), which must
    not change a bit."""
    if stream:
        monkeypatch.setattr(D, "STREAM_BYTES", 4096)
    D_ = shape[-1]
    x = placed((rng.standard_normal(shape) * 2 + 50).astype(dtype), 0)
    dy = placed(rng.standard_normal(shape).astype(dtype), 0)
    w0 = rng.standard_normal(D_).astype(dtype)
    b0 = rng.standard_normal(D_).astype(dtype)
    y0, m, r = fn.layer_norm_forward(x, D_, w0, b0)
    want = [np.array(t) for t in fn.layer_norm_backward(dy, x, m, r, D_, w0)]
    for off in [0, 32, 64, 400]:
        for delta in [-64, 32, 96, 1000]:  # the weight and bias delta bytes past out=
            w, b = placed(w0, off + delta), placed(b0, off + delta + 16)
            y = fn.layer_norm_forward(x, D_, w, b, out=empty_at(x, off))[0]
            np.testing.assert_array_equal(y, y0, err_msg=f"out= {off} past x, w {delta} past")
            got = fn.layer_norm_backward(dy, x, m, r, D_, w, out=empty_at(x, off))
            for g, t in zip(got, want):
                np.testing.assert_array_equal(g, t, err_msg=f"out= {off}, w {delta} past")
