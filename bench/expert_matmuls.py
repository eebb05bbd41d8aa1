"""The six expert matmuls of one top-2 MoE layer step, at several expert counts with the same FLOPs.

    python -m bench.expert_matmuls [--tokens 4096 --d-model 512 --hidden 2048 --experts 4,16,64
                                    --precisions fp32,bf16 --repeats 5 --threads N --quick --out FILE]

Why: ``bench.moe_layer``'s layer takes longer at E=64 than at E=4 for the same FLOPs. This times
only the matmuls, so the growth that belongs to the kernels can be told apart from the rest.

Every expert gets C = 2·S/E rows (top-2, capacity factor 1, balanced). One step is the six
products of a ReLU FFN's forward and backward on every expert, shapes with the suffixes of
nmt/models/moe/experts.py (C rows, D model dim, H hidden dim):

    forward     h_CH = x_CD · w1_DH              y_CD = h_CH · w2_HD
    backward    gw2_HD = h_CHᵀ · g_CD            gh_CH = g_CD · w2_HDᵀ
                gw1_DH = x_CDᵀ · gh_CH           gx_CD = gh_CH · w1_DHᵀ

computed three ways:

- ``loop``: one ``torch.mm`` per expert into slices of preallocated outputs, as our fused expert
  kernel (``_ReluExperts``) runs them;
- ``bmm``: one ``torch.bmm`` per product over ``[E, C, ·]``, the batched product that GShard-style
  layers (fairscale's einsum) run;
- ``grouped_mm``: ``torch._grouped_mm`` with row offsets, where this PyTorch has it.

bf16 runs the products on bf16 operands (our kernel's per-expert weight casts are not included:
this is kernel speed only); it is skipped where a bf16 matmul is emulated (``--force-bf16`` runs it).
Each E's three ways are timed interleaved, ``--repeats`` rounds, medians. Before timing, the three
ways' results are compared (``max_rel_diff``), so a timed way is also a correct one.

Output: one JSON line (also bench/results/expert_matmuls.json; ``--quick``: tiny shapes, nothing
written): per precision and E, ms per step and GFLOP/s of each way, ``bmm_over_loop`` (> 1: the
loop is faster) and ``loop_vs_first_e`` (the loop's time ÷ its time at the first E of the list).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from bench.machine import allocator, bf16_skip_reason, cpu_info
from bench.moe_layer import add_layer_args

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Operands:
    """Inputs and outputs of the six products for E experts of C rows each; 3-D ``[E, C, ·]``
    tensors whose 2-D views ``[E·C, ·]`` the loop and grouped_mm use."""

    def __init__(self, experts: int, rows: int, d: int, h: int, dtype: torch.dtype):
        def rand(*shape: int) -> Tensor:
            return (torch.randn(*shape) / shape[-2] ** 0.5).to(dtype)

        self.experts, self.rows = experts, rows
        self.x, self.g = rand(experts, rows, d), rand(experts, rows, d)
        self.w1, self.w2 = rand(experts, d, h), rand(experts, h, d)
        self.h, self.gh = rand(experts, rows, h), torch.empty(experts, rows, h, dtype=dtype)
        self.y, self.gx = torch.empty(experts, rows, d, dtype=dtype), torch.empty(experts, rows, d, dtype=dtype)
        self.gw1, self.gw2 = torch.empty_like(self.w1), torch.empty_like(self.w2)

    def outputs(self) -> list[Tensor]:
        return [self.h, self.y, self.gw2, self.gh, self.gw1, self.gx]


def loop_step(o: Operands) -> None:
    for e in range(o.experts):
        x, g, h, gh = o.x[e], o.g[e], o.h[e], o.gh[e]
        torch.mm(x, o.w1[e], out=h)
        torch.mm(h, o.w2[e], out=o.y[e])
        torch.mm(h.t(), g, out=o.gw2[e])
        torch.mm(g, o.w2[e].t(), out=gh)
        torch.mm(x.t(), gh, out=o.gw1[e])
        torch.mm(gh, o.w1[e].t(), out=o.gx[e])


def bmm_step(o: Operands) -> None:
    torch.bmm(o.x, o.w1, out=o.h)
    torch.bmm(o.h, o.w2, out=o.y)
    torch.bmm(o.h.transpose(1, 2), o.g, out=o.gw2)
    torch.bmm(o.g, o.w2.transpose(1, 2), out=o.gh)
    torch.bmm(o.x.transpose(1, 2), o.gh, out=o.gw1)
    torch.bmm(o.gh, o.w1.transpose(1, 2), out=o.gx)


def grouped_step(o: Operands) -> None:
    """The same products through ``torch._grouped_mm`` (it allocates its outputs; they are copied
    into ``o`` so that the results can be compared)."""
    gm = torch._grouped_mm  # type: ignore[attr-defined]
    offs = torch.arange(1, o.experts + 1, dtype=torch.int32) * o.rows
    x, g = o.x.flatten(0, 1), o.g.flatten(0, 1)
    h = gm(x, o.w1, offs=offs)
    o.h.view_as(h).copy_(h)
    o.y.view(-1, o.y.shape[-1]).copy_(gm(h, o.w2, offs=offs))
    o.gw2.copy_(gm(h.t(), g, offs=offs))
    gh = gm(g, o.w2.transpose(1, 2), offs=offs)
    o.gh.view_as(gh).copy_(gh)
    o.gw1.copy_(gm(x.t(), gh, offs=offs))
    o.gx.view(-1, o.gx.shape[-1]).copy_(gm(gh, o.w1.transpose(1, 2), offs=offs))


WAYS: dict[str, Callable[[Operands], None]] = {"loop": loop_step, "bmm": bmm_step, "grouped_mm": grouped_step}


def max_rel_diff(o: Operands, ways: list[str]) -> float:
    """Largest relative difference between any way's six results and the loop's."""
    loop_step(o)
    ref = [t.float().clone() for t in o.outputs()]
    worst = 0.0
    for way in ways[1:]:
        WAYS[way](o)
        for r, t in zip(ref, o.outputs(), strict=True):
            worst = max(worst, float((t.float() - r).abs().max() / r.abs().max().clamp_min(1e-30)))
    return worst


def usable_ways(o: Operands) -> tuple[list[str], dict[str, str]]:
    ways, skipped = ["loop", "bmm"], {}
    if not hasattr(torch, "_grouped_mm"):
        skipped["grouped_mm"] = f"torch {torch.__version__} has no _grouped_mm"
        return ways, skipped
    try:
        grouped_step(o)
        ways.append("grouped_mm")
    except (RuntimeError, TypeError, NotImplementedError) as err:
        skipped["grouped_mm"] = str(err).splitlines()[0][:200]
    return ways, skipped


def time_ways(o: Operands, ways: list[str], repeats: int) -> dict[str, float]:
    """Median seconds per step of each way, timed interleaved (rotating which goes first)."""
    for way in ways:
        WAYS[way](o)  # warm-up
    times: dict[str, list[float]] = {w: [] for w in ways}
    for r in range(repeats):
        for way in ways[r % len(ways):] + ways[:r % len(ways)]:
            t = time.perf_counter()
            WAYS[way](o)
            times[way].append(time.perf_counter() - t)
    return {w: statistics.median(v) for w, v in times.items()}


def measure(args: argparse.Namespace, experts: int, dtype: torch.dtype) -> dict:
    rows = 2 * args.tokens // experts
    o = Operands(experts, rows, args.d_model, args.hidden, dtype)
    ways, skipped = usable_ways(o)
    diff = max_rel_diff(o, ways)
    seconds = time_ways(o, ways, args.repeats)
    flops = 12.0 * experts * rows * args.d_model * args.hidden
    row: dict = {"rows_per_expert": rows, "gflop_per_step": round(flops / 1e9, 3), "max_rel_diff": diff}
    for way, s in seconds.items():
        row[way] = {"ms": round(1e3 * s, 2), "gflops": round(flops / s / 1e9, 1)}
    row["bmm_over_loop"] = round(seconds["bmm"] / seconds["loop"], 3)
    row.update({f"{w}_skipped": why for w, why in skipped.items()})
    return row


def run(args: argparse.Namespace) -> dict:
    results: dict = {}
    for name in args.precisions.split(","):
        reason = bf16_skip_reason(name, args.force_bf16)
        if reason:
            results[name] = {"skipped": reason}
            continue
        rows: dict = {}
        for e in (int(x) for x in args.experts.split(",")):
            rows[str(e)] = measure(args, e, DTYPES[name])
            first = next(iter(rows.values()))
            rows[str(e)]["loop_vs_first_e"] = round(rows[str(e)]["loop"]["ms"] / first["loop"]["ms"], 3)
            r = rows[str(e)]
            log(f"{name} E={e} ({r['rows_per_expert']} rows each): "
                + ", ".join(f"{w} {r[w]['ms']:.1f} ms ({r[w]['gflops']:.0f} GFLOP/s)" for w in WAYS if w in r))
        results[name] = rows
    return {"bench": "expert_matmuls", "tokens": args.tokens, "d_model": args.d_model, "hidden": args.hidden,
            "top_k": 2, "threads": torch.get_num_threads(), "torch": torch.__version__, "cpu": cpu_info(),
            "results": results}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_layer_args(ap, repeats=5)
    ap.add_argument("--out", default=str(RESULTS / "expert_matmuls.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    malloc = allocator(args.system_malloc)
    if args.quick:
        args.tokens, args.d_model, args.hidden, args.repeats, args.experts = 64, 32, 64, 1, "2,8"
    bad = [e for e in args.experts.split(",") if (2 * args.tokens) % int(e)]
    if bad:
        ap.error(f"--experts {','.join(bad)}: 2 x --tokens ({2 * args.tokens}) must divide evenly by each")
    out = {**run(args), "allocator": malloc}
    if not args.quick:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
