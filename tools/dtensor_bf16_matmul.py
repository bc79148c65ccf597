"""A bfloat16 matmul on DTensors whose contracted dimension is sharded: each rank's partial product is
rounded to bfloat16 before the cross-rank sum (the evidence of the defect entry
torch-muon-dtensor-bf16-partial-sums in impls/defects.toml).

    OMP_NUM_THREADS=1 python tools/dtensor_bf16_matmul.py

prints the largest difference from the one-process X @ X.T for X of shape (6, 4) distributed with
Shard(0) (the contraction is local: 0.0) and Shard(1) (the contraction is split: one bfloat16 ulp,
exactly the sum of the two bfloat16-rounded partial products).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD_SIZE = 2


def _worker(rank: int, queue: Any) -> None:
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = "29611"
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    mesh = init_device_mesh("cpu", (WORLD_SIZE,))
    torch.manual_seed(0)
    x = torch.randn(6, 4).bfloat16()
    one_process = (x @ x.mT).float()
    sharded = {}
    for name, placement in (("Shard(0)", Shard(0)), ("Shard(1)", Shard(1))):
        d = distribute_tensor(x, mesh, [placement])
        sharded[name] = (d @ d.mT).full_tensor().float()
    # the column halves' products, each rounded to bfloat16, summed in bfloat16
    halves = ((x[:, :2] @ x[:, :2].mT) + (x[:, 2:] @ x[:, 2:].mT)).float()
    if rank == 0:
        queue.put(
            {
                **{f"{name} vs one process": float((v - one_process).abs().max()) for name, v in sharded.items()},
                "Shard(1) vs the rounded halves": float((sharded["Shard(1)"] - halves).abs().max()),
                "largest |X X^T|": float(one_process.abs().max()),
            }
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    queue = mp.get_context("spawn").Queue()
    mp.spawn(_worker, args=(queue,), nprocs=WORLD_SIZE, join=True)
    for label, value in queue.get().items():
        print(f"{label}: {value:g}")
