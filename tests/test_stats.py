"""fastnorm.moments / Moments / channel_stats against a plain float64 two-pass in NumPy."""
import itertools
import pickle

import numpy as np
import pytest

import fastnorm as fn
from fastnorm import stats


def two_pass(x, axis):
    """The oracle: float64 mean, then the sum of squared deviations from it."""
    xd = np.asarray(x, dtype=np.float64)
    mean = xd.mean(axis=axis, keepdims=True)
    m2 = ((xd - mean) ** 2).sum(axis=axis)
    return np.squeeze(mean, axis=axis) if axis != () else xd, m2


def rel_err(a, e):
    a, e = np.asarray(a, dtype=np.float64), np.asarray(e, dtype=np.float64)
    assert a.shape == e.shape, (a.shape, e.shape)
    if e.size == 0:
        return 0.0
    return float(np.max(np.abs(a - e)) / max(float(np.max(np.abs(e))), 1e-300))


def layouts(x):
    """x in several memory orders: C, Fortran, channels-last view, strided."""
    yield "C", x
    yield "F", np.asfortranarray(x)
    if x.ndim >= 3:
        yield "channels_last", np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1, 1)
    yield "strided", np.repeat(x, 2, axis=-1)[..., ::2]


@pytest.mark.parametrize("shape", [(7,), (9, 4), (5, 3, 6), (3, 4, 2, 5), (2, 1, 3, 1, 4)])
def test_all_axes_all_orders(shape, nthreads, rng):
    x = rng.standard_normal(shape) * 3 + 50
    for name, xv in layouts(x):
        for r in range(len(shape) + 1):
            for axes in itertools.combinations(range(len(shape)), r):
                m = fn.moments(xv, axis=axes)
                mean, m2 = two_pass(xv, axes)
                assert m.shape == np.shape(mean), (name, axes)
                assert rel_err(m.mean, mean) <= 1e-13, (name, axes)
                assert rel_err(m.m2, m2) <= 1e-12, (name, axes)
                assert np.all(m.count == np.prod([shape[a] for a in axes])), (name, axes)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int32, np.uint8])
def test_low_precision_dtypes_are_exact(dtype, rng, monkeypatch):
    # small chunks so the per-chunk upcast and Chan merge both run
    monkeypatch.setattr(stats, "CHUNK_ELEMS", 1000)
    if np.dtype(dtype).kind == "f":
        x = (rng.standard_normal((40, 3, 17, 9)) + 1000).astype(dtype)
    else:
        x = rng.integers(0, 250, (40, 3, 17, 9)).astype(dtype)
    for axes in [None, (0, 2, 3), (0,), (1, 2, 3), (3,), (0, 1)]:
        m = fn.moments(x, axis=axes)
        ax = tuple(range(4)) if axes is None else axes
        mean, m2 = two_pass(x, ax)
        assert rel_err(m.mean, mean) <= 1e-12, axes
        assert rel_err(m.m2, m2) <= 1e-12, axes


def test_float32_far_from_zero_beats_kernel_precision(rng):
    """1e4 + N(0, 1) in float32: the float32 block arithmetic alone is ~1e-8 relative on M2;
    the upcast path must meet 1e-12 against the float64 two-pass."""
    x = (1e4 + rng.standard_normal((3_000_000,))).astype(np.float32)
    m = fn.moments(x)
    mean, m2 = two_pass(x, (0,))
    assert rel_err(m.mean, mean) <= 1e-12
    assert rel_err(m.m2, m2) <= 1e-12


def test_non_adjacent_pattern_and_keepdims(rng):
    x = rng.standard_normal((3, 4, 5, 6, 2))
    for axes in [(1, 3), (0, 2, 4), (1, 4)]:
        m = fn.moments(x, axes, keepdims=True)
        assert m.shape == np.mean(x, axis=axes, keepdims=True).shape
        mean, m2 = two_pass(x, axes)
        assert rel_err(m.mean.squeeze(axis=axes), mean) <= 1e-13
        assert rel_err(m.m2.squeeze(axis=axes), m2) <= 1e-12
        z = (x - m.mean) / m.std  # keepdims broadcasts
        assert np.allclose(z.mean(axis=axes), 0, atol=1e-12)


def test_input_not_modified(rng):
    x = rng.standard_normal((6, 3, 4)).astype(np.float32)
    x0 = x.copy()
    fn.moments(x, (0, 2))
    fn.channel_stats([x, x], "NCHW")
    assert np.array_equal(x, x0)


def test_merge_is_exact(rng):
    parts = [rng.standard_normal((n, 5)) * 4 + 7 for n in (1, 10, 333, 2)]
    ms = [fn.moments(p, axis=0) for p in parts]
    whole = np.concatenate(parts)
    mean, m2 = two_pass(whole, (0,))
    chained = ms[0].merge(ms[1]).merge(ms[2]).merge(ms[3])
    for merged in (chained, sum(ms), ms[3] + ms[1] + ms[0] + ms[2]):
        assert np.array_equal(merged.count, np.full(5, float(whole.shape[0])))
        assert rel_err(merged.mean, mean) <= 1e-14
        assert rel_err(merged.m2, m2) <= 1e-13
    assert rel_err(chained.var, whole.var(axis=0)) <= 1e-13
    assert rel_err(fn.moments(whole, 0, ddof=1).std, whole.std(axis=0, ddof=1)) <= 1e-13


def test_empty_and_identity(rng):
    e = fn.Moments.empty((3,))
    assert np.all(np.isnan(e.mean)) and np.all(e.count == 0) and np.all(np.isnan(e.var))
    m = fn.moments(rng.standard_normal((4, 3)), 0)
    for a in (e + m, m + e):
        assert np.array_equal(a.mean, m.mean) and np.array_equal(a.m2, m.m2)
        assert np.array_equal(a.count, m.count)
    z = fn.moments(np.empty((0, 3)), 0)
    assert np.all(z.count == 0) and np.all(np.isnan(z.mean))
    assert np.array_equal((z + m).mean, m.mean)
    one = fn.moments(np.ones((1, 3)), 0, ddof=1)
    assert np.all(np.isnan(one.var))  # count <= ddof


def test_flat_buffer_and_pickle(rng):
    m = fn.moments(rng.standard_normal((10, 2, 3)), 0, ddof=1)
    buf = m.to_array()
    assert buf.dtype == np.float64 and buf.shape == (18,)
    back = fn.Moments.from_array(buf, (2, 3), ddof=1)
    for a in ("count", "mean", "m2"):
        assert np.array_equal(getattr(back, a), getattr(m, a))
    p = pickle.loads(pickle.dumps(m))
    assert p.ddof == 1 and np.array_equal(p.m2, m.m2) and np.array_equal(p.std, m.std)
    with pytest.raises(ValueError, match="3 equal parts"):
        fn.Moments.from_array(np.zeros(7))
    with pytest.raises(ValueError, match="shape"):
        fn.Moments.from_array(buf, (4, 3))


def test_errors(rng):
    x = rng.standard_normal((3, 4))
    with pytest.raises(ValueError, match="out of bounds"):
        fn.moments(x, axis=2)
    with pytest.raises(ValueError, match="repeated"):
        fn.moments(x, axis=(0, -2))
    with pytest.raises(TypeError, match="axis"):
        fn.moments(x, axis=1.0)
    with pytest.raises(TypeError, match="dtype"):
        fn.moments(x.astype(complex))
    with pytest.raises(TypeError, match="ddof"):
        fn.moments(x, ddof=0.5)
    with pytest.raises(ValueError, match="shape"):
        fn.moments(x, 0).merge(fn.moments(x, 1))
    with pytest.raises(TypeError, match="Moments"):
        fn.moments(x, 0).merge(np.zeros(4))


# ---- channel_stats ---------------------------------------------------------------------------

def _expected_channels(x, layout):
    axes = tuple(a for a in range(x.ndim) if a != (1 if layout == "NCHW" else x.ndim - 1))
    return two_pass(x, axes)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_channel_stats_iterables(layout, rng):
    shape = (50, 3, 8, 6) if layout == "NCHW" else (50, 8, 6, 3)
    x = (rng.standard_normal(shape) * 20 + 120).astype(np.float32)
    mean, m2 = _expected_channels(x, layout)
    batches = [x[i:i + 7] for i in range(0, 50, 7)]
    for source in (batches, iter(batches), ((b, 0) for b in batches), x):
        m = fn.channel_stats(source, layout, batch_size=9 if source is x else None)
        assert m.shape == (3,)
        assert np.all(m.count == x.size // 3)
        assert rel_err(m.mean, mean) <= 1e-12
        assert rel_err(m.m2, m2) <= 1e-12
        assert rel_err(m.std, np.sqrt(m2 / (x.size // 3))) <= 1e-12


def test_channel_stats_memmap_uint8(tmp_path, rng):
    """An image dataset on disk, read in slices of a memmap (the way one larger than memory
    would be), against the float64 two-pass over the whole array."""
    path = tmp_path / "images.u8"
    data = np.memmap(path, dtype=np.uint8, mode="w+", shape=(300, 32, 32, 3))
    data[:] = rng.integers(0, 256, data.shape, dtype=np.uint8)
    data.flush()
    mm = np.memmap(path, dtype=np.uint8, mode="r", shape=(300, 32, 32, 3))
    m = fn.channel_stats(mm, layout="NHWC", batch_size=64, ddof=1)
    mean, m2 = _expected_channels(np.asarray(mm), "NHWC")
    assert rel_err(m.mean, mean) <= 1e-12
    assert rel_err(m.m2, m2) <= 1e-12
    assert np.allclose(m.std, np.asarray(mm, dtype=np.float64).reshape(-1, 3).std(0, ddof=1),
                       rtol=1e-12)


def test_channel_stats_progress(rng, capsys):
    pytest.importorskip("tqdm")
    x = rng.standard_normal((20, 2, 4, 4))
    m = fn.channel_stats(x, progress=True, batch_size=5)
    err = capsys.readouterr().err
    assert "4/4" in err
    assert rel_err(m.mean, _expected_channels(x, "NCHW")[0]) <= 1e-12


def test_channel_stats_errors(rng):
    with pytest.raises(ValueError, match="empty"):
        fn.channel_stats([])
    with pytest.raises(ValueError, match="channels"):
        fn.channel_stats([np.zeros((2, 3, 4)), np.zeros((2, 4, 4))])
    with pytest.raises(ValueError, match="layout"):
        fn.channel_stats([np.zeros((2, 3))], layout="NCW")
    with pytest.raises(ValueError, match="2 dimensions"):
        fn.channel_stats([np.zeros(3)])
    with pytest.raises(ValueError, match="batch_size"):
        fn.channel_stats(np.zeros((4, 3)), batch_size=0)
