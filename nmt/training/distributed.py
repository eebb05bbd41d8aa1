"""One way into ``torch.distributed`` for every launcher: ``torchrun`` or Slurm (``srun``,
``sbatch`` through Hydra's submitit launcher), gloo on CPU and NCCL on GPU.

:func:`detect` reads the process's rank and world from the environment (torchrun's variables
win, so ``srun torchrun ...`` works too); :func:`init` joins the process group. In a single
process both do nothing, and so do :func:`is_main`, :func:`barrier`, :func:`any_rank`, :func:`on_rank0` and
:func:`shutdown`, so the trainer calls them unconditionally.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from nmt.errors import UserError

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
T = TypeVar("T")
PORT_BASE, PORT_RANGE = 15000, 20000  # Slurm jobs without MASTER_PORT: 15000 + job id % 20000


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    source: str  # "single" | "torchrun" | "slurm"


SINGLE = DistEnv(rank=0, world_size=1, local_rank=0, master_addr="127.0.0.1", master_port=0, source="single")


def _int(environ: Mapping[str, str], name: str, minimum: int = 0) -> int:
    value = environ.get(name)
    if value is None:
        raise UserError(f"environment variable {name} is not set but other distributed variables are; "
                        f"launch with torchrun or srun, which set all of them")
    try:
        number = int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} is not an integer") from None
    if number < minimum:
        raise UserError(f"environment variable {name}={number} must be >= {minimum}")
    return number


def _check_rank(env: DistEnv, rank_var: str, world_var: str) -> DistEnv:
    if env.rank >= env.world_size:
        raise UserError(f"environment variable {rank_var}={env.rank} must be < {world_var}={env.world_size}")
    return env


_HOST_GROUP = r"(?:[\w.-]+|\[[\d,\s-]+\])+"  # literal parts and [ranges], e.g. rack1-node[01-04]


def expand_hostlist(hostlist: str) -> list[str]:
    """Expand a Slurm host list: ``node[1-3,5],gpu7`` -> node1 node2 node3 node5 gpu7;
    zero padding is kept (``host-[01-02]`` -> host-01 host-02); several brackets multiply."""
    if not re.fullmatch(rf"{_HOST_GROUP}(?:,{_HOST_GROUP})*", hostlist.strip()):
        raise UserError(f"cannot parse the Slurm node list {hostlist!r}")
    hosts: list[str] = []
    for group in re.findall(_HOST_GROUP, hostlist):
        names = [""]
        for literal, ranges in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", group):
            suffixes = [literal + s for s in _expand_ranges(ranges, hostlist)] if ranges else [literal]
            names = [n + s for n in names for s in suffixes]
        hosts.extend(names)
    return hosts


def _expand_ranges(ranges: str, hostlist: str) -> list[str]:
    out: list[str] = []
    for part in ranges.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
        if not m or (m[2] is not None and int(m[2]) < int(m[1])):
            raise UserError(f"cannot parse {part!r} in the Slurm node list {hostlist!r}")
        lo, hi = m[1], m[2] or m[1]
        out.extend(str(i).zfill(len(lo)) for i in range(int(lo), int(hi) + 1))
    return out


def detect(environ: Mapping[str, str] = os.environ) -> DistEnv:
    """Rank, world size and rendezvous address of this process from torchrun's variables, else
    Slurm's; a world of one process (or no variables) is ``source="single"``."""
    if "RANK" in environ or "WORLD_SIZE" in environ:
        world = _int(environ, "WORLD_SIZE", minimum=1)
        if world == 1:
            return SINGLE
        env = DistEnv(rank=_int(environ, "RANK"), world_size=world, local_rank=_int(environ, "LOCAL_RANK"),
                      master_addr=environ.get("MASTER_ADDR", ""), master_port=_int(environ, "MASTER_PORT", 1),
                      source="torchrun")
        if not env.master_addr:
            raise UserError("environment variable MASTER_ADDR is not set; launch with torchrun, which sets it")
        return _check_rank(env, "RANK", "WORLD_SIZE")
    if "SLURM_PROCID" not in environ:
        return SINGLE
    world = _int(environ, "SLURM_NTASKS", minimum=1)
    if world == 1:
        return SINGLE
    if "SLURM_STEP_ID" not in environ and "SLURM_STEPID" not in environ:
        raise UserError(f"SLURM_NTASKS={world} but this process is the batch script, not one of the tasks: start "
                        f"it with srun (the submitit launcher does) or with torchrun")
    nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_NODELIST") or environ.get("SLURM_JOB_NODELIST")
    if not nodelist and not environ.get("MASTER_ADDR"):
        raise UserError("environment variable SLURM_NODELIST is not set; cannot tell where rank 0 runs "
                        "(set MASTER_ADDR)")
    addr = environ.get("MASTER_ADDR") or expand_hostlist(nodelist or "")[0]
    if "MASTER_PORT" in environ:
        port = _int(environ, "MASTER_PORT", 1)
    else:
        port = PORT_BASE + _int(environ, "SLURM_JOB_ID") % PORT_RANGE
    env = DistEnv(rank=_int(environ, "SLURM_PROCID"), world_size=world, local_rank=_int(environ, "SLURM_LOCALID"),
                  master_addr=addr, master_port=port, source="slurm")
    return _check_rank(env, "SLURM_PROCID", "SLURM_NTASKS")


def init(env: DistEnv, device_type: str, timeout: timedelta = timedelta(minutes=30)) -> None:
    """Join the process group of ``env`` (nothing to do for one process): NCCL for
    ``device_type="cuda"`` (each rank on GPU ``local_rank``), gloo otherwise."""
    if env.world_size == 1 or dist.is_initialized():  # already joined (e.g. a benchmark running several trainers)
        return
    os.environ["MASTER_ADDR"] = env.master_addr
    os.environ["MASTER_PORT"] = str(env.master_port)
    if device_type == "cuda":
        visible = torch.cuda.device_count()
        if env.local_rank >= visible > 1:
            raise UserError(f"local rank {env.local_rank} but only {visible} GPUs are visible: request one GPU per "
                            f"task (gpus_per_node = tasks_per_node)")
        torch.cuda.set_device(env.local_rank if visible > 1 else 0)
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size, timeout=timeout)


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one that writes logs and checkpoints."""
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one (e.g. a preemption signal that
    reached some ranks one step earlier than others), so that all ranks stop at the same step."""
    if not dist.is_initialized():
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def on_rank0(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and give every rank its result; a UserError there stops every
    rank (with the message on rank 0, a pointer to it on the others)."""
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except UserError as e:
            error = e
    failed = any_rank(error is not None)
    if error is not None:
        raise error
    if failed:
        raise UserError("rank 0 stopped with an error (see its output)")
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [result]
        dist.broadcast_object_list(box, src=0)
        result = box[0]
    return result  # type: ignore[return-value]


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
