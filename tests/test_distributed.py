"""Synchronized batch norm over 2 and 3 processes (gloo on 127.0.0.1), each rank holding a slice
of one global batch, against single-process batch norm over the whole batch."""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import fastnorm as fn

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():  # pragma: no cover - torch built without it
    pytest.skip("torch.distributed is not available", allow_module_level=True)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TIMEOUT = 60


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp_path, sizes, C=5, spatial=(4, 3), seed=0):
    rng = np.random.default_rng(seed)
    shape = (int(sum(sizes)), C) + spatial
    x = rng.standard_normal(shape) * 2.0 + 3.0
    dy = rng.standard_normal(shape)
    w = 1 + 0.3 * rng.standard_normal(C)
    b = 0.3 * rng.standard_normal(C)
    np.savez(tmp_path / "inputs.npz", x=x, dy=dy, w=w, b=b, sizes=np.array(sizes))
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "_sync_bn_worker.py"),
                               str(r), str(len(sizes)), str(port), str(tmp_path)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for r in range(len(sizes))]
    logs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=TIMEOUT)
            logs.append(out.decode(errors="replace"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r} failed:\n{logs[r]}"
    ranks = [dict(np.load(tmp_path / f"rank{r}.npz")) for r in range(len(sizes))]
    return x, dy, w, b, ranks


def _close(a, e, what, tol=1e-12):
    a, e = np.asarray(a, dtype=np.float64), np.asarray(e, dtype=np.float64)
    assert a.shape == e.shape, (what, a.shape, e.shape)
    scale = max(1.0, float(np.max(np.abs(e)))) if e.size else 1.0
    err = float(np.max(np.abs(a - e))) if e.size else 0.0
    assert err <= tol * scale, f"{what}: max abs error {err:.3g}"


@pytest.mark.parametrize("sizes", [
    (3, 5),      # 2 processes, unequal batches
    (4, 0, 2),   # 3 processes, one with an empty batch
], ids=["2proc", "3proc-empty"])
def test_sync_batch_norm_matches_single_process(tmp_path, sizes):
    from reference import channel_backward, channel_forward

    x, dy, w, b, ranks = _run(tmp_path, sizes)
    y, mean, rstd = fn.batch_norm_forward(x, w, b, eps=1e-5)
    dx, dw, db = fn.batch_norm_backward(dy, x, mean, rstd, w)
    n = x.size // w.size
    var = 1.0 / rstd ** 2 - 1e-5
    rm = 0.1 * mean
    rv = 0.9 + 0.1 * var * n / (n - 1)
    bounds = np.cumsum((0,) + tuple(sizes))
    for r, res in enumerate(ranks):
        sl = slice(bounds[r], bounds[r + 1])
        for p in ("NCHW", "NHWC"):
            _close(res[f"{p}_mean"], mean, f"rank {r} {p} mean")
            _close(res[f"{p}_rstd"], rstd, f"rank {r} {p} rstd")
            _close(res[f"{p}_y"], y[sl], f"rank {r} {p} y")
            _close(res[f"{p}_dx"], dx[sl], f"rank {r} {p} dx")
            _close(res[f"{p}_rm"], rm, f"rank {r} {p} running_mean")
            _close(res[f"{p}_rv"], rv, f"rank {r} {p} running_var")
        for p in ("contiguous", "channels_last"):
            _close(res[f"{p}_y"], y[sl], f"rank {r} module {p} y")
            _close(res[f"{p}_dx"], dx[sl], f"rank {r} module {p} dx")
            _close(res[f"{p}_dw"], dw, f"rank {r} module {p} dweight (summed over ranks)")
            _close(res[f"{p}_db"], db, f"rank {r} module {p} dbias (summed over ranks)")
            _close(res[f"{p}_rm"], rm, f"rank {r} module {p} running_mean")
            _close(res[f"{p}_rv"], rv, f"rank {r} module {p} running_var")
        if sizes[r] > 0:
            assert bool(res["channels_last_cl"]), "channels_last x should give channels_last y"
    for p in ("NCHW", "NHWC"):
        # the functional dweight/dbias are per-rank shares that sum to the full gradient
        _close(sum(res[f"{p}_dw"] for res in ranks), dw, f"{p} sum of dweight")
        _close(sum(res[f"{p}_db"] for res in ranks), db, f"{p} sum of dbias")
        # every rank holds bitwise the same statistics
        for res in ranks[1:]:
            assert np.array_equal(res[f"{p}_mean"], ranks[0][f"{p}_mean"])
            assert np.array_equal(res[f"{p}_rstd"], ranks[0][f"{p}_rstd"])
    # and against the plain float64 NumPy reference
    y_ref, _, _ = channel_forward("batch", x, w, b)
    dx_ref, dw_ref, db_ref = channel_backward("batch", dy, x, w)
    _close(np.concatenate([res["NCHW_y"] for res in ranks]), y_ref, "y vs reference", 1e-11)
    _close(np.concatenate([res["NCHW_dx"] for res in ranks]), dx_ref, "dx vs reference", 1e-11)
    _close(sum(res["NCHW_dw"] for res in ranks), dw_ref, "dweight vs reference", 1e-11)


def test_needs_initialized_group():
    from fastnorm.distributed import sync_batch_norm_forward

    if torch.distributed.is_initialized():  # pragma: no cover
        pytest.skip("a process group is already initialized")
    with pytest.raises(RuntimeError, match="init_process_group"):
        sync_batch_norm_forward(np.ones((2, 3)))


def test_module_without_group_is_batch_norm():
    from fastnorm.distributed import SyncBatchNorm

    torch.manual_seed(0)
    x = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    m = SyncBatchNorm(4).double()
    ref = torch.nn.BatchNorm2d(4).double()
    _close(m(x).detach().numpy(), ref(x).detach().numpy(), "y")
    _close(m.running_var.numpy(), ref.running_var.numpy(), "running_var")
    with pytest.raises(ValueError, match="2D"):
        m(torch.ones(3, dtype=torch.float64))


def test_sync_batch_norm_is_exported_from_fastnorm_torch():
    pytest.importorskip("torch")
    import fastnorm.distributed as fd
    import fastnorm.torch as ft
    assert ft.SyncBatchNorm is fd.SyncBatchNorm
    assert ft.convert_sync_batchnorm is fd.convert_sync_batchnorm
