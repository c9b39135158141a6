"""Every validation error: a ValueError/TypeError naming the argument, nothing modified."""
import numpy as np
import pytest

import fastnorm as fn

X = np.random.default_rng(0).standard_normal((2, 4, 3, 3)).astype(np.float32)


def fwd_calls(x, **kw):
    """(name, callable) for each channel op's forward with keyword overrides."""
    return [
        ("batch", lambda: fn.batch_norm_forward(x, **kw)),
        ("instance", lambda: fn.instance_norm_forward(x, **kw)),
        ("group", lambda: fn.group_norm_forward(x, 2, **kw)),
    ]


@pytest.mark.parametrize("bad", [np.zeros(4, np.float32), np.float32(1.0)])
def test_rank_too_small(bad):
    for name, call in fwd_calls(bad):
        with pytest.raises(ValueError, match="x must have at least 2 dimensions"):
            call()


@pytest.mark.parametrize("dtype", [np.complex64, np.bool_, object, "U3"])
def test_bad_dtype(dtype):
    x = np.zeros((2, 3, 4), dtype=dtype)
    for name, call in fwd_calls(x):
        with pytest.raises(TypeError, match="x must be a floating array"):
            call()
    with pytest.raises(TypeError, match="x must be a floating array"):
        fn.layer_norm_forward(x, 4)


def test_weight_bias_shape_and_dtype():
    with pytest.raises(ValueError, match=r"weight must have shape \(4,\)"):
        fn.batch_norm_forward(X, np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
        fn.group_norm_forward(X, 2, None, np.ones((4, 1), np.float32))
    with pytest.raises(TypeError, match="weight must be a real floating array"):
        fn.instance_norm_forward(X, np.ones(4, np.complex64))
    with pytest.raises(ValueError, match=r"weight must have shape \(3, 3\)"):
        fn.layer_norm_forward(X, (3, 3), np.ones(3, np.float32))


@pytest.mark.parametrize("G,exc,msg", [(3, ValueError, "must divide"),
                                       (0, ValueError, "num_groups must be >= 1"),
                                       (-2, ValueError, "num_groups must be >= 1"),
                                       (2.0, TypeError, "num_groups must be an int"),
                                       (True, TypeError, "num_groups must be an int")])
def test_num_groups(G, exc, msg):
    with pytest.raises(exc, match=msg):
        fn.group_norm_forward(X, G)
    with pytest.raises(exc, match=msg):
        fn.group_norm_backward(X, X, np.zeros((2, 2)), np.ones((2, 2)), G)


@pytest.mark.parametrize("eps,exc", [(0.0, ValueError), (-1e-5, ValueError),
                                     (float("nan"), ValueError), (float("inf"), ValueError),
                                     ("1e-5", TypeError), (None, TypeError)])
def test_eps(eps, exc):
    for name, call in fwd_calls(X, eps=eps):
        with pytest.raises(exc, match="eps"):
            call()
    with pytest.raises(exc, match="eps"):
        fn.layer_norm_forward(X, 3, eps=eps)


def test_layout():
    for name, call in fwd_calls(X, layout="NCWH"):
        with pytest.raises(ValueError, match="layout must be 'NCHW' or 'NHWC'"):
            call()


def test_out_shape_dtype_overlap():
    with pytest.raises(ValueError, match=r"out must have shape \(2, 4, 3, 3\)"):
        fn.batch_norm_forward(X, out=np.empty((2, 4, 3), np.float32))
    with pytest.raises(TypeError, match="out must have dtype float32"):
        fn.batch_norm_forward(X, out=np.empty(X.shape, np.float64))
    with pytest.raises(TypeError, match="out must be a numpy.ndarray"):
        fn.batch_norm_forward(X, out=[0.0])
    big = np.zeros((3,) + X.shape[1:], np.float32)
    x = big[:2]
    with pytest.raises(ValueError, match="out overlaps x"):
        fn.batch_norm_forward(x, out=big[1:])
    ro = np.empty(X.shape, np.float32)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="out must be writeable"):
        fn.batch_norm_forward(X, out=ro)


def test_batch_norm_one_value_per_channel():
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        fn.batch_norm_forward(np.ones((1, 3)))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        fn.batch_norm(np.ones((1, 3, 1, 1)), training=True)


def test_backward_stats_shapes():
    _, m, r = fn.group_norm_forward(X, 2)
    with pytest.raises(ValueError, match=r"mean must have shape \(2, 2\)"):
        fn.group_norm_backward(X, X, m[:, :1], r, 2)
    with pytest.raises(ValueError, match=r"rstd must have shape \(4,\)"):
        fn.batch_norm_backward(X, X, np.zeros(4), np.ones(3))
    with pytest.raises(ValueError, match=r"mean must have shape \(2, 4\)"):
        fn.instance_norm_backward(X, X, np.zeros(4), np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"mean must have shape \(2, 4, 3\)"):
        fn.layer_norm_backward(X, X, np.zeros(2), np.ones((2, 4, 3)), 3)
    with pytest.raises(ValueError, match="dy must have the shape of x"):
        fn.batch_norm_backward(X[:1], X, np.zeros(4), np.ones(4))
    with pytest.raises(TypeError, match="dy must have the dtype of x"):
        fn.batch_norm_backward(X.astype(np.float64), X, np.zeros(4), np.ones(4))


def test_normalized_shape():
    with pytest.raises(ValueError, match="normalized_shape"):
        fn.layer_norm_forward(X, (4, 3))
    with pytest.raises(ValueError, match="normalized_shape"):
        fn.layer_norm_forward(X, (1, 2, 4, 3, 3))
    with pytest.raises(TypeError, match="normalized_shape"):
        fn.layer_norm_forward(X, 3.0)
    with pytest.raises(ValueError, match="normalized_shape"):
        fn.layer_norm_forward(X, ())


def test_running_buffers_and_momentum():
    with pytest.raises(TypeError, match="running_mean must be a floating numpy array"):
        fn.batch_norm(X, [0.0] * 4, np.ones(4), training=True)
    with pytest.raises(ValueError, match="momentum=None"):
        fn.batch_norm(X, np.zeros(4), np.ones(4), training=True, momentum=None)
    with pytest.raises(ValueError, match="running_mean must have shape"):
        fn.batch_norm(X, np.zeros((4, 1)), np.ones(4), training=False)
    with pytest.raises(ValueError, match="activation must be"):
        fn.batch_norm(X, activation="tanh")


def test_errors_leave_inputs_unchanged():
    x = X.copy()
    rm = np.zeros(4)
    with pytest.raises(ValueError):
        fn.batch_norm(x, rm, np.ones(3), training=True)
    np.testing.assert_array_equal(x, X)
    np.testing.assert_array_equal(rm, 0)


def test_python_lists_accepted():
    y, m, r = fn.batch_norm_forward([[1.0, 2.0], [3.0, 5.0]])
    assert y.dtype == np.float64 and m.shape == (2,)
