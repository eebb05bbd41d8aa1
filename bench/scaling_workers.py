"""The worker side of bench/scaling.py: what runs in one process, or in each rank under torchrun.

``worker(spec)`` runs the launch's jobs in one process group: a training run of the real trainer
(tokens/s, all-reduce time) or one MoE layer with local experts vs expert parallelism over
``all_to_all``. bench/scaling.py (the parent) starts the launches and summarises the results.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# ============================================== workers (one process, or each rank under torchrun)
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_allreduce(numel: int, device: torch.device, repeats: int) -> float:
    """Median seconds of one all-reduce of ``numel`` fp32 values (after one untimed)."""
    import torch.distributed as dist

    buf = torch.zeros(max(numel, 1), device=device)
    times = []
    for i in range(repeats + 1):
        dist.barrier()
        _sync(device)
        t = time.perf_counter()
        dist.all_reduce(buf)
        _sync(device)
        if i:
            times.append(time.perf_counter() - t)
    return median(times)


def _gather(obj: Any) -> list[Any]:
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def worker_train(spec: dict) -> dict:
    """One rank of part 1: the real Trainer, ``warmup`` + ``steps`` calls of ``train_step()``."""
    import torch.distributed as dist
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from nmt.config import register
    from nmt.config_checks import validate
    from nmt.models.transformer import count_parameters
    from nmt.training.parallel import expert_parameters, unwrap
    from nmt.training.trainer import Trainer

    register()
    overrides = [f"+recipe={spec['recipe']}", f"data.corpus={spec['corpus']}", f"model={spec['model']}",
                 f"data.max_tokens={spec['max_tokens']}", f"trainer.threads={spec['threads']}",
                 f"trainer.device={spec['device']}", f"trainer.parallel={spec['parallel']}",
                 f"trainer.precision={spec['precision']}", "trainer.progress=false", "trainer.resume=false"]
    if spec["experts"]:
        f = spec["moe_freq"]
        overrides += [f"model.moe.experts={spec['experts']}", f"model.moe.encoder_freq={f}",
                      f"model.moe.decoder_freq={f}"]
    overrides += spec["overrides"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        dcfg = compose("config", overrides=overrides)
    cfg = OmegaConf.to_object(dcfg)
    validate(cfg)
    trainer = Trainer(cfg, Path(spec["run_dir"]), OmegaConf.to_container(dcfg, resolve=True))
    rank, world, device = trainer.rank, trainer.world, trainer.device
    tag = spec["tag"]

    def barrier() -> None:
        if world > 1:
            dist.barrier()
        _sync(device)

    for i in range(spec["warmup"]):
        t = time.perf_counter()
        trainer.train_step()
        if rank == 0:
            log(f"  [{tag}, {world} rank(s)] warm-up step {i + 1}/{spec['warmup']}: {time.perf_counter() - t:.2f} s")
    ddp = trainer.wrapped if isinstance(trainer.wrapped, torch.nn.parallel.DistributedDataParallel) else None
    if ddp is not None:
        try:
            ddp._set_ddp_runtime_logging_sample_rate(1)
        except Exception:  # noqa: BLE001 - a private API; its timers are extra information only
            ddp = None
    barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    step_s, tokens = [], 0
    for i in range(spec["steps"]):
        t = time.perf_counter()
        stats = trainer.train_step()  # tokens summed over all ranks
        _sync(device)
        step_s.append(time.perf_counter() - t)
        tokens += stats.tokens
        if rank == 0:
            log(f"  [{tag}, {world} rank(s)] step {i + 1}/{spec['steps']}: {step_s[-1]:.2f} s, "
                f"{stats.tokens} tokens ({stats.tokens / step_s[-1]:.0f} tok/s)")
    barrier()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0

    res: dict[str, Any] = {"world_size": world, "tokens": tokens, "steps": spec["steps"], "wall_s": wall,
                           "tokens_per_s": tokens / wall, "step_s_median": median(step_s),
                           "step_s": [round(s, 4) for s in step_s], "precision": trainer.precision,
                           "parameters_on_rank0": count_parameters(trainer.model), "device": str(device)}
    per_rank = _gather({"cpu_s": cpu, "wall_s": wall})
    res["effective_cores_per_rank"] = [round(r["cpu_s"] / r["wall_s"], 3) for r in per_rank]
    if world > 1:
        model = unwrap(trainer.wrapped)
        experts = set(expert_parameters(model))
        numel = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and n not in experts)
        res["grad_allreduce_numel"] = numel
        res["grad_allreduce_bytes"] = numel * 4
        res["grad_allreduce_s"] = _time_allreduce(numel, device, repeats=5)
        res["grad_allreduce_share"] = res["grad_allreduce_s"] / res["step_s_median"]
        if ddp is not None:
            try:
                data = ddp._get_ddp_logging_data()
            except Exception:  # noqa: BLE001 - a private API, as above
                data = {}
            timers = {k: v / 1e9 for k, v in data.items() if k.startswith("avg_") and k.endswith("_time")
                      and isinstance(v, (int, float)) and v > 0}  # ns -> s
            if timers:  # averages over DDP's sampled iterations, the warm-up steps included
                res["ddp_timers_s_incl_warmup"] = timers
    trainer.logger.close()
    return res


def worker_moe_layer(spec: dict) -> dict | None:
    """One rank of part 2: local experts vs local + expert-gradient all-reduce vs expert parallel."""
    import torch.distributed as dist

    from nmt.config import MoEConfig
    from nmt.models.moe import MoELayer

    cuda = spec["device"] == "cuda"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cpu")
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    torch.set_num_threads(spec["threads"])
    s, d, h, e = spec["tokens"], spec["d_model"], spec["hidden"], spec["experts"]
    cfg = MoEConfig(experts=e, top_k=2, encoder_freq=1, capacity_factor=spec["capacity_factor"])
    torch.manual_seed(0)  # the same weights on every rank
    local = MoELayer(d, h, cfg, "enc0")
    ep = MoELayer(d, h, cfg, "enc0", group=dist.group.WORLD)
    ep.load_state_dict(local.state_dict())  # each rank keeps its slice of the experts
    local, ep = local.to(device).train(), ep.to(device).train()
    gen = torch.Generator().manual_seed(1000 + rank)  # each rank its own tokens
    x = torch.randn(s, d, generator=gen).to(device).requires_grad_()
    w = torch.randn(s, d, generator=gen).to(device)
    rows: dict[str, int] = {}

    def count_rows(name: str):
        def hook(_module, args):
            rows[name] = int(args[0].shape[0])
        return hook

    local.experts.register_forward_pre_hook(count_rows("local"))
    ep.experts.register_forward_pre_hook(count_rows("ep"))

    def step(layer: MoELayer, allreduce_experts: bool = False) -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        aux: dict[str, torch.Tensor] = {}
        y = layer.forward_tokens(x, aux)
        ((y * w).sum() + aux["loss/moe_balance"]).backward()
        if allreduce_experts:  # what a data-parallel copy of the experts pays every update
            for p in layer.experts.parameters():
                dist.all_reduce(p.grad)

    variants = {"local": lambda: step(local), "local_dp": lambda: step(local, True), "ep": lambda: step(ep)}
    for name, fn in variants.items():  # warm-up
        fn()
        if rank == 0:
            log(f"  [moe layer] warm-up {name}")

    # Instrumented EP steps: bytes and time inside all_to_all (not part of the timed steps).
    probe = {"payload_remote_bytes": 0, "payload_bytes": 0, "counts_bytes": 0, "calls": 0, "seconds": 0.0}
    original = dist.all_to_all_single

    def counting(output, input, output_split_sizes=None, input_split_sizes=None, group=None, async_op=False):
        n = input.shape[0]
        splits = list(input_split_sizes) if input_split_sizes else [n // world] * world
        row = input.element_size() * (input[0].numel() if input.dim() > 1 and n else 1)
        if input.dim() == 1:  # the per-expert counts exchanged before the rows
            probe["counts_bytes"] += sum(sp for j, sp in enumerate(splits) if j != rank) * row
        else:
            probe["payload_remote_bytes"] += sum(sp for j, sp in enumerate(splits) if j != rank) * row
            probe["payload_bytes"] += n * row
        probe["calls"] += 1
        _sync(device)
        t = time.perf_counter()
        out = original(output, input, output_split_sizes, input_split_sizes, group=group, async_op=async_op)
        _sync(device)
        probe["seconds"] += time.perf_counter() - t
        return out

    probe_steps = spec["probe_steps"]
    dist.all_to_all_single = counting
    try:
        for _ in range(probe_steps):
            dist.barrier()
            step(ep)
    finally:
        dist.all_to_all_single = original

    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(spec["repeats"]):
        order = names[r % 3:] + names[:r % 3]
        for name in order:
            dist.barrier()
            _sync(device)
            t = time.perf_counter()
            variants[name]()
            _sync(device)
            times[name].append(time.perf_counter() - t)
        if rank == 0:
            log(f"  [moe layer] repeat {r + 1}/{spec['repeats']}: "
                + ", ".join(f"{n} {times[n][-1] * 1e3:.1f} ms" for n in names))
    # A step lasts as long as its slower rank.
    slowest = torch.tensor([times[n] for n in names], dtype=torch.float64)
    if cuda:
        slowest = slowest.to(device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    slowest = slowest.cpu()
    expert_numel = sum(p.numel() for p in local.experts.parameters())
    ar_s = _time_allreduce(expert_numel, device, repeats=5)
    per_rank = _gather({"rows_local": rows.get("local", 0), "rows_ep": rows.get("ep", 0),
                        **{k: v / probe_steps for k, v in probe.items()}})
    res = None
    if rank == 0:
        med = {n: median(slowest[i].tolist()) for i, n in enumerate(names)}
        rows_ep = [r["rows_ep"] for r in per_rank]
        res = {
            "world_size": world, "device": str(device), "tokens_per_rank": s, "d_model": d, "hidden": h,
            "experts": e, "experts_per_rank_ep": e // world, "top_k": 2, "capacity_factor": spec["capacity_factor"],
            "repeats": spec["repeats"],
            "step_s": {n: med[n] for n in names},
            "step_s_all": {n: [round(t, 5) for t in slowest[i].tolist()] for i, n in enumerate(names)},
            "ep_vs_local": med["ep"] / med["local"],
            "ep_vs_local_dp": med["ep"] / med["local_dp"],
            "all_to_all": {
                "calls_per_step": per_rank[0]["calls"],
                "bytes_to_other_ranks_per_rank_step": statistics.mean(r["payload_remote_bytes"] for r in per_rank),
                "bytes_incl_own_share_per_rank_step": statistics.mean(r["payload_bytes"] for r in per_rank),
                "count_exchange_bytes_per_rank_step": statistics.mean(r["counts_bytes"] for r in per_rank),
                "seconds_per_step_by_rank": [round(r["seconds"], 5) for r in per_rank],
                "share_of_ep_step": statistics.mean(r["seconds"] for r in per_rank) / med["ep"],
                "note": "bytes: rows sent to the other rank(s), forward dispatch + combine and their backward; "
                        "seconds include waiting for the slower rank",
            },
            "expert_grad_allreduce_bytes": expert_numel * 4,
            "expert_grad_allreduce_s": ar_s,
            "rows_computed_per_rank": {"local": [r["rows_local"] for r in per_rank], "ep": rows_ep},
            "ep_load_imbalance": max(rows_ep) / max(statistics.mean(rows_ep), 1e-9),
        }
    return res


def worker(spec: dict) -> None:
    """Run the jobs of one launch in order, all in one process group; rank 0 writes the results.

    The group is joined once (the trainer's ``distributed.init`` does nothing when a group
    exists): destroying it and joining again in the same torchrun launch reuses the store keys of
    the first rendezvous, and gloo then hung (intermittently) connecting to the old sockets."""
    import gc

    from nmt.training import distributed

    results = []
    for i, job in enumerate(spec["jobs"]):
        job = {**job, "run_dir": str(Path(spec["tmp"]) / f"run{i}")}
        results.append(worker_train(job) if job["kind"] == "train" else worker_moe_layer(job))
        gc.collect()
    if int(os.environ.get("RANK", "0")) == 0:
        (Path(spec["tmp"]) / "results.json").write_text(json.dumps(results))
    distributed.barrier()
    distributed.shutdown()
