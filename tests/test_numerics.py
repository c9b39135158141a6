"""Data that breaks naive statistics: large offsets, tiny spreads, skewed blocks."""
import numpy as np
import pytest

import fastnorm as fn
import reference as ref


def _run(op, x, layout="NCHW"):
    if op == "layer":
        ns = x.shape[1:]
        return fn.layer_norm_forward(x, ns)[0], ref.layer_forward(x, ns)[0]
    G = 2 if op == "group" else None
    args = (G,) if G else ()
    y = getattr(fn, f"{op}_norm_forward")(x, *args, layout=layout)[0]
    return y, ref.channel_forward(op, x, layout=layout, G=G)[0]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("op", ["batch", "instance", "group", "layer"])
@pytest.mark.parametrize("offset", [0.0, 1e3, 1e4, 1e5])
def test_offset_float32_forward(op, offset, layout, rng):
    x = (offset + rng.standard_normal((4, 6, 20, 30))).astype(np.float32)
    if op == "layer" and layout == "NHWC":
        pytest.skip("layer norm has no layout")
    y, ry = _run(op, x, layout)
    assert np.max(np.abs(y - ry)) <= 1e-5


@pytest.mark.parametrize("op", ["batch", "instance", "group", "layer"])
def test_tiny_spread_float32(op, rng):
    """1e4 + 1e-2 * N(0, 1): the spread is 1e-6 of the value."""
    x = (1e4 + 1e-2 * rng.standard_normal((3, 4, 40, 50))).astype(np.float32)
    y, ry = _run(op, x)
    # float32 stores x to 1e4 * 2^-24 = 6e-4 = 0.06 spreads: the reference sees the same data
    assert np.max(np.abs(y - ry)) <= 1e-5


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("op", ["batch", "instance", "group", "layer"])
def test_skewed_blocks(op, layout, rng):
    """Sorted data and a block whose first values are unlike the rest: the pivot of the one-pass
    moments is poor there, and the block must fall back to the exact two-pass."""
    if op == "layer" and layout == "NHWC":
        pytest.skip("layer norm has no layout")
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
