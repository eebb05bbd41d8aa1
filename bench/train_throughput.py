"""Training throughput of our Transformer against HF transformers' M2M100 on identical batches.

    python -m bench.train_throughput [--steps 10 --warmup 3 --batch 64 --src-len 64 --tgt-len 64
                                      --vocab 32000 --precisions fp32,bf16 --threads N --quick]

Everything is measured in one process: a matmul peak per precision, then for each precision a
training step (forward, loss, backward, fused AdamW) of our model and of the peer, interleaved
step by step (ours, peer, peer, ours, ...) so that background load hits both alike. Progress goes
to stderr; the last line on stdout is one JSON object, also written to
bench/results/train_throughput.json. See bench/README.md for how to read it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.machine import allocator, cpu_info, flops_formula, log, matmul_peak, peak_rss_gib, train_flops
from bench.machine import cores as machine_cores
from nmt.config import ModelConfig, OptimConfig
from nmt.models.transformer import PAD, Transformer, count_parameters
from nmt.training.loss import label_smoothed_nll
from nmt.training.optim import build_optimizer

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TARGETS = {"fp32": 1.3, "bf16": 1.5}  # issue #14: ours ÷ peer tokens/s
EPSILON = 0.1  # label smoothing, as in training
ATTN_IMPLS = ("eager", "sdpa")


# ---------------------------------------------------------------------------------- systems
@dataclass
class Batch:
    src: torch.Tensor
    prev: torch.Tensor
    target: torch.Tensor


@dataclass
class System:
    name: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    forward: Callable[[Batch], torch.Tensor]  # logits
    loss: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, int]]  # (summed loss, tokens)


def make_batches(n: int, batch: int, src_len: int, tgt_len: int, vocab: int, seed: int) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    ids = lambda t: torch.randint(4, vocab, (batch, t), generator=g)  # noqa: E731 - no PAD, no specials
    return [Batch(ids(src_len), ids(tgt_len), ids(tgt_len)) for _ in range(n)]


def optim_cfg() -> OptimConfig:
    return OptimConfig(warmup_init_lr=5e-4)  # the lr value does not matter for speed


def build_ours(cfg: ModelConfig, vocab: int) -> System:
    torch.manual_seed(1)
    model = Transformer(cfg, vocab).train()

    def loss(logits, target):
        out = label_smoothed_nll(logits, target, EPSILON)
        return out.loss, out.ntokens

    return System("ours", model, build_optimizer(model, optim_cfg()),
                  lambda b: model(b.src, b.prev)[0], loss)


def build_peer(cfg: ModelConfig, vocab: int) -> System:
    """HF M2M100 with our dimensions; its loss is torch's fused label-smoothed cross-entropy."""
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    hf_cfg = M2M100Config(
        vocab_size=vocab, d_model=cfg.d_model, encoder_layers=cfg.encoder_layers,
        decoder_layers=cfg.decoder_layers, encoder_attention_heads=cfg.heads,
        decoder_attention_heads=cfg.heads, encoder_ffn_dim=cfg.ffn_dim, decoder_ffn_dim=cfg.ffn_dim,
        dropout=cfg.dropout, attention_dropout=cfg.attention_dropout,
        activation_dropout=cfg.activation_dropout, activation_function=cfg.activation,
        encoder_layerdrop=0.0, decoder_layerdrop=0.0, scale_embedding=cfg.scale_embedding,
        tie_word_embeddings=True, max_position_embeddings=cfg.max_positions, use_cache=False,
        pad_token_id=PAD, bos_token_id=2, eos_token_id=3, decoder_start_token_id=3)
    torch.manual_seed(1)
    model = M2M100ForConditionalGeneration._from_config(hf_cfg, attn_implementation="eager").train()

    def forward(b: Batch) -> torch.Tensor:
        return model(input_ids=b.src, attention_mask=b.src.ne(PAD), decoder_input_ids=b.prev).logits

    def loss(logits, target):
        value = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=PAD,
                                label_smoothing=EPSILON, reduction="sum")
        return value, int(target.ne(PAD).sum())

    return System("peer", model, build_optimizer(model, optim_cfg()), forward, loss)


def train_step(system: System, batch: Batch, precision: str) -> tuple[float, float]:
    """One update, as the trainer does it; returns (wall seconds, process CPU seconds)."""
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    w0, c0 = time.perf_counter(), time.process_time()
    with autocast:
        logits = system.forward(batch)
    loss, ntokens = system.loss(logits, batch.target)
    (loss / ntokens).backward()
    system.optimizer.step()
    system.optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - w0, time.process_time() - c0


def summarize(times: list[float], cpu: list[float], tokens: int) -> dict:
    med, best = statistics.median(times), min(times)
    return {
        "steps_timed": len(times),
        "step_s": [round(t, 4) for t in times],
        "step_s_median": med,
        "step_s_min": best,
        "tok_s_median": tokens / med,
        "tok_s_best": tokens / best,
        "effective_cores_median": statistics.median(c / w for c, w in zip(cpu, times, strict=True)),
    }


def add_mfu(res: dict, flops: float, peak_gflops: float) -> None:
    """MFU of each system's median and best step against the run's matmul peak."""
    for name in ("ours", "peer"):
        if name in res:
            res[name]["mfu_median"] = flops / res[name]["step_s_median"] / (peak_gflops * 1e9)
            res[name]["mfu_best"] = flops / res[name]["step_s_min"] / (peak_gflops * 1e9)


def remeasure_peaks(peaks: dict, n: int) -> dict:
    """The matmul peaks measured again after the steps; each precision keeps the higher of the two
    (a peak read low at the start would inflate every MFU), both recorded."""
    out = {}
    for prec, start in peaks.items():
        end = matmul_peak(torch.float32 if prec == "fp32" else torch.bfloat16, n)
        best = start if start["gflops"] >= end["gflops"] else end
        out[prec] = {**best, "start": start["gflops"], "end": end["gflops"]}
        log(f"matmul peak {prec}: {start['gflops']:.1f} GFLOP/s at the start, {end['gflops']:.1f} at the end")
    return out


def pick_attention(peer: System, batches: list[Batch], precision: str, timed: int) -> tuple[str, dict]:
    """Time HF's eager and sdpa attention alternately (1 untimed + ``timed`` steps each)."""
    times: dict[str, list[float]] = {impl: [] for impl in ATTN_IMPLS}
    for r in range(1 + timed):
        for impl in ATTN_IMPLS:
            peer.model.set_attn_implementation(impl)
            wall, _ = train_step(peer, batches[r % len(batches)], precision)
            log(f"  [{precision}] peer attn={impl} step {wall:.2f}s{' (untimed)' if r == 0 else ''}")
            if r > 0:
                times[impl].append(wall)
    best = min(ATTN_IMPLS, key=lambda impl: min(times[impl]))
    peer.model.set_attn_implementation(best)
    return best, {impl: min(t) for impl, t in times.items()}


# ------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.train_throughput", description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=10, help="timed steps per system and precision")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps of ours before timing")
    p.add_argument("--batch", type=int, default=64, help="sentences per step")
    p.add_argument("--src-len", type=int, default=64)
    p.add_argument("--tgt-len", type=int, default=64)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32, bf16 (autocast)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0: torch's default")
    p.add_argument("--no-peer", action="store_true", help="time ours only")
    p.add_argument("--system-malloc", action="store_true", help="glibc's allocator defaults, not the trainer's")
    p.add_argument("--force-bf16", action="store_true",
                   help="time bf16 even when this CPU's bf16 matmul is slower than fp32")
    p.add_argument("--max-seconds", type=float, default=270.0,
                   help="stop timing once this much wall time is spent (keeps at least 3 timed steps); 0: no limit")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results/train_throughput.json)")
    p.add_argument("--quick", action="store_true", help="tiny model and batch: a smoke run of a few seconds")
    args = p.parse_args(argv)
    args.precisions = [x.strip() for x in args.precisions.split(",") if x.strip()]
    for prec in args.precisions:
        if prec not in ("fp32", "bf16"):
            p.error(f"--precisions: unknown precision {prec!r}; use fp32 and/or bf16")
    if args.quick:
        args.steps, args.warmup, args.batch, args.src_len, args.tgt_len, args.vocab = 2, 1, 4, 12, 12, 500
    if args.out is None:
        args.out = RESULTS_DIR / ("train_throughput.quick.json" if args.quick else "train_throughput.json")
    return args


def model_config(quick: bool) -> ModelConfig:
    if quick:
        return ModelConfig(d_model=32, encoder_layers=1, decoder_layers=1, heads=4, ffn_dim=64, dropout=0.1)
    return ModelConfig(preset="base", d_model=512, encoder_layers=6, decoder_layers=6, heads=8, ffn_dim=2048,
                       dropout=0.1, max_positions=512)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    t_begin = time.perf_counter()
    deadline = t_begin + args.max_seconds if args.max_seconds > 0 else float("inf")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    malloc = allocator(args.system_malloc)
    load_before = os.getloadavg()
    cores = machine_cores()
    log(f"cores: {cores}, load average {load_before}; {malloc}")
    if load_before[0] > cores["affinity"] - 0.5:
        log("other jobs are using these cores: expect noisy, slower steps (with 2 threads on 2 busy cores "
            "--threads 1 was ~2.5x faster and far steadier here); ratios come from interleaved steps")

    cfg = model_config(args.quick)
    tokens = args.batch * args.tgt_len
    flops = train_flops(args.batch, args.src_len, args.tgt_len, cfg, args.vocab)
    log("FLOPs per training step (matmuls; 2 per multiply-add; backward = 2 × forward):\n" + flops_formula())
    log(f"= {flops / 1e12:.4f} TFLOP per step ({tokens} target tokens)")

    n_peak = 256 if args.quick else 2048
    peaks = {prec: matmul_peak(torch.float32 if prec == "fp32" else torch.bfloat16, n_peak)
             for prec in sorted(set(args.precisions) | {"fp32"})}
    for prec, pk in peaks.items():
        log(f"matmul peak {prec}: {pk['gflops']:.1f} GFLOP/s (n={pk['n']})")

    peer_error = None
    try:
        import transformers
        peer_version = transformers.__version__
    except ImportError as exc:
        peer_version, peer_error = None, f"transformers not importable ({exc}); pip install -e '.[bench]'"
    use_peer = not args.no_peer and peer_error is None
    if peer_error and not args.no_peer:
        log(f"no peer: {peer_error}")

    batches = make_batches(4, args.batch, args.src_len, args.tgt_len, args.vocab, seed=1234)
    ours = build_ours(cfg, args.vocab)
    peer: System | None = None
    rss: dict = {}
    results: dict = {}
    todo = []
    for prec in args.precisions:
        pk = peaks[prec]["gflops"]
        if prec == "bf16" and pk < peaks["fp32"]["gflops"] and not args.force_bf16:
            reason = (f"bf16 matmul peak {pk:.1f} GFLOP/s is below fp32 {peaks['fp32']['gflops']:.1f}: no bf16 "
                      f"hardware on this CPU, autocast would make a step take ~{flops / (pk * 1e9):.0f} s; "
                      "--force-bf16 times it anyway")
            log(f"[bf16] skipped: {reason}")
            results[prec] = {"skipped": reason}
        else:
            todo.append(prec)
    while todo:
        prec = todo.pop(0)
        t_start = time.perf_counter()
        share = (deadline - t_start) / (1 + len(todo))  # the time left, split over the precisions left
        warmup, trial = args.warmup, (1 if args.quick else 2)
        res: dict = {"budget_trimmed": False}
        log(f"[{prec}] warm-up: {warmup} steps of ours")
        done = 0
        while done < warmup:
            wall, _ = train_step(ours, batches[done % len(batches)], prec)
            log(f"  [{prec}] ours warm-up step {wall:.2f}s")
            done += 1
            plan = wall * (warmup + (1 + 2 * trial if use_peer else 0) + (2 if use_peer else 1) * args.steps)
            if done == 1 and plan > share and (warmup > 1 or trial > 1):
                warmup, trial, res["budget_trimmed"] = 1, 1, True
                log(f"  [{prec}] the full plan (~{plan:.0f} s) exceeds the time left for it ({share:.0f} s, "
                    "--max-seconds): 1 warm-up step, 1 timed attention trial each, fewer timed steps")
        res["warmup_steps"] = warmup
        if "ours_gib" not in rss:
            rss["ours_gib"] = peak_rss_gib()  # before the peer exists: our own footprint
        if use_peer:
            if peer is None:
                peer = build_peer(cfg, args.vocab)
            attn, trial_s = pick_attention(peer, batches, prec, timed=trial)
            log(f"  [{prec}] peer attention: {attn} (best step {trial_s})")
            res["peer_attention"] = attn
            res["peer_attention_trial_s"] = trial_s
        systems = [ours] + ([peer] if use_peer and peer is not None else [])
        walls: dict[str, list[float]] = {s.name: [] for s in systems}
        cpus: dict[str, list[float]] = {s.name: [] for s in systems}
        for i in range(args.steps):
            for s in (systems if i % 2 == 0 else systems[::-1]):
                wall, cpu = train_step(s, batches[i % len(batches)], prec)
                walls[s.name].append(wall)
                cpus[s.name].append(cpu)
            log(f"  [{prec}] step {i + 1}/{args.steps}: " + ", ".join(
                f"{n} {walls[n][-1]:.2f}s ({tokens / walls[n][-1]:.0f} tok/s)" for n in walls))
            if i + 1 >= min(3, args.steps) and time.perf_counter() - t_start > share:
                log(f"  [{prec}] time budget reached after {i + 1} timed steps (--max-seconds)")
                break
        for name in walls:
            res[name] = summarize(walls[name], cpus[name], tokens)
        if use_peer:
            o, q = res["ours"], res["peer"]
            res["ratio_median"] = o["tok_s_median"] / q["tok_s_median"]
            res["ratio_best"] = o["tok_s_best"] / q["tok_s_best"]
            paired = zip(walls["ours"], walls["peer"], strict=True)
            res["ratio_paired_median"] = statistics.median(b / a for a, b in paired)
            log(f"[{prec}] ours {o['tok_s_median']:.0f} tok/s, peer {q['tok_s_median']:.0f} tok/s: ours/peer = "
                f"{res['ratio_median']:.3f} (paired {res['ratio_paired_median']:.3f}, best {res['ratio_best']:.3f})")
        else:
            log(f"[{prec}] ours {res['ours']['tok_s_median']:.0f} tok/s")
        results[prec] = res

    peaks = remeasure_peaks(peaks, n_peak)
    for prec, res in results.items():
        if "ours" in res:
            add_mfu(res, flops, peaks[prec]["gflops"])
            log(f"[{prec}] MFU (median step) ours {res['ours']['mfu_median']:.2f}"
                + (f", peer {res['peer']['mfu_median']:.2f}" if "peer" in res else "")
                + f" of {peaks[prec]['gflops']:.0f} GFLOP/s")

    rss["process_gib"] = peak_rss_gib()
    ratios = {p: r.get("ratio_median") for p, r in results.items()}
    report = {
        "bench": "train_throughput",
        "command": "python -m bench.train_throughput " + " ".join(sys.argv[1:] if argv is None else argv),
        "quick": args.quick,
        "shape": {"batch": args.batch, "src_len": args.src_len, "tgt_len": args.tgt_len, "vocab": args.vocab,
                  "d_model": cfg.d_model, "encoder_layers": cfg.encoder_layers, "decoder_layers": cfg.decoder_layers,
                  "heads": cfg.heads, "ffn_dim": cfg.ffn_dim, "dropout": cfg.dropout,
                  "target_tokens_per_step": tokens},
        "params": {"ours": count_parameters(ours.model),
                   "peer": count_parameters(peer.model) if peer is not None else None},
        "flops_per_step": flops,
        "flops_formula": "3 · (Le·encoder + Ld·decoder + output layer); " + " ; ".join(
            " ".join(line.split()) for line in flops_formula().splitlines()),
        "peak_gflops": {p: v["gflops"] for p, v in peaks.items()},
        "peak_gflops_start_end": {p: [round(v["start"], 1), round(v["end"], 1)] for p, v in peaks.items()},
        "peak_matmul_n": {p: v["n"] for p, v in peaks.items()},
        "results": results,
        "ratios": ratios,
        "target": TARGETS,
        "target_met": {p: (r >= TARGETS[p] if r is not None else None) for p, r in ratios.items()},
        "peak_rss_gib": rss,
        "cores": cores,
        "allocator": malloc,
        "loadavg_before": list(load_before),
        "loadavg_after": list(os.getloadavg()),
        "wall_s": time.perf_counter() - t_begin,
        "peer": {"system": "transformers M2M100ForConditionalGeneration", "version": peer_version,
                 "loss": "F.cross_entropy(label_smoothing=0.1, reduction=sum) on fp32 logits",
                 "error": peer_error if not args.no_peer else "disabled (--no-peer)"},
        "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
        "cpu": cpu_info(),
    }
    line = json.dumps(report, sort_keys=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(line + "\n")
    log(f"wrote {args.out} ({report['wall_s']:.0f} s)")
    print(line, flush=True)
    return report


if __name__ == "__main__":
    main()
