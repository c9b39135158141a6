"""64-bit indexing: float32 tensors of more than 2**31 elements (about 8.6 GB each).

Run with ``python -m pytest -q --runslow tests/test_large.py`` on a machine with at least
12 GB of free memory; each test holds one tensor and normalizes it in place (``out=x``), so
only one 8.6 GB buffer is alive at a time. The data is a fixed random pattern of prime length
tiled over the tensor, so the float64 reference can regenerate any stretch of the input after
it has been overwritten, and no two planes or rows see the same values.
"""
import gc

import numpy as np
import pytest

import fastnorm as fn

pytestmark = pytest.mark.slow

TOTAL_MIN = 2**31 + 1
P = 1_000_003  # pattern length (prime): plane and row boundaries fall at varying phases
STEP = 1 << 23  # elements per verification chunk (64 MB in float64)


def _pattern():
    rng = np.random.default_rng(2024)
    pat = (1e3 + rng.standard_normal(P)).astype(np.float32)
    return np.concatenate([pat, pat])  # pat2[g % P : g % P + L] is the tiled data, L <= P


def _fill(flat, pat2):
    for start in range(0, flat.size, P):
        n = min(P, flat.size - start)
        flat[start:start + n] = pat2[:n]


def _data(pat2, g0, n):
    """float64 copy of the tiled input at flat positions [g0, g0 + n), n <= P."""
    k = g0 % P
    return pat2[k:k + n].astype(np.float64)


def _span(pat2, g0, n):
    """The tiled input over [g0, g0 + n) in pieces of at most STEP: (offset, float64 data)."""
    for off in range(0, n, STEP):
        ln = min(STEP, n - off)
        pieces = []
        g = g0 + off
        while ln > 0:
            k = min(ln, P)
            pieces.append(_data(pat2, g, k))
            g += k
            ln -= k
        yield off, np.concatenate(pieces)


def test_batch_norm_more_than_2_31_elements():
    N, C = 3, 2
    S = -(-TOTAL_MIN // (N * C))
    pat2 = _pattern()
    x = np.empty((N, C, S), dtype=np.float32)
    assert x.size >= TOTAL_MIN
    flat = x.reshape(-1)
    _fill(flat, pat2)
    # float64 reference statistics per channel, two passes over the regenerated input
    count = N * S
    mean = np.zeros(C)
    for c in range(C):
        for n in range(N):
            for _, a in _span(pat2, (n * C + c) * S, S):
                mean[c] += a.sum()
    mean /= count
    m2 = np.zeros(C)
    for c in range(C):
        for n in range(N):
            for _, a in _span(pat2, (n * C + c) * S, S):
                a -= mean[c]
                m2[c] += np.dot(a, a)
    rstd = 1 / np.sqrt(m2 / count + 1e-5)

    y, fm, fr = fn.batch_norm_forward(x, out=x)
    assert y is x
    np.testing.assert_allclose(fm, mean, rtol=1e-9)
    np.testing.assert_allclose(fr, rstd, rtol=1e-6)
    err = 0.0
    for c in range(C):
        for n in range(N):
            p0 = (n * C + c) * S
            for off, a in _span(pat2, p0, S):
                got = flat[p0 + off:p0 + off + a.size]
                err = max(err, float(np.max(np.abs((a - mean[c]) * rstd[c] - got))))
    del x, flat, y
    gc.collect()
    assert err <= 1e-5


def test_layer_norm_more_than_2_31_elements():
    D = 65543
    M = -(-TOTAL_MIN // D)
    pat2 = _pattern()
    x = np.empty((M, D), dtype=np.float32)
    assert x.size >= TOTAL_MIN
    flat = x.reshape(-1)
    _fill(flat, pat2)
    y, fm, fr = fn.layer_norm_forward(x, D, out=x)
    assert y is x
    err = merr = rerr = 0.0
    rows = max(1, STEP // D)
    for r0 in range(0, M, rows):
        r1 = min(M, r0 + rows)
        a = np.concatenate([a for _, a in _span(pat2, r0 * D, (r1 - r0) * D)]).reshape(-1, D)
        m = a.mean(axis=1, keepdims=True)
        a -= m
        r = 1 / np.sqrt((a * a).mean(axis=1, keepdims=True) + 1e-5)
        a *= r
        err = max(err, float(np.max(np.abs(a - x[r0:r1]))))
        merr = max(merr, float(np.max(np.abs(fm[r0:r1] - m[:, 0]) / np.abs(m[:, 0]))))
        rerr = max(rerr, float(np.max(np.abs(fr[r0:r1] / r[:, 0] - 1))))
    del x, flat, y
    gc.collect()
    assert err <= 1e-5
    assert merr <= 1e-9
    assert rerr <= 1e-6
