"""fastnorm.nn: the stateful NumPy layers."""
import numpy as np
import pytest

import fastnorm as fn
import reference as R
from fastnorm import nn

LAYOUTS = ["NCHW", "NHWC"]


def _x(rng, shape, layout="NCHW", dtype=np.float64, offset=2.0):
    if layout == "NHWC":
        shape = (shape[0],) + tuple(shape[2:]) + (shape[1],)
    return (rng.standard_normal(shape) * 3 + offset).astype(dtype)


def _randomize(layer, rng):
    for p in layer.parameters():
        p[...] = 1 + 0.3 * rng.standard_normal(p.shape)


# ---- forward/backward against the float64 reference ----------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("op", ["batch", "instance", "group"])
def test_channel_layers_train_vs_reference(op, layout, rng, nthreads):
    C, G = 6, 3
    layer = {"batch": lambda: nn.BatchNorm(C, layout=layout, dtype=np.float64),
             "instance": lambda: nn.InstanceNorm(C, affine=True, layout=layout,
                                                 dtype=np.float64),
             "group": lambda: nn.GroupNorm(G, C, layout=layout, dtype=np.float64)}[op]()
    _randomize(layer, rng)
    x = _x(rng, (4, C, 5, 3), layout)
    dy = rng.standard_normal(x.shape)
    x0 = x.copy()
    y = layer(x)
    dx = layer.backward(dy)
    ry, _, _ = R.channel_forward(op, x, layer.weight, layer.bias, layout=layout, G=G)
    rdx, rdw, rdb = R.channel_backward(op, dy, x, layer.weight, layout=layout, G=G)
    np.testing.assert_allclose(y, ry, atol=1e-10)
    np.testing.assert_allclose(dx, rdx, atol=1e-10)
    np.testing.assert_allclose(layer.weight_grad, rdw, atol=1e-9)
    np.testing.assert_allclose(layer.bias_grad, rdb, atol=1e-9)
    assert [g.shape for g in layer.gradients()] == [(C,), (C,)]
    np.testing.assert_array_equal(x, x0)  # the input is not modified


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_norm_and_rms_norm_vs_reference(rng, dtype):
    x = _x(rng, (3, 4, 10), dtype=dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    ln = nn.LayerNorm((4, 10), dtype=dtype)
    _randomize(ln, rng)
    y = ln(x)
    dx = ln.backward(dy)
    tol = 2e-5 if dtype == np.float32 else 1e-10
    ry = R.layer_forward(x, (4, 10), ln.weight, ln.bias)[0]
    rdx, rdw, rdb = R.layer_backward(dy, x, (4, 10), ln.weight)
    np.testing.assert_allclose(y, ry, atol=tol * 10)
    np.testing.assert_allclose(dx, rdx, atol=tol * 10)
    np.testing.assert_allclose(ln.weight_grad, rdw, atol=tol * 100, rtol=tol)
    np.testing.assert_allclose(ln.bias_grad, rdb, atol=tol * 100, rtol=tol)
    assert ln.weight_grad.dtype == dtype and ln.weight_grad.shape == (4, 10)

    rms = nn.RMSNorm(10, eps=1e-6, dtype=dtype)
    _randomize(rms, rng)
    y = rms(x)
    dx = rms.backward(dy)
    x64 = x.astype(np.float64)
    r = 1 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(y, x64 * r * rms.weight, atol=tol * 10)
    g = dy * rms.weight.astype(np.float64)
    rdx = r * g - x64 * r ** 3 * (g * x64).mean(-1, keepdims=True)
    np.testing.assert_allclose(dx, rdx, atol=tol * 10)
    np.testing.assert_allclose(rms.weight_grad, (dy * x64 * r).sum((0, 1)), atol=tol * 100)
    assert rms.bias_grad is None and [p.shape for p in rms.parameters()] == [(10,)]


@pytest.mark.parametrize("cls", [nn.LayerNorm, nn.RMSNorm])
def test_fused_residual_layers(cls, rng):
    x, res = rng.standard_normal((2, 5, 16)), rng.standard_normal((2, 5, 16))
    dy, ds = rng.standard_normal(x.shape), rng.standard_normal(x.shape)
    fused, plain = cls(16, dtype=np.float64), cls(16, dtype=np.float64)
    _randomize(fused, rng)
    for a, b in zip(plain.parameters(), fused.parameters()):
        a[...] = b
    y, s = fused(x, residual=res)
    np.testing.assert_allclose(s, x + res, atol=1e-15)
    np.testing.assert_allclose(y, plain(x + res), atol=1e-12)
    dx = fused.backward(dy, residual_grad=ds)
    np.testing.assert_allclose(dx, plain.backward(dy) + ds, atol=1e-12)
    np.testing.assert_allclose(fused.weight_grad, plain.weight_grad, atol=1e-12)


def test_no_affine_layers_have_no_parameters(rng):
    x = _x(rng, (2, 4, 3, 3))
    for layer in (nn.BatchNorm(4, affine=False), nn.InstanceNorm(4), nn.GroupNorm(2, 4, affine=False),
                  nn.LayerNorm(3, elementwise_affine=False), nn.RMSNorm(3, elementwise_affine=False)):
        assert layer.parameters() == []
        y = layer(x)
        layer.backward(np.ones_like(y))
        assert layer.weight_grad is None and layer.bias_grad is None
    ln = nn.LayerNorm(3, bias=False)
    assert [n for n, _ in ln.named_parameters()] == ["weight"] and "bias" not in ln.state_dict()


# ---- running statistics ---------------------------------------------------------------------

def _batch_stats(x, layout, unbiased):
    xc = R.to_nchw(x, layout)
    axes = (0,) + tuple(range(2, xc.ndim))
    return xc.mean(axis=axes), xc.var(axis=axes, ddof=1 if unbiased else 0)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("convention,momentum", [("torch", 0.1), ("torch", 0.5), ("torch", None),
                                                 ("keras", 0.99), ("onnx", 0.9), ("keras", None)])
def test_batch_norm_running_statistics(convention, momentum, layout, rng):
    bn = nn.BatchNorm(5, momentum=momentum, convention=convention, layout=layout,
                      dtype=np.float64)
    rm, rv = np.zeros(5), np.ones(5)
    means, vars_ = [], []
    unbiased = convention == "torch"
    for k in range(1, 5):
        x = _x(rng, (3, 5, 4, 2), layout, offset=k)
        bn(x)
        m, v = _batch_stats(x, layout, unbiased)
        means.append(m)
        vars_.append(v)
        if momentum is not None:
            f = momentum if convention == "torch" else 1 - momentum
            rm, rv = (1 - f) * rm + f * m, (1 - f) * rv + f * v
        assert int(bn.num_batches_tracked) == k
    if momentum is None:  # cumulative average: the plain mean of the batch statistics
        rm, rv = np.mean(means, axis=0), np.mean(vars_, axis=0)
    np.testing.assert_allclose(bn.running_mean, rm, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, rv, rtol=1e-12)


def test_convention_default_momentum():
    assert nn.BatchNorm(3).momentum == 0.1
    assert nn.BatchNorm(3, convention="keras").momentum == 0.99
    assert nn.BatchNorm(3, convention="onnx").momentum == 0.9
    assert nn.BatchNorm(3, convention="keras", momentum=None).momentum is None


@pytest.mark.parametrize("layout", LAYOUTS)
def test_batch_norm_eval_uses_running_stats(layout, rng):
    bn = nn.BatchNorm(4, layout=layout, dtype=np.float64)
    _randomize(bn, rng)
    bn.running_mean[...] = rng.standard_normal(4)
    bn.running_var[...] = rng.uniform(0.5, 2, 4)
    before = [a.copy() for a in bn.state_dict().values()]
    bn.eval()
    x = _x(rng, (2, 4, 3, 3), layout)
    dy = rng.standard_normal(x.shape)
    y = bn(x)
    shape = (1, 4, 1, 1) if layout == "NCHW" else (1, 1, 1, 4)
    r = 1 / np.sqrt(bn.running_var + bn.eps)
    xhat = (x - bn.running_mean.reshape(shape)) * r.reshape(shape)
    np.testing.assert_allclose(y, xhat * bn.weight.reshape(shape) + bn.bias.reshape(shape),
                               atol=1e-12)
    dx = bn.backward(dy)
    np.testing.assert_allclose(dx, dy * (bn.weight * r).reshape(shape), atol=1e-12)
    red = (0, 2, 3) if layout == "NCHW" else (0, 1, 2)
    np.testing.assert_allclose(bn.weight_grad, (dy * xhat).sum(red), atol=1e-10)
    np.testing.assert_allclose(bn.bias_grad, dy.sum(red), atol=1e-10)
    for a, b in zip(bn.state_dict().values(), before):
        np.testing.assert_array_equal(a, b)  # eval leaves the buffers alone


def test_without_running_stats_eval_uses_batch_statistics(rng):
    bn = nn.BatchNorm(3, track_running_stats=False, dtype=np.float64).eval()
    assert bn.running_mean is None and list(bn.state_dict()) == ["weight", "bias"]
    x = _x(rng, (4, 3, 5))
    np.testing.assert_allclose(bn(x), R.channel_forward("batch", x)[0], atol=1e-10)


def test_instance_norm_running_statistics(rng):
    inorm = nn.InstanceNorm(3, track_running_stats=True, momentum=0.2, dtype=np.float64)
    x = _x(rng, (4, 3, 6))
    inorm(x)
    S = 6
    mean = x.mean(-1).mean(0)
    var = (x.var(-1) * S / (S - 1)).mean(0)
    np.testing.assert_allclose(inorm.running_mean, 0.8 * 0 + 0.2 * mean, rtol=1e-12)
    np.testing.assert_allclose(inorm.running_var, 0.8 * 1 + 0.2 * var, rtol=1e-12)
    inorm.eval()
    y = inorm(x)
    r = 1 / np.sqrt(inorm.running_var + 1e-5)
    np.testing.assert_allclose(y, (x - inorm.running_mean[:, None]) * r[:, None], atol=1e-12)
    with pytest.raises(ValueError, match="spatial"):
        nn.InstanceNorm(3).train()(x[..., :1])


# ---- state_dict ------------------------------------------------------------------------------

def test_state_dict_keys_and_round_trip(rng):
    bn = nn.BatchNorm(4)
    assert list(bn.state_dict()) == ["weight", "bias", "running_mean", "running_var",
                                     "num_batches_tracked"]
    assert bn.state_dict()["num_batches_tracked"].dtype == np.int64
    assert list(nn.GroupNorm(2, 4).state_dict()) == ["weight", "bias"]
    assert list(nn.RMSNorm(4).state_dict()) == ["weight"]
    assert list(nn.InstanceNorm(4).state_dict()) == []
    bn(_x(rng, (3, 4, 2), dtype=np.float32))
    other = nn.BatchNorm(4)
    other.load_state_dict({k: v.copy() for k, v in bn.state_dict().items()})
    for (k, a), b in zip(other.state_dict().items(), bn.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=k)
    # checkpoints without num_batches_tracked load (it stays as it is)
    sd = {k: v for k, v in bn.state_dict().items() if k != "num_batches_tracked"}
    nn.BatchNorm(4).load_state_dict(sd)


def test_load_state_dict_errors_change_nothing(rng):
    bn = nn.BatchNorm(4)
    sd = {k: v.copy() + 1 for k, v in bn.state_dict().items()}
    with pytest.raises(ValueError, match="unexpected keys \\['extra'\\]"):
        bn.load_state_dict(dict(sd, extra=np.zeros(1)))
    with pytest.raises(ValueError, match="missing keys \\['bias'\\]"):
        bn.load_state_dict({k: v for k, v in sd.items() if k != "bias"})
    bad = dict(sd, running_var=np.ones(5))
    with pytest.raises(ValueError, match=r"state_dict\['running_var'\] must have shape \(4,\)"):
        bn.load_state_dict(bad)
    np.testing.assert_array_equal(bn.weight, np.ones(4))  # nothing was copied
    with pytest.raises(TypeError, match="mapping"):
        bn.load_state_dict([1, 2])
    bn.load_state_dict({"weight": np.full(4, 2.0)}, strict=False)
    np.testing.assert_array_equal(bn.weight, np.full(4, 2.0))
    assert bn.weight.dtype == np.float32


# ---- errors and modes ----------------------------------------------------------------------

def test_layer_errors(rng):
    with pytest.raises(ValueError, match="num_channels"):
        nn.GroupNorm(4, 6)
    with pytest.raises(ValueError, match="convention"):
        nn.BatchNorm(3, convention="tf")
    with pytest.raises(ValueError, match="momentum"):
        nn.BatchNorm(3, momentum=1.5)
    with pytest.raises(ValueError, match="layout"):
        nn.BatchNorm(3, layout="NWC")
    with pytest.raises(TypeError, match="num_features"):
        nn.BatchNorm(3.0)
    with pytest.raises(TypeError, match="dtype"):
        nn.BatchNorm(3, dtype=np.int32)
    with pytest.raises(ValueError, match="eps"):
        nn.LayerNorm(3, eps=0)
    with pytest.raises(ValueError, match="3 channels at axis 1"):
        nn.BatchNorm(3)(np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="3 channels at axis -1"):
        nn.BatchNorm(3, layout="NHWC")(np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="normalized_shape"):
        nn.LayerNorm(4)(np.zeros((2, 5)))
    with pytest.raises(RuntimeError, match="before forward"):
        nn.GroupNorm(1, 3).backward(np.zeros((2, 3, 4)))
    with pytest.raises(TypeError, match="mode"):
        nn.BatchNorm(3).train("yes")


def test_train_eval_and_repr():
    bn = nn.BatchNorm(3)
    assert bn.training and bn.eval() is bn and not bn.training and bn.train().training
    assert repr(bn).startswith("BatchNorm(3, eps=1e-05, momentum=0.1")
    assert "num_groups" not in repr(nn.GroupNorm(1, 3)) and repr(nn.GroupNorm(1, 3)).startswith(
        "GroupNorm(1, 3")


def test_half_precision_input(rng):
    ln = nn.LayerNorm(8)
    x = rng.standard_normal((4, 8)).astype(np.float16)
    y = ln(x)
    assert y.dtype == np.float16
    ln.backward(np.ones_like(x))
    assert ln.weight_grad.dtype == np.float32
    np.testing.assert_allclose(y, R.layer_forward(x, (8,))[0], atol=5e-3)


# ---- against PyTorch's modules, when installed ---------------------------------------------

PAIRS = [
    ("BatchNorm", "BatchNorm2d", (6,), {}),
    ("BatchNorm", "BatchNorm2d", (6,), {"momentum": None}),
    ("InstanceNorm", "InstanceNorm2d", (6,), {"affine": True, "track_running_stats": True}),
    ("GroupNorm", "GroupNorm", (3, 6), {}),
    ("LayerNorm", "LayerNorm", ((5, 4),), {}),
    ("RMSNorm", "RMSNorm", (4,), {}),
]


@pytest.mark.parametrize("ours,theirs,args,kw", PAIRS, ids=[f"{p[0]}-{i}" for i, p in
                                                             enumerate(PAIRS)])
def test_layers_match_torch_and_load_its_checkpoints(ours, theirs, args, kw, rng):
    torch = pytest.importorskip("torch")
    tm = getattr(torch.nn, theirs)(*args, **kw).double()
    with torch.no_grad():
        for t in tm.parameters():
            t.copy_(torch.from_numpy(1 + 0.3 * rng.standard_normal(tuple(t.shape))))
    layer = getattr(nn, ours)(*args, **kw, dtype=np.float64)
    # a PyTorch checkpoint's arrays load unchanged (tensors or their .numpy())
    layer.load_state_dict({k: v.numpy() for k, v in tm.state_dict().items()})
    for training in (True, True, False):
        layer.train(training)
        tm.train(training)
        x = _x(rng, (3, 6, 5, 4))
        dy = rng.standard_normal(x.shape)
        tx = torch.from_numpy(x).requires_grad_(True)
        ty = tm(tx)
        ty.backward(torch.from_numpy(dy))
        np.testing.assert_allclose(layer(x), ty.detach().numpy(), atol=1e-10)
        np.testing.assert_allclose(layer.backward(dy), tx.grad.numpy(), atol=1e-10)
        for g, p in zip(layer.gradients(), tm.parameters()):
            np.testing.assert_allclose(g, p.grad.numpy(), atol=1e-9)
        tm.zero_grad()
        for (k, a), (k2, b) in zip(layer.state_dict().items(), tm.state_dict().items()):
            assert k == k2
            if k == "num_batches_tracked" and ours == "InstanceNorm":
                continue  # PyTorch's InstanceNorm never counts; ours does (momentum=None needs it)
            np.testing.assert_allclose(a, b.numpy(), rtol=1e-12, atol=1e-14, err_msg=k)
    # and back: PyTorch loads our state_dict
    tm2 = getattr(torch.nn, theirs)(*args, **kw).double()
    tm2.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in
                         layer.state_dict().items()})
    layer.load_state_dict(tm2.state_dict())  # tensors directly, too
