"""Where a training step's time goes, by phase, on the real trainer of a recipe.

    python -m bench.profile_step --corpus data/demo [--recipe demo --steps 5 --warmup 2 --top 15
                                 --override trainer.precision=fp32 ...] [--out FILE]

The trainer (``nmt.training.trainer.Trainer``, built from ``conf/`` with ``+recipe=RECIPE``) runs
its own ``train_step``; timers wrapped around the functions it calls attribute the step's wall
time to phases:

| phase | what is timed |
|---|---|
| loader | ``next(loader)`` without collation (epoch plan, batch indices) |
| collation | ``ParallelData.collate`` (reading token ids, padding, tags) |
| host_to_device | ``Batch.to(device)`` |
| forward | the model call (under the run's autocast) |
| loss | ``label_smoothed_nll`` |
| backward | ``Tensor.backward`` |
| optimizer | gradient clipping, ``optimizer.step``, ``zero_grad`` |
| other_in_step | the rest of ``train_step``: gradient scaling, per-direction sums, aux statistics |
| per_direction_stats | ``Trainer._accumulate`` (per-direction and MoE statistics of the step) |
| logging | ``_log_record`` + ``logger.train``, as if every step were logged |

On CUDA every timer synchronises the device first. One profiled window (torch.profiler) around
the measured steps gives the top ops by self CPU time. Shares and counts stay informative on a
loaded machine; absolute times do not. The last stdout line is one JSON object (also ``--out``).
The wrapped names are the trainer's: if a phase reads 0, the trainer no longer calls it that way.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from bench.op_profile import op_rows, op_table

REPO = Path(__file__).resolve().parents[1]
PHASES = ("loader", "collation", "host_to_device", "forward", "loss", "backward", "optimizer", "other_in_step",
          "per_direction_stats", "logging")


class Timers:
    """Seconds per phase; ``wrap`` times a callable under a phase name."""

    def __init__(self, device: torch.device):
        self.seconds: dict[str, float] = defaultdict(float)
        self.device = device

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds[name] += time.perf_counter() - start

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.phase(name):
                return fn(*args, **kwargs)
        return timed


class _TimedModule:
    """The wrapped model with its call timed; everything else passes through."""

    def __init__(self, module: torch.nn.Module, timers: Timers):
        self._module, self._timers = module, timers

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._timers.phase("forward"):
            return self._module(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


class _TimedLoader:
    """``next()`` timed as ``loader`` (collation, timed inside it, is subtracted later)."""

    def __init__(self, loader: Any, timers: Timers):
        self._loader, self._timers = loader, timers

    def __iter__(self) -> _TimedLoader:
        return self

    def __next__(self) -> Any:
        with self._timers.phase("loader_with_collation"):
            return next(self._loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


def build_trainer(args: argparse.Namespace, run_dir: Path) -> Any:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from nmt.config import register
    from nmt.training.trainer import Trainer

    register()
    overrides = [f"+recipe={args.recipe}", f"data.corpus={args.corpus}", "trainer.progress=false", *args.override]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    return Trainer(OmegaConf.to_object(cfg), run_dir, OmegaConf.to_container(cfg, resolve=True))


def instrument(trainer: Any, timers: Timers) -> None:
    """Wrap the functions ``train_step`` calls with phase timers (this process only)."""
    import nmt.training.trainer as trainer_module
    from nmt.data.parallel import Batch

    trainer.data.train.collate = timers.wrap("collation", trainer.data.train.collate)
    trainer.data.loader = _TimedLoader(trainer.data.loader, timers)
    trainer.wrapped = _TimedModule(trainer.wrapped, timers)
    Batch.to = timers.wrap("host_to_device", Batch.to)  # type: ignore[method-assign]
    trainer_module.label_smoothed_nll = timers.wrap("loss", trainer_module.label_smoothed_nll)
    trainer_module.clip_grad_norm = timers.wrap("optimizer", trainer_module.clip_grad_norm)
    torch.Tensor.backward = timers.wrap("backward", torch.Tensor.backward)  # type: ignore[method-assign]
    trainer.optimizer.step = timers.wrap("optimizer", trainer.optimizer.step)
    trainer.optimizer.zero_grad = timers.wrap("optimizer", trainer.optimizer.zero_grad)


def one_step(trainer: Any, timers: Timers) -> None:
    with timers.phase("train_step"):
        stats = trainer.train_step()
    from nmt.training.step_stats import StepStats

    window = StepStats(len(trainer.directions))
    with timers.phase("per_direction_stats"):
        window.add_update(stats)
        record = window.record(trainer.state.step, 1.0, trainer.directions, trainer.data.record(trainer.state.stage))
    with timers.phase("logging"):
        trainer.logger.train(record)


def phase_table(seconds: dict[str, float], steps: int) -> dict[str, dict[str, float]]:
    """Per phase: seconds per step and share of the step (train_step + stats + logging)."""
    s = dict(seconds)
    s["loader"] = s.pop("loader_with_collation", 0.0) - s.get("collation", 0.0)
    inside = ("loader", "collation", "host_to_device", "forward", "loss", "backward", "optimizer")
    s["other_in_step"] = s.get("train_step", 0.0) - sum(s.get(p, 0.0) for p in inside)
    total = s.get("train_step", 0.0) + s.get("per_direction_stats", 0.0) + s.get("logging", 0.0)
    return {p: {"s_per_step": round(s.get(p, 0.0) / steps, 6),
                "share": round(s.get(p, 0.0) / total, 6) if total else 0.0} for p in PHASES}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True, help="a prepared corpus (data.corpus)")
    ap.add_argument("--recipe", default="demo", help="conf/recipe/<name>.yaml")
    ap.add_argument("--steps", type=int, default=5, help="profiled steps")
    ap.add_argument("--warmup", type=int, default=2, help="unprofiled steps first")
    ap.add_argument("--top", type=int, default=15, help="ops in the table")
    ap.add_argument("--override", nargs="*", default=[], help="Hydra overrides, KEY=VALUE")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="profile_step_") as tmp:
        trainer = build_trainer(args, Path(tmp) / "run")
        timers = Timers(trainer.device)
        instrument(trainer, timers)
        for _ in range(args.warmup):
            one_step(trainer, timers)
        timers.seconds.clear()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                one_step(trainer, timers)
        trainer.logger.close()
    phases = phase_table(timers.seconds, args.steps)
    print(f"{'phase':<22} {'s/step':>9} {'share':>7}")
    for name, row in phases.items():
        print(f"{name:<22} {row['s_per_step']:>9.4f} {100 * row['share']:>6.1f}%")
    print(op_table(prof, f"top ops over {args.steps} steps (self CPU time)", args.top))
    total_us = sum(r[2] for r in op_rows(prof)) or 1.0
    report = {"bench": "profile_step", "recipe": args.recipe, "overrides": args.override, "steps": args.steps,
              "device": str(trainer.device), "precision": trainer.precision, "threads": torch.get_num_threads(),
              "phases": phases, "top_ops": [{"op": n, "calls": c, "share": round(us / total_us, 6)}
                                            for n, c, us in op_rows(prof)[:args.top]]}
    line = json.dumps(report)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(line)


if __name__ == "__main__":
    main()
