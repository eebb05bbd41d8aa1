"""``make demo``: real corpus → SentencePiece → binaries → train → evaluate, on a CPU.

Every step is the same command a user would run by hand (printed before it runs), and is
skipped when its output already exists, so an interrupted demo continues where it stopped.
Options: ``--corpus DIR`` (default data/demo), ``--run DIR`` (default outputs/demo),
``--source auto|libreoffice|django``, extra ``key=value`` overrides are passed to nmt.train.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def run(cmd: list[str]) -> None:
    print("\n$ " + " ".join(cmd), flush=True)
    code = subprocess.call([sys.executable, "-m", *cmd])
    if code != 0:
        print(f"demo: step failed with exit code {code}: {' '.join(cmd)}", file=sys.stderr)
        raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m data_prep.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="data/demo")
    ap.add_argument("--run", default="outputs/demo")
    ap.add_argument("--source", default="auto", choices=["auto", "libreoffice", "django"])
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--langs", nargs="+", default=None, help="languages besides English (default: demo_corpus' set)")
    ap.add_argument("overrides", nargs="*", help="extra nmt.train overrides, e.g. trainer.max_steps=500")
    args = ap.parse_args(argv)
    corpus, run_dir = Path(args.corpus), Path(args.run)
    t0 = time.time()
    timings: dict[str, float] = {}

    def step(name: str, done: bool, cmd: list[str]) -> None:
        t = time.time()
        if done:
            print(f"\n[{name}] already done, skipping: {' '.join(cmd)}", flush=True)
        else:
            run(cmd)
        timings[name] = round(time.time() - t, 1)

    step("corpus", (corpus / "manifest.json").exists(),
         ["data_prep.demo_corpus", "--out", str(corpus), "--source", args.source,
          *(["--langs", *args.langs] if args.langs else [])])
    step("spm", (corpus / "spm.model").exists(),
         ["data_prep.train_spm", "--corpus", str(corpus), "--vocab-size", str(args.vocab_size)])
    step("binarize", (corpus / "bin" / "meta.json").exists(), ["data_prep.binarize", "--corpus", str(corpus)])
    finished = (run_dir / "summary.json").exists()
    resume = (run_dir / "checkpoints" / "last.pt").exists() and not finished
    step("train", finished, ["nmt.train", "+recipe=demo", f"data.corpus={corpus}", f"hydra.run.dir={run_dir}",
                             *(["trainer.resume=true"] if resume else []), *args.overrides])
    eval_dir = run_dir / "eval" / "devtest"
    step("evaluate", (eval_dir / "results.json").exists(),
         ["nmt.evaluate", f"ckpt={run_dir / 'checkpoints' / 'best.pt'}", f"flores.dir={corpus / 'flores'}",
          "split=devtest", f"baselines.corpus={corpus}", f"out_dir={eval_dir}", "batch_size=200"])

    results = json.loads((eval_dir / "results.json").read_text(encoding="utf-8"))
    model = results["averages"]["all"]["chrf++"]
    copy = results["copy_baseline"]["all"]["chrf++"]
    retrieval = results["retrieval_baseline"]["all"]["chrf++"]
    total = time.time() - t0
    print("\n== demo summary ==")
    print(f"average chrF++ on the held-out test: model {model:.1f} | copy-source {copy:.1f} | "
          f"nearest-training-segment {retrieval:.1f}")
    print(f"target: model ≥ copy + 10 = {copy + 10:.1f} -> {'met' if model >= copy + 10 else 'NOT met'}")
    print("time per step (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()) + f"; total {total:.0f} s")
    print(f"table: {eval_dir / 'results.md'}; plot: {eval_dir}; TensorBoard: tensorboard --logdir {run_dir}")


if __name__ == "__main__":
    main()
