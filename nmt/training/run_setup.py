"""Checks done once before training: corpus, directions, run directory."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from nmt.errors import UserError
from nmt.fileio import atomic_write
from nmt.langs import parse_direction

log = logging.getLogger(__name__)


def resolve_corpus(corpus: str) -> Path:
    path = Path(corpus).expanduser().resolve()
    missing = [p for p in (path / "manifest.json", path / "spm.model", path / "bin" / "meta.json") if not p.exists()]
    if missing:
        raise UserError(
            f"config key data.corpus={corpus!r}: {missing[0]} is missing; prepare the corpus first with "
            f"python -m data_prep.import_corpus (or data_prep.demo_corpus), data_prep.train_spm and data_prep.binarize")
    return path


def _pairs(corpus: Path, split: str) -> set[tuple[str, str]]:
    manifest = json.loads((corpus / "manifest.json").read_text(encoding="utf-8"))
    pairs = set()
    for name in manifest.get("pairs", {}).get(split, {}):
        a, b = name.split("-")
        pairs.add((a, b))
        pairs.add((b, a))
    return pairs


def resolve_directions(corpus: Path, requested: list[str], valid_requested: list[str]) -> tuple[list[str], list[str]]:
    """Training directions (``[all]`` = both ways of every train pair) and validation directions
    (``[train]`` = the training directions that have a valid split)."""
    train = _pairs(corpus, "train")
    if not train:
        raise UserError(f"{corpus}/manifest.json lists no train pairs; import training data first")
    if list(requested) == ["all"]:
        directions = sorted(f"{a}-{b}" for a, b in train)
    else:
        directions = []
        for d in requested:
            src, tgt = parse_direction(d, where="data.directions")
            if (src, tgt) not in train:
                raise UserError(f"config key data.directions: {src}-{tgt} has no training data in {corpus} "
                                f"(available: {', '.join(sorted(f'{a}-{b}' for a, b in train))})")
            directions.append(f"{src}-{tgt}")
    valid = _pairs(corpus, "valid")
    if list(valid_requested) == ["train"]:
        valid_dirs = [d for d in directions if tuple(d.split("-")) in valid]
    elif list(valid_requested) == ["none"]:
        valid_dirs = []
    else:
        valid_dirs = []
        for d in valid_requested:
            src, tgt = parse_direction(d, where="data.valid_directions")
            if (src, tgt) not in valid:
                raise UserError(f"config key data.valid_directions: {src}-{tgt} has no valid split in {corpus}")
            valid_dirs.append(f"{src}-{tgt}")
    return directions, valid_dirs


RUNTIME_KEYS = {("trainer", "resume"), ("trainer", "progress"), ("trainer", "threads"),
                ("trainer", "reuse_memory")}  # may differ on restart


def has_checkpoint(run_dir: Path) -> bool:
    ckpts = run_dir / "checkpoints"
    return ckpts.is_dir() and any(p.suffix in (".pt", ".dcp") and not p.name.endswith(".tmp") for p in ckpts.iterdir())


def _first_difference(old: Any, new: Any, key: str = "") -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            if tuple(f"{key}.{k}".strip(".").split(".")) in RUNTIME_KEYS:
                continue
            diff = _first_difference(old.get(k), new.get(k), f"{key}.{k}".strip("."))
            if diff:
                return diff
        return None
    return None if old == new else f"{key}: {old!r} in the run, {new!r} now"


def _check_saved_positions(run_dir: Path, config: dict[str, Any]) -> None:
    """A run started before model.position_offset existed trained with offset 0 (saved_model_config):
    continuing it with another offset would silently shift every position."""
    import yaml

    from nmt.config import saved_model_config

    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        return
    was = saved_model_config(saved["model"])["position_offset"]
    now = (config.get("model") or {}).get("position_offset")
    if "position_offset" not in saved["model"] and now != was:
        raise UserError(f"{run_dir} was started before model.position_offset existed (positions from table row "
                        f"{was}); continue it with model.position_offset={was} (nothing was overwritten)")


def prepare_run_dir(run_dir: Path, spm_path: Path, spm_sha256: str, config: dict[str, Any],
                    resume: str | bool = "auto") -> bool:
    """Create the run directory and decide whether to resume the run already in it.

    ``resume``: ``auto`` (default) continues a run whose saved ``config.yaml`` equals this config
    (a restarted or requeued job) and refuses one with another config; ``true`` continues whatever
    is there (e.g. with a larger trainer.max_steps); ``false`` refuses to touch an existing run.
    """
    mode = str(resume).lower()
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} is a file; choose another with hydra.run.dir=...")
    existing = has_checkpoint(run_dir)
    if existing and mode == "false":
        raise UserError(f"{run_dir} already holds a run ({run_dir / 'checkpoints'}); continue it with "
                        f"trainer.resume=true or start a new one elsewhere with hydra.run.dir=... "
                        f"(nothing was overwritten)")
    if existing:
        _check_saved_positions(run_dir, config)
    if existing and mode == "auto":
        import yaml

        saved_path = run_dir / "config.yaml"
        try:
            saved = yaml.safe_load(saved_path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            saved = None
        if isinstance(saved, dict) and isinstance(saved.get("model"), dict):
            from nmt.config import saved_model_config

            saved["model"] = saved_model_config(saved["model"])  # keys added since: their old meaning
        if isinstance(saved, dict) and isinstance(saved.get("eval"), dict):
            saved["eval"].setdefault("length_convention", "nmt")  # added since: the old behaviour
        diff = _first_difference(saved, config) if isinstance(saved, dict) else f"{saved_path} is missing or unreadable"
        if diff:
            raise UserError(f"{run_dir} already holds a run with another config ({diff}); continue it anyway "
                            f"with trainer.resume=true, or start a new run with hydra.run.dir=... "
                            f"(nothing was overwritten)")
        log.info(f"{run_dir} holds this run: resuming it (trainer.resume=auto)")
    run_dir.mkdir(parents=True, exist_ok=True)
    local = run_dir / "spm.model"
    if local.exists():
        from nmt.data.tokenizer import Tokenizer

        if Tokenizer(local).sha256 != spm_sha256:
            raise UserError(f"{local} differs from the corpus vocabulary {spm_path}: this run was started with "
                            f"another corpus; use another hydra.run.dir")
    else:
        atomic_write(local, spm_path.read_bytes())
    return mode == "true" or existing
