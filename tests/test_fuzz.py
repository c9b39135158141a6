"""Property tests (hypothesis, bounded example counts).

* Valid inputs: random op, layout, shape (axes of size 1 included), dtype, offset, affine or not,
  thread count: forward and backward agree with the float64 reference.
* Invalid inputs: every public function with one or two arguments swapped for something wrong
  (shapes with 0 and 1 in any axis, ints, bool, complex, object, strings, lists, scalars, NaN
  and negative eps, bad layouts, normalized_shape and num_groups values, out of the wrong
  shape, dtype, writeability or overlapping an input). The call returns a result of the
  right shape or raises ValueError/TypeError naming an argument; it never raises anything
  else, and the caller's arrays are unchanged unless they are ``out``.
"""
import math
import re

import numpy as np
import pytest

import fastnorm as fn
import opcases as oc

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_erf = np.frompyfunc(math.erf, 1, 1)
ACT = {
    None: lambda v: v,
    "relu": lambda v: np.maximum(v, 0),
    "silu": lambda v: v / (1 + np.exp(-v)),
    "gelu": lambda v: 0.5 * v * (1 + _erf(v / math.sqrt(2)).astype(np.float64)),
}


# ---- valid inputs against the reference ---------------------------------------------------------

@st.composite
def valid_problem(draw):
    case = draw(st.sampled_from(oc.CASES))
    rank = draw(st.integers(2, 4))
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=rank, max_size=rank)))
    if case[0] == "group":
        shape = (shape[0], 2 * shape[1]) + shape[2:]  # even C: two groups of C/2
    if case[0] == "batch" and shape[0] * int(np.prod(shape[2:])) == 1:
        shape = (shape[0] + 1,) + shape[1:]
    if case[1] == "NCHW-cl" and rank == 2:
        case = (case[0], "NCHW")
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    offset = draw(st.sampled_from([0.0, 1.0, 1e3, 1e5]))
    scale = draw(st.sampled_from([1e-2, 1.0, 1e2]))
    affine = draw(st.booleans())
    threads = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    return case, shape, dtype, offset, scale, affine, threads, seed


@settings(max_examples=150, **SETTINGS)
@given(valid_problem())
def test_random_valid_inputs_match_reference(problem):
    (op, layout), shape, dtype, offset, scale, affine, threads, seed = problem
    rng = np.random.default_rng(seed)
    d = oc.make_inputs(op, layout, shape, dtype, rng, offset=offset, scale=scale)
    if not affine:
        d["w"] = d["b"] = None
    with fn.threads(threads):
        y, saved = oc.forward(op, layout, d["x"], d["w"], d["b"], d["r"])
        grads = oc.backward(op, layout, d["dy"], saved, d["w"], d["ds"])
    ry = oc.ref_forward(op, layout, saved[0], d["w"], d["b"])
    rgrads = oc.ref_backward(op, layout, d["dy"], saved[0], d["w"], d["ds"])
    # float32: the 1e-5 forward bound. float64: 1e-9, relaxed where offset / spread exceeds
    # 1e6, as the float64 reference itself loses eps * offset / spread there
    rtol = 1e-5 if dtype == np.float32 else 1e-9 * max(1.0, 1e-6 * offset / scale)
    assert y.dtype == dtype and y.shape == d["x"].shape
    assert np.max(np.abs(y - ry)) <= rtol * max(1.0, np.max(np.abs(ry)))
    # dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) cancels to much less than its terms
    # in tiny groups (two values per channel): its error is relative to rstd * |dy * w|
    w = 1.0 if d["w"] is None else float(np.max(np.abs(d["w"])))
    terms = float(np.max(saved[-1])) * float(np.max(np.abs(d["dy"]))) * w
    for i, (g, rg) in enumerate(zip(grads, rgrads)):
        assert g.dtype == dtype
        scale = max(1e-3, float(np.max(np.abs(rg))), terms if i == 0 else 0.0)
        assert np.max(np.abs(g - rg)) <= (1e-4 if dtype == np.float32 else rtol) * scale


@settings(max_examples=80, **SETTINGS)
@given(st.sampled_from(["batch", "instance", "group", "layer", "rms"]),
       st.sampled_from(["NCHW", "NHWC"]),
       st.tuples(st.integers(1, 5), st.integers(1, 4), st.integers(1, 6), st.integers(1, 6)),
       st.sampled_from([None, "relu", "silu", "gelu"]),
       st.integers(0, 2**32 - 1))
def test_random_y_forms_with_activation(op, layout, shape, act, seed):
    """The y-returning forms (training and eval) with a fused activation."""
    rng = np.random.default_rng(seed)
    if op == "group":
        shape = (shape[0], 2 * shape[1]) + shape[2:]
    x = oc.arrange(rng.standard_normal(shape) * 3 + 1, layout)
    C = x.shape[1] if layout == "NCHW" else x.shape[-1]
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    if op == "batch":
        rm, rv = rng.standard_normal(C), 1 + rng.random(C)
        y = fn.batch_norm(x, rm, rv, w, b, layout=layout, activation=act)
        cshape = [1] * x.ndim
        cshape[1 if layout == "NCHW" else -1] = C
        cs = lambda a: a.reshape(cshape)  # noqa: E731
        ry = (x - cs(rm)) / np.sqrt(cs(rv) + 1e-5) * cs(w) + cs(b)
    elif op in ("instance", "group"):
        if op == "instance":
            y = fn.instance_norm(x, None, None, w, b, layout=layout, activation=act)
        else:
            y = fn.group_norm(x, 2, w, b, layout=layout, activation=act)
        ry = oc.ref_forward(op, layout, x, w, b)
    else:
        ns = x.shape[-1:]
        w, b = rng.standard_normal(ns), rng.standard_normal(ns)
        if op == "layer":
            y = fn.layer_norm(x, ns, w, b, activation=act)
            ry = oc.ref_forward("layer", "last", x, w, b)
        else:
            y = fn.rms_norm(x, ns, w, eps=1e-5, activation=act)
            ry = oc.ref_forward("rms", "last", x, w)
    np.testing.assert_allclose(y, ACT[act](ry), rtol=1e-9, atol=1e-9)


# ---- invalid inputs against the contract --------------------------------------------------------

ARG_NAMES = ("x", "dy", "weight", "bias", "mean", "rstd", "eps", "layout", "out", "num_groups",
             "normalized_shape", "residual", "residual_grad", "residual_out", "running_mean",
             "running_var", "momentum", "activation", "use_input_stats", "training")
NAMED = re.compile(r"\b(" + "|".join(ARG_NAMES) + r")\b|Expected more than 1 value")


def _baseline(fname, rng, dtype, layout):
    """Valid keyword arguments for fname (positional-or-keyword ones passed by name)."""
    N, C, H, W = 3, 4, 5, 2
    x = oc.arrange(rng.standard_normal((N, C, H, W)) + 2, layout).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    w = rng.standard_normal(C).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    if fname.startswith(("layer", "rms")):
        ns = x.shape[-1:]
        w = rng.standard_normal(ns).astype(dtype)
        b = rng.standard_normal(ns).astype(dtype)
        kw = {"x": x, "normalized_shape": ns, "weight": w}
        if fname.startswith("layer") and not fname.endswith("backward"):
            kw["bias"] = b
        if fname.endswith("backward"):
            if fname.startswith("layer"):
                _, m, r = fn.layer_norm_forward(x, ns)
                kw["mean"] = m
            else:
                _, r = fn.rms_norm_forward(x, ns)
            kw.update(dy=dy, rstd=r, residual_grad=rng.standard_normal(x.shape).astype(dtype))
        else:
            kw.update(eps=1e-5, residual=rng.standard_normal(x.shape).astype(dtype))
            if not fname.endswith("forward"):
                kw["activation"] = "relu"
        return kw
    lay = "NHWC" if layout == "NHWC" else "NCHW"
    kw = {"x": x, "weight": w, "layout": lay}
    op = fname.split("_")[0]
    if op == "group":
        kw["num_groups"] = 2
    if fname.endswith("backward"):
        _, m, r = oc.forward(op, layout, x)[1]
        kw.update(dy=dy, mean=m, rstd=r)
        return kw
    kw.update(bias=b, eps=1e-5)
    if fname == "batch_norm":
        kw.update(running_mean=np.zeros(C), running_var=np.ones(C), training=True,
                  momentum=0.1, activation="silu")
    elif fname == "instance_norm":
        kw.update(running_mean=np.zeros(C), running_var=np.ones(C), momentum=0.1,
                  use_input_stats=True)
    elif fname == "group_norm":
        kw["activation"] = "gelu"
    return kw


# the normalization ops (fold_batch_norm, a weight transform, has its own tests)
FUNCS = [f for f in fn.__all__ if f.endswith(("_norm", "_forward", "_backward"))
         and f != "fold_batch_norm"]
ARRAY_ARGS = {"x", "dy", "weight", "bias", "mean", "rstd", "residual", "residual_grad",
              "running_mean", "running_var", "out", "residual_out"}


def bad_arrays():
    dims = st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple)
    dtypes = st.sampled_from([np.bool_, np.int8, np.int64, np.uint16, np.float16, np.float32,
                              np.float64, np.complex64, object, "U3", "S2", "M8[s]"])
    arrays = st.builds(lambda s, t: np.zeros(s, dtype=t), dims, dtypes)
    scalars = st.sampled_from([None, 0, 1.5, -3, True, "abc", b"x", 1j, float("nan"),
                               [1.0, 2.0], [[1, 2], [3]], [[1.0, 2.0], [3.0, 4.0]], (), {}])
    return st.one_of(arrays, scalars)


def bad_values(name, kw):
    if name in ARRAY_ARGS:
        extra = []
        x = kw["x"]
        if isinstance(x, np.ndarray) and x.ndim == 4:
            big = np.zeros((x.shape[0] + 1,) + x.shape[1:], dtype=x.dtype)
            ro = np.zeros_like(x)
            ro.setflags(write=False)
            extra = [big[1:], big[:-1], ro, x, x[::-1], x.astype(np.float64),
                     np.asfortranarray(x)]
            if name == "out":
                extra.append("overlap")
        return st.one_of(bad_arrays(), st.sampled_from(extra or [None]))
    if name == "eps":
        return st.sampled_from([0, 0.0, -1e-5, float("nan"), float("inf"), -float("inf"),
                                "1e-5", None, True, 1j, np.float32(1e-3), 10, [1e-5],
                                np.array(1e-5), 1e300, 5e-324])
    if name == "layout":
        return st.sampled_from(["NCWH", "nhwc", "", None, 1, "NC", b"NCHW", ["NCHW"]])
    if name == "num_groups":
        return st.sampled_from([0, -1, 3, 2.0, True, "2", None, np.int64(4), 10**20, 1, [2]])
    if name == "normalized_shape":
        return st.sampled_from([0, -1, (), (0,), (2, 2), [2], (2.0,), "a", (2**40,), None,
                                (5, 2), (3, 4, 5, 2, 1), np.array([2]), 2.5, (True,)])
    if name == "momentum":
        return st.sampled_from([-0.1, 1.5, float("nan"), "0.1", None, True, 0, 1])
    if name == "activation":
        return st.sampled_from(["tanh", "RELU", 3, None, "", b"relu"])
    return st.sampled_from([None, 0, 1, "yes", 2.5])  # training, use_input_stats


def _snapshot(kw):
    return {k: (v, np.array(v, copy=True)) for k, v in kw.items()
            if isinstance(v, np.ndarray) and v.dtype != object}


@pytest.mark.parametrize("fname", FUNCS)
@settings(max_examples=30, **SETTINGS)
@given(data=st.data())
def test_invalid_arguments_fail_cleanly(fname, data):
    f = getattr(fn, fname)
    dtype = data.draw(st.sampled_from([np.float32, np.float64]), label="dtype")
    layout = data.draw(st.sampled_from(["NCHW", "NHWC", "NCHW-cl"]), label="layout")
    kw = _baseline(fname, np.random.default_rng(0), dtype, layout)
    names = sorted(set(kw) | ({"out"}))
    if fname.startswith(("layer", "rms")) and not fname.endswith("backward"):
        names.append("residual_out")
    bad = data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=2, unique=True),
                    label="corrupted")
    for name in bad:
        v = data.draw(bad_values(name, kw), label=name)
        if isinstance(v, str) and v == "overlap":
            v = np.zeros(kw["x"].shape, kw["x"].dtype)
            kw["x"] = v  # out overlaps x by being x: a valid in-place call
        kw[name] = v
    baseline_names = set(kw)
    keep = _snapshot(kw)
    mutable = {id(kw.get(k)) for k in ("out", "residual_out", "running_mean", "running_var")}
    try:
        res = f(**kw)
    except (ValueError, TypeError) as e:
        assert "unexpected keyword" not in str(e), baseline_names  # a broken baseline
        assert NAMED.search(str(e)), f"message names no argument: {e!r}"
    else:
        ys = res if isinstance(res, tuple) else (res,)
        assert all(isinstance(a, np.ndarray) for a in ys)
        x = np.asarray(kw["x"])
        assert ys[0].shape == x.shape and ys[0].dtype.kind == "f"
    for k, (orig, copy) in keep.items():
        if id(orig) not in mutable:
            np.testing.assert_array_equal(orig, copy, err_msg=f"{k} modified")
