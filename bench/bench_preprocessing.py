"""Scalers against scikit-learn: ``python bench/bench_preprocessing.py [--quick] [--threads N]``.

Times ``transform`` and ``partial_fit`` of StandardScaler and MinMaxScaler, fastnorm's and
scikit-learn's, on (n_samples, n_features) float32 and float64 arrays of a few sizes, and prints
one table of times and speedups (scikit-learn time / fastnorm time). Transforms write a fresh
array on both sides (``copy=True``). Times are the minimum over repeats of an inner loop;
nothing is asserted.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fastnorm as fn  # noqa: E402
from fastnorm.bench import timeit  # noqa: E402
from fastnorm.preprocessing import MinMaxScaler, StandardScaler  # noqa: E402

SIZES = [(1_000, 32), (100_000, 32), (1_000_000, 16), (20_000, 1_000)]
QUICK = [(1_000, 32), (50_000, 32)]


def run(sizes, dtypes, budget):
    import sklearn.preprocessing as skp

    rows = []
    rng = np.random.default_rng(0)
    for (n, f) in sizes:
        for dt in dtypes:
            x = (rng.standard_normal((n, f)) * 3 + 10).astype(dt)
            for name, ours, ref in (("StandardScaler", StandardScaler(), skp.StandardScaler()),
                                    ("MinMaxScaler", MinMaxScaler(), skp.MinMaxScaler())):
                ours.fit(x)
                ref.fit(x)
                for op in ("transform", "partial_fit"):
                    t_ours = timeit(lambda: getattr(ours, op)(x), budget=budget)
                    t_ref = timeit(lambda: getattr(ref, op)(x), budget=budget)
                    rows.append((name, op, f"{n}x{f}", np.dtype(dt).name, t_ours, t_ref))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="two small sizes, float32 only")
    p.add_argument("--threads", type=int, default=None, help="fastnorm threads (default: all)")
    a = p.parse_args(argv)
    try:
        import sklearn
    except ImportError:
        print("scikit-learn is not installed: nothing to compare against")
        return 0
    if a.threads:
        fn.set_num_threads(a.threads)
    sizes = QUICK if a.quick else SIZES
    dtypes = [np.float32] if a.quick else [np.float32, np.float64]
    rows = run(sizes, dtypes, budget=0.3 if a.quick else 1.0)
    print(f"fastnorm {fn.__version__} ({fn.get_num_threads()} threads) vs scikit-learn "
          f"{sklearn.__version__}; times in ms, speedup = scikit-learn / fastnorm")
    print(f"{'scaler':<15}{'op':<12}{'shape':>13}{'dtype':>9}{'fastnorm':>11}"
          f"{'sklearn':>11}{'speedup':>9}")
    for name, op, shape, dt, t1, t2 in rows:
        print(f"{name:<15}{op:<12}{shape:>13}{dt:>9}{t1 * 1e3:>11.3f}{t2 * 1e3:>11.3f}"
              f"{t2 / t1:>8.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
