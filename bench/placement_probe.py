"""How much the placement of out= within a 4 KiB page costs one op (4 KiB aliasing).

    python bench/placement_probe.py OP LAYOUT DTYPE SHAPE THREADS fwd|bwd OFFSET...
    e.g. python bench/placement_probe.py batch NCHW float32 32x64x56x56 1 fwd 16 48 80 144 4080

OP: batch, instance, group (32 groups) or layer (over all but the first dim; LAYOUT rows or
NCHW); SHAPE the array's own shape (NHWC given as N,H,W,C). x and dy are NumPy's own arrays (16
bytes into a page); out= goes OFFSET bytes into a page, so OFFSET 16 is out= np.empty_like(x).
Prints, per OFFSET, the time against out= at the start of a page (a fresh fastnorm output sits
there), single calls of the two alternating, median of the ratios over 15 rounds with the
quartiles: a ratio, not a time, as every figure here.
"""
import sys
import time

import numpy as np

import fastnorm as fn


def calls(op, layout, dtype, shape, kind):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    if op == "layer":
        ns = shape[1:]
        w, b = np.ones(ns, dtype), np.zeros(ns, dtype)
        _, m, r = fn.layer_norm_forward(x, ns, w, b)
        if kind == "fwd":
            return x, lambda o: (lambda: fn.layer_norm_forward(x, ns, w, b, out=o))
        return x, lambda o: (lambda: fn.layer_norm_backward(dy, x, m, r, ns, w, out=o))
    C = shape[1] if layout == "NCHW" else shape[-1]
    w, b = np.ones(C, dtype), np.zeros(C, dtype)
    g = (32,) if op == "group" else ()
    fwd = getattr(fn, op + "_norm_forward")
    bwd = getattr(fn, op + "_norm_backward")
    _, m, r = fwd(x, *g, w, b, layout=layout)
    if kind == "fwd":
        return x, lambda o: (lambda: fwd(x, *g, w, b, layout=layout, out=o))
    return x, lambda o: (lambda: bwd(dy, x, m, r, *g, w, layout=layout, out=o))


def main(argv):
    op, layout, dtype, shape, threads, kind = argv[:6]
    offsets = [int(s) for s in argv[6:]]
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape.split("x"))
    fn.set_num_threads(int(threads))
    x, make = calls(op, layout, dtype, shape, kind)
    raw = np.empty(x.nbytes + 2 * 4096, np.uint8)
    base = (-raw.ctypes.data) % 4096

    def at(off):
        return np.frombuffer(raw.data, dtype, count=x.size, offset=base + off).reshape(shape)

    def tm(f, n=3):
        t = time.perf_counter()
        for _ in range(n):
            f()
        return (time.perf_counter() - t) / n

    ref = make(at(0))
    print(f"{op} {layout} {dtype} {shape} {threads}T {kind}; x {x.ctypes.data % 4096} bytes "
          "into its page; time with out= OFFSET bytes into a page / at 0:")
    for off in offsets:
        f = make(at(off))
        ratios = []
        for _ in range(15):
            ref()
            a = tm(ref)
            f()
            ratios.append(tm(f) / a)
        q = np.percentile(ratios, [25, 50, 75])
        print(f"  {off:5d}: {q[1]:.3f} [{q[0]:.3f} {q[2]:.3f}]", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
