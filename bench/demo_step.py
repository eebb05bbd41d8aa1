"""Tokens/s of a recipe's real training step (default: the demo recipe), with its losses.

    python -m bench.demo_step --corpus data/demo [--recipe demo --steps 60 --warmup 5
                                                  --override trainer.precision=fp32 ...] [--out FILE]

The trainer (``nmt.training.trainer.Trainer``, built from ``conf/`` as ``bench.profile_step``
builds it) runs what ``Trainer._loop`` runs per update, without validation and checkpoints:
``train_step``, the log window (``StepStats.add_update``), ``StopPolicy.poll``, and a log record
every ``trainer.log_interval`` updates. After ``--warmup`` untimed updates, each of ``--steps``
updates is timed on its own. ``losses`` lists every update's label-smoothed loss per target token
(warm-up included), so two commits run with the same seed and overrides can be compared for
equal numerics as well as for speed. Run two commits alternately (old, new, new, old, ...) on a
loaded machine and compare medians. The last stdout line is one JSON object (also ``--out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.profile_step import build_trainer
from nmt.errors import UserError, exit_on_user_error


def run(args: argparse.Namespace) -> dict[str, object]:
    from nmt.training.step_stats import StepStats

    with tempfile.TemporaryDirectory(prefix="demo_step_") as tmp:
        trainer = build_trainer(args, Path(tmp) / "run")
        window, interval = StepStats(len(trainer.directions)), trainer.cfg.trainer.log_interval
        losses: list[float] = []
        step_s: list[float] = []
        tokens = 0
        cpu0 = time.process_time()
        for i in range(args.warmup + args.steps):
            start = time.perf_counter()
            stats = trainer.train_step()
            window.add_update(stats)
            trainer.stop.poll(trainer.state)
            if trainer.state.step % interval == 0:
                trainer.logger.train(window.record(trainer.state.step, 1.0, trainer.directions))
                window = StepStats(len(trainer.directions))
            if i >= args.warmup:
                step_s.append(time.perf_counter() - start)
                tokens += stats.tokens
            if i == args.warmup - 1:
                cpu0 = time.process_time()
            losses.append(stats.loss_sum / max(stats.tokens, 1))
        cpu = time.process_time() - cpu0
        trainer.logger.close()
    wall = sum(step_s)
    return {"bench": "demo_step", "recipe": args.recipe, "overrides": args.override, "steps": args.steps,
            "warmup": args.warmup, "device": str(trainer.device), "precision": trainer.precision,
            "threads": torch.get_num_threads(), "tokens": tokens, "seconds": round(wall, 4),
            "tok_s": round(tokens / wall, 1) if wall else 0.0,
            "step_s_median": round(statistics.median(step_s), 5) if step_s else 0.0,
            "cpu_s_per_step": round(cpu / args.steps, 5), "effective_cores": round(cpu / wall, 3) if wall else 0.0,
            "losses": [round(x, 6) for x in losses]}


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True, help="a prepared corpus (data.corpus)")
    ap.add_argument("--recipe", default="demo", help="conf/recipe/<name>.yaml")
    ap.add_argument("--steps", type=int, default=60, help="timed updates")
    ap.add_argument("--warmup", type=int, default=5, help="untimed updates first")
    ap.add_argument("--override", nargs="*", default=["trainer.precision=fp32"], help="Hydra overrides, KEY=VALUE")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        raise UserError(f"--steps must be >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}")
    report = run(args)
    line = json.dumps(report)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(line)


if __name__ == "__main__":
    main()
