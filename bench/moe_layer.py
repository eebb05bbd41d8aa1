"""One MoE layer, forward + backward: our index-based dispatch against fairscale's GShard MOELayer.

    python -m bench.moe_layer [--tokens 4096 --d-model 512 --hidden 2048 --experts 4,16,64
                               --precisions fp32,bf16 --repeats 3 --force-bf16 --quick --out FILE]
                              [--system-malloc] [--profile [--top 12]]

Both layers: top-2, capacity factor 1.0 (2·S/E slots), second expert sampled with Gumbel noise
(fairscale's only policy; ours with ``second_expert_policy=sampling``), ReLU experts of width
``hidden``, the balancing loss added to the loss. One step = forward, ``(y·w).sum() + l_aux``,
backward. For every expert count the two are timed interleaved (ours, fairscale, fairscale,
ours, ...) and the medians compared: ``speedup = fairscale / ours``.

Memory: every (layer, E, precision) also runs in ``--memory-samples`` (3) fresh child processes,
each reporting the growth of its peak resident set size over one step (``VmHWM`` after the step
minus before it; inputs and weights already allocated): the *extra* memory of a training step,
the median of the samples (all kept in ``extra_mb_samples``: at fp32 E=64 fairscale's varied from
1162 to 1362 MB between identical runs, ours by ~2%).
``memory_ratio = fairscale extra / ours extra``. Both layers allocate the same fp32 weight
gradients (512 MiB at E=64), which bound that ratio from above (fairscale extra / gradients);
``memory_ratio_beyond_gradients`` compares the rest, the memory the layers' designs decide.
Targets (issues #3, #14): speedup ≥ 3 and memory_ratio ≥ 2 at every E. Both layers run under
the trainer's allocator (``trainer.reuse_memory``, nmt/malloc.py; ``--system-malloc``: glibc's
defaults). bf16 is skipped where a bf16 matmul is emulated (3x slower than fp32:
no bf16 hardware; ``--force-bf16`` runs it anyway). The last stdout line is one JSON object, also
written to bench/results/moe_layer.json.

``--profile``: instead of timing, one step of our layer per (precision, E) under torch.profiler
(after a warm-up step): op counts and each op's share of the step's self CPU time, the ``--top``
ops and the totals, as a table on stdout (bench/op_profile.py). Shares and counts, unlike
times, stay informative on a loaded machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from bench.machine import allocator, bf16_skip_reason, cpu_info
from nmt.config import MoEConfig
from nmt.models.moe import MoELayer

RESULTS = Path(__file__).resolve().parent / "results"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_step(impl: str, tokens: int, d: int, hidden: int, experts: int, precision: str) -> Callable[[], None]:
    """Build one layer and its inputs; return a function that runs one forward + backward."""
    torch.manual_seed(0)
    x = torch.randn(tokens, d, requires_grad=True)
    w = torch.randn(tokens, d)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    if impl == "ours":
        cfg = MoEConfig(experts=experts, top_k=2, encoder_freq=1, capacity_factor=1.0,
                        second_expert_policy="sampling")
        layer: nn.Module = MoELayer(d, hidden, cfg, "enc0")

        def forward() -> torch.Tensor:
            aux: dict[str, torch.Tensor] = {}
            y = layer.forward_tokens(x, aux)
            return (y.float() * w).sum() + aux["moe/enc0/balance"]
    else:
        import torch.distributed as dist
        from fairscale.nn.moe import MOELayer, Top2Gate

        if not dist.is_initialized():
            dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        ffns = nn.ModuleList(nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, d))
                             for _ in range(experts))
        layer = MOELayer(Top2Gate(d, experts), ffns)

        def forward() -> torch.Tensor:
            y = layer(x[:, None, :])[:, 0]
            return (y.float() * w).sum() + layer.l_aux * experts * experts

    def step() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        with autocast:
            loss = forward()
        loss.backward()

    return step


def peak_rss_kib() -> int:
    """Peak resident set of this process image: VmHWM (``ru_maxrss`` would carry the parent's
    peak across fork + exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(impl: str, tokens: int, d: int, hidden: int, experts: int, precision: str) -> None:
    step = make_step(impl, tokens, d, hidden, experts, precision)
    before = peak_rss_kib()
    step()
    after = peak_rss_kib()
    print(json.dumps({"extra_mb": (after - before) / 1024}))


def extra_memory(impl: str, args: argparse.Namespace, experts: int, precision: str) -> list[float]:
    """``--memory-samples`` fresh children's extra memory (MB), in run order."""
    return [_one_child(impl, args, experts, precision) for _ in range(args.memory_samples)]


def _one_child(impl: str, args: argparse.Namespace, experts: int, precision: str) -> float:
    cmd = [sys.executable, "-m", "bench.moe_layer", "--child", impl, "--tokens", str(args.tokens),
           "--d-model", str(args.d_model), "--hidden", str(args.hidden), "--experts", str(experts),
           "--precisions", precision, "--threads", str(args.threads)] + ["--system-malloc"] * args.system_malloc
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    return json.loads(out.stdout.strip().splitlines()[-1])["extra_mb"]


def beyond_gradients(row: dict, args: argparse.Namespace, experts: int) -> dict[str, float]:
    """The extra memory less the weight gradients, which both layers allocate alike (fp32, as their
    parameters: E experts' two matrices and biases, and the gate): the memory a layer's design decides."""
    d, h = args.d_model, args.hidden
    grad_mb = 4 * (experts * (2 * d * h + h + d) + d * experts) / 2**20
    ours, peer = row["ours_extra_mb"] - grad_mb, row["fairscale_extra_mb"] - grad_mb
    return {"gradient_mb": grad_mb, "ours_beyond_gradients_mb": ours, "fairscale_beyond_gradients_mb": peer,
            "memory_ratio_beyond_gradients": peer / max(ours, 1e-3)}


def time_pair(args: argparse.Namespace, experts: int, precision: str) -> dict[str, float]:
    steps = {impl: make_step(impl, args.tokens, args.d_model, args.hidden, experts, precision)
             for impl in ("ours", "fairscale")}
    for s in steps.values():
        s()  # warm-up
    times: dict[str, list[float]] = {"ours": [], "fairscale": []}
    for r in range(args.repeats):
        order = ("ours", "fairscale") if r % 2 == 0 else ("fairscale", "ours")
        for impl in order:
            t = time.perf_counter()
            steps[impl]()
            times[impl].append(time.perf_counter() - t)
    return {f"{impl}_s": statistics.median(v) for impl, v in times.items()}


def add_layer_args(ap: argparse.ArgumentParser, repeats: int) -> None:
    """The options this benchmark shares with bench/expert_matmuls.py: the layer's shape, the
    expert counts (same tokens, so the same FLOPs at every E), precisions, threads, allocator."""
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--experts", default="4,16,64", help="comma list of expert counts (same tokens and FLOPs)")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--force-bf16", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--system-malloc", action="store_true", help="glibc's allocator defaults, not the trainer's")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, one repeat (a smoke test)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_layer_args(ap, repeats=3)
    ap.add_argument("--memory-samples", type=int, default=3,
                    help="fresh child processes per (layer, E, precision) for the extra memory; the median is used")
    ap.add_argument("--out", default=str(RESULTS / "moe_layer.json"))
    ap.add_argument("--profile", action="store_true", help="op-level profile of our layer instead of timing")
    ap.add_argument("--top", type=int, default=12, help="ops shown per profile")
    ap.add_argument("--child", choices=["ours", "fairscale"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    malloc = allocator(args.system_malloc)
    if args.child:
        child(args.child, args.tokens, args.d_model, args.hidden, int(args.experts), args.precisions)
        return
    if args.quick:
        args.tokens, args.d_model, args.hidden, args.repeats, args.experts = 256, 64, 128, 1, "4"
        args.memory_samples = 1
    if args.profile:
        from bench.op_profile import profile_layer

        for precision in args.precisions.split(","):
            for e in (int(x) for x in args.experts.split(",")):
                print(profile_layer(make_step("ours", args.tokens, args.d_model, args.hidden, e, precision),
                                    f"{precision} E={e}", args.top))
        return
    try:
        import fairscale  # noqa: F401
    except ImportError:
        print(json.dumps({"bench": "moe_layer", "skipped": "fairscale is not installed: pip install -e '.[bench]'"}))
        return
    results: dict = {}
    for precision in args.precisions.split(","):
        reason = bf16_skip_reason(precision, args.force_bf16)
        if reason:
            results[precision] = {"skipped": reason}
            log(f"{precision}: skipped ({reason})")
            continue
        rows = {}
        for e in (int(x) for x in args.experts.split(",")):
            row = time_pair(args, e, precision)
            row["speedup"] = row["fairscale_s"] / row["ours_s"]
            samples = {impl: extra_memory(impl, args, e, precision) for impl in ("ours", "fairscale")}
            row["ours_extra_mb"] = statistics.median(samples["ours"])
            row["fairscale_extra_mb"] = statistics.median(samples["fairscale"])
            row["memory_ratio"] = row["fairscale_extra_mb"] / max(row["ours_extra_mb"], 1e-3)
            row.update(beyond_gradients(row, args, e))
            rows[str(e)] = {k: round(v, 4) for k, v in row.items()}
            rows[str(e)]["extra_mb_samples"] = {k: [round(v, 1) for v in vs] for k, vs in samples.items()}
            log(f"{precision} E={e}: ours {row['ours_s']:.3f} s, fairscale {row['fairscale_s']:.3f} s "
                f"(x{row['speedup']:.2f}); extra memory ours {row['ours_extra_mb']:.0f} MB, "
                f"fairscale {row['fairscale_extra_mb']:.0f} MB (x{row['memory_ratio']:.2f}; "
                f"x{row['memory_ratio_beyond_gradients']:.2f} beyond the {row['gradient_mb']:.0f} MB of gradients)")
        results[precision] = rows
    measured = [r for p in results.values() if "skipped" not in p for r in p.values()]
    out = {"bench": "moe_layer", "tokens": args.tokens, "d_model": args.d_model, "hidden": args.hidden,
           "top_k": 2, "capacity_factor": 1.0, "threads": torch.get_num_threads(), "torch": torch.__version__,
           "allocator": malloc, "cpu": cpu_info(),
           "results": results,
           "min_speedup": min((r["speedup"] for r in measured), default=None),
           "min_memory_ratio": min((r["memory_ratio"] for r in measured), default=None),
           "targets": {"speedup": 3.0, "memory_ratio": 2.0}}
    line = json.dumps(out)
    if not args.quick:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(line)


if __name__ == "__main__":
    main()
