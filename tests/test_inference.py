"""Edge inference: batch-norm folding, the fused activation epilogue on every norm, out= reuse,
type stubs."""
import ast
import inspect
import os
import subprocess
import sys
from math import erf

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

import fastnorm as fn
import reference as R


def conv2d(x, w, b, groups=1):
    """Plain NCHW convolution, stride 1, no padding; w is OIHW (O, C/groups, kH, kW)."""
    O, Cg, kh, kw = w.shape
    win = sliding_window_view(x.astype(np.float64), (kh, kw), axis=(2, 3))
    Og = O // groups
    parts = [np.einsum("nchwij,ocij->nohw", win[:, g * Cg:(g + 1) * Cg], w[g * Og:(g + 1) * Og])
             for g in range(groups)]
    return np.concatenate(parts, axis=1) + b.reshape(1, -1, 1, 1)


def bn_eval(y, mean, var, gamma, beta, eps, axis=1):
    shape = [1] * y.ndim
    shape[axis] = -1
    r = lambda a: np.asarray(a, np.float64).reshape(shape)  # noqa: E731
    return (y - r(mean)) / np.sqrt(r(var) + eps) * r(gamma) + r(beta)


def _bn_params(rng, O):
    return (rng.standard_normal(O), rng.uniform(0.2, 3.0, O), rng.standard_normal(O),
            rng.standard_normal(O))


@pytest.mark.parametrize("groups", [1, 2, 6])
def test_fold_conv_oihw(rng, groups):
    x = rng.standard_normal((2, 6, 7, 8))
    w = rng.standard_normal((6, 6 // groups, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    mean, var, gamma, beta = _bn_params(rng, 6)
    before = [a.copy() for a in (w, b, mean, var, gamma, beta)]
    expected = bn_eval(conv2d(x, w, b, groups), mean, var, gamma, beta, 1e-3)
    wf, bf = fn.fold_batch_norm(w, b, mean, var, gamma, beta, eps=1e-3)
    assert wf.dtype == w.dtype and wf.shape == w.shape and bf.dtype == w.dtype
    np.testing.assert_allclose(conv2d(x, wf, bf, groups), expected, rtol=1e-5, atol=1e-5)
    for a, a0 in zip((w, b, mean, var, gamma, beta), before):
        np.testing.assert_array_equal(a, a0)  # inputs untouched


@pytest.mark.parametrize("layout,to_oihw", [("OHWI", (0, 3, 1, 2)), ("HWIO", (3, 2, 0, 1))])
def test_fold_conv_channels_last_weights(rng, layout, to_oihw):
    x = rng.standard_normal((2, 4, 6, 6))
    w_oihw = rng.standard_normal((5, 4, 3, 2))
    w = np.ascontiguousarray(w_oihw.transpose(np.argsort(to_oihw)))
    np.testing.assert_array_equal(w.transpose(to_oihw), w_oihw)
    mean, var, gamma, beta = _bn_params(rng, 5)
    expected = bn_eval(conv2d(x, w_oihw, np.zeros(5)), mean, var, gamma, beta, 1e-5)
    wf, bf = fn.fold_batch_norm(w, None, mean, var, gamma, beta, layout=layout)
    np.testing.assert_allclose(conv2d(x, wf.transpose(to_oihw), bf), expected, atol=1e-10)


def test_fold_linear_and_transposed_linear(rng):
    x = rng.standard_normal((9, 7))
    w = rng.standard_normal((4, 7))
    b = rng.standard_normal(4)
    mean, var, gamma, beta = _bn_params(rng, 4)
    expected = bn_eval(x @ w.T + b, mean, var, gamma, beta, 1e-5)
    wf, bf = fn.fold_batch_norm(w, b, mean, var, gamma, beta)
    np.testing.assert_allclose(x @ wf.T + bf, expected, atol=1e-10)
    wf, bf = fn.fold_batch_norm(w.T, b, mean, var, gamma, beta, transpose=True)
    np.testing.assert_allclose(x @ wf + bf, expected, atol=1e-10)
    # affine=False batch norm: gamma and beta default to ones and zeros
    wf, bf = fn.fold_batch_norm(w, b, mean, var)
    np.testing.assert_allclose(x @ wf.T + bf, bn_eval(x @ w.T + b, mean, var, 1, 0, 1e-5),
                               atol=1e-10)
    # the result agrees with fastnorm's own inference batch norm
    y = fn.batch_norm(x @ w.T + b, mean, var, gamma, beta)
    np.testing.assert_allclose(x @ fn.fold_batch_norm(w, b, mean, var, gamma, beta)[0].T
                               + fn.fold_batch_norm(w, b, mean, var, gamma, beta)[1], y,
                               atol=1e-10)


def test_fold_matches_torch_conv_and_conv_transpose():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    for conv in (torch.nn.Conv2d(3, 8, 3, groups=1), torch.nn.Conv2d(8, 8, 3, groups=4),
                 torch.nn.ConvTranspose2d(3, 8, 3, stride=2)):
        bn = torch.nn.BatchNorm2d(8, eps=1e-4).eval()
        with torch.no_grad():
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 2)
            bn.bias.uniform_(-1, 1)
        x = torch.randn(2, conv.in_channels, 9, 9)
        with torch.no_grad():
            expected = bn(conv(x))
            transpose = isinstance(conv, torch.nn.ConvTranspose2d)
            wf, bf = fn.fold_batch_norm(
                conv.weight.numpy(), conv.bias.numpy(), bn.running_mean.numpy(),
                bn.running_var.numpy(), bn.weight.numpy(), bn.bias.numpy(), eps=bn.eps,
                transpose=transpose)
            conv.weight.copy_(torch.from_numpy(wf))
            conv.bias.copy_(torch.from_numpy(bf))
            torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)


def test_fold_validation(rng):
    w = rng.standard_normal((4, 3, 3, 3))
    good = [np.zeros(4), np.ones(4)]
    with pytest.raises(ValueError, match=r"running_mean must have shape \(4,\)"):
        fn.fold_batch_norm(w, None, np.zeros(3), np.ones(4))
    with pytest.raises(ValueError, match=r"running_mean must have shape \(3,\)"):
        fn.fold_batch_norm(w, None, *good, layout="HWIO")  # output channels last: 3
    with pytest.raises(ValueError, match=r"gamma must have shape \(4,\)"):
        fn.fold_batch_norm(w, None, *good, np.ones(3))
    with pytest.raises(TypeError, match="weight must be a floating array"):
        fn.fold_batch_norm(w.astype(np.int32), None, *good)
    with pytest.raises(ValueError, match="layout"):
        fn.fold_batch_norm(w, None, *good, layout="NCHW")
    with pytest.raises(TypeError, match="running_var"):
        fn.fold_batch_norm(w, None, np.zeros(4), None)
    with pytest.raises(ValueError, match="running_var \\+ eps"):
        fn.fold_batch_norm(w, None, np.zeros(4), -np.ones(4))


# ---- the fused activation epilogue, on all four norms, against NumPy ------------------------

ACTS = {
    "relu": lambda v: np.maximum(v, 0.0),
    "silu": lambda v: v / (1.0 + np.exp(-v)),
    "gelu": np.vectorize(lambda v: 0.5 * v * (1.0 + erf(v / np.sqrt(2.0)))),
}


def _act_cases(rng, dtype, layout):
    shape = (2, 8, 5, 3) if layout == "NCHW" else (2, 5, 3, 8)
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    w = rng.standard_normal(8).astype(dtype)
    b = rng.standard_normal(8).astype(dtype)
    rm, rv = rng.standard_normal(8), rng.uniform(0.5, 2, 8)
    ax = 1 if layout == "NCHW" else -1
    rows = (rng.standard_normal((6, 24)) + 2).astype(dtype)
    rw, rb = rng.standard_normal(24).astype(dtype), rng.standard_normal(24).astype(dtype)
    return [
        ("batch_eval", lambda a: fn.batch_norm(x, rm, rv, w, b, layout=layout, activation=a),
         bn_eval(x.astype(np.float64), rm, rv, w, b, 1e-5, axis=ax)),
        ("batch_train", lambda a: fn.batch_norm(x, None, None, w, b, training=True,
                                                layout=layout, activation=a),
         R.channel_forward("batch", x, w, b, layout=layout)[0]),
        ("instance", lambda a: fn.instance_norm(x, None, None, w, b, layout=layout,
                                                activation=a),
         R.channel_forward("instance", x, w, b, layout=layout)[0]),
        ("instance_running", lambda a: fn.instance_norm(x, rm, rv, w, b, use_input_stats=False,
                                                        layout=layout, activation=a),
         bn_eval(x.astype(np.float64), rm, rv, w, b, 1e-5, axis=ax)),
        ("group", lambda a: fn.group_norm(x, 4, w, b, layout=layout, activation=a),
         R.channel_forward("group", x, w, b, layout=layout, G=4)[0]),
        ("layer", lambda a: fn.layer_norm(rows, 24, rw, rb, activation=a),
         R.layer_forward(rows, (24,), rw, rb)[0]),
        ("rms", lambda a: fn.rms_norm(rows, 24, rw, eps=1e-6, activation=a),
         rows / np.sqrt((rows.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-6) * rw),
    ]


@pytest.mark.parametrize("activation", list(ACTS))
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activation_epilogue_all_norms(rng, dtype, layout, activation, nthreads):
    tol = 2e-5 if dtype == np.float32 else 1e-10
    for name, call, expected in _act_cases(rng, dtype, layout):
        plain = call(None)
        fused = call(activation)
        assert fused.dtype == dtype and fused.shape == expected.shape, name
        want = ACTS[activation](expected)
        assert np.max(np.abs(fused - want)) <= tol * max(1.0, np.max(np.abs(want))), name
        # the fused pass equals the activation applied to the plain output
        np.testing.assert_allclose(fused, ACTS[activation](plain.astype(np.float64)),
                                   rtol=tol, atol=tol, err_msg=name)


def test_activation_rejects_unknown_names(rng):
    x = rng.standard_normal((2, 4, 3))
    with pytest.raises(ValueError, match="activation"):
        fn.group_norm(x, 2, activation="tanh")


# ---- preallocated outputs for zero-allocation pipelines -------------------------------------

def test_out_reuse_pipeline(rng):
    x = rng.standard_normal((1, 64, 14, 14)).astype(np.float32)
    w, b = rng.standard_normal(64).astype(np.float32), rng.standard_normal(64).astype(np.float32)
    rm, rv = rng.standard_normal(64), rng.uniform(0.5, 2, 64)
    buf = np.empty_like(x)
    expected = fn.batch_norm(x, rm, rv, w, b, activation="relu")
    for _ in range(3):
        y = fn.batch_norm(x, rm, rv, w, b, activation="relu", out=buf)
        assert y is buf
    np.testing.assert_array_equal(buf, expected)
    tokens = rng.standard_normal((197, 768)).astype(np.float32)
    res = rng.standard_normal((197, 768)).astype(np.float32)
    lw = np.ones(768, np.float32)
    ybuf, sbuf = np.empty_like(tokens), np.empty_like(tokens)
    y, s = fn.rms_norm(tokens, 768, lw, residual=res, out=ybuf, residual_out=sbuf)
    assert y is ybuf and s is sbuf
    np.testing.assert_allclose(sbuf, tokens + res, rtol=1e-6)
    np.testing.assert_allclose(ybuf, fn.rms_norm(tokens + res, 768, lw), rtol=1e-5, atol=1e-6)
    # in place: out may be x itself
    x2 = x.copy()
    fn.group_norm(x2, 8, w, b, out=x2)
    np.testing.assert_allclose(x2, fn.group_norm(x, 8, w, b), rtol=1e-6, atol=1e-6)


# ---- packaging: torch stays optional, stubs describe the API --------------------------------

def test_import_fastnorm_does_not_import_torch():
    code = ("import sys, fastnorm, fastnorm.nn, fastnorm.inference; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


def _stub_signatures(path):
    tree = ast.parse(open(path).read())
    sigs = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            a = node.args
            pos = [p.arg for p in a.posonlyargs + a.args]
            kw = [p.arg for p in a.kwonlyargs]
            sigs[node.name] = (pos, kw, all(p.annotation is not None for p in
                                            a.posonlyargs + a.args + a.kwonlyargs)
                               and node.returns is not None)
    return sigs


def _public_functions():
    """(name, function) for every function fastnorm exports, its submodules' included."""
    mods = [fn, fn.nn, fn.inference]
    out = []
    for mod in mods:
        for name in mod.__all__:
            f = getattr(mod, name)
            if inspect.isfunction(f):
                out.append((f"{mod.__name__}.{name}", f))
            elif inspect.isclass(f):
                out += [(f"{mod.__name__}.{name}.{m}", g)
                        for m, g in inspect.getmembers(f, inspect.isfunction)
                        if not m.startswith("_") and g.__module__.startswith("fastnorm")]
    return out


@pytest.mark.parametrize("qualname,func", _public_functions(), ids=lambda v: (
    v if isinstance(v, str) else ""))
def test_public_api_is_typed(qualname, func):
    """Each public function has a stub (.pyi beside its module) matching its runtime
    signature, or full inline annotations."""
    src = inspect.getsourcefile(func)
    stub = os.path.splitext(src)[0] + ".pyi"
    params = list(inspect.signature(func).parameters.values())
    if os.path.exists(stub):
        sigs = _stub_signatures(stub)
        assert func.__name__ in sigs, f"{stub} lacks {func.__name__}"
        pos = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        kw = [p.name for p in params if p.kind == p.KEYWORD_ONLY]
        assert sigs[func.__name__][:2] == (pos, kw)
        assert sigs[func.__name__][2], "stub not fully annotated"
    else:
        missing = [p.name for p in params if p.name not in ("self", "cls")
                   and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                   and p.annotation is inspect.Parameter.empty]
        assert not missing, f"unannotated parameters {missing}"
        assert inspect.signature(func).return_annotation is not inspect.Parameter.empty
    assert os.path.exists(os.path.join(os.path.dirname(fn.__file__), "py.typed"))


# ---- the README's examples run --------------------------------------------------------------

def _readme_blocks():
    import re

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
    if not os.path.exists(path):
        return []
    text = open(path).read()
    blocks = []
    for section in re.split(r"\n## ", text)[1:]:
        title = section.split("\n", 1)[0]
        for i, code in enumerate(re.findall(r"```python\n(.*?)```", section, re.S)):
            blocks.append(pytest.param(code, id=f"{title.split()[0]}-{i}"))
    return blocks


@pytest.mark.parametrize("code", _readme_blocks())
def test_readme_example_runs(code, tmp_path):
    # examples of optional integrations run where their package is installed (CI has them all)
    for mod in ("torch", "dask", "distributed", "sklearn", "tqdm", "ml_dtypes"):
        if f"import {mod}" in code or f"from {mod}" in code:
            pytest.importorskip(mod)
    if code.startswith("# run with: torchrun"):
        # a data-parallel example: run it as written, two processes on loopback
        import socket
        import subprocess
        import sys

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        script = tmp_path / "example.py"
        # the example as written, then an exit that skips PyTorch gloo's C++ teardown, which
        # can abort after all work is done (3 of 8 runs of plain DDP without fastnorm here)
        script.write_text(code + "\nimport os, sys\nsys.stdout.flush()\nsys.stderr.flush()\n"
                                 "os._exit(0)\n")
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   OMP_NUM_THREADS="1")
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
             "--master_addr=127.0.0.1", f"--master_port={port}", str(script)],
            env=env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[:3000]
        return
    exec(compile(code, "README.md", "exec"), {})
