"""Channels-last chunk sizes, A against B, in one process on the same arrays.

    python bench/chunk_probe.py OP DTYPE THREADS SHAPE CAP_A CAP_B [ROUNDS]
    e.g. python bench/chunk_probe.py batch float32 1 32x64x56x56 0 1048576

OP: batch, instance or group (32 groups); SHAPE the logical (N, C, H, W), stored channels-last.
CAP_A, CAP_B: the chunks' cap in bytes of x (_set_chunk_bytes: 0 gives the 16-block chunks of
before, 1048576 is the default). Prints forward and backward time / copy for each cap: the
report's paired rounds (fastnorm.bench.timeit_rounds: every call, the copy included, once per
round; per round time / the faster copy; the median over the rounds), so a slow spell of the
machine lands on both caps. Ratios, not times, as every figure here.
"""
import sys

import numpy as np

import fastnorm as fn
from fastnorm import bench as B
from fastnorm._kernels import _norm as K


def main(argv):
    if len(argv) < 6:
        print(__doc__)
        return 2
    op, dtype, threads = argv[0], np.dtype(argv[1]), int(argv[2])
    shape = tuple(int(v) for v in argv[3].split("x"))
    caps = (int(argv[4]), int(argv[5]))
    rounds = int(argv[6]) if len(argv) > 6 else 10
    extra = {"G": 32} if op == "group" else {}
    fn.set_num_threads(threads)
    x, dy, w, b = B._inputs(np.random.default_rng(0), shape, "NHWC", dtype)
    fwd, bwd = B._fastnorm_calls(op, x, "NHWC", extra, w, b, dy, out=np.empty_like(x))
    prev = K._set_chunk_bytes(caps[0])

    def with_cap(f, cap):
        def call():
            K._set_chunk_bytes(cap)
            f()
        return call

    try:
        calls = B.copy_calls(x.reshape(-1), np.empty(x.size, dtype), threads)
        for name, cap in zip("AB", caps):
            calls["fwd" + name] = with_cap(fwd, cap)
            calls["bwd" + name] = with_cap(bwd, cap)
        res = B.timeit_rounds(calls, rounds=rounds, budget=0.4 * rounds,
                              paired=("fwdA", "fwdB", "bwdA", "bwdB"))
    finally:
        K._set_chunk_bytes(prev)
    print(f"{op} NHWC {dtype} {argv[3]} {threads}T, time / copy: cap {caps[0]}: forward "
          f"{res['ratio_fwdA']:.2f} backward {res['ratio_bwdA']:.2f} | cap {caps[1]}: forward "
          f"{res['ratio_fwdB']:.2f} backward {res['ratio_bwdB']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
