"""Against PyTorch CPU (torch.nn.functional and autograd), when torch is installed."""
import numpy as np
import pytest

import fastnorm as fn

torch = pytest.importorskip("torch")


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a)).requires_grad_(True)


CASES = [("batch", None), ("instance", None), ("group", 1), ("group", 4), ("group", 8)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("op,G", CASES)
def test_forward_backward_vs_torch(op, G, channels_last, dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 8, 7, 5)).astype(dtype)
    w = (1 + 0.2 * rng.standard_normal(8)).astype(dtype)
    b = (0.2 * rng.standard_normal(8)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    tx, tw, tb = _t(x), _t(w), _t(b)
    if op == "batch":
        ty = torch.nn.functional.batch_norm(tx, None, None, tw, tb, training=True, eps=1e-5)
    elif op == "instance":
        ty = torch.nn.functional.instance_norm(tx, weight=tw, bias=tb, eps=1e-5)
    else:
        ty = torch.nn.functional.group_norm(tx, G, tw, tb, eps=1e-5)
    ty.backward(torch.from_numpy(dy))

    layout = "NHWC" if channels_last else "NCHW"
    xl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if channels_last else x
    dyl = np.ascontiguousarray(dy.transpose(0, 2, 3, 1)) if channels_last else dy
    args = (G,) if op == "group" else ()
    y, m, r = getattr(fn, f"{op}_norm_forward")(xl, *args, w, b, layout=layout)
    dx, dw, db = getattr(fn, f"{op}_norm_backward")(dyl, xl, m, r, *args, w, layout=layout)
    if channels_last:
        y, dx = y.transpose(0, 3, 1, 2), dx.transpose(0, 3, 1, 2)
    tol = 2e-5 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(y, ty.detach().numpy(), atol=tol, rtol=tol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), atol=tol * 5, rtol=tol)
    np.testing.assert_allclose(dw, tw.grad.numpy(), atol=tol * 50, rtol=tol * 10)
    np.testing.assert_allclose(db, tb.grad.numpy(), atol=tol * 50, rtol=tol * 10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,ns", [((4, 6, 32), (32,)), ((2, 3, 5, 7), (3, 5, 7))])
def test_layer_norm_vs_torch(shape, ns, dtype):
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(ns).astype(dtype)
    b = rng.standard_normal(ns).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    tx, tw, tb = _t(x), _t(w), _t(b)
    ty = torch.nn.functional.layer_norm(tx, ns, tw, tb, eps=1e-5)
    ty.backward(torch.from_numpy(dy))
    y, m, r = fn.layer_norm_forward(x, ns, w, b)
    dx, dw, db = fn.layer_norm_backward(dy, x, m, r, ns, w)
    tol = 2e-5 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(y, ty.detach().numpy(), atol=tol * 5, rtol=tol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), atol=tol * 10, rtol=tol)
    np.testing.assert_allclose(dw, tw.grad.numpy(), atol=tol * 50, rtol=tol * 10)
    np.testing.assert_allclose(db, tb.grad.numpy(), atol=tol * 50, rtol=tol * 10)


def test_batch_norm_running_stats_vs_torch():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 3, 4, 4)) * 3 + 2
    rm, rv = np.zeros(3), np.ones(3)
    trm, trv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    for _ in range(3):
        fn.batch_norm(x, rm, rv, training=True, momentum=0.2)
        torch.nn.functional.batch_norm(torch.from_numpy(x), trm, trv, training=True,
                                       momentum=0.2)
    np.testing.assert_allclose(rm, trm.numpy(), rtol=1e-12)
    np.testing.assert_allclose(rv, trv.numpy(), rtol=1e-12)
    y = fn.batch_norm(x, rm, rv)
    ty = torch.nn.functional.batch_norm(torch.from_numpy(x), trm, trv, training=False)
    np.testing.assert_allclose(y, ty.numpy(), atol=1e-12)
