"""Run with ``torchrun --standalone --nproc_per_node=2``: an expert-parallel MoE layer (experts
split over the ranks, tokens exchanged with all_to_all) against one process holding all experts.

Each rank routes its own tokens (capacity from its own token count; under
``capacity_rule=fairseq`` from the largest padded batch over the ranks, as in fairseq). The reference
runs both ranks' inputs through one full layer in this process. Checked in fp64: outputs,
input gradients, the balancing loss, expert gradients (EP divides them by the world size, the
data-parallel average) and router gradients (averaged as DDP would), and that state_dict()
gathers all experts so a checkpoint loads on any world size. Prints OK on success.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from nmt.config import MoEConfig
from nmt.models.moe import MoELayer


def check(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    if not torch.allclose(a, b, atol=1e-12, rtol=1e-10):
        print(f"rank {dist.get_rank()}: {name} differs by {(a - b).abs().max():.3e}", file=sys.stderr)
        raise SystemExit(1)


def run(cfg: MoEConfig, padded: tuple[int, ...] | None = None) -> None:
    """``padded``: each rank's batch positions with padding (the fairseq capacity rule's S); the
    expert-parallel layer must use the largest over the ranks, as fairseq does."""
    rank, world = dist.get_rank(), dist.get_world_size()
    ep_kw = {} if padded is None else {"batch_tokens": padded[rank]}
    ref_kw = {} if padded is None else {"batch_tokens": max(padded[:world])}
    torch.manual_seed(0)
    ref = MoELayer(8, 16, cfg, "enc0")
    with torch.no_grad():
        ref.router.weight.mul_(4.0)  # a sharp router: some experts overflow their capacity
    ep = MoELayer(8, 16, cfg, "enc0", group=dist.group.WORLD)
    ep.load_state_dict(ref.state_dict())  # a full checkpoint loads into the shard of this rank
    assert ep.experts.w1.shape[0] == cfg.experts // world

    gen = torch.Generator().manual_seed(100)
    inputs = [torch.randn(n, 8, generator=gen) for n in (37, 50, 23, 41)[:world]]
    weights = [torch.randn(n, 8, generator=gen) for n in (37, 50, 23, 41)[:world]]

    x = inputs[rank].clone().requires_grad_()
    aux: dict[str, torch.Tensor] = {}
    y = ep.forward_tokens(x, aux, **ep_kw)
    ((y * weights[rank]).sum() + aux["loss/moe_balance"]).backward()

    ref_x = [t.clone().requires_grad_() for t in inputs]
    total = 0.0
    ref_y, ref_bal = [], []
    for r in range(world):
        a: dict[str, torch.Tensor] = {}
        out = ref.forward_tokens(ref_x[r], a, **ref_kw)
        ref_y.append(out)
        ref_bal.append(a["moe/enc0/balance"])
        total = total + (out * weights[r]).sum() + a["loss/moe_balance"]
    total.backward()

    check("output", y, ref_y[rank])
    check("balance loss", aux["moe/enc0/balance"], ref_bal[rank])
    check("input gradient", x.grad, ref_x[rank].grad)
    lo, hi = rank * ep.experts.local, (rank + 1) * ep.experts.local
    for name in ("w1", "b1", "w2", "b2"):  # data-parallel average of the whole-batch gradient
        check(f"expert {name} gradient", getattr(ep.experts, name).grad, getattr(ref.experts, name).grad[lo:hi] / world)
    router = ep.router.weight.grad.clone()
    dist.all_reduce(router)
    check("router gradient", router / world, ref.router.weight.grad / world)
    full = ep.state_dict()  # collective: gathers every expert
    for key, value in ref.state_dict().items():
        check(f"state_dict {key}", full[key], value)


def main() -> None:
    dist.init_process_group("gloo")
    torch.set_default_dtype(torch.float64)
    run(MoEConfig(experts=4, top_k=2, encoder_freq=1))
    run(MoEConfig(experts=4, top_k=1, encoder_freq=1, capacity_factor=1.0))
    run(MoEConfig(experts=4, top_k=2, encoder_freq=1, dropless=True))
    run(MoEConfig(experts=4, top_k=1, encoder_freq=1, capacity_rule="fairseq"), padded=(37, 80, 23, 41))
    dist.barrier()
    if dist.get_rank() == 0:
        print("OK")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
