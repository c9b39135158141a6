"""Large outputs come from reusable blocks (fastnorm._kernels._buffers): correct, never shared
between live arrays, bounded, and switchable off."""
import numpy as np
import pytest

import fastnorm as fn
from fastnorm._kernels import _buffers

BIG = (4096, 2048)  # 32 MiB in float32: the smallest output the cache serves


def _addr(a):
    return a.__array_interface__["data"][0]


def _block_of(a):
    while a is not None and not isinstance(a, _buffers.Block):
        a = a.obj if isinstance(a, memoryview) else getattr(a, "base", None)
    return a


@pytest.fixture
def cache():
    prev = fn.set_buffer_cache(256 << 20)
    _buffers.configure(limit=0)  # start empty
    _buffers.configure(limit=256 << 20)
    yield
    fn.set_buffer_cache(prev)


def test_large_output_is_reused_after_free(cache):
    x = np.random.default_rng(0).standard_normal(BIG).astype(np.float32)
    y = fn.layer_norm(x, BIG[1])
    assert _buffers.is_fresh(y)  # a new block: its pages came from the OS for this call
    a = _addr(y)
    ref = y.copy()
    del y
    assert _buffers.held() >= x.nbytes
    y2 = fn.layer_norm(x, BIG[1])
    assert _addr(y2) == a and not _buffers.is_fresh(y2)
    assert _buffers.held() == 0
    # streamed (warm block) and not streamed (fresh block) give the same bits
    np.testing.assert_array_equal(y2, ref)
    np.testing.assert_array_equal(y2, fn.layer_norm(x, BIG[1], out=np.empty_like(x)))


def test_live_outputs_never_share_a_block(cache):
    x = np.ones(BIG, np.float32)
    x[:, ::2] = 3
    outs = [fn.layer_norm(x, BIG[1]) for _ in range(3)]
    assert len({_addr(o) for o in outs}) == 3
    outs[0][...] = 7  # writing one leaves the others alone
    np.testing.assert_array_equal(outs[1], outs[2])
    assert outs[1][0, 0] == pytest.approx(1.0, abs=1e-4)
    view = outs[1][::2]
    del outs
    # a view keeps its block alive: the next output does not take it
    y = fn.layer_norm(x, BIG[1])
    assert _addr(y) != _addr(view) or view.base is None
    assert view[0, 0] == pytest.approx(1.0, abs=1e-4)


def test_every_large_op_output_is_correct_from_a_reused_block(cache):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 64, 128, 64)).astype(np.float64)  # 32 MiB
    dy = rng.standard_normal(x.shape)
    w, b = rng.standard_normal(64), rng.standard_normal(64)
    first = fn.group_norm_forward(x, 8, w, b)
    ref = [a.copy() for a in first]
    dref = [a.copy() for a in fn.group_norm_backward(dy, x, first[1], first[2], 8, w)]
    del first
    for _ in range(2):  # the second and third calls take warm blocks
        got = fn.group_norm_forward(x, 8, w, b)
        for g, r in zip(got, ref):
            np.testing.assert_array_equal(g, r)
        for g, r in zip(fn.group_norm_backward(dy, x, got[1], got[2], 8, w), dref):
            np.testing.assert_array_equal(g, r)
    xc = x.reshape(8, 64, -1).transpose(0, 2, 1).copy().reshape(8, 128, 64, 64)
    y = fn.batch_norm_forward(xc, w, b, layout="NHWC")[0]
    m = xc.mean(axis=(0, 1, 2))
    v = xc.var(axis=(0, 1, 2))
    np.testing.assert_allclose(y, (xc - m) / np.sqrt(v + 1e-5) * w + b, rtol=1e-10, atol=1e-10)


def test_cache_is_bounded_and_can_be_turned_off(cache):
    fn.set_buffer_cache(40 << 20)  # room for one 32 MiB block
    x = np.zeros(BIG, np.float32)
    ys = [fn.layer_norm(x, BIG[1]) for _ in range(3)]
    del ys
    assert 0 < _buffers.held() <= 40 << 20
    assert fn.set_buffer_cache(0) == 40 << 20
    assert _buffers.held() == 0
    y = fn.layer_norm(x, BIG[1])
    del y
    assert _buffers.held() == 0  # off: freed outputs go back to the OS


def test_small_outputs_are_plain_numpy(cache):
    y = fn.layer_norm(np.ones((4, 8), np.float32), 8)
    assert y.flags.owndata


@pytest.mark.parametrize("bad,exc", [(-1, ValueError), (1.5, TypeError), ("1", TypeError),
                                     (True, TypeError)])
def test_set_buffer_cache_validates(bad, exc):
    with pytest.raises(exc, match="nbytes"):
        fn.set_buffer_cache(bad)


def test_torch_wraps_a_cached_output(cache):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(2).standard_normal(BIG).astype(np.float32)
    y = fn.layer_norm(x, BIG[1])
    t = torch.from_numpy(y)
    a, h = _addr(y), _buffers.held()
    del y
    assert _buffers.held() == h  # the tensor keeps the block
    t.add_(1)
    del t
    assert _buffers.held() >= h + x.nbytes
    assert _addr(fn.layer_norm(x, BIG[1])) == a


def test_backward_partials_come_back_warm(cache):
    """The layer-norm backward's float64 partials of dweight and dbias (here 2 x 16 blocks x
    4096 x 8 bytes) come from a reusable block, so a second call takes its pages warm, and
    the results do not change."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((512, 4096)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    w = rng.standard_normal(4096).astype(np.float32)
    _, m, r = fn.layer_norm_forward(x, 4096, w)
    first = fn.layer_norm_backward(dy, x, m, r, 4096, w)
    held = _buffers.held()
    assert held > 0  # the partials went back to the cache with the call's end
    again = fn.layer_norm_backward(dy, x, m, r, 4096, w)
    assert _buffers.held() == held  # the same blocks, taken and given back
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    ref = fn.layer_norm_backward(dy.astype(np.float64), x.astype(np.float64), m, r, 4096,
                                 w.astype(np.float64))
    for a, b in zip(first, ref):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4)


def test_scratch_below_the_threshold_is_plain_numpy(cache):
    a = _buffers.scratch((100,), np.float64)
    assert a.base is None or not isinstance(a.base, _buffers.Block)
    assert _buffers.held() == 0


def test_mid_size_outputs_come_back_warm(cache):
    """Outputs from 256 KiB to 32 MiB come from page-rounded blocks (not 2 MiB units): here the
    dx (2 MiB) and the dweight/dbias (512 KiB each) of a layer norm over (32, 64, 64); a second
    call takes the same blocks and gives the same bits."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 32, 64, 64)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    ns = x.shape[1:]
    w = rng.standard_normal(ns).astype(np.float32)
    _, m, r = fn.layer_norm_forward(x, ns, w)
    first = fn.layer_norm_backward(dy, x, m, r, ns, w)
    assert all(_block_of(a) is not None for a in first)
    addrs = {_addr(a) for a in first}
    ref = [a.copy() for a in first]
    del first
    assert _buffers.held() == x.nbytes + 2 * w.nbytes  # whole pages, no 2 MiB rounding
    again = fn.layer_norm_backward(dy, x, m, r, ns, w)
    assert {_addr(a) for a in again} == addrs and _buffers.held() == 0
    for a, b in zip(again, ref):
        np.testing.assert_array_equal(a, b)
    f64 = fn.layer_norm_backward(dy.astype(np.float64), x.astype(np.float64), m, r, ns,
                                 w.astype(np.float64))
    for a, b in zip(again, f64):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_odd_mid_size_output_rounds_to_pages(cache):
    x = np.random.default_rng(4).standard_normal((3, 25001)).astype(np.float32)  # 300012 B
    y = fn.layer_norm(x, 25001)
    mu, var = x.mean(1, keepdims=True), x.var(1, keepdims=True)
    np.testing.assert_allclose(y, (x - mu) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)
    a = _addr(y)
    del y
    assert _buffers.held() == 303104  # 74 pages
    assert _addr(fn.layer_norm(x, 25001)) == a


def test_a_new_size_is_kept_when_every_slot_holds_an_old_one(cache):
    """With every slot holding a block of a size no longer asked for, a freed block of a new
    size takes the oldest slot (it used to be unmapped, so that size came fresh from the OS on
    every call, page faults and all)."""
    olds = [_buffers.empty((65 + k) << 12, np.uint8) for k in range(32)]  # 32 sizes, 260+ KiB
    del olds
    n_held = _buffers.held()
    assert 0 < n_held <= 32 * (97 << 12)
    a = _buffers.empty(300 << 12, np.uint8)
    a[:] = 1  # written: its pages are no longer new
    addr = _addr(a)
    del a
    b = _buffers.empty(300 << 12, np.uint8)
    assert _addr(b) == addr and not _buffers.is_fresh(b)
    held = _buffers.held()
    del b
    assert _buffers.held() == held + (300 << 12)
