"""``python -m nmt.moe_tools placement|prune ...``: MoE serving tools.

    python -m nmt.moe_tools placement CKPT --calib FLORES_DIR --ranks N [--replicate R] [--out FILE]
    python -m nmt.moe_tools prune CKPT OUT --calib FLORES_DIR --directions A-B,... --keep 0.2|N [--by load|gate]

``--calib``: a Flores-layout directory (``--split`` dev by default) holding the directions'
languages; ``prune`` scores chrF++ on ``--eval-split`` (devtest). See docs/moe_serving.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nmt.errors import UserError, exit_on_user_error

USAGE = __doc__.split("\n\n")[1].strip()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one "error:" line and exit code 2
        raise UserError(f"{message}; usage: {USAGE.splitlines()[0].strip()} | {USAGE.splitlines()[1].strip()}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m nmt.moe_tools", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in ("placement", "prune"):
        s = sub.add_parser(name)
        s.add_argument("ckpt", metavar="CKPT")
        if name == "prune":
            s.add_argument("out", metavar="OUT")
        s.add_argument("--calib", required=True, help="Flores-layout directory with the calibration split")
        s.add_argument("--split", default="dev", help="calibration split (default dev)")
        s.add_argument("--directions", default="", help="A-B,C-D (placement default: every known one)")
        s.add_argument("--max-lines", type=int, default=None, help="calibration lines per direction")
        s.add_argument("--device", default="cpu")
    pl = sub.choices["placement"]
    pl.add_argument("--ranks", type=int, required=True)
    pl.add_argument("--replicate", type=int, default=0, help="give the R hottest experts a second copy")
    pl.add_argument("--out", default="", help="also write the placement JSON here")
    pr = sub.choices["prune"]
    pr.add_argument("--keep", required=True, help="fraction in (0, 1) of the experts, or a count")
    pr.add_argument("--by", choices=("load", "gate"), default="load")
    pr.add_argument("--eval-split", default="devtest")
    pr.add_argument("--beam", type=int, default=0, help="0: the checkpoint's eval.beam")
    pr.add_argument("--overwrite", action="store_true")
    return p


def _load_moe(path: str, device: str):
    """The checkpoint and its model; a dense model is refused."""
    import torch

    from nmt.inference import load_inference_checkpoint

    ck = load_inference_checkpoint(path)
    moe = ck.model_config.get("moe") or {}
    if not moe.get("experts"):
        raise UserError(f"{path} is a dense model (model.moe.experts=0): there are no experts; give a MoE checkpoint")
    if moe.get("impl", "native") != "native":
        raise UserError(f"{path} uses model.moe.impl={moe.get('impl')}: these tools read the native MoE layers only")
    return ck, ck.build_model().to(torch.device(device))


def _directions(args, ck) -> list[tuple[str, str]]:
    from nmt.eval import flores
    from nmt.moe_tools.prune import check_directions

    known = [str(d) for d in ck.info.get("directions") or []]
    if args.directions:
        return check_directions(args.directions, known, args.ckpt)
    langs = set(flores.list_languages(args.calib, args.split))
    dirs = [tuple(d.split("-")) for d in known if set(d.split("-")) <= langs]
    if not dirs:
        raise UserError(f"none of the checkpoint's directions has both languages in {args.calib}/{args.split}; "
                        f"pass --directions")
    return dirs  # type: ignore[return-value]


def placement(args) -> dict:
    from nmt.moe_tools.placement import place_layers
    from nmt.moe_tools.prune import usage_per_direction

    if args.out and Path(args.out).exists():
        raise UserError(f"--out {args.out} exists; choose another file or remove it")
    ck, model = _load_moe(args.ckpt, args.device)
    e = int(ck.model_config["moe"]["experts"])
    if args.ranks < 1 or e % args.ranks:
        raise UserError(f"--ranks {args.ranks}: the {e} experts must split evenly over the ranks (a divisor of {e})")
    if not 0 <= args.replicate <= e or (args.replicate and args.ranks < 2):
        raise UserError(f"--replicate {args.replicate}: use 0..{e}, with --ranks of 2 or more")
    usages = usage_per_direction(model, ck.tokenizer, args.calib, args.split, _directions(args, ck), args.max_lines)
    total = usages[0]
    for u in usages[1:]:
        total.add(u)
    result = place_layers({n: v.tolist() for n, v in total.load.items()}, args.ranks, args.replicate)
    print(f"{'layer':<10} {'before max/mean':>16} {'after max/mean':>15}")
    for name, r in result.items():
        print(f"{name:<10} {r['before']['max_over_mean']:>16.3f} {r['after']['max_over_mean']:>15.3f}")
    report = {"ckpt": args.ckpt, "ranks": args.ranks, "replicate": args.replicate, "layers": result}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report


def _chrf(translator, dirs, langs, beam: int | None) -> dict[str, float]:
    from sacrebleu.metrics import CHRF

    metric = CHRF(word_order=2)
    return {f"{s}-{t}": metric.corpus_score(translator.translate(langs[s], s, t, beam_size=beam), [langs[t]]).score
            for s, t in dirs}


def prune(args) -> dict:
    from nmt.config import EvalConfig
    from nmt.eval import flores
    from nmt.export import check_out_dir, export_config, tensors_for_safetensors, write_export_dir
    from nmt.inference import Translator, _dataclass_from
    from nmt.moe_tools import prune as P

    out = Path(args.out)
    check_out_dir(out, Path(args.ckpt), args.overwrite)
    beside = [out.parent / f"{out.name}.prune{x}" for x in (".md", ".json")]
    if any(b.exists() for b in beside) and not args.overwrite:
        raise UserError(f"{beside[0]} exists; pass --overwrite to replace the export and its report")
    ck, model = _load_moe(args.ckpt, args.device)
    moe = ck.model_config["moe"]
    keep = P.parse_keep(args.keep, int(moe["experts"]), int(moe.get("top_k", 2)))
    dirs = P.check_directions(args.directions, [str(d) for d in ck.info.get("directions") or []], args.ckpt)
    langs = list(dict.fromkeys(c for d in dirs for c in d))
    evals = flores.read_languages(args.calib, args.eval_split, langs)  # fails early if missing
    evals = {c: v[: args.max_lines] for c, v in evals.items()}
    usages = P.usage_per_direction(model, ck.tokenizer, args.calib, args.split, dirs, args.max_lines)
    kept = P.choose(P.importance(usages, args.by), keep)
    full = tensors_for_safetensors(model.state_dict())
    state = P.pruned_state(full, kept)
    config = export_config(ck, state, Path(args.ckpt))
    config["model"] = {**ck.model_config, "moe": {**moe, "experts": keep}}
    config["directions"] = [f"{s}-{t}" for s, t in dirs]
    config["languages"] = sorted(langs)
    config["pruned"] = {"from_experts": int(moe["experts"]), "keep": keep, "by": args.by,
                        "calibration": f"{args.calib}/{args.split}", "kept": kept}
    write_export_dir(out, state, config, ck.tokenizer.path, what=f"checkpoint {args.ckpt}")
    beam = args.beam or None
    defaults = _dataclass_from(EvalConfig, ck.eval_config)
    before = _chrf(Translator(model, ck.tokenizer, defaults, model.embed.weight.device), dirs, evals, beam)
    del model
    after = _chrf(Translator.from_checkpoint(out, device=args.device), dirs, evals, beam)
    report = {"source": args.ckpt, "out": str(out), "directions": config["directions"], "by": args.by,
              "eval_split": args.eval_split, "kept": kept,
              "unpruned": {"experts": int(moe["experts"]), **P.size(full),
                           "chrf++": sum(before.values()) / len(before)},
              "pruned": {"experts": keep, **P.size(state), "chrf++": sum(after.values()) / len(after)},
              "chrf++_by_direction": {d: (before[d], after[d]) for d in before}}
    P.write_report(out, report)
    return report


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    placement(args) if args.command == "placement" else prune(args)


if __name__ == "__main__":
    main()
