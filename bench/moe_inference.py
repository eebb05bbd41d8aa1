"""MoE inference: static capacity vs dynamic gating, and expert buffering (K resident, LRU/LIFO).

    python -m bench.moe_inference [--experts 8,16 --d-model 512 --layers 4 --moe-freq 2 --hidden 2048
                                   --vocab 8000 --sentences 32 --src-len 24 --max-len 24 --beam 4
                                   --batch 16 --eval-fraction 0.25] [--ckpt PATH --src-file FILE
                                   --src-lang eng_Latn --tgt-lang fra_Latn] [--quick] [--out FILE]

Random models of NLLB-MoE's layer shape scaled down (NLLB-MoE: d 2048, FFN 8192, 24+24 layers,
an MoE layer every 4th, 128 experts, top-2; here d 512, FFN 2048, 4+4 layers, every 2nd, E = 8
and 16, top-2), written once to a safetensors file. Every configuration runs in its own
subprocess (so ``peak_rss_mib`` is that configuration's own peak) and translates the same random
sentences with beam search, ``</s>`` held back until the length limit so every configuration
decodes the same number of steps:

* ``static``: GShard/fairseq evaluation, C = ceil(eval_fraction · tokens) slots per expert, every
  expert computes all C rows (``model.moe.inference=static``);
* ``dynamic``: dynamic gating, each expert runs on exactly its routed tokens;
* ``buffer_K<k>_<policy>``: dynamic gating with at most k experts per layer resident
  (k ∈ {E, E/2, E/4}), the others read from the memory-mapped safetensors file on demand.

Encoder and decoder are timed separately (wall time inside ``model.encode`` / ``model.decode``).
``--ckpt`` (comma-separated: a .pt, a .dcp, an export, or a run directory: its checkpoints/best.pt)
adds the same configurations for each trained model, translating ``--src-file``. The last stdout line is one JSON
object, also written to bench/results/moe_inference.json (not with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def _model_config(spec: dict):
    from nmt.config import ModelConfig, MoEConfig

    moe = MoEConfig(experts=spec["experts"], top_k=2, encoder_freq=spec["moe_freq"], decoder_freq=spec["moe_freq"],
                    eval_capacity_token_fraction=spec["eval_fraction"], expert_ffn_dim=spec.get("expert_ffn_dim", 0))
    return ModelConfig(d_model=spec["d_model"], encoder_layers=spec["layers"], decoder_layers=spec["layers"],
                       heads=max(spec["d_model"] // 64, 1), ffn_dim=spec["hidden"], dropout=0.0, moe=moe)


def write_random_model(spec: dict, path: Path) -> int:
    """The random model's state as safetensors; returns its parameter count."""
    from safetensors.torch import save_file

    from nmt.export import tensors_for_safetensors
    from nmt.models.build import build_model

    torch.manual_seed(0)
    model = build_model(_model_config(spec), spec["vocab"])
    state = tensors_for_safetensors(model.state_dict())
    save_file(state, str(path))
    return sum(t.numel() for t in state.values())


def _timed(model, eos_penalty: float = 0.0) -> dict[str, float]:
    """Wrap ``model.encode``/``decode`` to add up their wall time; ``eos_penalty`` is taken off the
    ``</s>`` logit (random models: every beam then runs to the length limit, where beam search
    still ends it)."""
    spent = {"encoder_s": 0.0, "decoder_s": 0.0}
    for name, key in (("encode", "encoder_s"), ("decode", "decoder_s")):
        fn = getattr(model, name)

        def wrapped(*a, _fn=fn, _key=key, **kw):
            t = time.perf_counter()
            out = _fn(*a, **kw)
            if _key == "decoder_s" and eos_penalty:
                out[..., 2] -= eos_penalty
            spent[_key] += time.perf_counter() - t
            return out

        setattr(model, name, wrapped)
    return spent


def _load_random(spec: dict, weights: str, mode: str, resident: int, policy: str):
    """The model with placeholder (width-1) experts and the file's other weights, then: ``resident``
    0: every expert read into memory once (no random initial copy beside it, which would double the
    peak); > 0: a K-expert buffer over the file; -1: no expert weights (the ``base`` row)."""
    from safetensors import safe_open
    from torch import nn

    from nmt.models.build import build_model
    from nmt.models.moe.buffer import PARAMS, SafetensorsTier
    from nmt.moe_tools.serving import buffer_experts, is_expert_key, moe_layers

    model = build_model(_model_config({**spec, "expert_ffn_dim": 1}), spec["vocab"]).eval()
    with safe_open(weights, framework="pt", device="cpu") as f:
        model.load_state_dict({k: f.get_tensor(k) for k in f.keys() if not is_expert_key(k)}, strict=False)
    tiers = {f"{name}.experts.": SafetensorsTier(weights, f"{name}.experts.", torch.device("cpu"))
             for name, _ in moe_layers(model)}
    if resident > 0:
        buffer_experts(model, tiers, resident, policy, weights)
    elif resident == 0:
        for name, layer in moe_layers(model):
            for p in PARAMS:
                setattr(layer.experts, p, nn.Parameter(tiers[f"{name}.experts."].whole(p), requires_grad=False))
    model.cfg.moe.inference = mode
    return model


def run_random(spec: dict, weights: str, mode: str, resident: int, policy: str) -> dict:
    from nmt.eval.search import beam_search
    from nmt.moe_tools.serving import buffer_stats

    model = _load_random(spec, weights, mode, resident, policy)
    g = torch.Generator().manual_seed(1)
    src = torch.randint(4, spec["vocab"], (spec["sentences"], spec["src_len"]), generator=g)
    src[:, -1] = 2  # </s>
    spent = _timed(model, eos_penalty=1e4)
    t = time.perf_counter()
    for i in range(0, spec["sentences"], spec["batch"]):
        chunk = src[i:i + spec["batch"]]
        beam_search(model, chunk, torch.full((chunk.shape[0],), 5), eos=2, beam=spec["beam"], max_len_a=0.0,
                    max_len_b=spec["max_len"])
    total = time.perf_counter() - t
    return {"sentences_s": spec["sentences"] / total, "total_s": total, **spent, "buffer": buffer_stats(model)}


def run_trained(ckpt: str, src_file: str, src_lang: str, tgt_lang: str, mode: str, resident: int,
                policy: str, batch: int) -> dict:
    from nmt.inference import Translator
    from nmt.moe_tools.options import MoEServeConfig
    from nmt.moe_tools.serving import buffer_stats

    tr = Translator.from_checkpoint(ckpt, moe=MoEServeConfig(mode, resident, policy))
    lines = Path(src_file).read_text(encoding="utf-8").splitlines()
    spent = _timed(tr.model)
    t = time.perf_counter()
    tr.translate(lines, src_lang, tgt_lang, batch_size=batch)
    total = time.perf_counter() - t
    return {"sentences_s": len(lines) / total, "total_s": total, **spent, "buffer": buffer_stats(tr.model)}


def _status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(job: dict) -> None:
    torch.set_num_threads(job.get("threads") or torch.get_num_threads())
    if "ckpt" in job:
        out = run_trained(job["ckpt"], job["src_file"], job["src_lang"], job["tgt_lang"], job["mode"],
                          job["resident"], job["policy"], job["batch"])
    else:
        out = run_random(job["spec"], job["weights"], job["mode"], job["resident"], job["policy"])
    # VmHWM, not getrusage's ru_maxrss: that one keeps the parent's RSS at fork across exec
    out["peak_rss_mib"] = _status_mib("VmHWM")
    out["rss_end_mib"] = _status_mib("VmRSS")  # what serving holds (the peak also has the load's transients)
    print(json.dumps(out))


def configurations(experts: int) -> list[tuple[str, str, int, str]]:
    """(name, mode, resident K, policy): ``base`` (no expert weights, random models only: the
    process's peak RSS besides expert weights), static, dynamic, then buffering with
    K ∈ {E, E/2, E/4}."""
    out = [("base", "dynamic", -1, "lru"), ("static", "static", 0, "lru"), ("dynamic", "dynamic", 0, "lru")]
    for k in dict.fromkeys((experts, experts // 2, experts // 4)):
        if k >= 2:
            out += [(f"buffer_K{k}_{p}", "dynamic", k, p) for p in ("lru", "lifo")]
    return out


def summarize(rows: dict, experts: int) -> dict:
    """The issue's ratios: dynamic gating's speed-up over static capacity (encoder, decoder), and
    K = E/4 buffering (each policy): expert-weight RSS cut and time, both against ``dynamic``."""
    st, dyn = rows["static"], rows["dynamic"]
    out = {"encoder_speedup": st["encoder_s"] / dyn["encoder_s"], "decoder_speedup": st["decoder_s"] / dyn["decoder_s"]}
    out["dynamic_target_met"] = out["encoder_speedup"] >= 2.0 and out["decoder_speedup"] >= 1.0
    for policy in ("lru", "lifo"):
        buf = rows.get(f"buffer_K{experts // 4}_{policy}")
        if buf is None:
            continue
        out[f"k_quarter_{policy}_time"] = buf["total_s"] / dyn["total_s"]
        if "expert_rss_mib" in buf and buf["expert_rss_mib"] > 0:
            cut = dyn["expert_rss_mib"] / buf["expert_rss_mib"]
            out[f"k_quarter_{policy}_expert_rss_cut"] = cut
            out[f"k_quarter_{policy}_target_met"] = cut >= 2.0 and out[f"k_quarter_{policy}_time"] <= 1.5
    return out


def _spawn(job: dict) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bench.moe_inference", "--worker", json.dumps(job)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0:
        raise SystemExit(f"worker failed for {job.get('name')}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in (("d-model", 512), ("layers", 4), ("moe-freq", 2), ("hidden", 2048), ("vocab", 8000),
                          ("sentences", 32), ("src-len", 24), ("max-len", 24), ("beam", 4), ("batch", 16),
                          ("threads", 0)):
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--experts", default="8,16")
    ap.add_argument("--eval-fraction", type=float, default=0.25, help="static C = ceil(fraction · tokens)")
    ap.add_argument("--ckpt", default="", help="also trained models, comma-separated (.pt, .dcp, export or run "
                    "directory); results under trained_E<experts>")
    ap.add_argument("--src-file", default="")
    ap.add_argument("--src-lang", default="eng_Latn")
    ap.add_argument("--tgt-lang", default="fra_Latn")
    ap.add_argument("--quick", action="store_true", help="tiny shapes (a smoke test); writes no result file")
    ap.add_argument("--out", default="")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    if args.quick:
        args.d_model, args.layers, args.hidden, args.vocab, args.sentences, args.src_len, args.max_len, \
            args.beam, args.batch = 32, 2, 64, 300, 4, 8, 4, 2, 4
    spec = {k: getattr(args, k) for k in ("d_model", "layers", "moe_freq", "hidden", "vocab", "sentences",
                                          "src_len", "max_len", "beam", "batch", "eval_fraction")}
    report: dict = {"bench": "moe_inference", "shape": spec, "quick": args.quick, "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for e in (int(x) for x in args.experts.split(",")):
            weights = Path(tmp) / f"random_e{e}.safetensors"
            params = write_random_model({**spec, "experts": e}, weights)
            rows = {}
            for name, mode, k, policy in configurations(e):
                rows[name] = _spawn({"name": name, "spec": {**spec, "experts": e}, "weights": str(weights),
                                     "mode": mode, "resident": k, "policy": policy, "threads": args.threads})
                print(f"E={e} {name}: {rows[name]['sentences_s']:.2f} sent/s, peak RSS "
                      f"{rows[name]['peak_rss_mib']:.0f} MiB", file=sys.stderr, flush=True)
            for row in rows.values():
                row["expert_rss_mib"] = row["rss_end_mib"] - rows["base"]["rss_end_mib"]
            report["results"][f"random_E{e}"] = {"params": params, "configs": rows, "summary": summarize(rows, e)}
    for ckpt in filter(None, args.ckpt.split(",")):
        trained = _trained(args, ckpt)
        report["results"][f"trained_E{trained['experts']}"] = trained
    if not args.quick or args.out:
        path = Path(args.out or RESULTS / "moe_inference.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report))


def _trained(args, path: str) -> dict:
    from nmt.inference import load_inference_checkpoint

    ckpt = Path(path)
    if (ckpt / "checkpoints").is_dir():
        ckpt = ckpt / "checkpoints" / "best.pt"
    if not args.src_file:
        raise SystemExit("--ckpt needs --src-file (one source sentence per line)")
    moe = load_inference_checkpoint(ckpt).model_config.get("moe") or {}
    experts = int(moe.get("experts") or 0)
    if not experts:
        raise SystemExit(f"{ckpt} is a dense model: nothing to compare")
    rows = {name: _spawn({"name": name, "ckpt": str(ckpt), "src_file": args.src_file, "src_lang": args.src_lang,
                          "tgt_lang": args.tgt_lang, "mode": mode, "resident": k, "policy": policy,
                          "batch": args.batch, "threads": args.threads})
            for name, mode, k, policy in configurations(experts) if k >= 0}
    return {"ckpt": str(ckpt), "experts": experts, "static_fraction": moe.get("eval_capacity_token_fraction"),
            "configs": rows, "summary": summarize(rows, experts)}


if __name__ == "__main__":
    main()
