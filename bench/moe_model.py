"""Whole-model cost of routing: a top-2 MoE Transformer's training step against a dense one with
the same FLOPs per token.

    python -m bench.moe_model [--d-model 512 --layers 3 --hidden 1024 --experts 8 --batch 32
                               --src-len 64 --tgt-len 64 --vocab 8000 --repeats 5 --quick]

The MoE model puts an MoE layer (top-2, ``experts`` experts of width ``hidden``, capacity factor
1.0) in every encoder and decoder layer; the dense model has FFN width ``2·hidden`` everywhere,
so each token meets the same number of FFN multiply-adds — in capacity mode minus the dropped
assignments (``moe_dropped_fraction`` in the JSON); ``--dropless`` computes every assignment, the
exact FLOP match. One step = forward, label-smoothed loss plus the
balancing loss, backward, fused AdamW — the trainer's step. Steps alternate (moe, dense, dense,
moe, ...) and ``ratio = median MoE step / median dense step``. Target (issue #3): ratio ≤ 1.3.
The last stdout line is one JSON object, also written to bench/results/moe_model.json
(``moe_model_dropless.json`` with ``--dropless``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from nmt.config import ModelConfig, MoEConfig, OptimConfig
from nmt.models.build import build_model
from nmt.models.transformer import count_parameters
from nmt.training.loss import label_smoothed_nll
from nmt.training.optim import build_optimizer

RESULTS = Path(__file__).resolve().parent / "results"


def build(args: argparse.Namespace, moe: bool):
    moe_cfg = MoEConfig(experts=args.experts, top_k=2, encoder_freq=1, decoder_freq=1, capacity_factor=1.0,
                        dropless=args.dropless) if moe else MoEConfig()
    cfg = ModelConfig(d_model=args.d_model, encoder_layers=args.layers, decoder_layers=args.layers,
                      heads=max(args.d_model // 64, 1), ffn_dim=args.hidden if moe else 2 * args.hidden,
                      dropout=0.1, moe=moe_cfg)
    torch.manual_seed(0)
    model = build_model(cfg, args.vocab).train()
    return model, build_optimizer(model, OptimConfig(warmup_init_lr=5e-4))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--src-len", type=int, default=64)
    ap.add_argument("--tgt-len", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dropless", action="store_true", help="MoE without capacity: every assignment computed")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, two repeats (a smoke test)")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.d_model, args.layers, args.hidden, args.experts, args.batch, args.vocab, args.repeats = \
            64, 1, 64, 4, 8, 500, 2
    g = torch.Generator().manual_seed(1)
    src = torch.randint(4, args.vocab, (args.batch, args.src_len), generator=g)
    tgt = torch.randint(4, args.vocab, (args.batch, args.tgt_len), generator=g)
    systems = {name: build(args, name == "moe") for name in ("moe", "dense")}
    dropped: list[float] = []

    def step(name: str) -> float:
        model, opt = systems[name]
        t = time.perf_counter()
        logits, aux = model(src, tgt)
        out = label_smoothed_nll(logits.flatten(0, 1), tgt.flatten(), 0.1)
        loss = out.loss + sum((v for k, v in aux.items() if k.startswith("loss/")), torch.zeros(())) * out.ntokens
        (loss / out.ntokens).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if name == "moe":
            dropped.extend(float(v) for k, v in aux.items() if k.endswith("/dropped"))
        return time.perf_counter() - t

    for name in systems:
        step(name)  # warm-up
    times: dict[str, list[float]] = {"moe": [], "dense": []}
    for r in range(args.repeats):
        for name in (("moe", "dense") if r % 2 == 0 else ("dense", "moe")):
            times[name].append(step(name))
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"bench": "moe_model", "d_model": args.d_model, "layers": args.layers, "experts": args.experts,
           "expert_hidden": args.hidden, "dense_hidden": 2 * args.hidden,
           "tokens_per_step": args.batch * args.tgt_len, "threads": torch.get_num_threads(),
           "moe_params_m": round(count_parameters(systems["moe"][0]) / 1e6, 2),
           "dense_params_m": round(count_parameters(systems["dense"][0]) / 1e6, 2),
           "moe_step_s": round(med["moe"], 4), "dense_step_s": round(med["dense"], 4),
           "ratio": round(med["moe"] / med["dense"], 4), "target_ratio_max": 1.3, "dropless": args.dropless,
           "moe_dropped_fraction": round(statistics.mean(dropped), 4) if dropped else 0.0}
    print(f"MoE step {med['moe']:.3f} s, dense step {med['dense']:.3f} s: ratio {out['ratio']:.3f}", file=sys.stderr)
    if not args.quick:
        path = Path(args.out or RESULTS / f"moe_model{'_dropless' if args.dropless else ''}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
