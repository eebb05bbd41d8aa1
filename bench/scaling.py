"""Scale-out: training tokens/s on 1 vs 2 ranks (data parallel) and the cost of expert
parallelism's all_to_all against local experts.

    python -m bench.scaling [--recipe demo --corpus data/demo --model xs --max-tokens 1024
                             --steps 20 --warmup 3 --rounds 2 --parallel ddp --threads 1
                             --moe-experts 4 --moe-freq 2
                             --layer-tokens 2048 --layer-d-model 256 --layer-hidden 1024
                             --layer-experts 8 --layer-repeats 10 --no-gpu --quick --out FILE]

Part 1, data-parallel scaling. The real trainer (``nmt.training.trainer.Trainer`` built from the
composed Hydra config, as ``python -m nmt.train`` builds it) runs in one process (plain
``python``) and on 2 ranks (``torchrun --standalone --nproc_per_node=2``, gloo on CPU), each rank
with ``--threads`` intra-op threads. Every rank draws ``data.max_tokens`` per step, so 2 ranks
process twice the tokens of one per step. After ``--warmup`` untimed ``train_step()`` calls,
``--steps`` calls are timed between two barriers; tokens/s = target tokens of all ranks / wall
time. ``efficiency = tps(2) / (2 · tps(1))``. Launches alternate (1, 2, 2, 1, ...) over
``--rounds`` and each world size takes the median. Timed: the dense model, and with
``--moe-experts E`` the same model with MoE layers (expert parallel over the 2 ranks, so its
efficiency includes all_to_all); one launch runs both, one after the other. The 2-rank runs also
time one all-reduce of a buffer as large as the data-parallel gradient on its own
(``grad_allreduce_s``: what it would cost if backward overlapped none of it) and report DDP's own
sampled timers (``avg_backward_comm_time``, ...) where torch exposes them.

Part 2, expert-parallel overhead. One ``MoELayer`` (top-2, capacity factor 1.0), forward +
backward on ``--layer-tokens`` tokens per rank, on 2 ranks at once, three ways, interleaved
step by step (rotating which goes first) so that background load hits all alike:
``local`` — every rank holds all E experts (a data-parallel copy, no communication);
``local_dp`` — the same plus the all-reduce of the expert gradients that data parallelism needs;
``ep`` — expert parallel, E/2 experts per rank, tokens travel by all_to_all (the trainer's way).
A step's time is the slower rank's. ``ep_vs_local`` and ``ep_vs_local_dp`` are the ratios of the
medians. Bytes moved by all_to_all (to the other rank, per rank and step, forward + backward) and
the time spent inside all_to_all come from a separate instrumented step.

On GPU (``torch.cuda.device_count() >= 2``, and not ``--no-gpu``) both parts run again with
NCCL, one GPU per rank, at the ``--gpu-*`` sizes; otherwise ``gpu.skipped`` says why.

Progress goes to stderr; the last stdout line is one JSON object, also written to
bench/results/scaling.json (``--quick``: only with ``--out``). See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.scaling_workers import log, median, worker

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"




# ================================================================================ the parent
def launch(world: int, jobs: list[dict], threads: int, timeout: float) -> list[dict]:
    """Run ``jobs`` in one launch of ``world`` ranks (torchrun; one rank: plain ``python``, as a
    one-process ``python -m nmt.train`` runs); returns rank 0's result of each job."""
    with tempfile.TemporaryDirectory(prefix="nmt-scaling-") as tmp:
        spec = json.dumps({"jobs": jobs, "tmp": tmp})
        runner = ([] if world == 1 else
                  ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}"])
        cmd = [sys.executable, *runner, "-m", "bench.scaling", "--worker", "--spec", spec]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        # The workers' stdout (the trainer's reports) goes to our stderr: our stdout is the JSON line.
        # Own session: on a timeout or Ctrl-C the whole launch (torchrun and its ranks) is stopped.
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=sys.stderr.fileno(), stderr=sys.stderr.fileno(),
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except BaseException as exc:
            _stop(proc)
            if isinstance(exc, subprocess.TimeoutExpired):
                raise SystemExit(f"bench.scaling: a launch on {world} rank(s) ran past --launch-timeout "
                                 f"{timeout:g} s and was stopped") from None
            raise
        if rc != 0:
            raise SystemExit(f"bench.scaling: a launch on {world} rank(s) failed (exit {rc}); its output is above")
        return json.loads((Path(tmp) / "results.json").read_text())


def _stop(proc: subprocess.Popen) -> None:
    """Terminate the process group of a launch (its leader is ``proc``), then kill what is left."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def train_job(args: argparse.Namespace, device: str, experts: int, tag: str) -> dict:
    gpu = device == "cuda"
    return {"kind": "train", "tag": tag, "recipe": args.recipe, "corpus": args.corpus, "device": device,
            "model": args.gpu_model if gpu else args.model,
            "max_tokens": args.gpu_max_tokens if gpu else args.max_tokens,
            "threads": args.threads, "parallel": args.parallel, "precision": args.precision,
            "experts": experts, "moe_freq": args.moe_freq, "overrides": args.override,
            "warmup": args.warmup, "steps": args.steps}


def layer_job(args: argparse.Namespace, device: str) -> dict:
    gpu = device == "cuda"
    return {"kind": "moe_layer", "device": device, "threads": args.threads,
            "tokens": args.gpu_layer_tokens if gpu else args.layer_tokens,
            "d_model": args.gpu_layer_d_model if gpu else args.layer_d_model,
            "hidden": args.gpu_layer_hidden if gpu else args.layer_hidden,
            "experts": args.layer_experts, "capacity_factor": 1.0,
            "repeats": args.layer_repeats, "probe_steps": 1 if args.quick else 2}


def scaling_summary(job: dict, runs: dict[int, list[dict]], tag: str) -> dict:
    tps = {w: median([r["tokens_per_s"] for r in rs]) for w, rs in runs.items()}
    out = {"model": job["model"], "max_tokens_per_rank": job["max_tokens"], "moe_experts": job["experts"],
           "moe_freq": job["moe_freq"] if job["experts"] else 0, "parallel": job["parallel"],
           "tokens_per_s_1": tps[1], "tokens_per_s_2": tps[2], "speedup": tps[2] / tps[1],
           "efficiency": tps[2] / (2 * tps[1]), "runs_1": runs[1], "runs_2": runs[2],
           "grad_allreduce_share": median([r["grad_allreduce_share"] for r in runs[2]])}
    log(f"[{tag}] 1 rank {tps[1]:.0f} tok/s, 2 ranks {tps[2]:.0f} tok/s: speedup {out['speedup']:.2f}, "
        f"efficiency {out['efficiency']:.2f}; gradient all-reduce alone = {out['grad_allreduce_share']:.0%} "
        f"of a 2-rank step")
    return out


def run_device(args: argparse.Namespace, device: str) -> dict:
    """Part 1 and part 2 on ``device``: launches alternate 1, 2, 2, 1, ... ranks; each runs the
    dense (and MoE) trainer jobs, and the first 2-rank launch also the MoE layer job."""
    jobs = {"dense": train_job(args, device, 0, f"{device} dense")}
    if args.moe_experts:
        jobs["moe"] = train_job(args, device, args.moe_experts, f"{device} moe")
    runs: dict[str, dict[int, list[dict]]] = {name: {1: [], 2: []} for name in jobs}
    layer: dict | None = None
    for r in range(args.rounds):
        for world in ((1, 2) if r % 2 == 0 else (2, 1)):
            todo = list(jobs.values()) + ([layer_job(args, device)] if world == 2 and layer is None else [])
            log(f"[{device}] round {r + 1}/{args.rounds}: {world} rank(s), "
                + ", ".join(j.get("tag", f"{device} moe layer") for j in todo))
            before = os.getloadavg()[0]
            results = launch(world, todo, args.threads, args.launch_timeout)
            after = os.getloadavg()[0]
            for name, res in zip(jobs, results[: len(jobs)], strict=True):  # the layer job's result is last
                res["loadavg_1min_before_after_launch"] = [before, after]
                runs[name][world].append(res)
                log(f"[{device} {name}] {world} rank(s): {res['tokens_per_s']:.0f} tok/s "
                    f"(effective cores per rank {res['effective_cores_per_rank']})")
            if len(results) > len(jobs):
                layer = results[-1]
                st = layer["step_s"]
                log(f"[{device} moe layer] local {st['local'] * 1e3:.1f} ms, local_dp {st['local_dp'] * 1e3:.1f} ms, "
                    f"ep {st['ep'] * 1e3:.1f} ms: ep/local {layer['ep_vs_local']:.2f}, "
                    f"ep/local_dp {layer['ep_vs_local_dp']:.2f}; all_to_all "
                    f"{layer['all_to_all']['bytes_to_other_ranks_per_rank_step'] / 2**20:.2f} MiB per rank and step")
    return {"data_parallel": {name: scaling_summary(jobs[name], runs[name], f"{device} {name}") for name in jobs},
            "expert_parallel": layer}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("part 1: data-parallel scaling of the trainer")
    g.add_argument("--recipe", default="demo", help="the recipe composed for the trainer (default: demo)")
    g.add_argument("--corpus", default="data/demo", help="data.corpus (default: data/demo, from `make demo`)")
    g.add_argument("--model", default="xs", help="model preset on CPU (default: xs)")
    g.add_argument("--max-tokens", type=int, default=1024, help="data.max_tokens: the batch of each rank")
    g.add_argument("--steps", type=int, default=20, help="timed train_step() calls per launch")
    g.add_argument("--warmup", type=int, default=3, help="untimed train_step() calls before timing")
    g.add_argument("--rounds", type=int, default=2, help="launches per world size, alternating 1,2,2,1,...")
    g.add_argument("--parallel", default="ddp", choices=["ddp", "fsdp"], help="trainer.parallel")
    g.add_argument("--precision", default="auto", help="trainer.precision (default auto)")
    g.add_argument("--moe-experts", type=int, default=4,
                   help="also the model with MoE layers of E experts; 0: dense only")
    g.add_argument("--moe-freq", type=int, default=2, help="model.moe.encoder_freq = decoder_freq")
    g.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Hydra override for the trainer (repeatable)")
    g = p.add_argument_group("part 2: one MoE layer, local experts vs expert parallel (2 ranks)")
    g.add_argument("--layer-tokens", type=int, default=2048, help="tokens per rank")
    g.add_argument("--layer-d-model", type=int, default=256)
    g.add_argument("--layer-hidden", type=int, default=1024)
    g.add_argument("--layer-experts", type=int, default=8)
    g.add_argument("--layer-repeats", type=int, default=10, help="timed steps of each variant")
    g = p.add_argument_group("GPU (only with 2 or more CUDA devices)")
    g.add_argument("--no-gpu", action="store_true", help="CPU only")
    g.add_argument("--gpu-model", default="base")
    g.add_argument("--gpu-max-tokens", type=int, default=8192)
    g.add_argument("--gpu-layer-tokens", type=int, default=16384)
    g.add_argument("--gpu-layer-d-model", type=int, default=1024)
    g.add_argument("--gpu-layer-hidden", type=int, default=4096)
    g = p.add_argument_group("general")
    g.add_argument("--threads", type=int, default=1, help="intra-op threads per rank (default 1)")
    g.add_argument("--launch-timeout", type=float, default=1800, help="seconds before a torchrun launch is killed")
    g.add_argument("--quick", action="store_true",
                   help="tiny model, few steps, one round, dense + MoE: a smoke run (the JSON is not written "
                        "unless --out)")
    g.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results/scaling.json)")
    g.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    g.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return args
    if args.quick:  # tiny defaults; flags given explicitly still win
        p.set_defaults(model="tiny", max_tokens=256, steps=3, warmup=1, rounds=1, moe_experts=2, moe_freq=1,
                       layer_tokens=128, layer_d_model=32, layer_hidden=64, layer_experts=4, layer_repeats=2,
                       gpu_model="tiny", gpu_max_tokens=512, gpu_layer_tokens=1024, gpu_layer_d_model=64,
                       gpu_layer_hidden=256)
        args = p.parse_args(argv)
    if args.moe_experts and args.moe_experts % 2:
        p.error(f"--moe-experts {args.moe_experts} does not split over 2 ranks: use an even number (or 0)")
    if args.layer_experts % 2:
        p.error(f"--layer-experts {args.layer_experts} does not split over 2 ranks: use an even number")
    if min(args.steps, args.rounds, args.layer_repeats, args.threads) < 1 or args.warmup < 0:
        p.error("--steps, --rounds, --layer-repeats and --threads must be >= 1, --warmup >= 0")
    corpus = Path(args.corpus)
    if not corpus.is_absolute():  # the workers run in the repository
        corpus = corpus.resolve() if corpus.is_dir() else REPO / corpus
    if not corpus.is_dir():
        p.error(f"--corpus {args.corpus} is not a directory; `make demo` prepares data/demo")
    args.corpus = str(corpus)
    return args


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.worker:
        worker(json.loads(args.spec))
        return None
    t_begin = time.perf_counter()
    load_before = os.getloadavg()
    cores = {"affinity": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(), "threads_per_rank": args.threads}
    log(f"cores: {cores}, load average {load_before}")
    if load_before[0] > cores["affinity"] - 1.5:
        log("other jobs are using these cores: 2 ranks get less than 2 cores, so the efficiency comes out low "
            "(effective_cores_per_rank in the JSON shows how much each rank got)")
    if 2 * args.threads > cores["affinity"]:
        log(f"note: 2 ranks x {args.threads} threads exceed the {cores['affinity']} cores available")

    report: dict[str, Any] = {"bench": "scaling",
                              "command": "python -m bench.scaling " + " ".join(sys.argv[1:] if argv is None else argv),
                              "quick": args.quick}
    report["cpu"] = run_device(args, "cpu")
    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if args.no_gpu:
        report["gpu"] = {"skipped": "--no-gpu"}
    elif n_gpu < 2:
        report["gpu"] = {"skipped": f"{n_gpu} CUDA device(s) visible (torch {torch.__version__}, "
                                    f"CUDA {torch.version.cuda}); 1 vs 2 ranks needs 2"}
    else:
        report["gpu"] = run_device(args, "cuda")
        report["gpu"]["devices"] = [torch.cuda.get_device_name(i) for i in range(n_gpu)]
    summary: dict[str, Any] = {}
    for dev in ("cpu", "gpu"):
        part = report[dev]
        if "skipped" in part:
            continue
        for name, r in part["data_parallel"].items():
            summary[f"{dev}/{name}/efficiency"] = r["efficiency"]
            summary[f"{dev}/{name}/tokens_per_s_1"] = r["tokens_per_s_1"]
            summary[f"{dev}/{name}/tokens_per_s_2"] = r["tokens_per_s_2"]
        summary[f"{dev}/moe_layer/ep_vs_local"] = part["expert_parallel"]["ep_vs_local"]
        summary[f"{dev}/moe_layer/ep_vs_local_dp"] = part["expert_parallel"]["ep_vs_local_dp"]
    report["summary"] = summary
    report.update({
        "cores": cores, "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
        "wall_s": time.perf_counter() - t_begin,
        "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
    })
    line = json.dumps(report, sort_keys=True)
    out = args.out or (None if args.quick else RESULTS / "scaling.json")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(line + "\n")
        log(f"wrote {out}")
    log(f"done in {report['wall_s']:.0f} s: " + ", ".join(f"{k} {v:.3g}" for k, v in summary.items()))
    print(line, flush=True)
    return report


if __name__ == "__main__":
    main()
