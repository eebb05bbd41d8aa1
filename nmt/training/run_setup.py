"""Checks done once before training: corpus, directions, run directory."""

from __future__ import annotations

import json
from pathlib import Path

from nmt.errors import UserError
from nmt.fileio import atomic_write
from nmt.langs import parse_direction


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


def prepare_run_dir(run_dir: Path, spm_path: Path, spm_sha256: str, resume: bool) -> None:
    """Create the run directory; refuse to start over an existing run unless resuming."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} is a file; choose another with hydra.run.dir=...")
    last = run_dir / "checkpoints" / "last.pt"
    if last.exists() and not resume:
        raise UserError(f"{run_dir} already holds a run ({last}); continue it with trainer.resume=true or "
                        f"start a new one elsewhere with hydra.run.dir=... (nothing was overwritten)")
    run_dir.mkdir(parents=True, exist_ok=True)
    local = run_dir / "spm.model"
    if local.exists():
        from nmt.data.tokenizer import Tokenizer

        if Tokenizer(local).sha256 != spm_sha256:
            raise UserError(f"{local} differs from the corpus vocabulary {spm_path}: this run was started with "
                            f"another corpus; use another hydra.run.dir")
    else:
        atomic_write(local, spm_path.read_bytes())
