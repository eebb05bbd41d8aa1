"""One run of an interference sweep: configure it, and write its ``result.json`` at the end.

``interference.arm=bi`` trains the focus direction alone; ``multi`` trains every direction of
``data.directions`` with the same focus data. Both pick ``best.pt`` by the focus direction's
validation loss (matched stopping), and both end with the same measurements on ``best.pt``:
validation and test loss per direction, and chrF++/BLEU of the focus direction on the corpus's
Flores-layout test set. ``nmt/sweeps/interference.py`` reads the results of a whole sweep.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from nmt.config import Config
from nmt.data.parallel import ParallelData
from nmt.errors import UserError
from nmt.fileio import atomic_write
from nmt.langs import parse_direction
from nmt.models.transformer import count_parameters
from nmt.training.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

RESULT = "result.json"
FORMAT = 1


def prepare_cell(cfg: Config, resolved: dict[str, Any]) -> None:
    """Turn ``interference.*`` into data/trainer settings (in ``cfg`` and the saved config)."""
    i = cfg.interference
    focus = "-".join(parse_direction(i.focus, where="interference.focus"))
    changes: dict[str, dict[str, Any]] = {"trainer": {"best_by": [focus]}, "data": {}}
    if i.arm == "bi":
        changes["data"].update(directions=[focus], valid_directions=[focus])
    elif list(cfg.data.valid_directions) == ["none"]:
        raise UserError("interference runs pick best.pt by the focus direction's validation loss: "
                        "data.valid_directions must include it (the default [train] does)")
    if i.focus_size > 0:
        changes["data"]["subsample"] = {**cfg.data.subsample, focus: i.focus_size}
    for section, values in changes.items():
        for key, value in values.items():
            setattr(getattr(cfg, section), key, value)
            resolved[section][key] = value
    resolved["interference"]["focus"] = i.focus = focus


def _temperature(cfg: Config) -> float | str | None:
    if cfg.interference.arm == "bi":
        return None  # one direction: sampling has nothing to weigh
    s = cfg.sampling
    if s.method == "uniform" or (s.method == "temperature" and math.isinf(s.temperature)):
        return "inf"
    return s.temperature if s.method == "temperature" else s.method


def cell_of(cfg: Config) -> dict[str, Any]:
    """The grid coordinates of a run."""
    i = cfg.interference
    return {"model": cfg.model.preset, "arm": i.arm, "temperature": _temperature(cfg), "focus": i.focus,
            "focus_size": i.focus_size, "seed": cfg.trainer.seed}


def finish_cell(trainer: Any, summary: dict[str, Any]) -> dict[str, Any]:
    """Measure ``best.pt`` and write ``<run_dir>/result.json``; returns the record."""
    cfg: Config = trainer.cfg
    run_dir: Path = trainer.run_dir
    focus = cfg.interference.focus
    best = run_dir / "checkpoints" / "best.pt"
    trainer.model.load_state_dict(load_checkpoint(best)["model"])
    valid = trainer.validator.validate(trainer.state.step)
    max_pos = cfg.model.max_positions
    test_dirs = [d for d in trainer.valid_directions if _has_split(trainer.corpus, "test", d)]
    test: dict[str, Any] = {}
    if test_dirs:
        data = ParallelData.open(trainer.corpus, "test", test_dirs, max_source_positions=max_pos,
                                 max_target_positions=max_pos)
        test = trainer.validator.split_loss(data, test_dirs, "test", trainer.state.step)
    scores = _focus_scores(cfg, trainer.corpus, best, run_dir)
    realised = trainer.data.loader.realised()
    record = {
        "format": FORMAT,
        "status": "ok",
        "cell": cell_of(cfg),
        "parameters": count_parameters(trainer.model),
        "steps": summary["step"],
        "best_step": summary.get("best_step"),
        "valid_loss": {d: valid[f"valid/loss/{d}"] for d in trainer.valid_directions if f"valid/loss/{d}" in valid},
        "test_loss": {d: test[f"test/loss/{d}"] for d in test_dirs if f"test/loss/{d}" in test},
        "focus_scores": scores,
        "sampling": {"target": dict(trainer.data.probs), "realised": realised},
        "focus_share": realised.get(focus, 0.0),
        "directions": list(trainer.directions),
        "config": trainer.resolved_config,
    }
    atomic_write(run_dir / RESULT, json.dumps(record, indent=1) + "\n", overwrite=True)
    log.info(f"interference cell {record['cell']}: focus test loss {record['test_loss'].get(focus)}, "
             f"chrF++ {scores.get('chrf++')}; wrote {run_dir / RESULT}")
    return record


def _has_split(corpus: Path, split: str, direction: str) -> bool:
    s, t = direction.split("-")
    return any(any((corpus / "bin" / split).glob(f"{a}-{b}.*")) for a, b in ((s, t), (t, s)))


def _focus_scores(cfg: Config, corpus: Path, best: Path, run_dir: Path) -> dict[str, Any]:
    """chrF++ and BLEU of the focus direction on ``<corpus>/flores/devtest`` (beam search)."""
    from nmt.evaluate import BaselinesConfig, EvalConfig, FloresConfig, evaluate

    flores_dir = corpus / "flores"
    src, tgt = cfg.interference.focus.split("-")
    if not all((flores_dir / "devtest" / f"{c}.devtest").is_file() for c in (src, tgt)):
        return {"note": f"no Flores-layout devtest for {src} and {tgt} under {flores_dir}: not scored"}
    e = cfg.eval
    ecfg = EvalConfig(ckpt=str(best), flores=FloresConfig(dir=str(flores_dir)), split="devtest",
                      directions=[cfg.interference.focus], out_dir=str(run_dir / "eval" / "devtest"),
                      beam=e.beam, lenpen=e.lenpen, batch_size=e.batch_size, max_len_a=e.max_len_a,
                      max_len_b=e.max_len_b, device="cpu" if cfg.trainer.device == "cpu" else "auto",
                      max_lines=cfg.interference.test_max_sentences or None, overwrite=True,
                      baselines=BaselinesConfig())
    scores = evaluate(ecfg)["directions"][cfg.interference.focus]
    return {"chrf++": scores["chrf++"], "bleu": scores["bleu"], "lines": scores.get("n")}
