"""Dropped-assignment rate of the two capacity rules on real batches.

    python -m bench.moe_capacity --checkpoint RUN/checkpoints/last.pt --corpus CORPUS
        [--split train] [--max-tokens 1024] [--batches 50] [--capacity-factor 1.0]

Loads a trained MoE checkpoint (its routers decide the load), runs ``--batches`` batches of the
corpus (the trainer's padded ``--max-tokens`` batches, deterministic order) through the model in
training mode with dropout off, once per rule, and reports the share of token→expert assignments
that the capacity cut dropped (every MoE layer, encoder and decoder, assignment-weighted):
``exact`` ``ceil(cf·k·T_real/E)`` against ``fairseq`` ``int(cf·k·ceil(S_padded/E))``, and the
share of padding in the batches. The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json

import torch

from nmt.data.loader import ParallelData, valid_batches
from nmt.inference import load_inference_checkpoint
from nmt.models.transformer import PAD


def dropped_rate(model, batches, rule: str) -> float:
    """Assignment-weighted dropped share over every MoE layer of every batch."""
    moe = model.cfg.moe
    moe.capacity_rule = rule  # every MoE layer shares this config object
    dropped = routed = 0.0
    with torch.no_grad():
        for b in batches:
            _, aux = model(b.src_tokens, b.prev_output_tokens, b.src_lang, b.tgt_lang)
            for key, value in aux.items():
                if key.startswith("moe/") and key.endswith("/dropped"):
                    side_tokens = int((b.src_tokens if "/enc" in key else b.prev_output_tokens).ne(PAD).sum())
                    n = side_tokens * moe.top_k
                    dropped += float(value) * n
                    routed += n
    return dropped / max(routed, 1.0)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--split", default="train")
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--batches", type=int, default=50)
    ap.add_argument("--capacity-factor", type=float, default=1.0)
    args = ap.parse_args(argv)
    ckpt = load_inference_checkpoint(args.checkpoint)
    model = ckpt.build_model()
    model.train()
    for mod in model.modules():  # dropout off: both rules see the same hidden states
        for attr in ("dropout", "activation_dropout"):
            if isinstance(getattr(mod, attr, None), float):
                setattr(mod, attr, 0.0)
    model.cfg.dropout = 0.0
    model.cfg.moe.capacity_factor = args.capacity_factor
    model.cfg.moe.cmr_gate_dropout = 0.0
    directions = list(ckpt.info.get("directions") or [])
    data = ParallelData.open(args.corpus, args.split, directions)
    batches = []
    for b in valid_batches(data, args.max_tokens):
        batches.append(b)
        if len(batches) == args.batches:
            break
    positions = sum(b.src_tokens.numel() + b.prev_output_tokens.numel() for b in batches)
    real = sum(int(b.src_tokens.ne(PAD).sum() + b.prev_output_tokens.ne(PAD).sum()) for b in batches)
    result = {"batches": len(batches), "capacity_factor": args.capacity_factor, "top_k": model.cfg.moe.top_k,
              "experts": model.cfg.moe.experts, "padding_share": round(1 - real / positions, 4),
              "dropped_exact": round(dropped_rate(model, batches, "exact"), 4),
              "dropped_fairseq": round(dropped_rate(model, batches, "fairseq"), 4)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
