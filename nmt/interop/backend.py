"""``backend=torch|ct2`` for ``nmt.translate`` and ``nmt.evaluate``: one loader, one error text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nmt.errors import UserError

BACKENDS = ("torch", "ct2")


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise UserError(f"backend={backend!r}: use torch (nmt checkpoints and exports) or ct2 (a CTranslate2 "
                        f"export from python -m nmt.export CKPT OUT --format ct2)")


def _is_ct2_dir(path: Path) -> bool:
    from nmt.interop.ct2 import CONFIG, CT2_FORMAT

    try:
        import json

        return json.loads((path / CONFIG).read_text(encoding="utf-8")).get("format") == CT2_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def load_translator(backend: str, ckpt: str, device: str, moe: Any = None) -> Any:
    """A ``Translator`` (torch) or ``Ct2Translator`` (ct2); both offer ``translate(lines, ...)``.
    ``moe``: the ``moe.*`` options (nmt/moe_tools/options.py), torch only."""
    check_backend(backend)
    path = Path(ckpt)
    if moe is not None and moe.active and backend != "torch":
        raise UserError(f"moe.* options (dispatch, expert buffering) need backend=torch, not backend={backend}")
    if backend == "torch":
        if path.is_dir() and _is_ct2_dir(path):
            raise UserError(f"ckpt={ckpt} is a CTranslate2 export; translate it with backend=ct2")
        from nmt.inference import Translator

        if moe is not None and moe.active:
            return Translator.from_checkpoint(ckpt, device=device, moe=moe)
        return Translator.from_checkpoint(ckpt, device=device)
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is a file (a .pt checkpoint?)"
        raise UserError(f"backend=ct2 takes a CTranslate2 export directory, but ckpt={ckpt} {what}; write one "
                        f"with python -m nmt.export CKPT OUT --format ct2, or use backend=torch")
    from nmt.interop.ct2_translate import Ct2Translator

    return Ct2Translator.from_dir(path, device=device)
