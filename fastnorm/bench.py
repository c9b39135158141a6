"""The fastnorm benchmark report: ``python -m fastnorm.bench [--quick] [--json PATH] [--plot PATH]``.

For every op and layout it times, in one run and at 1 and at all threads:

* ``copy``: a parallel copy of the same tensor at the same thread count, the faster of a memcpy
  per thread and a streaming copy (the floor: a forward must at least read x and write y);
* fastnorm forward and backward (dx, dweight, dbias together);
* the plain NumPy forward (the formula written with NumPy reductions);
* PyTorch CPU forward and backward (``torch.autograd.grad`` through ``torch.nn.functional``),
  when torch is installed;
* ONNX Runtime for the inference ops, when onnxruntime and onnx are installed.

Times are the minimum over repeats of the mean of an inner loop; the report prints ratios
(time / copy, speedups), which stay meaningful on a shared, noisy machine. Nothing is asserted.
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np

import fastnorm as fn
from fastnorm import _dispatch as D
from fastnorm._kernels import _norm as K


# ---- timing ------------------------------------------------------------------------------------

def copy_call(src, dst, threads, stream=None):
    """A parallel copy of src (flat) into dst: memcpy per thread, or streaming stores (stream
    None: from the size where the ops stream their outputs; see parallel_copy)."""
    stream = bool(D.stream(dst)) if stream is None else stream
    return lambda: K.parallel_copy(src, dst, threads, stream)


def copy_time(src, dst, threads, budget=1.0):
    """The floor: the faster of the two parallel copies. Which one wins depends on the size and
    on whether the arrays stay in the last-level cache between calls, so both are measured."""
    return min(timeit(copy_call(src, dst, threads, s), budget=budget / 2) for s in (False, True))


def copy_calls(src, dst, threads):
    """The two floor copies as named calls for timeit_rounds; the floor is their minimum."""
    return {"copy_memcpy": copy_call(src, dst, threads, False),
            "copy_stream": copy_call(src, dst, threads, True)}


def timeit_rounds(calls, rounds=3, budget=1.0, max_rounds=None, settle=0.03, watch=None,
                  repeat=5, paired=()):
    """Seconds per call of each named callable (min over samples). The callables take turns,
    round after round, each keeping its best: on a shared machine a slow spell (a neighbour
    loading the memory bus) then lands on every one of them instead of one, so a ratio taken
    from these times is not at the mercy of when each side happened to run. After ``rounds``,
    more rounds (up to ``max_rounds``) while the last one still lowered the best of a call
    named in ``watch`` (default: every call) by more than ``settle``: a spell that outlasted
    the first rounds gets more chances to end.

    With the two floor copies among the calls ("copy_memcpy", "copy_stream"), every call named
    in ``paired`` also gets "ratio_<name>": the median over the rounds of its time in the round
    divided by the faster copy's in the same round. Each ratio pairs two measurements taken
    within a fraction of a second of each other, so a spell that lasts longer than that
    divides out; the median then drops the rounds a short spell caught on one side only.
    (The best time of each side taken separately can pair the copy's luckiest moment with the
    kernel's ordinary one, or the other way round.)"""
    best = {}
    per_round = {name: [] for name in calls}
    r = 0
    while True:
        improved = False
        for name, f in calls.items():
            t = timeit(f, budget=budget / rounds, repeat=repeat)
            per_round[name].append(t)
            prev = best.get(name, float("inf"))
            if watch is None or name in watch:
                improved |= t < prev * (1 - settle)
            best[name] = min(prev, t)
        r += 1
        if r >= rounds and (not improved or r >= (max_rounds or rounds)):
            break
    if "copy_memcpy" in best:
        best["copy"] = min(best.pop("copy_memcpy"), best.pop("copy_stream"))
        floor = [min(a, b) for a, b in zip(per_round["copy_memcpy"], per_round["copy_stream"])]
        for name in paired:
            if name in per_round:
                best["ratio_" + name] = _median(t / c for t, c in zip(per_round[name], floor))
    return best


def timeit(f, min_sample=0.02, repeat=5, budget=1.0):
    """Seconds per call: min over ``repeat`` samples of an inner loop lasting >= min_sample."""
    f()
    t0 = time.perf_counter()
    f()
    one = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, int(min_sample / one))
    repeat = max(2, min(repeat, int(budget / (one * inner)) or 2))
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(inner):
            f()
        best = min(best, (time.perf_counter() - t0) / inner)
    return best


# ---- what is measured ----------------------------------------------------------------------------

def cases(quick):
    """(name, op, layout, shape, extra): the headline shapes of the design notes."""
    img = (8, 64, 28, 28) if quick else (32, 64, 56, 56)
    rows = (2048, 1024) if quick else (8192, 1024)
    out = [
        ("batch", "batch", "NCHW", img, {}),
        ("batch", "batch", "NHWC", img, {}),
        ("layer (C,H,W)", "layer", "NCHW", img, {"ns": img[1:]}),
        ("instance", "instance", "NCHW", img, {}),
        ("instance", "instance", "NHWC", img, {}),
        ("group (32)", "group", "NCHW", img, {"G": 32}),
        ("group (32)", "group", "NHWC", img, {"G": 32}),
        ("layer (D=1024)", "layer", "rows", rows, {"ns": rows[1:]}),
        ("batch inference", "batch_eval", "NCHW", img, {}),
        ("batch inference", "batch_eval", "NHWC", img, {}),
    ]
    return out


def _phys_shape(shape, layout):
    """Array shape for a logical NCHW shape stored in ``layout``."""
    if layout == "NHWC":
        return (shape[0],) + tuple(shape[2:]) + (shape[1],)
    return shape


def _layer_affine(ns, dtype):
    """Layer norm's element-wise weight and bias for the benchmarks: ones and zeros."""
    return np.ones(ns, dtype=dtype), np.zeros(ns, dtype=dtype)


def _numpy_forward(op, x, layout, extra, w, b, eps=1e-5):
    """The formula as a NumPy user writes it (no care for precision): the baseline."""
    if op == "layer":
        k = len(extra["ns"])
        ax = tuple(range(x.ndim - k, x.ndim))
        m = x.mean(axis=ax, keepdims=True)
        v = x.var(axis=ax, keepdims=True)
        lw, lb = _layer_affine(extra["ns"], x.dtype)
        return (x - m) / np.sqrt(v + eps) * lw + lb
    cax = 1 if layout == "NCHW" else x.ndim - 1
    shape = [1] * x.ndim
    shape[cax] = -1
    if op == "group":
        G = extra["G"]
        xc = x if layout == "NCHW" else np.moveaxis(x, -1, 1)
        xg = xc.reshape(xc.shape[0], G, -1)
        m = xg.mean(axis=2, keepdims=True)
        v = xg.var(axis=2, keepdims=True)
        y = ((xg - m) / np.sqrt(v + eps)).reshape(xc.shape)
        y = y if layout == "NCHW" else np.moveaxis(y, 1, -1)
        return y * w.reshape(shape) + b.reshape(shape)
    if op in ("batch", "batch_eval"):
        ax = tuple(i for i in range(x.ndim) if i != cax)
    else:
        ax = tuple(i for i in range(1, x.ndim) if i != cax)
    m = x.mean(axis=ax, keepdims=True)
    v = x.var(axis=ax, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * w.reshape(shape) + b.reshape(shape)


def _fastnorm_calls(op, x, layout, extra, w, b, dy, out=None):
    """(forward, backward or None) closures on fastnorm; with ``out`` (an array like x) both
    write into it, as the copy they are compared with writes into its own buffer."""
    lay = "NCHW" if layout == "rows" else layout
    if op == "layer":
        # weight and bias of normalized_shape, as a LayerNorm module has (and PyTorch's and
        # ONNX Runtime's calls get)
        ns = extra["ns"]
        lw, lb = _layer_affine(ns, x.dtype)
        _, m, r = fn.layer_norm_forward(x, ns, lw, lb)
        return (lambda: fn.layer_norm_forward(x, ns, lw, lb, out=out),
                lambda: fn.layer_norm_backward(dy, x, m, r, ns, lw, out=out))
    if op == "batch_eval":
        rm = np.zeros(w.shape[0])
        rv = np.ones(w.shape[0])
        return (lambda: fn.batch_norm(x, rm, rv, w, b, layout=lay, out=out)), None
    args = (extra["G"],) if op == "group" else ()
    fwd = getattr(fn, f"{op}_norm_forward")
    bwd = getattr(fn, f"{op}_norm_backward")
    _, m, r = fwd(x, *args, w, b, layout=lay)
    return (lambda: fwd(x, *args, w, b, layout=lay, out=out),
            lambda: bwd(dy, x, m, r, *args, w, layout=lay, out=out))


def _torch_calls(op, x, layout, extra, w, b, dy):
    import torch
    F = torch.nn.functional
    if layout == "NHWC":  # the same memory as a channels_last NCHW tensor
        tx = torch.from_numpy(x).permute(0, x.ndim - 1, *range(1, x.ndim - 1))
        tdy = torch.from_numpy(dy).permute(0, x.ndim - 1, *range(1, x.ndim - 1))
    else:
        tx, tdy = torch.from_numpy(x), torch.from_numpy(dy)
    tw, tb = torch.from_numpy(w), torch.from_numpy(b)
    if op == "layer":
        ns = tuple(extra["ns"])
        tw = torch.ones(ns, dtype=tx.dtype)
        tb = torch.zeros(ns, dtype=tx.dtype)

        def f(a, ww, bb):
            return F.layer_norm(a, ns, ww, bb, 1e-5)
    elif op == "batch":
        def f(a, ww, bb):
            return F.batch_norm(a, None, None, ww, bb, True, 0.1, 1e-5)
    elif op == "batch_eval":
        rm, rv = torch.zeros(w.shape[0], dtype=tx.dtype), torch.ones(w.shape[0], dtype=tx.dtype)
        with torch.no_grad():
            return (lambda: F.batch_norm(tx, rm, rv, tw, tb, False, 0.1, 1e-5)), None
    elif op == "instance":
        def f(a, ww, bb):
            return F.instance_norm(a, weight=ww, bias=bb, eps=1e-5)
    else:
        G = extra["G"]

        def f(a, ww, bb):
            return F.group_norm(a, G, ww, bb, 1e-5)

    def fwd():
        with torch.no_grad():
            return f(tx, tw, tb)

    gx = tx.detach().requires_grad_(True)
    gw = tw.detach().requires_grad_(True)
    gb = tb.detach().requires_grad_(True)
    y = f(gx, gw, gb)

    def bwd():
        return torch.autograd.grad(y, (gx, gw, gb), tdy, retain_graph=True)

    return fwd, bwd


def _onnx_call(op, x, layout, extra, threads):
    """An ONNX Runtime session for the inference forms (NCHW only: ONNX ops are channels-first)."""
    if layout != "NCHW":
        return None
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except Exception:
        return None
    C = x.shape[1]
    dt = TensorProto.FLOAT if x.dtype == np.float32 else TensorProto.DOUBLE
    inits = []
    opset = 21

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, dtype=x.dtype), name))
        return name

    if op == "batch_eval":
        node = helper.make_node("BatchNormalization",
                                ["x", const("s", np.ones(C)), const("b", np.zeros(C)),
                                 const("m", np.zeros(C)), const("v", np.ones(C))], ["y"],
                                epsilon=1e-5)
    elif op == "instance":
        node = helper.make_node("InstanceNormalization",
                                ["x", const("s", np.ones(C)), const("b", np.zeros(C))], ["y"],
                                epsilon=1e-5)
    elif op == "layer":
        ns = extra["ns"]
        node = helper.make_node("LayerNormalization",
                                ["x", const("s", np.ones(ns)), const("b", np.zeros(ns))], ["y"],
                                axis=x.ndim - len(ns), epsilon=1e-5)
    elif op == "group":
        node = helper.make_node("GroupNormalization",
                                ["x", const("s", np.ones(C)), const("b", np.zeros(C))], ["y"],
                                num_groups=extra["G"], epsilon=1e-5)
    else:
        return None
    graph = helper.make_graph([node], "norm", [helper.make_tensor_value_info("x", dt, x.shape)],
                              [helper.make_tensor_value_info("y", dt, x.shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    try:
        sess = ort.InferenceSession(model.SerializeToString(), so,
                                    providers=["CPUExecutionProvider"])
    except Exception:
        return None
    return lambda: sess.run(None, {"x": x})


# ---- the report ----------------------------------------------------------------------------------

def _inputs(rng, shape, layout, dtype):
    """x and dy of a logical shape stored in layout, and the per-channel weight and bias."""
    phys = shape if layout == "rows" else _phys_shape(shape, layout)
    x = rng.standard_normal(phys).astype(dtype)
    dy = rng.standard_normal(phys).astype(dtype)
    return x, dy, np.ones(shape[1], dtype=dtype), np.zeros(shape[1], dtype=dtype)


def _own_calls(op, x, layout, extra, w, b, dy, threads):
    """The copies and fastnorm's calls of one row of the report."""
    flat = x.reshape(-1)
    calls = copy_calls(flat, np.empty_like(flat), threads)
    # into a preallocated out= for the ratio to the copy (right after it in every round),
    # which also writes into a buffer it already has: fresh memory from the OS costs a
    # zeroing pass (above glibc's 32 MiB mmap threshold, on every call) that is not the
    # kernel's ...
    calls["fastnorm_fwd_out"], calls["fastnorm_bwd_out"] = _fastnorm_calls(
        op, x, layout, extra, w, b, dy, out=np.empty_like(x))
    # ... and with fresh outputs (as torch and NumPy allocate theirs) for the speedups
    calls["fastnorm_fwd"], calls["fastnorm_bwd"] = _fastnorm_calls(op, x, layout, extra, w, b,
                                                                   dy)
    return calls


def run(quick=False, dtypes=("float32",), thread_counts=None, progress=True):
    try:
        import torch
    except Exception:
        torch = None
    nmax = fn.get_num_threads()
    thread_counts = thread_counts or sorted({1, nmax})
    rng = np.random.default_rng(0)
    budget = 0.4 if quick else 1.5
    results = []
    todo = [(c, d, t) for c in cases(quick) for d in dtypes for t in thread_counts]
    for i, ((name, op, layout, shape, extra), dtype, t) in enumerate(todo):
        if progress:
            print(f"\r[{i + 1}/{len(todo)}] {name} {layout} {dtype} {t}T ...".ljust(60),
                  end="", file=sys.stderr, flush=True)
        x, dy, w, b = _inputs(rng, shape, layout, dtype)
        row = {"name": name, "op": op, "layout": layout, "shape": list(shape), "dtype": dtype,
               "threads": t, "bytes": int(x.nbytes)}
        with fn.threads(t):
            calls = _own_calls(op, x, layout, extra, w, b, dy, t)
            if op in ("batch_eval", "instance", "layer", "group"):
                sess = _onnx_call(op if op != "layer" or layout != "rows" else "layer", x,
                                  layout, extra, t)
                if sess is not None:
                    calls["onnxruntime_fwd"] = sess
            prev = torch.get_num_threads() if torch is not None else None
            try:
                if torch is not None:
                    torch.set_num_threads(t)
                    calls["torch_fwd"], calls["torch_bwd"] = _torch_calls(op, x, layout,
                                                                          extra, w, b, dy)
                calls = {k: f for k, f in calls.items() if f is not None}
                # more rounds while the best times still move (not for the peers: their
                # allocations make them noisier than the kernels); short rounds, so that each
                # round's ratio to the copy pairs two measurements close in time
                row.update(timeit_rounds(calls, rounds=2 if quick else 6,
                                         max_rounds=None if quick else 10, repeat=2,
                                         watch=("copy_memcpy", "copy_stream",
                                                "fastnorm_fwd_out", "fastnorm_bwd_out"),
                                         budget=budget * len(calls) / 2,
                                         paired=("fastnorm_fwd_out", "fastnorm_bwd_out")))
            finally:
                if prev is not None:
                    torch.set_num_threads(prev)
            for k in ("fastnorm_bwd", "fastnorm_bwd_out", "ratio_fastnorm_bwd_out"):
                row.setdefault(k, None)
            if t == 1 or not quick:
                row["numpy_fwd"] = timeit(
                    lambda: _numpy_forward(op, x, layout, extra, w, b), budget=budget,
                    repeat=2)
        results.append(row)
    if progress:
        print("\r".ljust(62) + "\r", end="", file=sys.stderr, flush=True)
    return results


def latency(progress=True):
    """Per-call time on small tensors (edge inference): fastnorm vs torch.nn.functional."""
    try:
        import torch
        F = torch.nn.functional
    except Exception:
        torch = None
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 64, 14, 14)).astype(np.float32)
    r = rng.standard_normal((1, 197, 768)).astype(np.float32)
    w64, b64 = np.ones(64, np.float32), np.zeros(64, np.float32)
    w768, b768 = np.ones(768, np.float32), np.zeros(768, np.float32)
    rm, rv = np.zeros(64, np.float32), np.ones(64, np.float32)
    y = np.empty_like(x)
    rows = [
        ("batch inference (1,64,14,14)", lambda: fn.batch_norm(x, rm, rv, w64, b64),
         lambda: fn.batch_norm(x, rm, rv, w64, b64, out=y),
         ("batch_norm", lambda t: (t(x), t(rm), t(rv), t(w64), t(b64)))),
        ("group norm 32 (1,64,14,14)", lambda: fn.group_norm(x, 32, w64, b64),
         lambda: fn.group_norm(x, 32, w64, b64, out=y),
         ("group_norm", lambda t: (t(x), 32, t(w64), t(b64)))),
        ("layer norm (1,197,768)", lambda: fn.layer_norm(r, 768, w768, b768), None,
         ("layer_norm", lambda t: (t(r), (768,), t(w768), t(b768)))),
    ]
    out = []
    for name, f, f_out, (tname, targs) in rows:
        if progress:
            print(f"\rlatency: {name} ...".ljust(60), end="", file=sys.stderr, flush=True)
        row = {"name": name, "fastnorm_us": timeit(f, min_sample=0.01) * 1e6,
               "fastnorm_out_us": timeit(f_out, min_sample=0.01) * 1e6 if f_out else None}
        if torch is not None:
            args = targs(torch.from_numpy)
            tf = getattr(F, tname)
            with torch.no_grad():
                row["torch_us"] = timeit(lambda: tf(*args), min_sample=0.01) * 1e6
        out.append(row)
    return out


def scaling(quick=False, progress=True):
    """Ratio to copy across tensor sizes (L2, L3 and beyond), at all threads; both write into
    preallocated buffers."""
    sizes = [256 << 10, 4 << 20, 64 << 20] + ([] if quick else [1 << 30])
    t = fn.get_num_threads()
    rng = np.random.default_rng(2)
    res = []
    for nbytes in sizes:
        n = nbytes // 4
        C, S = 64, max(1, n // (64 * 3136))
        N = max(1, n // (C * 3136))
        img = (N, C, 56, 56) if n >= C * 3136 else (1, C, max(1, n // (C * 8)), 8)
        rows = (max(1, n // 1024), 1024)
        cw, cb = np.ones(C, np.float32), np.zeros(C, np.float32)
        lw, lb = _layer_affine((1024,), np.float32)
        for name, shape, f in (
                ("group (32) NCHW fwd", img,
                 lambda a, o: fn.group_norm_forward(a, 32, cw, cb, out=o)),
                ("batch NHWC fwd", img[:1] + img[2:] + img[1:2],
                 lambda a, o: fn.batch_norm_forward(a, cw, cb, layout="NHWC", out=o)),
                ("layer (D=1024) fwd", rows,
                 lambda a, o: fn.layer_norm_forward(a, 1024, lw, lb, out=o))):
            if progress:
                print(f"\rscaling: {name} {nbytes >> 10} KiB ...".ljust(60), end="",
                      file=sys.stderr, flush=True)
            a = rng.standard_normal(shape, dtype=np.float32)
            flat = a.reshape(-1)
            dst = np.empty_like(flat)
            budget = 0.3 if quick else 1.0
            o = np.empty_like(a)  # like the copy, write into an existing buffer
            calls = copy_calls(flat, dst, t)
            calls["op"] = lambda: f(a, o)
            tm = timeit_rounds(calls, rounds=2 if quick else 6, budget=1.5 * budget,
                               max_rounds=None if quick else 10, repeat=2, paired=("op",))
            res.append({"name": name, "bytes": int(a.nbytes), "threads": t,
                        "ratio": tm["ratio_op"], "best_ratio": tm["op"] / tm["copy"]})
            del a, flat, dst, o
    return res


def shape_cases(quick):
    """(op, layout, shape, extra): shapes models use beyond the headline ones, where the
    per-unit work is shaped differently: planes of 7 x 7 to 224 x 224, many or few channels,
    one sample, a 3-d volume, and layer-norm rows from 64 to 16384 values."""
    if quick:
        imgs = [(8, 256, 7, 7), (2, 32, 96, 96)]
        rows = [(4096, 64), (64, 4096)]
    else:
        imgs = [(32, 256, 56, 56), (32, 512, 28, 28), (32, 1024, 14, 14), (32, 2048, 7, 7),
                (256, 64, 7, 7), (8, 32, 128, 128), (1, 64, 224, 224), (16, 128, 32, 32, 8)]
        rows = [(4096, 768), (2048, 4096), (16384, 256), (65536, 64), (512, 16384)]
    out = []
    for shape in imgs:
        for layout in ("NCHW", "NHWC"):
            out += [("batch", layout, shape, {}), ("instance", layout, shape, {}),
                    ("group", layout, shape, {"G": 32})]
        out.append(("layer", "NCHW", shape, {"ns": shape[1:]}))
    out += [("layer", "rows", r, {"ns": r[1:]}) for r in rows]
    return out


def shapes(quick=False, dtypes=("float32",), progress=True):
    """fastnorm forward and backward against the copy and PyTorch over shape_cases, at all
    threads: ratios within one run, as the main table's."""
    try:
        import torch
    except Exception:
        torch = None
    t = fn.get_num_threads()
    rng = np.random.default_rng(4)
    todo = [(c, d) for c in shape_cases(quick) for d in dtypes]
    res = []
    for i, ((op, layout, shape, extra), dtype) in enumerate(todo):
        if progress:
            print(f"\r[{i + 1}/{len(todo)}] shapes: {op} {layout} {shape} {dtype} ...".ljust(60),
                  end="", file=sys.stderr, flush=True)
        x, dy, w, b = _inputs(rng, shape, layout, dtype)
        row = {"op": op, "layout": layout, "shape": list(shape), "dtype": dtype, "threads": t,
               "bytes": int(x.nbytes)}
        with fn.threads(t):
            calls = _own_calls(op, x, layout, extra, w, b, dy, t)
            prev = torch.get_num_threads() if torch is not None else None
            try:
                if torch is not None:
                    torch.set_num_threads(t)
                    calls["torch_fwd"], calls["torch_bwd"] = _torch_calls(op, x, layout, extra,
                                                                          w, b, dy)
                row.update(timeit_rounds(calls, rounds=2 if quick else 4,
                                         budget=(0.2 if quick else 0.5) * len(calls) / 2,
                                         repeat=2,
                                         paired=("fastnorm_fwd_out", "fastnorm_bwd_out")))
            finally:
                if prev is not None:
                    torch.set_num_threads(prev)
        res.append(row)
        del x, dy, calls
    if progress:
        print("\r".ljust(62) + "\r", end="", file=sys.stderr, flush=True)
    return res


def shapes_table(res):
    lines = [("op", "layout", "shape", "dtype", "MiB", "fwd/copy", "bwd/copy", "fwd vs torch",
              "bwd vs torch")]
    for r in res:
        lines.append((r["op"], r["layout"], "x".join(map(str, r["shape"])), r["dtype"],
                      f"{r['bytes'] / 2**20:.1f}", _fmt(r.get("ratio_fastnorm_fwd_out")),
                      _fmt(r.get("ratio_fastnorm_bwd_out")),
                      _fmt(_ratio(r.get("torch_fwd"), r["fastnorm_fwd"]), "{:.2f}x"),
                      _fmt(_ratio(r.get("torch_bwd"), r["fastnorm_bwd"]), "{:.2f}x")))
    return _grid(lines)


def copy_check():
    """The floor is honest: our parallel copy at one thread vs numpy.copyto (at most 1)."""
    a = np.random.default_rng(3).standard_normal(32 * 64 * 56 * 56, dtype=np.float32)
    b = np.empty_like(a)
    ours = copy_time(a, b, 1)
    ref = timeit(lambda: np.copyto(b, a))
    return ours / ref


def _ratio(a, b):
    return None if a is None or b is None else a / b


def _fmt(v, spec="{:.2f}"):
    return "-" if v is None else spec.format(v)


def _grid(lines):
    hdr = lines[0]
    widths = [max(len(str(l[i])) for l in lines) for i in range(len(hdr))]
    out = []
    for j, l in enumerate(lines):
        out.append("  ".join(str(v).ljust(widths[i]) if i < 3 else str(v).rjust(widths[i])
                             for i, v in enumerate(l)))
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _cells(results):
    """The numbers of one run's table, per (name, layout, dtype, threads): fwd/copy, bwd/copy,
    fwd GB/s, vs numpy, fwd vs torch, bwd vs torch, ort/copy, fastnorm's and the copy's
    speedup over one thread (None where not measured). Every ratio is taken within the run."""
    one = {(r["name"], r["layout"], r["dtype"]): r for r in results if r["threads"] == 1}
    out = {}
    for r in results:
        fwd, bwd, cp = r["fastnorm_fwd"], r.get("fastnorm_bwd"), r["copy"]
        fwo, bwo = r.get("fastnorm_fwd_out", fwd), r.get("fastnorm_bwd_out", bwd)
        base = one.get((r["name"], r["layout"], r["dtype"]))
        sx = sc = None
        if base is not None and r["threads"] > 1:
            sx = base.get("fastnorm_fwd_out", base["fastnorm_fwd"]) / fwo
            sc = base["copy"] / cp
        # the paired ratios (median over rounds); a report from before them: the best times'
        rf = r.get("ratio_fastnorm_fwd_out", _ratio(fwo, cp))
        rb = r.get("ratio_fastnorm_bwd_out", _ratio(bwo, cp))
        out[(r["name"], r["layout"], r["dtype"], r["threads"])] = [
            rf, rb, 2 * r["bytes"] / fwo / 1e9,
            _ratio(r.get("numpy_fwd"), fwd), _ratio(r.get("torch_fwd"), fwd),
            _ratio(r.get("torch_bwd"), bwd), _ratio(r.get("onnxruntime_fwd"), cp), sx, sc]
    return out


def _median(vals):
    vals = sorted(v for v in vals if v is not None)
    if not vals:
        return None
    m = len(vals) // 2
    return vals[m] if len(vals) % 2 else (vals[m - 1] + vals[m]) / 2


def table(results, runs=None):
    """One table: rows per (op, layout, dtype, threads), ratios measured in the same run; with
    ``runs`` (several runs' results, ``results`` among them), each number is the median over
    the runs of that number. 'xT/1T' is the speedup of fastnorm's forward (and, in brackets,
    of the copy) over the same row at one thread."""
    per_run = [_cells(rs) for rs in (runs or [results])]
    hdr = ("op", "layout", "dtype", "thr", "fwd/copy", "bwd/copy", "fwd GB/s", "vs numpy",
           "fwd vs torch", "bwd vs torch", "ort/copy", "xT/1T (copy)")
    lines = [hdr]
    for r in results:
        key = (r["name"], r["layout"], r["dtype"], r["threads"])
        v = [_median(c[key][i] for c in per_run if key in c) for i in range(9)]
        scale = "-" if v[7] is None else f"{v[7]:.2f} ({v[8]:.2f})"
        lines.append((
            r["name"], r["layout"], r["dtype"], str(r["threads"]),
            _fmt(v[0]), _fmt(v[1]), _fmt(v[2], "{:.1f}"), _fmt(v[3], "{:.1f}x"),
            _fmt(v[4], "{:.2f}x"), _fmt(v[5], "{:.2f}x"), _fmt(v[6]), scale,
        ))
    return _grid(lines)


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [f"{r['name']} {r['layout']} {r['threads']}T" for r in results]
    y = np.arange(len(results))
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(results) + 1.5))
    h = 0.27
    series = [("fastnorm fwd", [r.get("ratio_fastnorm_fwd_out") for r in results]),
              ("fastnorm bwd", [r.get("ratio_fastnorm_bwd_out") for r in results]),
              ("torch fwd", [_ratio(r.get("torch_fwd"), r["copy"]) for r in results])]
    for k, (lab, vals) in enumerate(series):
        ax.barh(y + (k - 1) * h, [v or 0 for v in vals], height=h, label=lab)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("time / parallel copy of the same tensor (lower is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastnorm.bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small shapes, short timing (< 1 min)")
    p.add_argument("--dtype", action="append", choices=["float32", "float64"],
                   help="dtype(s) to measure (default float32)")
    p.add_argument("--threads", type=int, action="append",
                   help="thread counts (default: 1 and all)")
    p.add_argument("--json", metavar="PATH", help="write the raw figures as JSON")
    p.add_argument("--plot", metavar="PATH", help="bar chart of the ratios (needs matplotlib)")
    p.add_argument("--scaling", action="store_true",
                   help="also the ratio to copy from 256 KiB to 1 GiB tensors (needs ~3 GB)")
    p.add_argument("--shapes", action="store_true",
                   help="also fastnorm against the copy and PyTorch over shapes models use "
                        "(small planes, many channels, one sample, rows of 64 to 16384), at "
                        "all threads")
    p.add_argument("--runs", type=int, default=1, metavar="N",
                   help="measure the table (and scaling) N times, one run after the other, and "
                        "print the median of each number (on a shared, noisy machine)")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    runs, scals = [], []
    for _ in range(args.runs):
        runs.append(run(args.quick, tuple(args.dtype or ["float32"]), args.threads))
        if args.scaling:
            scals.append(scaling(args.quick))
    results = runs[0]
    shp = shapes(args.quick, tuple(args.dtype or ["float32"])) if args.shapes else []
    lat = latency()
    scal = [dict(r, ratio=_median(s[i]["ratio"] for s in scals)) for i, r in enumerate(scals[0])] \
        if scals else []
    cc = copy_check()
    print("\r".ljust(62) + "\r", end="", file=sys.stderr, flush=True)
    cfg = fn.show_config(file=open(os.devnull, "w"))
    print(f"fastnorm {fn.__version__} | {platform.machine()} | {os.cpu_count()} CPUs | "
          f"simd {cfg['simd']} | openmp {cfg['openmp']} | numpy {np.__version__}", end="")
    try:
        import torch
        print(f" | torch {torch.__version__}", end="")
    except Exception:
        pass
    print("\nfwd/copy, bwd/copy: fastnorm writing into a preallocated out= / a parallel copy of "
          "the same tensor into its own buffer, same thread count: the median over the rounds "
          "of the ratio within each round.\n'vs X': X time / fastnorm "
          "time, both allocating their outputs (> 1: fastnorm faster). xT/1T: forward speedup "
          "over one thread (the copy's in brackets).\n")
    if args.runs > 1:
        print(f"median of {args.runs} runs of every number (each a ratio within its run)\n")
    print(table(results, runs))
    print(f"\ncopy floor check: parallel copy at 1 thread / numpy.copyto = {cc:.2f}")
    print("\nper-call latency on small tensors, microseconds (fastnorm with out= in brackets):\n")
    lines = [("tensor", "fastnorm", "torch", "torch/fastnorm")]
    for r in lat:
        fo = f" ({r['fastnorm_out_us']:.1f})" if r.get("fastnorm_out_us") else ""
        lines.append((r["name"], f"{r['fastnorm_us']:.1f}{fo}", _fmt(r.get("torch_us"), "{:.1f}"),
                      _fmt(_ratio(r.get("torch_us"), r["fastnorm_us"]), "{:.2f}x")))
    print(_grid(lines))
    if scal:
        print("\nscaling: time / copy by tensor size, all threads:\n")
        lines = [("op", "size", "ratio to copy")]
        for r in scal:
            lines.append((r["name"], f"{r['bytes'] / 2**20:.2f} MiB", f"{r['ratio']:.2f}"))
        print(_grid(lines))
    if shp:
        print(f"\nother shapes, {fn.get_num_threads()} threads (ratios as above):\n")
        print(shapes_table(shp))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": cfg, "results": results, "latency": lat, "scaling": scal,
                       "shapes": shp,
                       "copy_vs_numpy_copyto": cc, "runs": runs, "scaling_runs": scals},
                      f, indent=1)
    if args.plot:
        plot(results, args.plot)
    return results


if __name__ == "__main__":
    main()
