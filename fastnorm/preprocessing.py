"""Input normalization: standardization and min-max scaling with scikit-learn's interface.

Statistics are float64 whatever the data's dtype (moments by :func:`fastnorm.moments`, exact
to float64 rounding, merged by Chan's formula across ``partial_fit`` calls, so they neither
drift nor overflow over any number of float32 samples). Transforms run the parallel apply
kernels: ``y = ((x - mh) - ml) * a + b`` per feature or channel, with the offset split into a
high and a low part (``mh + ml``) so float32 data far from zero stays exact to rounding.

What a "feature" is, by ``layout``:

* ``None`` (default, as scikit-learn): ``X`` is ``(n_samples, *features)``; one statistic per
  feature over axis 0. C- and Fortran-ordered arrays are both read without a copy.
* ``"NCHW"``: one statistic per channel (axis 1) over the samples and spatial axes.
* ``"NHWC"``: one statistic per channel (last axis) over all other axes.

Input with NaN or infinity is rejected (``ValueError``); scikit-learn's scalers skip NaN.
"""
import numpy as np

from fastnorm import _dispatch as D
from fastnorm._kernels import _norm as K
from fastnorm.stats import _is_dask, moments, n_threads_for

__all__ = ["StandardScaler", "MinMaxScaler", "NotFittedError"]

_EPS = np.finfo(np.float64).eps


class NotFittedError(ValueError, AttributeError):
    """The scaler is used before ``fit`` or ``partial_fit``."""


class _FeaturePlan(D.Plan):
    """``layout=None``: X as (n, F) in memory; C order runs the column kernel (G0, R, C) =
    (1, n, F), a 2-d Fortran-ordered X the plane kernel (N, C, S) = (1, F, n), both in place."""

    def __init__(self, x):
        self.shape = x.shape
        n = x.shape[0]
        F = int(np.prod(x.shape[1:], dtype=np.int64))
        if not x.flags.c_contiguous and x.ndim == 2 and x.flags.f_contiguous:
            self.kind, self.perm = "planes", (1, 0)
            self.N, self.C, self.S = 1, F, n
        else:
            self.kind, self.perm = "cols", None
            self.N, self.C, self.S = n, F, 1


def _check_layout(layout):
    return None if layout is None else D.check_layout(layout)


def _stat_axes(ndim, layout):
    if layout is None:
        return (0,)
    cax = 1 if layout == "NCHW" else ndim - 1
    return tuple(a for a in range(ndim) if a != cax)


def _stat_shape(shape, layout):
    if layout is None:
        return tuple(shape[1:])
    return (shape[1] if layout == "NCHW" else shape[-1],)


def _check_X(X, layout, name="X"):
    """ndarray (or dask array) of a real dtype with at least 2 dimensions."""
    if not _is_dask(X):
        X = D.as_array(X, name)
        if X.dtype == np.bool_ or (X.dtype.kind not in "fiu" and not D.is_half(X.dtype)):
            raise TypeError(f"{name} must be a real numeric array, got dtype {X.dtype}")
    if X.ndim < 2:
        raise ValueError(f"{name} must have at least 2 dimensions ((n_samples, n_features) "
                         f"or a batch in layout {layout!r}), got shape {X.shape}; reshape a "
                         "single feature with X.reshape(-1, 1)")
    return X


def _minmax(X, axes, layout):
    """Per-feature (or per-channel) min and max. Rows of features in C order (layout None or
    NHWC) go through one parallel pass of the min/max kernel; anything else through NumPy."""
    if (X.dtype in (np.float32, np.float64) and X.flags.c_contiguous and X.flags.aligned
            and layout in (None, "NHWC") and X.size):
        F = X.shape[-1] if layout == "NHWC" else int(np.prod(X.shape[1:], dtype=np.int64))
        R = X.size // F
        mn, mx = np.empty(F), np.empty(F)
        if not K.cols_minmax(X.reshape(-1), R, F, mn, mx, n_threads_for(X.size)):
            raise ValueError("X contains NaN or infinity")
        shape = _stat_shape(X.shape, layout)
        return mn.reshape(shape), mx.reshape(shape)
    return np.min(X, axis=axes), np.max(X, axis=axes)


def _check_finite(*arrays):
    for a in arrays:
        if not np.all(np.isfinite(a)):
            raise ValueError("X contains NaN or infinity")


def _apply(X, layout, shift, a, b, out, copy, name="X"):
    """y = (X - shift) * a + b per feature/channel through the apply kernels.

    shift, a, b : float64 arrays of the statistics' shape. Returns y (``out`` if given; X
    itself if ``copy`` is False and X's dtype can hold the result).
    """
    X = _check_X(X, layout, name)
    if _is_dask(X):
        raise TypeError(f"{name} must be an in-memory array for transforms; map a fitted "
                        "scaler over the chunks with X.map_blocks(scaler.transform)")
    ct, ot = D.compute_dtype(X.dtype, name)
    if out is None and not copy and X.dtype == ot and X.flags.writeable:
        out = X
    out = D.check_out(out, X.shape, ot, [(X, name)])
    if X.size == 0:
        return out if out is not None else np.empty(X.shape, dtype=ot)
    plan = _FeaturePlan(X) if layout is None else D.Plan(X, layout)
    shift = np.ascontiguousarray(shift, dtype=np.float64).reshape(-1)
    mh = shift.astype(ct)
    ml = (shift - mh.astype(np.float64)).astype(ct)
    a = np.ascontiguousarray(a, dtype=np.float64).reshape(-1).astype(ct)
    b = np.ascontiguousarray(b, dtype=np.float64).reshape(-1).astype(ct)
    xf = plan.flat(X, ct)
    yf, finish = D.output(plan, ct, ot, out)
    nt = n_threads_for(X.size)
    if plan.kind == "planes":
        K.planes_apply(xf, yf, plan.N, plan.C, plan.S, mh, ml, a, b, False, 0, nt)
    else:
        K.cols_apply(xf, yf, 1, plan.N * plan.S, plan.C, mh, ml, a, b, False, 0, nt)
    return finish()


class _Scaler:
    _params = ()

    def get_params(self, deep=True):
        """Constructor parameters, as scikit-learn estimators report them."""
        return {k: getattr(self, k) for k in self._params}

    def set_params(self, **params):
        for k, v in params.items():
            if k not in self._params:
                raise ValueError(f"invalid parameter {k!r} for {type(self).__name__}; valid: "
                                 f"{', '.join(self._params)}")
            setattr(self, k, v)
        return self

    def __repr__(self):
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._params)
        return f"{type(self).__name__}({args})"

    def _check_fitted(self):
        if not hasattr(self, "n_samples_seen_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit or "
                                 "partial_fit first")

    def _check_features(self, X, name="X"):
        shape = _stat_shape(X.shape, self.layout)
        if shape != self._stat_shape:
            what = "features" if self.layout is None else "channels"
            raise ValueError(f"{name} has {what} of shape {shape}, the scaler was fitted with "
                             f"{self._stat_shape} (X shape {X.shape}, layout {self.layout!r})")

    def fit(self, X, y=None):
        """Compute the statistics of X (forgetting any earlier fit). Returns self."""
        self._reset()
        return self.partial_fit(X, y)

    def fit_transform(self, X, y=None, out=None):
        return self.fit(X, y).transform(X, out=out)

    def _reset(self):
        for k in list(vars(self)):
            if k.endswith("_") and not k.startswith("_"):
                delattr(self, k)
        self.__dict__.pop("_stat_shape", None)
        self.__dict__.pop("_moments", None)

    def __sklearn_tags__(self):
        # scikit-learn >= 1.6 asks estimators for tags (clone, Pipeline); answered only when
        # asked, so fastnorm never imports scikit-learn itself
        from sklearn.base import BaseEstimator
        from sklearn.utils import TransformerTags

        tags = BaseEstimator.__sklearn_tags__(self)
        tags.transformer_tags = TransformerTags()
        return tags

    def _start(self, X):
        layout = _check_layout(self.layout)
        self.layout = layout
        X = _check_X(X, layout)
        shape = _stat_shape(X.shape, layout)
        if hasattr(self, "n_samples_seen_"):
            self._check_features(X)
        else:
            self._stat_shape = shape
            self.n_features_in_ = int(np.prod(shape, dtype=np.int64))
        return X


class StandardScaler(_Scaler):
    """Standardize features (or channels): ``z = (x - mean_) / scale_``.

    Parameters
    ----------
    with_mean, with_std : bool, default True
        Center, and scale to unit variance (biased variance, as scikit-learn).
    copy : bool, default True
        False lets ``transform`` write into X when its dtype holds the result.
    layout : None, "NCHW" or "NHWC"
        None: statistics per feature over axis 0 of ``(n_samples, *features)``; otherwise per
        channel of image-like batches (see the module docstring).

    Attributes
    ----------
    mean_ : float64 ndarray of the features' (or channels') shape, or None when neither
        ``with_mean`` nor ``with_std``
    var_, scale_ : float64 ndarrays, or None without ``with_std``; a (near) zero variance
        gives ``scale_ = 1``, with scikit-learn's constant-feature test
    n_samples_seen_ : int
        Values seen per statistic (samples; for a channel layout, samples x spatial size)
    n_features_in_ : int
    """

    _params = ("with_mean", "with_std", "copy", "layout")

    def __init__(self, *, with_mean=True, with_std=True, copy=True, layout=None):
        self.with_mean = with_mean
        self.with_std = with_std
        self.copy = copy
        self.layout = layout

    def partial_fit(self, X, y=None):
        """Merge the statistics of one more batch (Chan's formula, float64). Returns self.

        X may also be a ``dask.array``: its chunks are reduced on the Dask scheduler.
        """
        X = self._start(X)
        m = moments(X, _stat_axes(X.ndim, self.layout))
        _check_finite(m.mean, m.m2)
        prev = getattr(self, "_moments", None)
        self._moments = m if prev is None else prev.merge(m)
        self._update()
        return self

    def _update(self):
        m = self._moments
        n = int(m.count.flat[0]) if m.count.size else 0
        self.n_samples_seen_ = n
        if not self.with_mean and not self.with_std:
            self.mean_ = self.var_ = self.scale_ = None
            return
        self.mean_ = m.mean.copy()
        if self.with_std:
            var = m.m2 / n if n else np.full(m.shape, np.nan)
            self.var_ = var
            # scikit-learn's bound on the error of a two-pass variance: below it, a feature is
            # indistinguishable from a constant
            constant = var <= n * _EPS * var + (n * m.mean * _EPS) ** 2
            self.scale_ = np.where(constant, 1.0, np.sqrt(var))
        else:
            self.var_ = self.scale_ = None

    def _coefficients(self):
        shape = self._stat_shape
        mean = self.mean_ if self.with_mean else np.zeros(shape)
        scale = self.scale_ if self.with_std else np.ones(shape)
        return mean, scale

    def transform(self, X, copy=None, out=None):
        """Standardize X; ``out`` (shaped like X, X's dtype or float64 for integers) receives
        the result if given."""
        self._check_fitted()
        X = _check_X(X, self.layout)
        self._check_features(X)
        mean, scale = self._coefficients()
        copy = self.copy if copy is None else copy
        return _apply(X, self.layout, mean, 1.0 / scale, np.zeros_like(mean), out, copy)

    def inverse_transform(self, X, copy=None, out=None):
        """Undo :meth:`transform`: ``x = z * scale_ + mean_``."""
        self._check_fitted()
        X = _check_X(X, self.layout)
        self._check_features(X)
        mean, scale = self._coefficients()
        copy = self.copy if copy is None else copy
        return _apply(X, self.layout, np.zeros_like(mean), scale, mean, out, copy)


class MinMaxScaler(_Scaler):
    """Scale features (or channels) to ``feature_range``:
    ``y = (x - data_min_) * scale_ + feature_range[0]``.

    That form equals scikit-learn's ``x * scale_ + min_`` in exact arithmetic and is the
    better-conditioned one when the data sit far from zero.

    Parameters
    ----------
    feature_range : (min, max), default (0, 1)
    clip : bool, default False
        Clip transformed values to ``feature_range``.
    copy : bool, default True
    layout : None, "NCHW" or "NHWC", as for :class:`StandardScaler`

    Attributes
    ----------
    data_min_, data_max_, data_range_ : float64 ndarrays
    scale_ : ``(max - min) / data_range_`` (a (near) zero range counts as 1)
    min_ : ``min - data_min_ * scale_`` (scikit-learn's offset)
    n_samples_seen_, n_features_in_ : int
    """

    _params = ("feature_range", "copy", "clip", "layout")

    def __init__(self, feature_range=(0, 1), *, copy=True, clip=False, layout=None):
        self.feature_range = feature_range
        self.copy = copy
        self.clip = clip
        self.layout = layout

    def _range(self):
        fr = self.feature_range
        try:
            lo, hi = (float(v) for v in fr)
        except (TypeError, ValueError):
            raise TypeError(f"feature_range must be a pair of numbers, got {fr!r}") from None
        if not lo < hi:
            raise ValueError(f"feature_range must have min < max, got {fr!r}")
        return lo, hi

    def partial_fit(self, X, y=None):
        """Update the per-feature minimum and maximum with one more batch. Returns self."""
        lo, hi = self._range()
        X = self._start(X)
        axes = _stat_axes(X.ndim, self.layout)
        if _is_dask(X):
            import dask
            dmin, dmax = dask.compute(X.min(axis=axes), X.max(axis=axes))
        else:
            dmin, dmax = _minmax(X, axes, self.layout)
        dmin = np.asarray(dmin, dtype=np.float64)
        dmax = np.asarray(dmax, dtype=np.float64)
        _check_finite(dmin, dmax)
        n = int(np.prod([X.shape[a] for a in axes], dtype=np.int64))
        if hasattr(self, "n_samples_seen_"):
            dmin = np.minimum(self.data_min_, dmin)
            dmax = np.maximum(self.data_max_, dmax)
            n += self.n_samples_seen_
        self.n_samples_seen_ = n
        self.data_min_, self.data_max_ = dmin, dmax
        self.data_range_ = dmax - dmin
        rng = np.where(self.data_range_ < 10 * _EPS, 1.0, self.data_range_)
        self.scale_ = (hi - lo) / rng
        self.min_ = lo - dmin * self.scale_
        return self

    def transform(self, X, copy=None, out=None):
        """Scale X to ``feature_range`` (clipped if ``clip``)."""
        self._check_fitted()
        lo, hi = self._range()
        X = _check_X(X, self.layout)
        self._check_features(X)
        copy = self.copy if copy is None else copy
        y = _apply(X, self.layout, self.data_min_, self.scale_, np.full(self.scale_.shape, lo),
                   out, copy)
        if self.clip:
            np.clip(y, lo, hi, out=y)
        return y

    def inverse_transform(self, X, copy=None, out=None):
        """Undo :meth:`transform`: ``x = (y - min) / scale_ + data_min_``."""
        self._check_fitted()
        lo, _ = self._range()
        X = _check_X(X, self.layout)
        self._check_features(X)
        copy = self.copy if copy is None else copy
        return _apply(X, self.layout, np.full(self.scale_.shape, lo), 1.0 / self.scale_,
                      self.data_min_, out, copy)
