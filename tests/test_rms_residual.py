"""RMS norm and the fused residual add + norm."""
import numpy as np
import pytest

import fastnorm as fn


def rms_ref(x, ns, w=None, eps=1e-6):
    x = np.asarray(x, np.float64)
    ax = tuple(range(x.ndim - len(ns), x.ndim))
    r = 1 / np.sqrt((x * x).mean(axis=ax, keepdims=True) + eps)
    y = x * r * (1 if w is None else np.asarray(w, np.float64))
    return y, np.squeeze(r, axis=ax)


def rms_bwd_ref(dy, x, ns, w, eps):
    x = np.asarray(x, np.float64)
    dy = np.asarray(dy, np.float64)
    ax = tuple(range(x.ndim - len(ns), x.ndim))
    lead = tuple(range(x.ndim - len(ns)))
    r = 1 / np.sqrt((x * x).mean(axis=ax, keepdims=True) + eps)
    g = dy * w
    dx = r * g - x * r ** 3 * (g * x).mean(axis=ax, keepdims=True)
    return dx, (dy * x * r).sum(axis=lead)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,ns", [((8, 64), (64,)), ((2, 5, 33), (33,)),
                                      ((3, 20000), (20000,)), ((2, 4, 6), (4, 6))])
def test_rms_forward_backward(shape, ns, dtype, rng, nthreads):
    x = (rng.standard_normal(shape) + 3).astype(dtype)
    w = rng.standard_normal(ns).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    y, rstd = fn.rms_norm_forward(x, ns, w, eps=1e-6)
    ry, rr = rms_ref(x, ns, w, 1e-6)
    tol = 1e-5 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(y, ry, atol=tol * 10)
    np.testing.assert_allclose(rstd, rr, rtol=tol)
    dx, dw = fn.rms_norm_backward(dy, x, rstd, ns, w)
    rdx, rdw = rms_bwd_ref(dy, x, ns, w, 1e-6)
    assert np.max(np.abs(dx - rdx)) <= tol * 10 * max(1, np.max(np.abs(rdx)))
    assert np.max(np.abs(dw - rdw)) <= tol * 10 * max(1, np.max(np.abs(rdw)))


def test_rms_default_eps_is_machine_epsilon():
    x = np.zeros((2, 4), np.float32)
    _, rstd = fn.rms_norm_forward(x, 4)
    np.testing.assert_allclose(rstd, 1 / np.sqrt(np.finfo(np.float32).eps), rtol=1e-7)


def test_rms_vs_torch(rng):
    torch = pytest.importorskip("torch")
    if not hasattr(torch.nn.functional, "rms_norm"):
        pytest.skip("torch without F.rms_norm")
    x = rng.standard_normal((4, 7, 48))
    w = rng.standard_normal(48)
    dy = rng.standard_normal(x.shape)
    tx = torch.from_numpy(x).requires_grad_(True)
    tw = torch.from_numpy(w).requires_grad_(True)
    ty = torch.nn.functional.rms_norm(tx, (48,), tw)
    ty.backward(torch.from_numpy(dy))
    y, rstd = fn.rms_norm_forward(x, 48, w)
    dx, dw = fn.rms_norm_backward(dy, x, rstd, 48, w)
    np.testing.assert_allclose(y, ty.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), atol=1e-11)
    np.testing.assert_allclose(dw, tw.grad.numpy(), atol=1e-10)


@pytest.mark.parametrize("kind", ["layer", "rms"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_residual_forward_backward(kind, dtype, rng, nthreads):
    x = rng.standard_normal((6, 5, 40)).astype(dtype)
    r = rng.standard_normal(x.shape).astype(dtype)
    w = rng.standard_normal(40).astype(dtype)
    b = rng.standard_normal(40).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    ds = rng.standard_normal(x.shape).astype(dtype)
    x0, r0 = x.copy(), r.copy()
    if kind == "layer":
        y, s = fn.layer_norm(x, 40, w, b, residual=r)
        np.testing.assert_array_equal(y, fn.layer_norm(x + r, 40, w, b))
        y2, m, rs, s2 = fn.layer_norm_forward(x, 40, w, b, residual=r)
        dx, dw, db = fn.layer_norm_backward(dy, s2, m, rs, 40, w, residual_grad=ds)
        ex, ew, eb = fn.layer_norm_backward(dy, x + r, m, rs, 40, w)
    else:
        y, s = fn.rms_norm(x, 40, w, residual=r)
        np.testing.assert_array_equal(y, fn.rms_norm(x + r, 40, w))
        y2, rs, s2 = fn.rms_norm_forward(x, 40, w, residual=r)
        dx, dw = fn.rms_norm_backward(dy, s2, rs, 40, w, residual_grad=ds)
        ex, ew = fn.rms_norm_backward(dy, x + r, rs, 40, w)
    np.testing.assert_array_equal(s, x + r)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(r, r0)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(dx, ex + ds, atol=tol)
    np.testing.assert_allclose(dw, ew, atol=tol)


def test_residual_validation():
    x = np.zeros((2, 8))
    with pytest.raises(ValueError, match="residual must have the shape of x"):
        fn.layer_norm(x, 8, residual=np.zeros((2, 7)))
    with pytest.raises(TypeError, match="residual must have the dtype of x"):
        fn.rms_norm(x, 8, residual=np.zeros((2, 8), np.float32))


@pytest.mark.parametrize("D", [5000, 40000])  # several L1 blocks; more than one chunk
@pytest.mark.parametrize("aliases", [{"residual_out": "r"}, {"residual_out": "x"}, {"out": "x"},
                                     {"out": "x", "residual_out": "r"},
                                     {"out": "r", "residual_out": "x"}])
def test_residual_in_place(aliases, D, rng, nthreads):
    """x + r is formed again in the apply pass, block by block, before anything of that block
    is written: outputs may overwrite either input."""
    x0 = rng.standard_normal((6, D)).astype(np.float32)
    r0 = rng.standard_normal((6, D)).astype(np.float32)
    w = rng.standard_normal(D).astype(np.float32)
    for norm in (fn.layer_norm, fn.rms_norm):
        want_y, want_s = norm(x0, D, w, residual=r0)
        np.testing.assert_array_equal(want_s, x0 + r0)
        x, r = x0.copy(), r0.copy()
        arrays = {"x": x, "r": r}
        y, s = norm(x, D, w, residual=r, **{k: arrays[v] for k, v in aliases.items()})
        np.testing.assert_array_equal(y, want_y)
        np.testing.assert_array_equal(s, want_s)
