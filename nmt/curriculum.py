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
``N - best_step`` (N: the planned run's length, default the finished run's last step) or later,
never earlier: directions are grouped into nested stages at the widest gaps between entry steps
and a stage starts at its latest member's entry. It prints (or writes) a config snippet with a
table of each direction's ideal and planned entry.
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


def _split_by_gaps(entries: list[int], n_groups: int) -> list[list[int]]:
    """Sorted distinct ``entries`` cut at the ``n_groups - 1`` widest gaps (ties: the earlier gap)."""
    if not entries:
        return []
    if n_groups <= 1:
        return [entries]
    gaps = sorted(range(1, len(entries)), key=lambda i: (-(entries[i] - entries[i - 1]), i))
    cuts = sorted(gaps[: n_groups - 1])
    return [entries[a:b] for a, b in zip([0, *cuts], [*cuts, len(entries)], strict=True)]


def plan_stages(best_step: dict[str, int], total_steps: int, n_stages: int) -> list[StageConfig]:
    """Nested stages in which no direction enters before its ideal step ``total_steps - best_step``.

    Stage 0 (step 0) holds the directions whose ideal entry is 0; the later ideal entries are cut
    into at most ``n_stages - 1`` groups at their widest gaps, and each group's stage starts at its
    *latest* member's entry, so a direction enters on time or late, never early. A direction's
    planned entry is the start of the first stage that lists it (:func:`planned_entries`).
    """
    if not best_step:
        raise UserError("no per-direction validation loss found: the run needs valid/loss/<direction> records")
    ideal = {d: max(0, total_steps - b) for d, b in best_step.items()}
    if min(ideal.values()) > 0:
        first = min(ideal.values())
        raise UserError(
            f"no direction reaches its best validation loss at step {total_steps} (the earliest would enter at "
            f"step {first}), so step 0 would train nothing: plan a run of --steps {total_steps - first}"
        )
    order = sorted(ideal, key=lambda d: (ideal[d], d))
    later = sorted({e for e in ideal.values() if e > 0})
    if later and n_stages < 2:
        raise UserError(f"--stages {n_stages} would let every direction in at step 0, before the ideal entries "
                        f"{', '.join(f'{d} {ideal[d]}' for d in order if ideal[d] > 0)}: use --stages 2 or more")
    active = [d for d in order if ideal[d] == 0]
    stages = [StageConfig(start_step=0, directions=list(active))]
    for group in _split_by_gaps(later, n_stages - 1):
        active = active + [d for d in order if ideal[d] in group]
        stages.append(StageConfig(start_step=group[-1], directions=list(active)))
    return stages


def planned_entries(stages: list[StageConfig]) -> dict[str, int]:
    """Step at which each direction first trains under ``stages``."""
    entry: dict[str, int] = {}
    for st in stages:
        for d in st.directions:
            entry.setdefault(d, st.start_step)
    return entry


def entry_table(best_step: dict[str, int], total_steps: int, stages: list[StageConfig]) -> str:
    """Comment lines: each direction's best validation step, ideal entry N - best and planned entry."""
    planned = planned_entries(stages)
    lines = [f"# {'direction':<24} {'best':>8} {'ideal':>8} {'planned':>8}"]
    for d in sorted(best_step, key=lambda x: (planned[x], x)):
        ideal = max(0, total_steps - best_step[d])
        late = planned[d] - ideal
        note = f"  (late by {late})" if late else ""
        lines.append(f"# {d:<24} {best_step[d]:>8} {ideal:>8} {planned[d]:>8}{note}")
    return "\n".join(lines) + "\n"


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
    text += f"# planned run length N = {args.steps or last}; entry = N - best step (never earlier)\n"
    text += entry_table(best, args.steps or last, stages)
    text += to_yaml(stages)
    if args.out:
        from nmt.fileio import atomic_write

        atomic_write(Path(args.out), text)
        print(entry_table(best, args.steps or last, stages), end="")
        print(f"wrote {args.out}")
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
