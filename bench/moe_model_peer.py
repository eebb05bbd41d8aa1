"""Whole-model MoE training step: ours against Transformers' NllbMoe with its top-2 routing fixed.

    python -m bench.moe_model_peer [--experts 8 --d-model 512 --layers 4 --moe-every 2 --hidden 2048
                                    --heads 8 --vocab 8000 --batch 64 --src-len 64 --tgt-len 64
                                    --steps 10 --warmup 2 --precisions fp32,bf16 --threads N]
                                   [--force-bf16] [--max-seconds 300] [--out FILE] [--quick] [--profile --top 15]

NLLB-MoE's layer layout scaled down: d 512, 4+4 layers, FFN 2048, an MoE layer (top-2, E experts of
the FFN width) in every 2nd layer of both stacks, vocabulary 8000, dropout 0.1, attention dropout
0.1, no activation dropout, capacity 2·ceil(S/E), second expert always used; expert output masking
is off (timing). The peer is ``NllbMoeForConditionalGeneration`` with the dispatch fix of
bench/nllbmoe_peer.py; our model is built with the matching ``model.moe`` and, after both have
warmed up, given the peer's weights (nmt.import_hf's map) before every timed pair of steps, so both
time steps from the same weights and route alike. One step = forward, label-smoothed loss +
balancing loss, backward, our fused AdamW — the trainer's step (bench/train_throughput.py's
``train_step``). Steps are timed interleaved (ours, peer, peer, ours, ...). ``ratio_*`` = peer step
time ÷ ours (> 1: ours is faster). Targets (issue #14): 1.15 in fp32, 1.5 in bf16. bf16 is skipped
where a bf16 matmul is emulated (``--force-bf16`` times it anyway). Progress on stderr; one JSON
line on stdout, also bench/results/moe_model_peer.json (not with ``--quick`` unless ``--out``).
``--profile``: no timing, one profiled step of each system per precision (top ops by self CPU time).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench import nllbmoe_peer
from bench.machine import allocator, bf16_skip_reason, cpu_info, log, peak_rss_gib
from bench.machine import cores as machine_cores
from bench.train_throughput import EPSILON, Batch, System, make_batches, optim_cfg, train_step
from nmt.config import ModelConfig, MoEConfig
from nmt.models.build import build_model
from nmt.models.moe.experts import Experts
from nmt.models.transformer import count_parameters
from nmt.training.loss import label_smoothed_nll
from nmt.training.optim import build_optimizer

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = {"fp32": 1.15, "bf16": 1.5}


def model_config(args: argparse.Namespace) -> ModelConfig:
    moe = MoEConfig(experts=args.experts, top_k=2, encoder_freq=args.moe_every, decoder_freq=args.moe_every,
                    capacity_rule="fairseq", capacity_factor=1.0, second_expert_policy="all", eom=0.0)
    return ModelConfig(d_model=args.d_model, encoder_layers=args.layers, decoder_layers=args.layers,
                       heads=args.heads, ffn_dim=args.hidden, dropout=0.1, attention_dropout=0.1,
                       activation_dropout=0.0, max_positions=max(args.src_len, args.tgt_len) + 8, moe=moe)


def _count_rows(counter: dict[str, int]):
    def hook(module, inputs, output):
        counter["rows"] += inputs[0].shape[0]
    return hook


def build_ours(cfg: ModelConfig, vocab: int) -> tuple[System, dict[str, int]]:
    """Our model; a forward hook on the grouped experts counts the rows they compute."""
    torch.manual_seed(1)
    model = build_model(cfg, vocab).train()
    rows = {"rows": 0}
    for m in model.modules():
        if isinstance(m, Experts):
            m.register_forward_hook(_count_rows(rows))
    stash: dict = {}

    def forward(b: Batch) -> torch.Tensor:
        logits, stash["aux"] = model(b.src, b.prev)
        return logits

    def loss(logits, target):
        out = label_smoothed_nll(logits, target, EPSILON)
        aux = sum((v for k, v in stash.pop("aux").items() if k.startswith("loss/")), torch.zeros(()))
        return out.loss + aux * out.ntokens, out.ntokens

    return System("ours", model, build_optimizer(model, optim_cfg()), forward, loss), rows


def build_peer(cfg: ModelConfig, vocab: int) -> System:
    """The fixed NllbMoe; its loss is torch's label-smoothed cross-entropy on fp32 logits plus its
    own balancing term (router logits recorded, as its forward does with ``labels``)."""
    model = nllbmoe_peer.build_peer(cfg, vocab)
    pad, stash = model.config.pad_token_id, {}

    def forward(b: Batch) -> torch.Tensor:
        out = model(input_ids=b.src, attention_mask=b.src.ne(pad), decoder_input_ids=b.prev,
                    output_router_logits=True)
        stash["out"] = out
        return out.logits

    def loss(logits, target):
        balance = nllbmoe_peer.balance_loss(stash.pop("out"), cfg.moe.experts, cfg.moe.balance_loss_weight)
        ntokens = int(target.ne(pad).sum())
        value = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=pad,
                                label_smoothing=EPSILON, reduction="sum")
        return value + balance * ntokens, ntokens

    return System("peer", model, build_optimizer(model, optim_cfg()), forward, loss)


def summarize(walls: list[float], cpus: list[float], tokens: int, rows: int) -> dict:
    med = statistics.median(walls)
    return {"steps_timed": len(walls), "step_s": [round(t, 4) for t in walls], "step_s_median": med,
            "step_s_min": min(walls), "tok_s_median": tokens / med, "tok_s_best": tokens / min(walls),
            "effective_cores_median": statistics.median(c / w for c, w in zip(cpus, walls, strict=True)),
            "expert_rows_per_step": rows / len(walls)}


def share_weights(ours: System, peer: System) -> None:
    """The peer's current weights into our model (nmt.import_hf's map): both route alike."""
    ours.model.load_state_dict(nllbmoe_peer.ours_from_peer(peer.model.state_dict(), ours.model.cfg))


def time_precision(ours: System, peer: System, ours_rows: dict[str, int], batches: list[Batch], prec: str,
                   args: argparse.Namespace, seconds: float) -> dict:
    """Warm-up of both, then interleaved timed steps, each pair from the same weights (the peer's,
    copied into ours outside the timer): the two balancing losses differ, so weights trained apart
    route apart within a few steps (after 3: 15.5k expert rows for ours against 14.1k), and the
    step times would compare different amounts of expert work."""
    t_start, res = time.perf_counter(), {"warmup_steps": args.warmup}
    for i in range(args.warmup):
        for s in (ours, peer):
            wall, _ = train_step(s, batches[i % len(batches)], prec)
            log(f"  [{prec}] {s.name} warm-up step {wall:.2f}s")
    nllbmoe_peer.rows_computed(peer.model)  # resets the peer's count
    ours_rows["rows"] = 0
    walls: dict[str, list[float]] = {"ours": [], "peer": []}
    cpus: dict[str, list[float]] = {"ours": [], "peer": []}
    for i in range(args.steps):
        share_weights(ours, peer)
        for s in ((ours, peer) if i % 2 == 0 else (peer, ours)):
            wall, cpu = train_step(s, batches[i % len(batches)], prec)
            walls[s.name].append(wall)
            cpus[s.name].append(cpu)
        log(f"  [{prec}] step {i + 1}/{args.steps}: ours {walls['ours'][-1]:.2f}s, peer {walls['peer'][-1]:.2f}s")
        if i + 1 >= min(3, args.steps) and time.perf_counter() - t_start > seconds:
            log(f"  [{prec}] time budget reached after {i + 1} timed steps (--max-seconds)")
            break
    tokens = args.batch * args.tgt_len
    res["ours"] = summarize(walls["ours"], cpus["ours"], tokens, ours_rows["rows"])
    res["peer"] = summarize(walls["peer"], cpus["peer"], tokens, nllbmoe_peer.rows_computed(peer.model))
    res["ratio_median"] = res["peer"]["step_s_median"] / res["ours"]["step_s_median"]
    res["ratio_best"] = res["peer"]["step_s_min"] / res["ours"]["step_s_min"]
    res["ratio_paired_median"] = statistics.median(p / o for o, p in zip(walls["ours"], walls["peer"], strict=True))
    log(f"[{prec}] ours {res['ours']['step_s_median']:.2f}s, peer {res['peer']['step_s_median']:.2f}s per step: "
        f"peer/ours = {res['ratio_median']:.3f} (paired {res['ratio_paired_median']:.3f})")
    return res


def assignments_per_step(cfg: ModelConfig, args: argparse.Namespace) -> int:
    """Token→expert assignments before the capacity cut (2 per token and MoE layer)."""
    moe_layers = cfg.encoder_layers // cfg.moe.encoder_freq, cfg.decoder_layers // cfg.moe.decoder_freq
    return 2 * args.batch * (args.src_len * moe_layers[0] + args.tgt_len * moe_layers[1])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.moe_model_peer", description=__doc__.split("\n")[0])
    for name, default in (("experts", 8), ("d-model", 512), ("layers", 4), ("moe-every", 2), ("hidden", 2048),
                          ("heads", 8), ("vocab", 8000), ("batch", 64), ("src-len", 64), ("tgt-len", 64),
                          ("steps", 10), ("warmup", 2), ("threads", 0), ("top", 15)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32, bf16 (autocast)")
    p.add_argument("--force-bf16", action="store_true", help="time bf16 even where its matmul is emulated")
    p.add_argument("--system-malloc", action="store_true", help="glibc's allocator defaults, not the trainer's")
    p.add_argument("--max-seconds", type=float, default=300.0,
                   help="soft limit on the timing (at least 3 timed steps per precision); 0: none")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results/moe_model_peer.json)")
    p.add_argument("--quick", action="store_true", help="tiny shapes: a smoke run (writes only with --out)")
    p.add_argument("--profile", action="store_true", help="profile one step of each system instead of timing")
    args = p.parse_args(argv)
    args.precisions = [x.strip() for x in args.precisions.split(",") if x.strip()]
    if any(x not in TARGET for x in args.precisions):
        p.error(f"--precisions: use fp32 and/or bf16, not {args.precisions}")
    if args.experts < 2 or args.moe_every < 1 or args.layers < args.moe_every or args.d_model % args.heads:
        p.error("need --experts >= 2, 1 <= --moe-every <= --layers and --d-model divisible by --heads")
    if args.quick:
        args.d_model, args.layers, args.hidden, args.heads, args.experts = 32, 2, 64, 4, 4
        args.batch, args.src_len, args.tgt_len, args.vocab, args.steps, args.warmup = 4, 12, 10, 500, 2, 1
    if args.out is None and not args.quick:
        args.out = RESULTS / "moe_model_peer.json"
    return args


def profile(ours: System, peer: System, batches: list[Batch], precisions: list[str], top: int) -> None:
    from bench.op_profile import profile_layer

    for prec in precisions:
        for s in (ours, peer):
            step = lambda s=s, prec=prec: train_step(s, batches[0], prec)  # noqa: E731
            print(profile_layer(step, f"{s.name} {prec}", top), flush=True)


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    t_begin = time.perf_counter()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    malloc = allocator(args.system_malloc)
    load_before = os.getloadavg()
    cores = machine_cores()
    log(f"cores: {cores}, load average {load_before}; {malloc}")
    cfg = model_config(args)
    batches = make_batches(4, args.batch, args.src_len, args.tgt_len, args.vocab, seed=1234)
    ours, ours_rows = build_ours(cfg, args.vocab)
    results: dict = {}
    todo = []
    for prec in args.precisions:
        reason = bf16_skip_reason(prec, args.force_bf16)
        if reason:
            log(f"[{prec}] skipped: {reason}")
            results[prec] = {"skipped": reason}
        else:
            todo.append(prec)
    rss: dict = {}
    if todo:
        train_step(ours, batches[0], todo[0])
        rss["ours_gib"] = peak_rss_gib()  # one step of ours, before the peer exists
    peer = build_peer(cfg, args.vocab)
    if args.profile:
        share_weights(ours, peer)
        profile(ours, peer, batches, todo, args.top)
        return None
    for n, prec in enumerate(todo):
        left = (t_begin + args.max_seconds - time.perf_counter()) if args.max_seconds > 0 else float("inf")
        results[prec] = time_precision(ours, peer, ours_rows, batches, prec, args, left / (len(todo) - n))
        assigned = assignments_per_step(cfg, args)
        results[prec]["dropped_fraction"] = {s: 1 - results[prec][s]["expert_rows_per_step"] / assigned
                                             for s in ("ours", "peer")}
    rss["process_gib"] = peak_rss_gib()
    ratios = {p: r.get("ratio_median") for p, r in results.items()}
    report = {
        "bench": "moe_model_peer", "quick": args.quick,
        "command": "python -m bench.moe_model_peer " + " ".join(sys.argv[1:] if argv is None else argv),
        "shape": {"batch": args.batch, "src_len": args.src_len, "tgt_len": args.tgt_len, "vocab": args.vocab,
                  "d_model": cfg.d_model, "encoder_layers": cfg.encoder_layers, "decoder_layers": cfg.decoder_layers,
                  "heads": cfg.heads, "ffn_dim": cfg.ffn_dim, "experts": args.experts, "moe_every": args.moe_every,
                  "dropout": cfg.dropout, "attention_dropout": cfg.attention_dropout,
                  "target_tokens_per_step": args.batch * args.tgt_len,
                  "assignments_per_step": assignments_per_step(cfg, args)},
        "moe": {k: getattr(cfg.moe, k) for k in ("top_k", "capacity_rule", "capacity_factor", "second_expert_policy",
                                                   "eom", "balance_loss_weight", "z_loss_weight")},
        "params": {"ours": count_parameters(ours.model), "peer": count_parameters(peer.model)},
        "results": results, "ratios": ratios, "target": {p: TARGET[p] for p in args.precisions},
        "target_met": {p: (r >= TARGET[p] if r is not None else None) for p, r in ratios.items()},
        "peak_rss_gib": rss, "cores": cores, "threads": cores["torch_threads"], "allocator": malloc,
        "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
        "wall_s": time.perf_counter() - t_begin, "cpu": cpu_info(),
        "peer": {"system": "transformers NllbMoeForConditionalGeneration, dispatch fixed (bench/nllbmoe_peer.py)",
                 "version": _transformers_version(), "attention": "eager (NllbMoe supports no other)",
                 "loss": "F.cross_entropy(label_smoothing=0.1, reduction=sum) on fp32 logits + its balancing loss"},
        "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
    }
    line = json.dumps(report, sort_keys=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(line + "\n")
        log(f"wrote {args.out} ({report['wall_s']:.0f} s)")
    print(line, flush=True)
    return report


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


if __name__ == "__main__":
    main()
