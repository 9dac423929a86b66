"""The reference for rankflow's collective benchmark: all-reduce, all-gather and reduce-scatter
through torch.distributed with NCCL, one process per GPU, timed the same way (CUDA events around a
run of back-to-back calls on one stream). Rank 0 prints one line per case: `torch {json}`.

    python3 -m torch.distributed.run --standalone --nproc-per-node N bench/torch_collectives.py SIZES ITERS
SIZES and ITERS are comma-separated byte sizes and the timed calls for each.
"""

import json
import os
import sys

import torch
import torch.distributed as dist


def main(sizes, iters):
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl", device_id=torch.device("cuda", int(os.environ["LOCAL_RANK"])))
    largest = max(sizes)
    send = torch.randn(largest // 2, device="cuda").to(torch.bfloat16)
    recv = torch.empty(largest // 2, device="cuda", dtype=torch.bfloat16)

    def call(op, size):
        count = size // 2
        if op == "all-reduce":
            dist.all_reduce(send[:count])
        elif op == "all-gather":
            dist.all_gather_into_tensor(recv[:count], send[: count // world])
        else:
            dist.reduce_scatter_tensor(recv[: count // world], send[:count])

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for op in ("all-reduce", "all-gather", "reduce-scatter"):
        for size, n in zip(sizes, iters):
            for _ in range(5):
                call(op, size)
            torch.cuda.synchronize()
            dist.barrier()
            start.record()
            for _ in range(n):
                call(op, size)
            end.record()
            end.synchronize()
            if rank == 0:
                print("torch " + json.dumps({"op": op, "bytes": size, "us": start.elapsed_time(end) * 1000 / n}),
                      flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main([int(v) for v in sys.argv[1].split(",")], [int(v) for v in sys.argv[2].split(",")])
