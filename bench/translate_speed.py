"""Translation speed: our torch beam search against Transformers ``generate`` and CTranslate2.

    python -m bench.translate_speed [--run RUN_DIR] [--sentences 500 --beam 4 --batch-size 64
                                     --threads N --systems ...] [--quick] [--out FILE]

Same weights everywhere: each model (the demo run's ``best.pt`` with ``--run``, and a random
Transformer-base: d 512, 6+6 layers, FFN 2048, vocabulary ~32k) is exported to Transformers
(``--format hf``) and CTranslate2 (float32 and int8). The same sentences, beam 4, our length
limit (1.2·src + 10). Each system runs in a fresh process (bench/translate_systems.py), which
reports sentences/s, output tokens/s and its peak RSS. Progress on stderr; one JSON line on
stdout, also written to bench/results/translate_speed.json, and a Markdown table beside it.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from bench.machine import cpu_info, log

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SYSTEMS = ("ours_fp32", "ours_bf16", "transformers", "ct2_float32", "ct2_int8")
SRC, TGT = "eng_Latn", "fra_Latn"
SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"] + ["an", "el", "or", "is", "um"]


def synthetic_lines(n: int, seed: int) -> list[str]:
    """Sentences of made-up words (a stand-in text for the random model's tokenizer and inputs)."""
    rng = random.Random(seed)
    # ~2 words per line (at most 120k): enough distinct words for a 32k-piece vocabulary on 60k lines
    words = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 5))) for _ in range(min(2 * n, 120000))]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 30))) for _ in range(n)]


def _train_spm(root: Path, vocab: int, text: list[str]) -> Path:
    """Our SentencePiece layout (tags at 4..259) through data_prep.train_spm, on ``text`` as both sides."""
    from data_prep import train_spm

    pair = f"{SRC}-{TGT}"
    bitext = root / "corpus" / "bitext" / "train"
    bitext.mkdir(parents=True)
    for lang in (SRC, TGT):
        (bitext / f"{pair}.{lang}").write_text("".join(line + "\n" for line in text), encoding="utf-8")
    (root / "corpus" / "manifest.json").write_text(json.dumps(
        {"format": 1, "pairs": {"train": {pair: {"lines": len(text)}}, "valid": {}, "test": {}},
         "languages": [SRC, TGT]}))
    train_spm.main(["--corpus", str(root / "corpus"), "--vocab-size", str(vocab), "--character-coverage", "1.0"])
    return root / "corpus" / "spm.model"


def random_checkpoint(root: Path, quick: bool) -> Path:
    """A randomly initialised model saved as a run's checkpoint (``<root>/checkpoints/best.pt``)."""
    import torch

    from nmt.config import EvalConfig, ModelConfig
    from nmt.data.tokenizer import Tokenizer
    from nmt.models.build import build_model
    from nmt.training.checkpoint import save_checkpoint

    spm = _train_spm(root, 400 if quick else 32000, synthetic_lines(3000 if quick else 60000, 1))
    (root / "spm.model").write_bytes(spm.read_bytes())
    tok = Tokenizer(root / "spm.model")
    cfg = (ModelConfig(d_model=32, encoder_layers=1, decoder_layers=1, heads=4, ffn_dim=64, dropout=0.0) if quick
           else ModelConfig(d_model=512, encoder_layers=6, decoder_layers=6, heads=8, ffn_dim=2048, dropout=0.0))
    torch.manual_seed(1)
    model = build_model(cfg, tok.vocab_size)
    save_checkpoint({"model": model.state_dict(), "step": 0, "directions": [f"{SRC}-{TGT}"],
                     "config": {"model": asdict(cfg), "eval": asdict(EvalConfig())},
                     "tokenizer": {"path": str(root / "spm.model"), "sha256": tok.sha256}},
                    root / "checkpoints" / "best.pt")
    return root / "checkpoints" / "best.pt"


def demo_inputs(run: Path, n: int) -> tuple[Path, list[str], str, str, list[str]]:
    """The run's best checkpoint, ``n`` source lines (Flores devtest or test bitext, cycled), a
    direction, and the references of those lines when they come from Flores devtest (else [])."""
    from nmt.inference import load_inference_checkpoint

    ckpt = run / "checkpoints" / "best.pt"
    info = load_inference_checkpoint(ckpt).info
    src, tgt = next((d.split("-") for d in info.get("directions") or [] if d.startswith("eng_Latn-")),
                    (SRC, TGT))
    import yaml

    corpus = Path(yaml.safe_load((run / "config.yaml").read_text())["data"]["corpus"])
    files = [corpus / "flores" / "devtest" / f"{src}.devtest", *sorted((corpus / "bitext" / "test").glob(f"*.{src}"))]
    lines = [line for f in files if f.is_file() for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise SystemExit(f"no {src} test text under {corpus}; give another --run")
    refs: list[str] = []
    ref_file = corpus / "flores" / "devtest" / f"{tgt}.devtest"
    if files[0].is_file() and ref_file.is_file() and n <= len(lines):
        refs = ref_file.read_text(encoding="utf-8").splitlines()[:n]
    return ckpt, [lines[i % len(lines)] for i in range(n)], src, tgt, refs


def chrf_scores(root: Path, systems: list[str], refs: list[str]) -> dict[str, float]:
    """chrF++ (sacrebleu, word order 2) of each system's translations (``<root>/<system>.hyp``)."""
    from sacrebleu.metrics import CHRF

    metric, out = CHRF(word_order=2), {}
    for system in systems:
        hyp = root / f"{system}.hyp"
        if hyp.is_file():
            out[system] = round(metric.corpus_score(hyp.read_text(encoding="utf-8").splitlines(), [refs]).score, 2)
    return out


def exports(ckpt: Path, root: Path) -> dict[str, Path]:
    """The Transformers export and its CTranslate2 conversions (float32, int8)."""
    from nmt.interop.ct2 import convert_hf_dir
    from nmt.interop.hf_export import export_hf

    export_hf(ckpt, root / "hf")
    out = {"transformers": root / "hf"}
    for quant in ("float32", "int8"):
        convert_hf_dir(root / "hf", root / f"ct2_{quant}", quantization=None if quant == "float32" else quant)
        out[f"ct2_{quant}"] = root / f"ct2_{quant}"
    return out


def run_system(spec: dict) -> dict:
    log(f"  {spec['system']} ...")
    proc = subprocess.run([sys.executable, "-m", "bench.translate_systems", json.dumps(spec)],
                          check=False, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0:
        log(proc.stderr[-2000:])
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    log(f"  {spec['system']}: {res['sentences_per_s']:.2f} sentences/s, {res['tokens_per_s']:.0f} tokens/s, "
        f"peak RSS {res['peak_rss_gib']:.2f} GiB")
    return res


def bench_model(name: str, ckpt: Path, lines: list[str], src: str, tgt: str, args, root: Path, cpu: dict,
                refs: list[str] | None = None) -> dict:
    log(f"[{name}] exporting {ckpt}")
    paths = {"ours_fp32": ckpt, "ours_bf16": ckpt, **exports(ckpt, root)}
    (root / "lines.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    base = {"lines": str(root / "lines.txt"), "src": src, "tgt": tgt, "beam": args.beam,
            "batch_size": args.batch_size, "threads": args.threads, "max_len_a": 1.2, "max_len_b": 10,
            "spm": str(root / "hf" / "sentencepiece.bpe.model")}
    results: dict = {}
    for system in args.systems:
        if system == "ours_bf16" and not ({"avx512_bf16", "amx_bf16"} & set(cpu.get("bf16_hardware") or [])):
            results[system] = {"skipped": "no bf16 units on this CPU (lscpu: no amx_bf16 / avx512_bf16)"}
            continue
        results[system] = run_system({**base, "system": system, "path": str(paths[system]),
                                      "hyp_out": str(root / f"{system}.hyp")})
    speed = {s: r.get("sentences_per_s") for s, r in results.items()}
    chrf = chrf_scores(root, list(results), refs) if refs else {}

    def ratio(a: str, b: str) -> float | None:
        return speed[a] / speed[b] if speed.get(a) and speed.get(b) else None

    return {"checkpoint": str(ckpt), "direction": f"{src}-{tgt}", "sentences": len(lines), "results": results,
            "ratios": {"ours_over_transformers": ratio("ours_fp32", "transformers"),
                       "ct2_int8_over_ours": ratio("ct2_int8", "ours_fp32"),
                       "ct2_float32_over_ours": ratio("ct2_float32", "ours_fp32")},
            "chrf++": chrf, "ct2_int8_chrf_delta": (round(chrf["ct2_int8"] - chrf["ours_fp32"], 2)
                                                    if {"ct2_int8", "ours_fp32"} <= set(chrf) else None)}


def table(models: dict) -> str:
    rows = ["| model | system | sentences/s | output tokens/s | peak RSS GiB | load s | chrF++ |",
            "|---|---|---|---|---|---|---|"]
    for name, m in models.items():
        for system, r in m["results"].items():
            chrf = m.get("chrf++", {}).get(system, "")
            if "sentences_per_s" in r:
                rows.append(f"| {name} | {system} | {r['sentences_per_s']:.2f} | {r['tokens_per_s']:.0f} | "
                            f"{r['peak_rss_gib']:.2f} | {r['load_s']:.1f} | {chrf} |")
            else:
                rows.append(f"| {name} | {system} | {r.get('skipped') or r.get('error')} | | | | |")
    return "\n".join(rows) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.translate_speed", description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, default=None, help="a run directory (e.g. the demo's): its best.pt too")
    p.add_argument("--sentences", type=int, default=500)
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch and CTranslate2 threads")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma list of " + ", ".join(SYSTEMS))
    p.add_argument("--quick", action="store_true", help="a tiny random model and a few sentences (smoke test)")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results/translate_speed.json)")
    args = p.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    for s in args.systems:
        if s not in SYSTEMS:
            p.error(f"--systems: unknown system {s!r}; use {', '.join(SYSTEMS)}")
    if args.quick:
        args.sentences = 6
    if args.out is None:
        args.out = RESULTS_DIR / ("translate_speed.quick.json" if args.quick else "translate_speed.json")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    t_begin, load_before, cpu = time.perf_counter(), os.getloadavg(), cpu_info()
    log(f"cpu: {cpu}, threads {args.threads}, load average {load_before}")
    models: dict = {}
    # train_spm and the exporters print progress on stdout: stdout is for the one JSON line
    with tempfile.TemporaryDirectory(prefix="translate_speed-") as tmp, contextlib.redirect_stdout(sys.stderr):
        if args.run is not None:
            ckpt, lines, src, tgt, refs = demo_inputs(args.run, args.sentences)
            models["demo"] = bench_model("demo", ckpt, lines, src, tgt, args, Path(tmp) / "demo", cpu, refs)
        else:
            lines = synthetic_lines(args.sentences, 2)
        name = "tiny-random" if args.quick else "base-random"
        ckpt = random_checkpoint(Path(tmp) / name, args.quick)
        models[name] = bench_model(name, ckpt, lines, SRC, TGT, args, Path(tmp) / name, cpu)
    report = {"bench": "translate_speed", "quick": args.quick, "beam": args.beam, "batch_size": args.batch_size,
              "threads": args.threads, "max_len": "1.2 * source tokens + 10", "models": models,
              "ratios": {name: m["ratios"] for name, m in models.items()}, "cpu": cpu,
              "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
              "wall_s": time.perf_counter() - t_begin}
    line = json.dumps(report, sort_keys=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(line + "\n")
    args.out.with_suffix(".md").write_text(table(models))
    log(table(models) + f"wrote {args.out} and {args.out.with_suffix('.md')} ({report['wall_s']:.0f} s)")
    print(line, flush=True)
    return report


if __name__ == "__main__":
    main()
