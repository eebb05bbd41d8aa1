"""Run with 2 processes (``torchrun --standalone --nproc_per_node=2``, or two processes given
Slurm's variables): detect() + init() on gloo, then an all_reduce. Prints one line per rank:
``OK <source> <rank>/<world> <sum>``."""

from __future__ import annotations

import torch
import torch.distributed as dist

from nmt.training import distributed


def main() -> None:
    env = distributed.detect()
    distributed.init(env, "cpu")
    t = torch.tensor([float(env.rank + 1)])
    dist.all_reduce(t)
    stop = distributed.any_rank(env.rank == 1)  # true on rank 1 only -> true everywhere
    distributed.barrier()
    main = distributed.is_main()
    distributed.shutdown()
    assert stop and main == (env.rank == 0) and not dist.is_initialized()
    print(f"OK {env.source} {env.rank}/{env.world_size} {t.item():g}", flush=True)


if __name__ == "__main__":
    main()
