"""Sharded checkpoints (``<name>.dcp/`` directories) with ``torch.distributed.checkpoint``.

Every rank writes its own shards in parallel; the files describe *global* tensors, so a
checkpoint written by W ranks loads at any other world size (including one process, with or
without a process group):

- FSDP2 parameters and their Adam moments are DTensors already;
- expert-parallel parameters (rank r holds experts r·E/W … (r+1)·E/W − 1) and their Adam
  moments are saved as DTensors sharded on the expert dimension, so each rank writes only its
  experts and a reader at another world size takes the slices it needs;
- everything else (replicated under DDP) is written once.

Keys are ``model.<parameter name>`` and ``optim.<parameter name>.<step|exp_avg|exp_avg_sq>``.
Non-tensor state (step, data loader, RNG, config, ...) goes to ``extra.pt`` through the safe
single-file writer (nmt/training/checkpoint.py). The directory is assembled as
``<name>.dcp.tmp/`` and renamed into place only after ``nmt_manifest.json`` (bytes and sha256
of every file) is written, so a crash mid-save never leaves a half-written ``<name>.dcp``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn

from nmt.errors import UserError
from nmt.fileio import sha256_file
from nmt.training.checkpoint import SHARDED_MANIFEST as MANIFEST
from nmt.training.checkpoint import load_checkpoint, save_checkpoint
from nmt.training.parallel import expert_parameters, unwrap

SUFFIX = ".dcp"
EXTRA = "extra.pt"


def is_sharded(path: Path) -> bool:
    return Path(path).name.endswith(SUFFIX)


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


_MESH = None


def _expert_global(t: torch.Tensor) -> torch.Tensor:
    """An expert-parallel shard as a DTensor over all ranks, sharded on dim 0 (no copy)."""
    global _MESH
    if _world() == 1:
        return t
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    if _MESH is None:
        _MESH = init_device_mesh(t.device.type, (_world(),))
    return DTensor.from_local(t, _MESH, [Shard(0)], run_check=False)


def tensor_state(model: nn.Module, optimizer: torch.optim.Optimizer, *, create: bool = False) -> dict[str, Any]:
    """The DCP state dict of ``model`` and ``optimizer``, its tensors sharing storage with them
    (so that ``dcp.load`` fills them in place). ``create`` allocates zero Adam moments for
    parameters without optimizer state yet (a load before the first update)."""
    m = unwrap(model)
    from torch.distributed.fsdp import FSDPModule

    for mod in m.modules():  # FSDP2 keeps the root unsharded after backward: register the DTensor shards
        if isinstance(mod, FSDPModule):
            mod.reshard()
    experts = set(expert_parameters(m))
    names = {id(p): n for n, p in m.named_parameters()}
    state: dict[str, Any] = {}
    for name, p in m.named_parameters():
        state[f"model.{name}"] = _expert_global(p.data) if name in experts else p.data
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            st = optimizer.state[p]
            if not st and create:
                fused = group.get("fused") or False
                st["step"] = torch.zeros((), dtype=torch.float32, device=p.device if fused else "cpu")
                st["exp_avg"] = torch.zeros_like(p.data)
                st["exp_avg_sq"] = torch.zeros_like(p.data)
            for key, value in st.items():
                if torch.is_tensor(value):
                    sharded = name in experts and value.dim() > 0
                    state[f"optim.{name}.{key}"] = _expert_global(value) if sharded else value
    return state


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_file() and p.name != MANIFEST)


def save_sharded(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, extra: dict[str, Any]) -> None:
    """Write ``path`` (a ``<name>.dcp`` directory) from every rank; collective."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if _main():
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
        except OSError as e:
            raise UserError(f"cannot create the checkpoint directory {tmp}: {e.strerror or e}") from None
    _barrier()
    dcp.save(tensor_state(model, optimizer), checkpoint_id=str(tmp))
    if _main():
        save_checkpoint(extra, tmp / EXTRA)
        manifest = {"format": 1, "step": int(extra.get("step", 0)), "world_size": _world(),
                    "files": {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in _files(tmp)}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        old = path.with_name(path.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    _barrier()


def verify_sharded(path: Path) -> str | None:
    """None when every file of ``path`` matches its manifest, else the reason."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"its manifest {MANIFEST} is missing or unreadable (an interrupted save?)"
    for name, meta in files.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != meta.get("bytes"):
            return f"{name} has {f.stat().st_size} bytes where the manifest says {meta.get('bytes')} (truncated?)"
        if sha256_file(f) != meta.get("sha256"):
            return f"the sha256 of {name} does not match the manifest (corrupt)"
    return None


def read_extra(path: Path) -> dict[str, Any]:
    """Check ``path`` against its manifest and return its non-tensor state."""
    problem = verify_sharded(path)
    if problem is not None:
        raise UserError(f"sharded checkpoint {path} is unusable: {problem}; use another checkpoint")
    return load_checkpoint(Path(path) / EXTRA, require_model=False)


def load_sharded(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Fill ``model`` and ``optimizer`` from ``path`` in place, at any world size; collective."""
    state = tensor_state(model, optimizer, create=True)
    try:
        dcp.load(state, checkpoint_id=str(path))
    except Exception as e:  # noqa: BLE001 - DCP raises CheckpointException / RuntimeError / KeyError
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"sharded checkpoint {path} does not fit this model and optimizer ({first}); "
                        f"resume with the config the run was started with") from None


def load_model_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All model tensors of a sharded checkpoint as full tensors, in one process (for export)."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    problem = verify_sharded(path)
    if problem is not None:
        raise UserError(f"sharded checkpoint {path} is unusable: {problem}; use another checkpoint")
    meta = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    state = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in meta.items()
             if k.startswith("model.") and isinstance(m, TensorStorageMetadata)}
    dcp.load(state, checkpoint_id=str(path), no_dist=True)
    return {k[len("model."):]: v for k, v in state.items()}
