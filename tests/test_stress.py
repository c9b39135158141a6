"""Under load: concurrent Python threads, the GIL released inside kernels, no leaks."""
import os
import threading
import time
import tracemalloc

import numpy as np
import pytest

import fastnorm as fn
import opcases as oc

N_THREADS = 8
SECONDS = 2.0


def _problems(seed):
    """One small problem per op and layout, different data for every seed."""
    rng = np.random.default_rng(seed)
    out = []
    for i, (op, layout) in enumerate(oc.CASES):
        shape = [(3, 4, 9, 7), (2, 6, 40, 33), (5, 8)][(i + seed) % 3]
        out.append((op, layout, oc.make_inputs(op, layout, shape, np.float32, rng,
                                               offset=float(seed))))
    return out


@pytest.mark.parametrize("kernel_threads", [1, 2])
def test_concurrent_python_threads_match_serial(kernel_threads):
    """8 Python threads run every op (forward and backward) on their own data, over and over
    for about two seconds; every result is bitwise equal to the serial one."""
    with fn.threads(kernel_threads):
        problems = [_problems(s) for s in range(N_THREADS)]
        expected = [[oc.run_all(op, lay, d) for op, lay, d in ps] for ps in problems]
        errors, rounds = [], [0] * N_THREADS
        start = threading.Barrier(N_THREADS)
        stop = time.monotonic() + SECONDS

        def worker(t):
            try:
                start.wait()
                while time.monotonic() < stop:
                    for (op, lay, d), exp in zip(problems[t], expected[t]):
                        for a, e in zip(oc.run_all(op, lay, d), exp):
                            if not np.array_equal(a, e):
                                errors.append((t, op, lay))
                    rounds[t] += 1
            except Exception as e:  # surfaced below, with the thread
                errors.append((t, repr(e)))

        ts = [threading.Thread(target=worker, args=(t,)) for t in range(N_THREADS)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout=60)
    assert not any(t.is_alive() for t in ts)
    assert not errors, errors[:5]
    assert min(rounds) >= 1


def test_gil_released_inside_kernels():
    """While one thread runs a long single-threaded kernel, another Python thread keeps
    running: it gets through most of the kernel's duration in Python bytecode."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs two CPUs")
    x = np.random.default_rng(0).standard_normal((8, 4_000_000), dtype=np.float32)
    y = np.empty_like(x)
    fn.layer_norm_forward(x, 4_000_000, out=y)  # warm up
    inside = threading.Event()
    done = threading.Event()
    ticks = []

    def counter():
        inside.wait()
        while not done.is_set():
            ticks.append(time.perf_counter())

    th = threading.Thread(target=counter)
    th.start()
    with fn.threads(1):
        inside.set()
        t0 = time.perf_counter()
        for _ in range(3):
            fn.layer_norm_forward(x, 4_000_000, out=y)
        t1 = time.perf_counter()
    done.set()
    th.join()
    during = [t for t in ticks if t0 <= t <= t1]
    assert len(during) > 2
    # the longest pause of the counter thread is well below one kernel call (~1/3 of t1 - t0)
    gaps = np.diff(during)
    assert gaps.max() < 0.2 * (t1 - t0), (gaps.max(), t1 - t0)


def _sanitized():
    """A FASTNORM_DEBUG build: AddressSanitizer quarantines freed memory, so RSS grows."""
    try:
        from fastnorm import _build_info
    except ImportError:
        return False
    return bool(_build_info.DEBUG)


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


CALLS = 10_000


def _calls():
    """One call per public function, on small float32 data (numpy allocations are traced)."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((4, 8, 6, 6)) + 10).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    w = np.ones(8, np.float32)
    w6 = np.ones(6, np.float32)
    xr = x.reshape(32, 36)
    wr = np.ones(36, np.float32)
    _, bm, br = fn.batch_norm_forward(x)
    _, im, ir = fn.instance_norm_forward(x)
    _, gm, gr = fn.group_norm_forward(x, 4)
    _, lm, lr = fn.layer_norm_forward(xr, 36)
    _, rr = fn.rms_norm_forward(xr, 36)
    rm, rv = np.zeros(8), np.ones(8)
    return {
        "batch_norm_forward": lambda: fn.batch_norm_forward(x, w, w),
        "batch_norm_backward": lambda: fn.batch_norm_backward(dy, x, bm, br, w),
        "batch_norm": lambda: fn.batch_norm(x, rm, rv, w, w, training=True),
        "instance_norm_forward": lambda: fn.instance_norm_forward(x, w6, w6, layout="NHWC"),
        "instance_norm_backward": lambda: fn.instance_norm_backward(dy, x, im, ir, w),
        "instance_norm": lambda: fn.instance_norm(x, rm, rv, w, w),
        "group_norm_forward": lambda: fn.group_norm_forward(x, 4, w, w),
        "group_norm_backward": lambda: fn.group_norm_backward(dy, x, gm, gr, 4, w),
        "group_norm": lambda: fn.group_norm(x, 4, w, w, activation="gelu"),
        "layer_norm_forward": lambda: fn.layer_norm_forward(xr, 36, wr, wr, residual=xr),
        "layer_norm_backward": lambda: fn.layer_norm_backward(xr, xr, lm, lr, 36, wr),
        "layer_norm": lambda: fn.layer_norm(xr, 36, wr, wr),
        "rms_norm_forward": lambda: fn.rms_norm_forward(xr, 36, wr),
        "rms_norm_backward": lambda: fn.rms_norm_backward(xr, xr, rr, 36, wr,
                                                          residual_grad=xr),
        "rms_norm": lambda: fn.rms_norm(xr, 36, wr, residual=xr),
        "invalid_call": lambda: _expect_error(lambda: fn.group_norm_forward(x, 3)),
    }


def _expect_error(f):
    try:
        f()
    except ValueError:
        return
    raise AssertionError("no error")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="RSS read from /proc")
def test_no_leaks_over_10000_calls_of_each_op():
    """RSS and tracemalloc's traced memory stay flat over 10,000 calls of every public
    function (and of a failing call): a leaked result, statistic or work buffer per call would
    grow them by at least 10,000 x 100 bytes. (Under the sanitizer build only tracemalloc is
    checked: AddressSanitizer keeps freed memory in quarantine.)"""
    calls = _calls()
    check_rss = not _sanitized()
    # one kernel thread: leaks do not depend on the count, and the run stays short on a
    # loaded machine (the concurrency test above covers several threads)
    with fn.threads(1):
        for f in calls.values():  # warm up caches, thread pools, lazy imports
            for _ in range(200):
                f()
        tracemalloc.start()
        try:
            for name, f in calls.items():
                rss0 = _rss_bytes()
                traced0 = tracemalloc.get_traced_memory()[0]
                for _ in range(CALLS):
                    f()
                grown = tracemalloc.get_traced_memory()[0] - traced0
                rss = _rss_bytes() - rss0
                assert grown < 100_000, f"{name}: traced memory grew {grown} bytes"
                assert rss < 1_000_000 or not check_rss, f"{name}: RSS grew {rss} bytes"
        finally:
            tracemalloc.stop()
