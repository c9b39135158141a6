"""One rank of the synchronized batch norm test: run as
``python _sync_bn_worker.py RANK WORLD PORT DIR``; reads DIR/inputs.npz, writes DIR/rank{RANK}.npz.

Each rank takes its slice ``sizes[rank]`` of the global (N, C, H, W) batch (sizes may be unequal
or zero) and runs on it the functional sync forward/backward in both layouts and the
SyncBatchNorm module (forward, backward, running buffers) on contiguous and channels_last
tensors.
"""
import os
import socket
import sys
from datetime import timedelta

import numpy as np


def _loopback_ifname():
    for _, name in socket.if_nameindex():
        if name.startswith("lo"):
            return name
    return None


def main(rank, world, port, d):
    ifname = _loopback_ifname()
    if ifname and "GLOO_SOCKET_IFNAME" not in os.environ:
        os.environ["GLOO_SOCKET_IFNAME"] = ifname
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    from fastnorm.distributed import (SyncBatchNorm, convert_sync_batchnorm,
                                      sync_batch_norm_backward, sync_batch_norm_forward)

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=40))
    inp = np.load(os.path.join(d, "inputs.npz"))
    sizes = inp["sizes"]
    lo, hi = int(sizes[:rank].sum()), int(sizes[:rank + 1].sum())
    x, dy = inp["x"][lo:hi], inp["dy"][lo:hi]  # NCHW
    w, b = inp["w"], inp["b"]
    C = w.shape[0]
    res = {}

    # functional API, both layouts (NHWC: the same data stored channels-last)
    for layout in ("NCHW", "NHWC"):
        xl = x if layout == "NCHW" else np.ascontiguousarray(np.moveaxis(x, 1, -1))
        dyl = dy if layout == "NCHW" else np.ascontiguousarray(np.moveaxis(dy, 1, -1))
        rm, rv = np.zeros(C), np.ones(C)
        y, mean, rstd = sync_batch_norm_forward(xl, w, b, eps=1e-5, layout=layout,
                                                running_mean=rm, running_var=rv, momentum=0.1)
        dx, dw, db = sync_batch_norm_backward(dyl, xl, mean, rstd, w, layout=layout)
        if layout == "NHWC":
            y, dx = np.moveaxis(y, -1, 1), np.moveaxis(dx, -1, 1)
        res.update({f"{layout}_{k}": v for k, v in dict(
            y=y, mean=mean, rstd=rstd, dx=dx, dw=dw, db=db, rm=rm, rv=rv).items()})

    # torch module converted from a plain BatchNorm2d, contiguous and channels_last tensors
    for fmt in ("contiguous", "channels_last"):
        net = torch.nn.Sequential(torch.nn.BatchNorm2d(C, momentum=0.1).double())
        with torch.no_grad():
            net[0].weight.copy_(torch.from_numpy(w))
            net[0].bias.copy_(torch.from_numpy(b))
        net = convert_sync_batchnorm(net)
        assert isinstance(net[0], SyncBatchNorm)
        net.train()
        tx = torch.from_numpy(x.copy())
        if fmt == "channels_last":
            tx = tx.to(memory_format=torch.channels_last)
        tx.requires_grad_(True)
        ty = net(tx)
        ty.backward(torch.from_numpy(dy.copy()))
        # the module's weight grads are this rank's share: sum them as DDP would
        gw = net[0].weight.grad.clone()
        gb = net[0].bias.grad.clone()
        dist.all_reduce(gw)
        dist.all_reduce(gb)
        res.update({f"{fmt}_{k}": v for k, v in dict(
            y=ty.detach().numpy(), dx=tx.grad.numpy(), dw=gw.numpy(), db=gb.numpy(),
            rm=net[0].running_mean.numpy(), rv=net[0].running_var.numpy(),
            cl=np.array(ty.is_contiguous(memory_format=torch.channels_last))).items()})
    dist.barrier()
    dist.destroy_process_group()
    np.savez(os.path.join(d, f"rank{rank}.npz"), **res)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    # PyTorch 2.13's gloo can abort in its C++ teardown at interpreter exit ("terminate called
    # without an active exception", seen in 3 of 8 runs of plain DDP without fastnorm), after
    # all the work is done and saved: leave without running those destructors.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
