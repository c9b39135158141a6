"""Benchmarks for using fastnorm for real: converted PyTorch models, per-call overhead on small
tensors, RMSNorm and fused add + norm against a copy, and the activation epilogue.

    python bench/bench_torch_models.py            # full
    python bench/bench_torch_models.py --quick    # a few seconds per section (CI)

Prints one table per section; ``--json PATH`` writes the figures. Times are the minimum over
repeats of an inner loop (``fastnorm.bench.timeit``); nothing is asserted. Needs PyTorch for the
model and PyTorch columns (pin it: ``pip install torch==2.13.0``).
"""
import argparse
import copy
import json
import sys

import numpy as np

import fastnorm as fn
from fastnorm.bench import copy_time, timeit

try:
    import torch
    import fastnorm.torch as ft
except ImportError:  # the NumPy sections still run
    torch = None


def _row(cells, widths):
    return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in
                     enumerate(zip(cells, widths)))


def _table(title, header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    print(f"\n{title}")
    print(_row(header, widths))
    for r in rows:
        print(_row(r, widths))


def _us(t):
    return f"{t * 1e6:.1f}"


def _copy_time(x, threads):
    flat = x.reshape(-1)
    dst = np.empty_like(flat)
    return copy_time(flat, dst, threads)


# ---- 1. converted models: one training step ------------------------------------------------

def _models(quick):
    nn = torch.nn

    class CNN(nn.Module):
        def __init__(self, c=32):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                nn.Conv2d(c, c, 3, padding=1, bias=False), nn.GroupNorm(8, c), nn.ReLU(),
                nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * c),
                nn.ReLU(), nn.Conv2d(2 * c, 2 * c, 3, padding=1, bias=False),
                nn.GroupNorm(8, 2 * c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
                nn.Linear(2 * c, 10))

        def forward(self, x):
            return self.body(x)

    class Block(nn.Module):
        def __init__(self, d=256, heads=4):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
            self.head = nn.Linear(d, 10)

        def forward(self, x):
            h = self.ln1(x)
            x = x + self.attn(h, h, h, need_weights=False)[0]
            x = x + self.mlp(self.ln2(x))
            return self.head(x.mean(1))

    n = 8 if quick else 32
    return [
        ("CNN BN+GN", CNN, (n, 3, 32, 32), None),
        ("CNN BN+GN", CNN, (n, 3, 32, 32), torch.channels_last),
        ("transformer block LN", Block, (n // 2, 128, 256), None),
    ]


def bench_models(quick):
    rows, out = [], []
    for name, cls, shape, fmt in _models(quick):
        torch.manual_seed(0)
        ref = cls()
        fast = ft.convert(copy.deepcopy(ref))
        x = torch.randn(shape)
        if fmt is not None:
            ref, fast, x = (ref.to(memory_format=fmt), fast.to(memory_format=fmt),
                            x.to(memory_format=fmt))
        t = torch.randint(0, 10, (shape[0],))
        times = {}
        for label, model in (("torch", ref), ("fastnorm", fast)):
            opt = torch.optim.SGD(model.parameters(), lr=1e-3)

            def step():
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), t).backward()
                opt.step()

            times[label] = timeit(step, min_sample=0.05, repeat=3 if quick else 7,
                                  budget=1.0 if quick else 4.0)
        layout = "channels_last" if fmt is not None else "contiguous"
        rows.append([name, layout, "x".join(map(str, shape)), f"{times['torch'] * 1e3:.2f}",
                     f"{times['fastnorm'] * 1e3:.2f}", f"{times['torch'] / times['fastnorm']:.2f}"])
        out.append(dict(model=name, layout=layout, shape=shape, torch_s=times["torch"],
                        fastnorm_s=times["fastnorm"]))
    _table(f"Training step (forward + backward + SGD), {torch.get_num_threads()} threads",
           ["model", "memory", "input", "torch ms", "fastnorm ms", "speedup"], rows)
    return out


# ---- 2. per-call overhead on small tensors -------------------------------------------------

def bench_overhead(quick):
    rng = np.random.default_rng(0)
    rows, out = [], []
    x = rng.standard_normal((1, 64, 14, 14)).astype(np.float32)
    w, b = np.ones(64, np.float32), np.zeros(64, np.float32)
    rm, rv = np.zeros(64, np.float32), np.ones(64, np.float32)
    tok = rng.standard_normal((1, 197, 768)).astype(np.float32)
    lw, lb = np.ones(768, np.float32), np.zeros(768, np.float32)
    ybuf, tbuf = np.empty_like(x), np.empty_like(tok)
    cases = [
        ("batch_norm eval", "1x64x14x14", lambda: fn.batch_norm(x, rm, rv, w, b),
         lambda: fn.batch_norm(x, rm, rv, w, b, out=ybuf), "bn"),
        ("group_norm G=32", "1x64x14x14", lambda: fn.group_norm(x, 32, w, b),
         lambda: fn.group_norm(x, 32, w, b, out=ybuf), "gn"),
        ("instance_norm", "1x64x14x14", lambda: fn.instance_norm(x, None, None, w, b),
         lambda: fn.instance_norm(x, None, None, w, b, out=ybuf), "in"),
        ("layer_norm", "1x197x768", lambda: fn.layer_norm(tok, 768, lw, lb),
         lambda: fn.layer_norm(tok, 768, lw, lb, out=tbuf), "ln"),
        ("rms_norm", "1x197x768", lambda: fn.rms_norm(tok, 768, lw, eps=1e-6),
         lambda: fn.rms_norm(tok, 768, lw, eps=1e-6, out=tbuf), "rms"),
    ]
    torch_calls = {}
    if torch is not None:
        F = torch.nn.functional
        tx, tw, tb, trm, trv = map(torch.from_numpy, (x, w, b, rm, rv))
        ttok, tlw, tlb = map(torch.from_numpy, (tok, lw, lb))
        torch_calls = {
            "bn": (lambda: F.batch_norm(tx, trm, trv, tw, tb),
                   lambda: ft.batch_norm(tx, trm, trv, tw, tb)),
            "gn": (lambda: F.group_norm(tx, 32, tw, tb), lambda: ft.group_norm(tx, 32, tw, tb)),
            "in": (lambda: F.instance_norm(tx, weight=tw, bias=tb),
                   lambda: ft.instance_norm(tx, weight=tw, bias=tb)),
            "ln": (lambda: F.layer_norm(ttok, (768,), tlw, tlb),
                   lambda: ft.layer_norm(ttok, (768,), tlw, tlb)),
            "rms": (lambda: F.rms_norm(ttok, (768,), tlw, 1e-6),
                    lambda: ft.rms_norm(ttok, (768,), tlw, 1e-6)),
        }
    kw = dict(min_sample=0.01, repeat=3 if quick else 7, budget=0.3 if quick else 1.0)
    for name, shape, f_alloc, f_out, key in cases:
        t_alloc, t_out = timeit(f_alloc, **kw), timeit(f_out, **kw)
        t_torch = t_ft = float("nan")
        if key in torch_calls:
            with torch.inference_mode():
                t_torch = timeit(torch_calls[key][0], **kw)
                t_ft = timeit(torch_calls[key][1], **kw)
        rows.append([name, shape, _us(t_alloc), _us(t_out), _us(t_ft), _us(t_torch)])
        out.append(dict(op=name, shape=shape, fastnorm_s=t_alloc, fastnorm_out_s=t_out,
                        fastnorm_torch_op_s=t_ft, torch_functional_s=t_torch))
    _table(f"Per-call time on small tensors, float32, {fn.get_num_threads()} threads (us)",
           ["op", "shape", "fastnorm", "fastnorm out=", "fastnorm.torch", "torch F"], rows)
    return out


# ---- 3. RMSNorm and fused add + norm against a copy and PyTorch's composite -----------------

def bench_rows(quick):
    rng = np.random.default_rng(1)
    M, D = (2048, 1024) if quick else (8192, 1024)
    x = rng.standard_normal((M, D)).astype(np.float32)
    r = rng.standard_normal((M, D)).astype(np.float32)
    w, b = np.ones(D, np.float32), np.zeros(D, np.float32)
    y, s = np.empty_like(x), np.empty_like(x)
    nt = fn.get_num_threads()
    copy_t = _copy_time(x, nt)
    cases = [
        ("rms_norm", lambda: fn.rms_norm(x, D, w, eps=1e-6, out=y)),
        ("add + rms_norm (fused)", lambda: fn.rms_norm(x, D, w, eps=1e-6, residual=r, out=y,
                                                       residual_out=s)),
        ("layer_norm", lambda: fn.layer_norm(x, D, w, b, out=y)),
        ("add + layer_norm (fused)", lambda: fn.layer_norm(x, D, w, b, residual=r, out=y,
                                                           residual_out=s)),
    ]
    torch_cases = {}
    if torch is not None:
        tx, tr, tw, tb = map(torch.from_numpy, (x, r, w, b))
        F = torch.nn.functional
        torch_cases = {
            "rms_norm": lambda: F.rms_norm(tx, (D,), tw, 1e-6),
            "add + rms_norm (fused)": lambda: F.rms_norm(tx + tr, (D,), tw, 1e-6),
            "layer_norm": lambda: F.layer_norm(tx, (D,), tw, tb),
            "add + layer_norm (fused)": lambda: F.layer_norm(tx + tr, (D,), tw, tb),
        }
    rows, out = [], []
    kw = dict(repeat=3 if quick else 7, budget=0.5 if quick else 2.0)
    for name, f in cases:
        t = timeit(f, **kw)
        tt = float("nan")
        if name in torch_cases:
            with torch.inference_mode():
                tt = timeit(torch_cases[name], **kw)
        rows.append([name, f"{M}x{D}", f"{t * 1e3:.3f}", f"{t / copy_t:.2f}",
                     f"{tt * 1e3:.3f}", f"{tt / copy_t:.2f}"])
        out.append(dict(op=name, shape=(M, D), fastnorm_s=t, copy_s=copy_t, torch_s=tt))
    _table(f"Row norms, float32, {nt} threads (x copy = time / parallel copy of x, "
           f"{copy_t * 1e3:.3f} ms)",
           ["op", "shape", "fastnorm ms", "x copy", "torch ms", "torch x copy"], rows)
    return out


# ---- 4. the fused activation epilogue ------------------------------------------------------

def bench_activation(quick):
    rng = np.random.default_rng(2)
    shape = (8, 64, 56, 56) if quick else (32, 64, 56, 56)
    x = rng.standard_normal(shape).astype(np.float32)
    C = shape[1]
    w, b = np.ones(C, np.float32), np.zeros(C, np.float32)
    rm, rv = np.zeros(C), np.ones(C)
    rows_x = x.reshape(-1, 1024)
    lw, lb = np.ones(1024, np.float32), np.zeros(1024, np.float32)
    y = np.empty_like(x)
    yr = y.reshape(rows_x.shape)
    ops = {
        "batch_norm eval": lambda a: fn.batch_norm(x, rm, rv, w, b, activation=a, out=y),
        "instance_norm": lambda a: fn.instance_norm(x, None, None, w, b, activation=a, out=y),
        "group_norm G=32": lambda a: fn.group_norm(x, 32, w, b, activation=a, out=y),
        "layer_norm D=1024": lambda a: fn.layer_norm(rows_x, 1024, lw, lb, activation=a,
                                                     out=yr),
    }
    rows, out = [], []
    kw = dict(repeat=3 if quick else 5, budget=0.5 if quick else 2.0)
    for name, f in ops.items():
        t = {a: timeit(lambda a=a: f(a), **kw) for a in (None, "relu", "silu", "gelu")}
        rows.append([name] + [f"{t[a] * 1e3:.2f}" for a in t] +
                    [f"{max(t['relu'], t['silu'], t['gelu']) / t[None]:.2f}"])
        out.append(dict(op=name, shape=shape, **{str(a): v for a, v in t.items()}))
    _table(f"Activation epilogue, {'x'.join(map(str, shape))} float32, "
           f"{fn.get_num_threads()} threads (ms)",
           ["op", "none", "relu", "silu", "gelu", "worst / none"], rows)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    p.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    args = p.parse_args(argv)
    results = {"threads": fn.get_num_threads()}
    if torch is not None:
        torch.set_num_threads(fn.get_num_threads())
        results["models"] = bench_models(args.quick)
    else:
        print("PyTorch not installed: model benchmark skipped", file=sys.stderr)
    results["overhead"] = bench_overhead(args.quick)
    results["rows"] = bench_rows(args.quick)
    results["activation"] = bench_activation(args.quick)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    main()
