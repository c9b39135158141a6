"""Dataset statistics on a Dask cluster: a LocalCluster of 2 worker processes on loopback
reduces a many-chunk array with the fastnorm kernels; results equal the in-memory ones."""
import numpy as np
import pytest

import fastnorm as fn
from fastnorm.preprocessing import StandardScaler

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")


def _rel(a, e):
    a, e = np.asarray(a, dtype=np.float64), np.asarray(e, dtype=np.float64)
    return float(np.max(np.abs(a - e) / np.maximum(np.abs(e), 1e-300)))


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address=None,
                                       worker_dashboard_address=None)
    c = distributed.Client(cluster, timeout=30)
    try:
        yield c
    finally:
        c.close()
        cluster.close()


def test_moments_and_scaler_on_cluster(client, rng):
    x = rng.standard_normal((6000, 12)) * rng.uniform(0.5, 3, 12) + rng.uniform(-50, 50, 12)
    dx = da.from_array(x, chunks=(250, 5))  # 24 x 3 chunks, uneven along the features
    assert dx.npartitions >= 48
    with distributed.get_task_stream(client) as ts:
        for axis in (0, None, (0, 1), 1):
            m = fn.moments(dx, axis=axis, ddof=1)
            e = fn.moments(x, axis=axis, ddof=1)
            assert np.array_equal(m.count, e.count)
            assert _rel(m.mean, e.mean) <= 1e-12, axis
            assert _rel(m.m2, e.m2) <= 1e-12, axis
            assert _rel(m.std, np.std(x, axis=axis, ddof=1)) <= 1e-12, axis
    # the chunk moments ran as tasks on both worker processes
    workers = {t["worker"] for t in ts.data if "fastnorm-moments" in str(t["key"])}
    assert len(workers) == 2, workers

    s_dask = StandardScaler().fit(dx)
    s_mem = StandardScaler().fit(x)
    assert s_dask.n_samples_seen_ == s_mem.n_samples_seen_ == 6000
    assert _rel(s_dask.mean_, s_mem.mean_) <= 1e-12
    assert _rel(s_dask.var_, s_mem.var_) <= 1e-12
    # partial_fit mixes Dask and in-memory batches
    s_mix = StandardScaler().partial_fit(dx[:3000]).partial_fit(x[3000:])
    assert _rel(s_mix.mean_, s_mem.mean_) <= 1e-12
    assert _rel(s_mix.var_, s_mem.var_) <= 1e-12


def test_float32_image_channels_on_cluster(client, rng):
    x = (rng.standard_normal((64, 3, 10, 10)) * 2 + 100).astype(np.float32)
    dx = da.from_array(x, chunks=(8, 1, 5, 10))
    m = fn.moments(dx, axis=(0, 2, 3))
    xd = x.astype(np.float64)
    mean = xd.mean(axis=(0, 2, 3))
    m2 = ((xd - mean[None, :, None, None]) ** 2).sum(axis=(0, 2, 3))
    assert _rel(m.mean, mean) <= 1e-12
    assert _rel(m.m2, m2) <= 1e-12
    s = StandardScaler(layout="NCHW").fit(dx)
    assert _rel(s.mean_, mean) <= 1e-12


def test_dask_local_scheduler_keepdims(rng):
    x = rng.standard_normal((40, 6, 5))
    dx = da.from_array(x, chunks=(7, 4, 3))
    with __import__("dask").config.set(scheduler="synchronous"):
        for axis in ((0, 2), 1, (1, 2)):
            m = fn.moments(dx, axis=axis, keepdims=True)
            e = fn.moments(x, axis=axis, keepdims=True)
            assert m.shape == e.shape == np.mean(x, axis=axis, keepdims=True).shape
            assert _rel(m.mean, e.mean) <= 1e-12
            assert _rel(m.m2, e.m2) <= 1e-12
    with pytest.raises(TypeError, match="in-memory"):
        StandardScaler().fit(x).transform(dx)
