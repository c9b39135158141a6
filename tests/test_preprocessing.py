"""StandardScaler and MinMaxScaler: against scikit-learn when installed (float64 within 1e-12)
and against plain NumPy always."""
import numpy as np
import pytest

import fastnorm as fn
from fastnorm.preprocessing import MinMaxScaler, NotFittedError, StandardScaler

try:
    import sklearn.preprocessing as skp
except ImportError:  # pragma: no cover - optional peer
    skp = None

needs_sklearn = pytest.mark.skipif(skp is None, reason="scikit-learn is not installed")


def rel(a, e):
    a, e = np.asarray(a, dtype=np.float64), np.asarray(e, dtype=np.float64)
    assert a.shape == e.shape, (a.shape, e.shape)
    return float(np.max(np.abs(a - e)) / max(1.0, float(np.max(np.abs(e)))))


def data(rng, n=500, f=6, dtype=np.float64, order="C"):
    x = rng.standard_normal((n, f)) * rng.uniform(0.1, 10, f) + rng.uniform(-100, 100, f)
    x[:, 1] = 3.25  # a constant feature
    return np.asarray(x.astype(dtype), order=order)


# ---- against NumPy ---------------------------------------------------------------------------

@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_standard_scaler_vs_numpy(order, dtype, rng, nthreads):
    x = data(rng, dtype=dtype, order=order)
    x0 = x.copy()
    s = StandardScaler().fit(x)
    xd = x.astype(np.float64)
    mean, var = xd.mean(axis=0), xd.var(axis=0)
    scale = np.where(var == 0, 1.0, np.sqrt(var))
    assert s.mean_.dtype == s.var_.dtype == s.scale_.dtype == np.float64
    assert rel(s.mean_, mean) <= 1e-13 and rel(s.var_, var) <= 1e-12
    assert s.scale_[1] == 1.0 and s.n_samples_seen_ == 500 and s.n_features_in_ == 6
    z = s.transform(x)
    assert z.dtype == dtype and z.shape == x.shape
    assert np.array_equal(x, x0)  # copy=True leaves X alone
    tol = 1e-12 if dtype == np.float64 else 1e-6
    assert rel(z, (xd - mean) / scale) <= tol
    assert rel(s.inverse_transform(z), xd) <= tol
    if order == "F":
        assert z.flags.f_contiguous  # the plane kernel ran on Fortran memory as it is


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64])
def test_minmax_scaler_vs_numpy(dtype, rng, nthreads):
    x = data(rng, dtype=np.float64)
    x = (x * 10).astype(dtype) if dtype == np.int64 else x.astype(dtype)
    s = MinMaxScaler(feature_range=(-2, 3)).fit(x)
    xd = x.astype(np.float64)
    lo, hi = xd.min(axis=0), xd.max(axis=0)
    rng_ = np.where(hi - lo == 0, 1.0, hi - lo)
    y = s.transform(x)
    assert y.dtype == (np.float64 if dtype == np.int64 else dtype)
    tol = 1e-6 if dtype == np.float32 else 1e-12
    assert rel(y, (xd - lo) / rng_ * 5 - 2) <= tol
    assert np.array_equal(s.data_min_, lo) and np.array_equal(s.data_range_, hi - lo)
    assert rel(s.inverse_transform(y), xd) <= tol
    assert y[:, 1].min() == y[:, 1].max() == -2  # zero range: scale as if range were 1


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_per_channel_layouts(layout, rng, nthreads):
    shape = (6, 3, 5, 4) if layout == "NCHW" else (6, 5, 4, 3)
    x = rng.standard_normal(shape) * 5 + 20
    axes = (0, 2, 3) if layout == "NCHW" else (0, 1, 2)
    bshape = (1, 3, 1, 1) if layout == "NCHW" else (1, 1, 1, 3)
    s = StandardScaler(layout=layout).fit(x)
    assert s.mean_.shape == (3,) and s.n_samples_seen_ == 6 * 20
    z = s.transform(x)
    ref = (x - x.mean(axis=axes, keepdims=True)) / x.std(axis=axes, keepdims=True)
    assert rel(z, ref) <= 1e-12
    mm = MinMaxScaler(layout=layout).fit(x)
    y = mm.transform(x)
    lo, hi = x.min(axis=axes).reshape(bshape), x.max(axis=axes).reshape(bshape)
    assert rel(y, (x - lo) / (hi - lo)) <= 1e-12
    if layout == "NCHW":  # a channels-last stored batch keeps its memory format
        xcl = np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1, 1)
        zcl = s.transform(xcl)
        assert rel(zcl, ref) <= 1e-12
        assert np.moveaxis(zcl, 1, -1).flags.c_contiguous


def test_out_and_copy(rng):
    x = data(rng)
    s = StandardScaler().fit(x)
    expected = s.transform(x)
    out = np.empty_like(x)
    assert s.transform(x, out=out) is out and np.array_equal(out, expected)
    xc = x.copy()
    assert s.transform(xc, copy=False) is xc and np.array_equal(xc, expected)
    xc = x.copy()
    assert StandardScaler(copy=False).fit(xc).transform(xc) is xc
    with pytest.raises(ValueError, match="out must have shape"):
        s.transform(x, out=np.empty((3, 6)))
    with pytest.raises(TypeError, match="out must have dtype"):
        s.transform(x, out=np.empty(x.shape, np.float32))
    m = MinMaxScaler(clip=True).fit(x)
    y = m.transform(x * 2, out=np.empty_like(x))
    assert y.min() >= 0 and y.max() <= 1


def test_partial_fit_equals_fit(rng):
    x = data(rng, n=1003)
    a = StandardScaler()
    b = MinMaxScaler()
    for i in range(0, 1003, 97):
        a.partial_fit(x[i:i + 97])
        b.partial_fit(x[i:i + 97])
    full, fullm = StandardScaler().fit(x), MinMaxScaler().fit(x)
    assert a.n_samples_seen_ == b.n_samples_seen_ == 1003
    assert rel(a.mean_, full.mean_) <= 1e-14 and rel(a.var_, full.var_) <= 1e-13
    assert np.array_equal(b.data_min_, fullm.data_min_)
    assert np.array_equal(b.data_max_, fullm.data_max_)
    a.fit(x[:10])  # fit forgets earlier batches
    assert a.n_samples_seen_ == 10


def test_float32_no_drift_over_1e8_samples(rng):
    """10^8 float32 samples in 100 partial_fit calls: the float64 statistics match a float64
    two-pass over the same data (no drift from accumulation, no float32 overflow)."""
    base = (rng.standard_normal(1_000_000) * 0.5).astype(np.float32)
    batches = lambda: ((base + np.float32(1000 + k * 0.01)).reshape(-1, 1) for k in range(100))
    s = StandardScaler()
    total = 0.0
    for b in batches():
        s.partial_fit(b)
        total += b.sum(dtype=np.float64)
    n = 100 * base.size
    mean = total / n
    m2 = sum(((b.astype(np.float64) - mean) ** 2).sum() for b in batches())
    assert s.n_samples_seen_ == n == 10 ** 8
    assert abs(s.mean_[0] - mean) / mean <= 1e-12
    assert abs(s.var_[0] - m2 / n) / (m2 / n) <= 1e-12

    big = (rng.standard_normal((1000, 2)) * 1e30).astype(np.float32)  # squares overflow float32
    sb = StandardScaler().fit(big)
    assert np.all(np.isfinite(sb.var_))
    assert rel(sb.scale_ / 1e30, big.astype(np.float64).std(axis=0) / 1e30) <= 1e-12


def test_float32_far_from_zero_transform(rng):
    x = (1e4 + rng.standard_normal((4000, 3))).astype(np.float32)
    s = StandardScaler().fit(x)
    xd = x.astype(np.float64)
    ref = (xd - xd.mean(0)) / xd.std(0)
    z = s.transform(x)
    # the mean split in a high and a low float32 part keeps z to float32 rounding
    assert np.max(np.abs(z - ref)) <= 1e-6


def test_errors(rng):
    x = data(rng)
    with pytest.raises(NotFittedError):
        StandardScaler().transform(x)
    with pytest.raises(AttributeError):
        MinMaxScaler().inverse_transform(x)
    s = StandardScaler().fit(x)
    with pytest.raises(ValueError, match="features of shape"):
        s.transform(x[:, :4])
    with pytest.raises(ValueError, match="features of shape"):
        s.partial_fit(x[:, :4])
    with pytest.raises(ValueError, match="2 dimensions"):
        StandardScaler().fit(x[:, 0])
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        StandardScaler().fit(bad)
    with pytest.raises(ValueError, match="NaN"):
        MinMaxScaler().fit(bad)
    with pytest.raises(ValueError, match="min < max"):
        MinMaxScaler(feature_range=(1, 0)).fit(x)
    with pytest.raises(ValueError, match="layout"):
        StandardScaler(layout="CHW").fit(x)
    with pytest.raises(TypeError, match="dtype"):
        StandardScaler().fit(x.astype(complex))
    with pytest.raises(ValueError, match="invalid parameter"):
        s.set_params(with_means=False)


def test_params():
    s = StandardScaler(with_mean=False)
    assert s.get_params() == {"with_mean": False, "with_std": True, "copy": True,
                              "layout": None}
    assert s.set_params(with_std=False) is s and not s.with_std
    assert "with_mean=False" in repr(s)


# ---- against scikit-learn --------------------------------------------------------------------

@needs_sklearn
@pytest.mark.parametrize("with_mean,with_std", [(True, True), (False, True), (True, False),
                                                (False, False)])
@pytest.mark.parametrize("order", ["C", "F"])
def test_standard_scaler_vs_sklearn(with_mean, with_std, order, rng):
    x = data(rng, order=order)
    ours = StandardScaler(with_mean=with_mean, with_std=with_std)
    ref = skp.StandardScaler(with_mean=with_mean, with_std=with_std)
    for i in range(0, 500, 123):  # partial_fit in unequal batches
        ours.partial_fit(x[i:i + 123])
        ref.partial_fit(x[i:i + 123])
    for attr in ("mean_", "var_", "scale_"):
        a, e = getattr(ours, attr), getattr(ref, attr)
        if e is None:
            assert a is None, attr
        else:
            assert rel(a, e) <= 1e-12, attr
    assert ours.n_samples_seen_ == ref.n_samples_seen_
    z, ze = ours.transform(x), ref.transform(x)
    assert rel(z, ze) <= 1e-12
    assert rel(ours.inverse_transform(z), ref.inverse_transform(ze)) <= 1e-12
    assert rel(StandardScaler(with_mean=with_mean, with_std=with_std).fit_transform(x),
               ref.fit(x).transform(x)) <= 1e-12


@needs_sklearn
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("feature_range", [(0, 1), (-1, 2.5)])
def test_minmax_scaler_vs_sklearn(clip, feature_range, rng):
    x = data(rng)
    ours = MinMaxScaler(feature_range, clip=clip)
    ref = skp.MinMaxScaler(feature_range=feature_range, clip=clip)
    for i in range(0, 500, 123):
        ours.partial_fit(x[i:i + 123])
        ref.partial_fit(x[i:i + 123])
    for attr in ("data_min_", "data_max_", "data_range_", "scale_", "min_"):
        assert rel(getattr(ours, attr), getattr(ref, attr)) <= 1e-12, attr
    assert ours.n_samples_seen_ == ref.n_samples_seen_
    xt = x * 1.5 - 1  # partly outside the fitted range: clip matters
    assert rel(ours.transform(xt), ref.transform(xt)) <= 1e-12
    y = ref.transform(x)
    assert rel(ours.inverse_transform(y), ref.inverse_transform(y)) <= 1e-12


@needs_sklearn
def test_float32_stats_vs_sklearn(rng):
    x = data(rng, dtype=np.float32)
    ours, ref = StandardScaler().fit(x), skp.StandardScaler().fit(x)
    assert ours.mean_.dtype == np.float64
    assert rel(ours.mean_, ref.mean_) <= 1e-12 and rel(ours.var_, ref.var_) <= 1e-12
    z, ze = ours.transform(x), ref.transform(x)
    assert z.dtype == ze.dtype == np.float32
    assert rel(z, ze) <= 1e-5


@needs_sklearn
def test_sklearn_clone_and_pipeline(rng):
    from sklearn.base import clone
    from sklearn.pipeline import make_pipeline

    s = clone(StandardScaler(with_std=False))
    assert s.get_params()["with_std"] is False
    x = data(rng)
    pipe = make_pipeline(MinMaxScaler(), StandardScaler()).fit(x)
    ref = make_pipeline(skp.MinMaxScaler(), skp.StandardScaler()).fit(x)
    assert rel(pipe.transform(x), ref.transform(x)) <= 1e-12


@pytest.mark.parametrize("layout", [None, "NHWC", "NCHW"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_minmax_one_pass_kernel(layout, dtype):
    """partial_fit's min/max (one kernel pass for rows of features) equals NumPy's, over
    several batches and thread counts, and any NaN or Inf is refused."""
    from fastnorm.preprocessing import MinMaxScaler
    rng = np.random.default_rng(7)
    batches = [(rng.standard_normal((n, 6, 5, 4)) * 3 + 1).astype(dtype) for n in (9, 1, 40)]
    sc = MinMaxScaler(layout=layout)
    for b in batches:
        sc.partial_fit(b)
    allx = np.concatenate(batches)
    axes = (0,) if layout is None else ((0, 1, 2) if layout == "NHWC" else (0, 2, 3))
    np.testing.assert_array_equal(sc.data_min_, allx.min(axis=axes).astype(np.float64))
    np.testing.assert_array_equal(sc.data_max_, allx.max(axis=axes).astype(np.float64))
    for bad in (np.nan, np.inf, -np.inf):
        b = batches[0].copy()
        b[3, 2, 1, 0] = bad
        with pytest.raises(ValueError, match="NaN or infinity"):
            MinMaxScaler(layout=layout).partial_fit(b)
