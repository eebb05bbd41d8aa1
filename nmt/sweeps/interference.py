"""``python -m nmt.sweeps.interference SWEEP_DIR`` — interference from a sweep's results.

For each multilingual run and the bilingual baseline of the same cell (model, focus direction,
focus data size, seed), on the focus direction's held-out loss (Shaham et al. 2023)::

    I = (L_bi - L_multi) / L_bi        I < 0: interference, I > 0: synergy

and the chrF++ difference (multi - bi). Cells are aggregated over seeds (mean ± sample std).
Writes to ``<SWEEP_DIR>/analysis`` (or ``--out``): ``runs.csv`` (one row per seed),
``interference.csv`` and ``interference.md`` (per cell), ``interference_vs_size.png`` and
``interference_vs_share.png``. Runs without a result, cells the sweep asked for that never ran,
and multilingual runs without a baseline are listed; they are never averaged over.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from nmt.errors import UserError, exit_on_user_error
from nmt.fileio import atomic_write

RUN_FIELDS = ("model", "parameters", "temperature", "focus", "focus_size", "seed", "focus_share",
              "loss_bi", "loss_multi", "interference", "chrf_bi", "chrf_multi", "chrf_diff", "bleu_bi", "bleu_multi")
CELL_FIELDS = ("model", "parameters", "temperature", "focus", "focus_size", "seeds", "focus_share",
               "loss_bi", "loss_multi", "interference", "interference_std", "chrf_diff", "chrf_diff_std")


# ---------------------------------------------------------------- reading a sweep
def _job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml"))


def _overrides(job_dir: Path) -> list[str]:
    import yaml

    return [str(o) for o in yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()) or []]


def _why_no_result(job_dir: Path) -> str:
    log = job_dir / "train.log"
    errors = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("error:")] \
        if log.is_file() else []
    if errors:
        return errors[-1]
    if (job_dir / "summary.json").is_file():
        return "training finished but result.json is missing (the evaluation failed?)"
    return "no result.json: the run failed or is still running"


def _expected(sweep_dir: Path) -> list[frozenset[str]]:
    """Every override set that the sweep's ``multirun.yaml`` files ask for."""
    import yaml
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    wanted: list[frozenset[str]] = []
    for path in sorted(sweep_dir.rglob("multirun.yaml")):
        task = (yaml.safe_load(path.read_text()) or {}).get("hydra", {}).get("overrides", {}).get("task", [])
        axes = []
        for o in parser.parse_overrides([str(t) for t in task]):
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
            axes.append([f"{o.get_key_element()}={v}" for v in values])
        wanted.extend(frozenset(combo) for combo in itertools.product(*axes))
    return list(dict.fromkeys(wanted))  # several multirun.yaml may ask for the same cell


def read_sweep(sweep_dir: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(results of the finished runs, problems: runs without a result and cells never run)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"sweep directory {sweep_dir} does not exist; pass the directory of a "
                        f"`python -m nmt.train -m +recipe=interference ...` multirun")
    results, problems, seen = [], [], set()
    for job in _job_dirs(sweep_dir):
        overrides = _overrides(job)
        seen.add(frozenset(overrides))
        path = job / "result.json"
        if not path.is_file():
            problems.append({"run": str(job.relative_to(sweep_dir)), "overrides": " ".join(overrides),
                             "problem": _why_no_result(job)})
            continue
        try:
            record = json.loads(path.read_text())
            record["cell"]["model"], record["test_loss"], record["valid_loss"]  # noqa: B018 (shape check)
        except (ValueError, KeyError, TypeError) as e:
            problems.append({"run": str(job.relative_to(sweep_dir)), "overrides": " ".join(overrides),
                             "problem": f"{path.name} is unreadable ({e})"})
            continue
        record["run"] = str(job.relative_to(sweep_dir))
        results.append(record)
    for combo in _expected(sweep_dir):
        if combo not in seen:
            problems.append({"run": "-", "overrides": " ".join(sorted(combo)),
                             "problem": "never ran (no run directory)"})
    if not results and not problems:
        raise UserError(f"{sweep_dir} holds no interference runs (no */.hydra/overrides.yaml); pass a sweep "
                        f"directory such as multirun/interference/<time>")
    return results, problems


# ---------------------------------------------------------------- computing
def interference(loss_bi: float, loss_multi: float) -> float:
    """I = (L_bi - L_multi) / L_bi."""
    return (loss_bi - loss_multi) / loss_bi


def _t_key(t: Any) -> tuple[int, float | str]:
    if t == "inf":
        return (1, math.inf)
    return (0, float(t)) if isinstance(t, (int, float)) else (2, str(t))


def pair_runs(results: list[dict[str, Any]], split: str = "test") -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """One row per multilingual run with its bilingual baseline; and the runs that have none."""
    key_of = lambda c: (c["model"], c["focus"], c["focus_size"], c["seed"])  # noqa: E731
    bilingual = {key_of(r["cell"]): r for r in results if r["cell"]["arm"] == "bi"}
    rows, unpaired = [], []
    for r in results:
        c = r["cell"]
        if c["arm"] != "multi":
            continue
        bi = bilingual.get(key_of(c))
        loss_multi = r[f"{split}_loss"].get(c["focus"])
        loss_bi = bi[f"{split}_loss"].get(c["focus"]) if bi else None
        if bi is None or loss_bi is None or loss_multi is None:
            why = "no bilingual baseline for this model/focus/focus_size/seed" if bi is None else \
                f"no {split} loss of the focus direction"
            unpaired.append({"run": r["run"], "overrides": "", "problem": why})
            continue
        chrf_bi, chrf_multi = bi["focus_scores"].get("chrf++"), r["focus_scores"].get("chrf++")
        rows.append({
            "model": c["model"], "parameters": r["parameters"], "temperature": c["temperature"],
            "focus": c["focus"], "focus_size": c["focus_size"], "seed": c["seed"],
            "focus_share": r.get("focus_share"), "loss_bi": loss_bi, "loss_multi": loss_multi,
            "interference": interference(loss_bi, loss_multi), "chrf_bi": chrf_bi, "chrf_multi": chrf_multi,
            "chrf_diff": None if chrf_bi is None or chrf_multi is None else chrf_multi - chrf_bi,
            "bleu_bi": bi["focus_scores"].get("bleu"), "bleu_multi": r["focus_scores"].get("bleu"),
        })
    rows.sort(key=lambda x: (x["parameters"], x["focus"], x["focus_size"], _t_key(x["temperature"]), x["seed"]))
    return rows, unpaired


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    xs = [v for v in values if v is not None]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± sample std over seeds per (model, temperature, focus, focus_size)."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["model"], r["temperature"], r["focus"], r["focus_size"])].append(r)
    cells = []
    for (model, temp, focus, size), rs in groups.items():
        i_mean, i_std = _mean_std([r["interference"] for r in rs])
        c_mean, c_std = _mean_std([r["chrf_diff"] for r in rs])
        cells.append({
            "model": model, "parameters": rs[0]["parameters"], "temperature": temp, "focus": focus,
            "focus_size": size, "seeds": len(rs), "focus_share": _mean_std([r["focus_share"] for r in rs])[0],
            "loss_bi": _mean_std([r["loss_bi"] for r in rs])[0],
            "loss_multi": _mean_std([r["loss_multi"] for r in rs])[0],
            "interference": i_mean, "interference_std": i_std, "chrf_diff": c_mean, "chrf_diff_std": c_std,
        })
    cells.sort(key=lambda x: (x["focus"], x["focus_size"], x["parameters"], _t_key(x["temperature"])))
    return cells


# ---------------------------------------------------------------- writing
def _csv(rows: list[dict[str, Any]], fields: tuple[str, ...]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _pm(mean: float | None, std: float | None, digits: int, scale: float = 1.0) -> str:
    if mean is None:
        return "–"
    text = f"{round(mean * scale, digits) + 0.0:+.{digits}f}"  # + 0.0: no "-0.00"
    return text + (f" ± {std * scale:.{digits}f}" if std is not None else "")


def _params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def markdown(cells: list[dict[str, Any]], problems: list[dict[str, str]], split: str) -> str:
    lines = [f"Interference I = (L_bi − L_multi)/L_bi on the focus direction's {split} loss "
             "(negative: interference, positive: synergy), in %, mean ± std over seeds; "
             "ΔchrF++ = multilingual − bilingual.", "",
             "| model | params | T | focus | focus pairs | seeds | focus share | L_bi | L_multi | I (%) | ΔchrF++ |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        share = f"{c['focus_share']:.3f}" if c["focus_share"] is not None else "–"
        lines.append(
            f"| {c['model']} | {_params(c['parameters'])} | {c['temperature']} | {c['focus']} | "
            f"{c['focus_size'] or 'all'} | {c['seeds']} | {share} | {c['loss_bi']:.3f} | {c['loss_multi']:.3f} | "
            f"{_pm(c['interference'], c['interference_std'], 2, 100.0)} | "
            f"{_pm(c['chrf_diff'], c['chrf_diff_std'], 2)} |")
    lines += ["", f"Missing or failed runs (not averaged): {len(problems) or 'none'}"]
    if problems:
        lines += ["", "| run | overrides | problem |", "|---|---|---|"]
        lines += [f"| {p['run']} | {p['overrides']} | {p['problem']} |" for p in problems]
    return "\n".join(lines) + "\n"


def _plots(rows: list[dict[str, Any]], cells: list[dict[str, Any]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    panels = sorted({(c["focus"], c["focus_size"]) for c in cells})
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (focus, size) in zip(axes[0], panels, strict=True):
        mine = [c for c in cells if (c["focus"], c["focus_size"]) == (focus, size)]
        for temp in sorted({c["temperature"] for c in mine}, key=_t_key):
            pts = sorted((c for c in mine if c["temperature"] == temp), key=lambda c: c["parameters"])
            ax.errorbar([c["parameters"] for c in pts], [100 * c["interference"] for c in pts],
                        yerr=[100 * (c["interference_std"] or 0) for c in pts], marker="o", capsize=3,
                        label=f"T={temp}")
            for c in pts:
                ax.annotate(c["model"], (c["parameters"], 100 * c["interference"]), fontsize=7,
                            textcoords="offset points", xytext=(4, 4))
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set(xlabel="parameters", ylabel="interference I (%)",
               title=f"{focus}, {size or 'all'} focus pairs")
        ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "interference_vs_size.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    models = sorted({r["model"] for r in rows}, key=lambda m: min(x["parameters"] for x in rows if x["model"] == m))
    markers = dict(zip(models, "osD^v<>", strict=False))
    temps = sorted({r["temperature"] for r in rows}, key=_t_key)
    colors = dict(zip(temps, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for r in rows:
        if r["focus_share"] is not None:
            ax.scatter(r["focus_share"], 100 * r["interference"], marker=markers[r["model"]],
                       color=colors[r["temperature"]], s=30)
    for m, mk in markers.items():
        ax.scatter([], [], marker=mk, color="grey", label=m)
    for t, col in colors.items():
        ax.scatter([], [], marker="s", color=col, label=f"T={t}")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel="focus direction's realised share of training examples", ylabel="interference I (%)",
           title="interference vs the focus direction's data share")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "interference_vs_share.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def analyse(sweep_dir: str | Path, out: str | Path | None = None, split: str = "test") -> dict[str, Any]:
    if split not in ("test", "valid"):
        raise UserError(f"--split {split!r}: use test or valid")
    results, problems = read_sweep(sweep_dir)
    rows, unpaired = pair_runs(results, split)
    problems = problems + unpaired
    if not rows:
        raise UserError(f"{sweep_dir}: no multilingual run has a finished bilingual baseline "
                        f"({len(results)} results, {len(problems)} problems); nothing to compare")
    cells = aggregate(rows)
    out = Path(out) if out else Path(sweep_dir) / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(cells, problems, split)
    atomic_write(out / "runs.csv", _csv(rows, RUN_FIELDS), overwrite=True)
    atomic_write(out / "interference.csv", _csv(cells, CELL_FIELDS), overwrite=True)
    atomic_write(out / "interference.md", table, overwrite=True)
    atomic_write(out / "interference.json", json.dumps({"split": split, "cells": cells, "runs": rows,
                                                        "problems": problems}, indent=1) + "\n", overwrite=True)
    plots = _plots(rows, cells, out)
    print(table)
    print(f"wrote {out}/runs.csv, interference.csv, interference.md, interference.json, "
          + ", ".join(p.name for p in plots), flush=True)
    return {"cells": cells, "runs": rows, "problems": problems}


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m nmt.sweeps.interference", description=__doc__.split("\n")[0])
    ap.add_argument("sweep_dir", help="the multirun directory (searched recursively for runs)")
    ap.add_argument("--out", help="output directory (default: SWEEP_DIR/analysis)")
    ap.add_argument("--split", default="test", help="held-out loss to compare: test (default) or valid")
    args = ap.parse_args(argv)
    return analyse(args.sweep_dir, args.out, args.split)


if __name__ == "__main__":
    main()
