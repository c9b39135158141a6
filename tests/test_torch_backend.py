"""fastnorm.torch: the custom ops, the drop-in modules and convert(), against PyTorch itself."""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ft = pytest.importorskip("fastnorm.torch")
nn = torch.nn

# (fastnorm class, torch class, constructor args, input shape)
MODULES = [
    ("BatchNorm1d", (6,), (5, 6)),
    ("BatchNorm1d", (6,), (4, 6, 7)),
    ("BatchNorm2d", (6,), (3, 6, 5, 4)),
    ("BatchNorm3d", (6,), (2, 6, 3, 4, 3)),
    ("InstanceNorm1d", (6,), (3, 6, 9)),
    ("InstanceNorm2d", (6,), (3, 6, 5, 4)),
    ("InstanceNorm3d", (6,), (2, 6, 3, 4, 3)),
    ("GroupNorm", (3, 6), (3, 6, 5, 4)),
    ("LayerNorm", ((4, 5),), (3, 6, 4, 5)),
    ("RMSNorm", (20,), (3, 6, 20)),
]
IDS = [f"{m[0]}-{len(m[2])}d" for m in MODULES]
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=1e-5)}


def _pair(name, args, dtype, **kw):
    """A torch.nn module with random parameters and buffers, and its fastnorm twin."""
    if name.startswith("InstanceNorm"):
        kw = dict(affine=True, track_running_stats=True, **kw)
    ref = getattr(nn, name)(*args, **kw).to(dtype)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for t in list(ref.parameters()) + [b for b in ref.buffers() if b.is_floating_point()]:
            t.copy_(1 + 0.3 * torch.rand(t.shape, generator=g, dtype=dtype))
    fast = copy.deepcopy(ref)
    fast.__class__ = getattr(ft, name)
    return ref, fast


def _run(module, x, dy):
    x = x.detach().clone().requires_grad_(True)
    y = module(x)
    y.backward(dy)
    grads = [p.grad.clone() for p in module.parameters()]
    module.zero_grad()
    return y.detach(), x.grad, grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name,args,shape", MODULES, ids=IDS)
def test_module_matches_torch(name, args, shape, training, dtype):
    ref, fast = _pair(name, args, dtype)
    assert isinstance(fast, getattr(nn, name))
    ref.train(training)
    fast.train(training)
    g = torch.Generator().manual_seed(2)
    for step in range(2):  # twice: the running statistics feed the second step in eval
        x = 3 * torch.randn(shape, generator=g, dtype=dtype) + 2
        dy = torch.randn(shape, generator=g, dtype=dtype)
        ry, rdx, rgrads = _run(ref, x, dy)
        fy, fdx, fgrads = _run(fast, x, dy)
        torch.testing.assert_close(fy, ry, **TOL[dtype])
        torch.testing.assert_close(fdx, rdx, **TOL[dtype])
        for fgr, rgr in zip(fgrads, rgrads):
            torch.testing.assert_close(fgr, rgr, rtol=TOL[dtype]["rtol"], atol=10 * TOL[dtype]["atol"])
        for (k, fb), (_, rb) in zip(fast.state_dict().items(), ref.state_dict().items()):
            torch.testing.assert_close(fb, rb, **TOL[dtype], msg=k)


@pytest.mark.parametrize("momentum", [0.3, None])
def test_batch_norm_momentum_and_counter(momentum):
    ref, fast = _pair("BatchNorm2d", (4,), torch.float64, momentum=momentum)
    g = torch.Generator().manual_seed(3)
    for _ in range(4):
        x = torch.randn((5, 4, 3, 3), generator=g, dtype=torch.float64) * 2 - 1
        ref(x)
        fast(x)
    assert int(fast.num_batches_tracked) == 4
    torch.testing.assert_close(fast.running_mean, ref.running_mean, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fast.running_var, ref.running_var, rtol=1e-12, atol=1e-14)


def test_batch_norm_without_running_stats_uses_batch_stats_in_eval():
    ref, fast = _pair("BatchNorm2d", (4,), torch.float64, track_running_stats=False)
    ref.eval()
    fast.eval()
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(fast(x), ref(x), rtol=1e-10, atol=1e-12)
    assert fast.running_mean is None


@pytest.mark.parametrize("name,args,shape", [
    ("BatchNorm2d", (8,), (2, 8, 5, 6)), ("BatchNorm3d", (8,), (2, 8, 3, 4, 5)),
    ("InstanceNorm2d", (8,), (2, 8, 5, 6)), ("GroupNorm", (4, 8), (2, 8, 5, 6)),
    ("GroupNorm", (2, 8), (2, 8, 3, 4, 5)),
])
def test_channels_last_stays_channels_last(name, args, shape):
    ref, fast = _pair(name, args, torch.float32)
    fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    x = torch.randn(shape).to(memory_format=fmt).requires_grad_(True)
    y = fast(x)
    assert y.is_contiguous(memory_format=fmt) and not y.is_contiguous()
    dy = torch.randn(shape).to(memory_format=fmt)
    y.backward(dy)
    assert x.grad.is_contiguous(memory_format=fmt)
    xr = x.detach().clone().requires_grad_(True)
    yr = ref(xr)
    yr.backward(dy)
    torch.testing.assert_close(y, yr, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-4, atol=1e-5)


def test_non_contiguous_input_is_handled():
    ref, fast = _pair("BatchNorm2d", (4,), torch.float64)
    x = torch.randn(3, 5, 4, 6, dtype=torch.float64).transpose(1, 2)  # neither format
    torch.testing.assert_close(fast(x), ref(x), rtol=1e-10, atol=1e-12)


def _f64(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) + 0.5).requires_grad_(True)


GRADCHECK = {
    "batch_train": lambda: (lambda x, w, b: ft.batch_norm(x, None, None, w, b, True),
                            (_f64(3, 4, 3), _f64(4, seed=1), _f64(4, seed=2))),
    "batch_eval": lambda: (lambda x, w, b: ft.batch_norm(
        x, torch.full((4,), 0.3, dtype=torch.float64), torch.full((4,), 1.7, dtype=torch.float64),
        w, b, False), (_f64(3, 4, 3), _f64(4, seed=1), _f64(4, seed=2))),
    "batch_channels_last": lambda: (lambda x, w, b: ft.batch_norm(
        x.contiguous(memory_format=torch.channels_last), None, None, w, b, True),
        (_f64(2, 3, 2, 3), _f64(3, seed=1), _f64(3, seed=2))),
    "instance": lambda: (lambda x, w, b: ft.instance_norm(x, weight=w, bias=b),
                         (_f64(2, 3, 5), _f64(3, seed=1), _f64(3, seed=2))),
    "group": lambda: (lambda x, w, b: ft.group_norm(x, 2, w, b),
                      (_f64(2, 4, 3, 2), _f64(4, seed=1), _f64(4, seed=2))),
    "layer": lambda: (lambda x, w, b: ft.layer_norm(x, (2, 4), w, b),
                      (_f64(3, 2, 4), _f64(2, 4, seed=1), _f64(2, 4, seed=2))),
    "rms": lambda: (lambda x, w: ft.rms_norm(x, 6, w, 1e-6), (_f64(4, 6), _f64(6, seed=1))),
    "rms_no_weight": lambda: (lambda x: ft.rms_norm(x, 6), (_f64(4, 6),)),
}


@pytest.mark.parametrize("case", list(GRADCHECK))
def test_gradcheck(case):
    f, inputs = GRADCHECK[case]()
    assert torch.autograd.gradcheck(f, inputs)


def test_opcheck_all_ops():
    """Schema, fake tensor and autograd registration checks of every custom op."""
    x = torch.randn(2, 4, 3, 3)
    w, b = torch.rand(4) + 0.5, torch.randn(4)
    xr, wr = torch.randn(3, 8), torch.rand(8) + 0.5
    y, m, r = torch.ops.fastnorm.batch_norm_fwd(x, w, b, 1e-5)
    cases = [
        (torch.ops.fastnorm.batch_norm_fwd, (x, w, b, 1e-5)),
        (torch.ops.fastnorm.instance_norm_fwd, (x, w, None, 1e-5)),
        (torch.ops.fastnorm.group_norm_fwd, (x.to(memory_format=torch.channels_last), 2, w, b,
                                             1e-5)),
        (torch.ops.fastnorm.channel_norm_eval, (x, torch.zeros(4), torch.ones(4), w, b, 1e-5)),
        (torch.ops.fastnorm.channel_norm_bwd, (torch.randn_like(x), x, m, r, w, "batch", 0)),
        (torch.ops.fastnorm.layer_norm_fwd, (xr, [8], wr, None, 1e-5)),
        (torch.ops.fastnorm.rms_norm_fwd, (xr, [8], wr, None)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def _grads(fn, x, w, b):
    x, w, b = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
    y = fn(x, w, b)
    (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
    return y.detach(), x.grad, w.grad, b.grad


@pytest.mark.parametrize("op", ["batch", "instance", "group", "layer", "rms", "batch_eval"])
def test_eager_path_equals_registered_ops(op):
    """Outside torch.compile the functional forms run the implementations directly (no custom-op
    dispatch); the registered ops, which torch.compile traces, give the same bits, gradients
    included, and so does the no-grad form."""
    from fastnorm.torch import _ops as O
    torch.manual_seed(0)
    x = torch.randn(4, 6, 5, 3, dtype=torch.float64) + 2
    w, b = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    wl, bl = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    rm, rv = torch.randn(6, dtype=torch.float64), torch.rand(6, dtype=torch.float64) + 0.5
    eager, registered = {
        "batch": (lambda x, w, b: ft.batch_norm(x, None, None, w, b, training=True),
                  lambda x, w, b: torch.ops.fastnorm.batch_norm_fwd(x, w, b, 1e-5)[0]),
        "instance": (lambda x, w, b: ft.instance_norm(x, weight=w, bias=b),
                     lambda x, w, b: torch.ops.fastnorm.instance_norm_fwd(x, w, b, 1e-5)[0]),
        "group": (lambda x, w, b: ft.group_norm(x, 3, w, b),
                  lambda x, w, b: torch.ops.fastnorm.group_norm_fwd(x, 3, w, b, 1e-5)[0]),
        "layer": (lambda x, w, b: ft.layer_norm(x, 3, w, b),
                  lambda x, w, b: torch.ops.fastnorm.layer_norm_fwd(x, [3], w, b, 1e-5)[0]),
        "rms": (lambda x, w, b: ft.rms_norm(x, 3, w, 1e-6) + b,
                lambda x, w, b: torch.ops.fastnorm.rms_norm_fwd(x, [3], w, 1e-6)[0] + b),
        "batch_eval": (lambda x, w, b: ft.batch_norm(x, rm, rv, w, b),
                       lambda x, w, b: O.channel_norm_eval(x, rm, rv, w, b, 1e-5)),
    }[op]
    if op in ("layer", "rms"):
        w, b = wl, bl
    a, r = _grads(eager, x, w, b), _grads(registered, x, w, b)
    for u, v in zip(a, r):
        torch.testing.assert_close(u, v, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(eager(x, w, b), a[0], rtol=0, atol=0)


def test_fallback_for_other_devices_and_dtypes():
    m = ft.convert(nn.Sequential(nn.BatchNorm2d(4), nn.LayerNorm(5), nn.GroupNorm(2, 4)))
    m.to("meta")
    x = torch.randn(2, 4, 3, 5, device="meta")
    assert not ft.supported(x)
    y = m(x)  # PyTorch's meta kernels run, not fastnorm
    assert y.device.type == "meta" and y.shape == x.shape
    xi = torch.ones(2, 4, 3, 5, dtype=torch.complex64)
    assert not ft.supported(xi)
    assert ft.supported(torch.ones(2, 3), torch.ones(3)) and not ft.supported(
        torch.ones(2, 3), torch.ones(3, device="meta"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_modules(dtype):
    if dtype == torch.bfloat16:
        pytest.importorskip("ml_dtypes")
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 8, 5, 5, generator=g).to(dtype).requires_grad_(True)
    for name, args in [("GroupNorm", (4, 8)), ("BatchNorm2d", (8,))]:
        ref, fast = _pair(name, args, torch.float32)
        y = fast(x)
        assert y.dtype == dtype
        y.float().sum().backward()
        xr = x.detach().float().requires_grad_(True)
        yr = ref(xr)
        yr.sum().backward()
        torch.testing.assert_close(y.float(), yr, rtol=2e-2, atol=2e-2)
    xl = torch.randn(3, 16, generator=g).to(dtype)
    ref, fast = _pair("LayerNorm", (16,), torch.float32)
    torch.testing.assert_close(fast(xl).float(), ref(xl.float()), rtol=2e-2, atol=2e-2)


class _MyBN(nn.BatchNorm2d):
    pass


def test_convert_swaps_supported_layers_in_place():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), _MyBN(4), nn.SyncBatchNorm(4),
        nn.Sequential(nn.GroupNorm(2, 4), nn.InstanceNorm2d(4)),
        nn.Flatten(1), nn.LayerNorm(4), nn.RMSNorm(4), nn.BatchNorm1d(4))
    params = [id(p) for p in model.parameters()]
    keys = list(model.state_dict())
    out = ft.convert(model)
    assert out is model
    assert [id(p) for p in model.parameters()] == params
    assert list(model.state_dict()) == keys
    assert type(model[1]) is ft.BatchNorm2d
    assert type(model[2]) is _MyBN  # user subclasses are left alone
    assert type(model[3]) is nn.SyncBatchNorm
    assert type(model[4][0]) is ft.GroupNorm and type(model[4][1]) is ft.InstanceNorm2d
    assert type(model[6]) is ft.LayerNorm and type(model[7]) is ft.RMSNorm
    assert type(model[8]) is ft.BatchNorm1d
    single = nn.LayerNorm(3)
    assert type(ft.convert(single)) is ft.LayerNorm
    with pytest.raises(TypeError, match="model"):
        ft.convert(object())


# ---- training runs: converted model vs the pure PyTorch model, same data, same steps --------

class _SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.GroupNorm(4, 8), nn.SiLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(16, 5))

    def forward(self, x):
        return self.body(x)


class _Block(nn.Module):
    """A pre-norm transformer block on (B, T, D)."""

    def __init__(self, d=16, heads=2):
        super().__init__()
        self.ln1, self.ln2, self.ln_f = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.ln2(x))
        return self.head(self.ln_f(x).mean(1))


def _train(model, batches, lr=0.05):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses = []
    for x, t in batches:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), t)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _batches(shape, classes, n=4, fmt=None):
    g = torch.Generator().manual_seed(5)
    out = []
    for _ in range(n):
        x = torch.randn(shape, generator=g)
        if fmt is not None:
            x = x.to(memory_format=fmt)
        out.append((x, torch.randint(0, classes, (shape[0],), generator=g)))
    return out


@pytest.mark.parametrize("channels_last", [False, True], ids=["NCHW", "channels_last"])
def test_cnn_training_matches_pytorch(channels_last):
    torch.manual_seed(0)
    ref = _SmallCNN()
    fast = ft.convert(copy.deepcopy(ref))
    if channels_last:
        ref = ref.to(memory_format=torch.channels_last)
        fast = fast.to(memory_format=torch.channels_last)
    fmt = torch.channels_last if channels_last else None
    batches = _batches((6, 3, 12, 12), 5, fmt=fmt)
    lr, lf = _train(ref, batches), _train(fast, batches)
    np.testing.assert_allclose(lf, lr, rtol=1e-4)
    assert lf[-1] != lf[0]
    for (k, a), (_, b) in zip(fast.state_dict().items(), ref.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=k)


def test_transformer_block_training_matches_pytorch():
    torch.manual_seed(0)
    ref = _Block()
    fast = ft.convert(copy.deepcopy(ref))
    batches = _batches((4, 7, 16), 3)
    lr, lf = _train(ref, batches), _train(fast, batches)
    np.testing.assert_allclose(lf, lr, rtol=1e-4)


def _compiled_matches(backend):
    torch.manual_seed(0)
    model = ft.convert(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                                     nn.GroupNorm(2, 8), nn.Flatten(2), nn.LayerNorm(36)))
    x = torch.randn(2, 3, 8, 8)
    ref = copy.deepcopy(model)
    compiled = torch.compile(model, backend=backend)
    y = compiled(x)
    y.sum().backward()
    yr = ref(x)
    yr.sum().backward()
    torch.testing.assert_close(y, yr, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model[1].running_var, ref[1].running_var)
    torch.testing.assert_close(model[0].weight.grad, ref[0].weight.grad, rtol=1e-4, atol=1e-4)


def test_torch_compile_converted_model():
    # aot_eager traces the ops through their fake kernels and autograd formulas, as inductor
    # does, without generating C++ (which takes ~20 s; see the slow test below)
    _compiled_matches("aot_eager")


@pytest.mark.slow
def test_torch_compile_inductor():
    _compiled_matches("inductor")
