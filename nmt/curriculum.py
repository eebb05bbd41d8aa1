"""Curriculum stages in one run, and a planner that derives them from a finished run.

NLLB introduced language pairs in phases by restarting jobs with a longer pair list; here the
stages live in one run: ``curriculum.stages = [{start_step: 0, directions: [...]}, ...]``.
Stage i trains the updates ``start_step_i <= step < start_step_{i+1}`` (0-based update index:
with ``start_step: 100`` the 101st update is the first of the new stage). At a boundary the
sampling probabilities are recomputed over the stage's directions and the loader starts a fresh
epoch plan, so the data order depends only on the step, also across a resume.

``python -m nmt.curriculum plan RUN_DIR [--stages 3] [--steps N] [--out FILE]`` reads a finished
run's ``valid_log.jsonl``: directions that reach their best validation loss early (the ones that
over-fit, typically low-resource) should train for fewer updates, so each direction enters at
``N - best_step`` (N: the planned run's length, default the finished run's last step); directions
are grouped into nested stages by that entry step. It prints (or writes) a config snippet.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nmt.config import StageConfig
from nmt.errors import UserError, exit_on_user_error
from nmt.langs import parse_direction


def _canonical(d: str, where: str) -> str:
    return "-".join(parse_direction(d, where=where))


def check_stages(stages: list[StageConfig], train_directions: list[str]) -> list[tuple[int, list[str]]]:
    """Validated ``[(start_step, directions)]``; errors name ``curriculum.stages``."""
    if not stages:
        return []
    out: list[tuple[int, list[str]]] = []
    known = set(train_directions)
    for i, st in enumerate(stages):
        key = f"curriculum.stages[{i}]"
        if i == 0 and st.start_step != 0:
            raise UserError(f"{key}.start_step={st.start_step}: the first stage must start at step 0")
        if i > 0 and st.start_step <= out[-1][0]:
            raise UserError(f"{key}.start_step={st.start_step}: stages must start at increasing steps "
                            f"(the previous one starts at {out[-1][0]})")
        if not st.directions:
            raise UserError(f"{key}.directions is empty: list the directions this stage trains")
        dirs = [_canonical(d, f"{key}.directions") for d in st.directions]
        unknown = sorted(set(dirs) - known)
        if unknown:
            raise UserError(f"{key}.directions: {', '.join(unknown)} not among the training directions "
                            f"(data.directions): add them there or remove them from the stage")
        out.append((int(st.start_step), sorted(set(dirs), key=dirs.index)))
    return out


def stage_at(stages: list[tuple[int, list[str]]], step: int) -> int:
    """Index of the stage that trains update ``step`` (0-based)."""
    idx = 0
    for i, (start, _) in enumerate(stages):
        if step >= start:
            idx = i
    return idx


def plan_stages(best_step: dict[str, int], total_steps: int, n_stages: int) -> list[StageConfig]:
    """Nested stages: each direction enters at ``total_steps - best_step`` (clamped at 0),
    directions grouped by entry step into ``n_stages`` groups of near-equal size; a stage starts
    at the earliest entry of its group (the first at 0) and keeps all earlier directions."""
    if not best_step:
        raise UserError("no per-direction validation loss found: the run needs valid/loss/<direction> records")
    entries = sorted(((max(0, total_steps - b), d) for d, b in best_step.items()), key=lambda x: (x[0], x[1]))
    n = max(1, min(n_stages, len(entries)))
    groups = [entries[round(i * len(entries) / n): round((i + 1) * len(entries) / n)] for i in range(n)]
    stages: list[StageConfig] = []
    active: list[str] = []
    for i, group in enumerate(g for g in groups if g):
        active = active + [d for _, d in group]
        start = 0 if i == 0 else group[0][0]
        if stages and start <= stages[-1].start_step:  # ties: merge into the previous stage
            stages[-1].directions = list(active)
            continue
        stages.append(StageConfig(start_step=start, directions=list(active)))
    return stages


def best_steps(run_dir: Path) -> tuple[dict[str, int], int]:
    path = Path(run_dir) / "valid_log.jsonl"
    if not path.is_file():
        raise UserError(f"{path} not found: pass a run directory written by nmt.train with validation")
    best: dict[str, tuple[float, int]] = {}
    last = 0
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            rec = json.loads(line)
        except ValueError:
            raise UserError(f"{path}:{n} is not JSON") from None
        last = max(last, int(rec.get("step", 0)))
        for key, value in rec.items():
            if key.startswith("valid/loss/") and key.count("/") == 2:
                d = key.split("/")[2]
                if d not in best or value < best[d][0]:
                    best[d] = (float(value), int(rec["step"]))
    return {d: s for d, (_, s) in best.items()}, last


def to_yaml(stages: list[StageConfig]) -> str:
    lines = ["curriculum:", "  stages:"]
    for st in stages:
        lines.append(f"  - start_step: {st.start_step}")
        lines.append(f"    directions: [{', '.join(st.directions)}]")
    return "\n".join(lines) + "\n"


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m nmt.curriculum", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plan", help="derive stages from a finished run's validation curves")
    p.add_argument("run_dir")
    p.add_argument("--stages", type=int, default=3)
    p.add_argument("--steps", type=int, default=0, help="length of the planned run (default: the run's last step)")
    p.add_argument("--out", default="", help="write the snippet here instead of stdout")
    args = ap.parse_args(argv)
    if args.stages < 1:
        raise UserError(f"--stages {args.stages}: use at least 1")
    best, last = best_steps(Path(args.run_dir))
    stages = plan_stages(best, args.steps or last, args.stages)
    text = "# derived by: python -m nmt.curriculum plan " + " ".join(sys.argv[1:] if argv is None else argv) + "\n"
    text += "# best validation step per direction: " + ", ".join(f"{d} {s}" for d, s in sorted(best.items())) + "\n"
    text += to_yaml(stages)
    if args.out:
        from nmt.fileio import atomic_write

        atomic_write(Path(args.out), text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
