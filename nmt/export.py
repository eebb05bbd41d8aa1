"""``python -m nmt.export CKPT OUT_DIR [--format nmt|hf|ct2] [--overwrite]``: a checkpoint → an export.

``--format hf`` writes a Transformers M2M100 directory instead (nmt/interop/hf_export.py,
docs/interop.md), ``--format ct2 [--quantization Q]`` a CTranslate2 one (nmt/interop/ct2.py,
docs/export.md); what follows describes the default ``--format nmt``.

CKPT is a single-file checkpoint (``<run>/checkpoints/best.pt``) or a sharded one
(``<run>/checkpoints/best.dcp/``, written at any world size). OUT_DIR receives:

- ``model.safetensors``: the full model (every tensor contiguous, MoE experts as whole
  ``[E, ...]`` tensors; no optimizer state, no training state);
- ``config.json``: the model config that rebuilds the architecture, the run's decoding
  defaults, the directions and languages it trained, the tokenizer's sha256, the weights'
  bytes and sha256, the source checkpoint (path, kind, step) and the nmt/export versions;
- ``spm.model``: the run's SentencePiece model (checked against the checkpoint's sha256).

The directory appears complete or not at all (written beside it, then renamed); an existing
OUT_DIR is replaced only with ``--overwrite`` and only when it is an earlier export (or empty).
``nmt.evaluate ckpt=OUT_DIR`` and ``nmt.translate ckpt=OUT_DIR`` load it. See docs/export.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nmt import __version__
from nmt.config import saved_model_config
from nmt.errors import UserError, exit_on_user_error
from nmt.fileio import atomic_dir, sha256_file

if TYPE_CHECKING:
    from nmt.inference import InferenceCheckpoint

USAGE = "python -m nmt.export CKPT OUT_DIR [--format nmt|hf|ct2] [--quantization Q] [--overwrite]"
# --format value -> "module:function" with the signature fn(ckpt, out_dir, overwrite=False) -> dict
FORMATS = {"nmt": "nmt.export:export", "hf": "nmt.interop.hf_export:export_hf", "ct2": "nmt.interop.ct2:export_ct2"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one "error:" line and exit code 2, like every other entry point
        raise UserError(f"{message}; usage: {USAGE}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m nmt.export", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt", metavar="CKPT", help="a .pt checkpoint or a .dcp checkpoint directory")
    p.add_argument("out_dir", metavar="OUT_DIR", help="the export directory to write")
    p.add_argument("--format", choices=sorted(FORMATS), default="nmt",
                   help="nmt: nmt's own export (default); hf: Transformers M2M100 + NLLB tokenizer; ct2: CTranslate2")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export in OUT_DIR")
    p.add_argument("--quantization", default=None,
                   help="--format ct2 only (nmt/interop/ct2.py): none, int8, int8_float32 or float16")
    return p


def check_out_dir(out: Path, src: Path, overwrite: bool, is_earlier=None) -> None:
    """Refuse an OUT_DIR that holds anything but an earlier export (or anything without --overwrite);
    ``is_earlier(out)`` says whether OUT_DIR is an earlier export of the format (default: nmt's)."""
    from nmt.inference import CONFIG, EXPORT_FORMAT

    src_abs, out_abs = src.resolve(), out.resolve()
    if out_abs == src_abs or out_abs in src_abs.parents:
        raise UserError(f"OUT_DIR {out} holds the checkpoint {src} itself; choose another output directory")
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"OUT_DIR {out} is a file; give a directory path (it is created)")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise UserError(f"OUT_DIR {out} already exists; pass --overwrite to replace it, or choose another directory")
    if is_earlier is not None:
        is_export = is_earlier(out)
    else:
        try:
            is_export = json.loads((out / CONFIG).read_text(encoding="utf-8")).get("format") == EXPORT_FORMAT
        except (OSError, ValueError, AttributeError):
            is_export = False
    if not is_export:
        what = "export of this format" if is_earlier else f"nmt export (no {CONFIG} of format {EXPORT_FORMAT})"
        raise UserError(f"OUT_DIR {out} is not an earlier {what}; --overwrite replaces only an export: choose "
                        f"another (or an empty) directory")


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def export(ckpt: str | Path, out_dir: str | Path, overwrite: bool = False) -> dict:
    """Write the export of ``ckpt`` to ``out_dir``; returns its config.json object."""
    from nmt.inference import CONFIG, SPM, WEIGHTS, checkpoint_kind, load_inference_checkpoint

    src, out = Path(ckpt), Path(out_dir)
    check_out_dir(out, src, overwrite)  # before the (possibly long) load
    kind, _ = checkpoint_kind(src)
    print(f"loading {src} ({kind})", flush=True)
    ck = load_inference_checkpoint(src)
    model = ck.build_model()  # proves the weights fit their config; adds buffers a .dcp does not hold
    state = tensors_for_safetensors(model.state_dict())
    del model
    config = export_config(ck, state, src)
    write_export_dir(out, state, config, ck.tokenizer.path, what=f"checkpoint {src}")
    total = sum((out / f).stat().st_size for f in (WEIGHTS, SPM, CONFIG))
    n_params = config["weights"]["parameters"]
    print(f"exported {src} ({ck.kind}, step {config['source'].get('step')}): {n_params:,} parameters in "
          f"{len(state)} tensors, {_human(config['weights']['bytes'])} of weights, {_human(total)} in all", flush=True)
    print(f"wrote {out}/ ({WEIGHTS}, {CONFIG}, {SPM}); use it with: python -m nmt.translate ckpt={out} "
          f"src_lang=... tgt_lang=...", flush=True)
    return config


def tensors_for_safetensors(named: dict) -> dict:
    """CPU, contiguous tensors; a tied copy gets its own storage (safetensors refuses shared memory)."""
    state = {}
    seen: set[tuple[int, int]] = set()
    for name, t in named.items():
        t = t.detach().to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key in seen:
            t = t.clone()
        seen.add(key)
        state[name] = t
    return state


def export_config(ck: InferenceCheckpoint, state: dict, src: Path) -> dict:
    """The ``config.json`` object of an export of ``ck`` holding ``state`` (weights' bytes/sha256 come later)."""
    import torch

    from nmt.inference import EXPORT_FORMAT, EXPORT_VERSION, SPM, WEIGHTS

    directions = list(ck.info.get("directions") or [])
    config: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "nmt_version": __version__,
        "torch_version": torch.__version__,
        "model": saved_model_config(ck.model_config),  # an old checkpoint's export records position_offset=0
        "vocab_size": ck.tokenizer.vocab_size,
        "eval": ck.eval_config,
        "directions": directions,
        "languages": ck.languages or [],  # the model's language set (the trainer's record, else its directions)
        "tokenizer": {"file": SPM, "sha256": ck.info["tokenizer_sha256"]},
        "weights": {"file": WEIGHTS, "tensors": len(state), "parameters": sum(t.numel() for t in state.values()),
                    "dtypes": sorted({str(t.dtype).removeprefix("torch.") for t in state.values()})},
        "source": {"checkpoint": str(src.resolve()), "kind": ck.kind, "step": ck.info.get("step"),
                   "best_step": ck.info.get("best_step"), "world_size": ck.info.get("world_size")},
    }
    added = ck.tokenizer.added_languages()
    if added:  # languages in spare tag slots (nmt.vocab add-language): code -> tag id
        config["added_languages"] = added
    if ck.kind == "export":  # re-export: keep the original provenance
        config["source"] = {**(ck.info.get("source") or {}), "exported_from": str(src.resolve())}
    return config


def write_export_dir(out: Path, state: dict, config: dict, spm: Path | bytes, what: str) -> None:
    """Write ``model.safetensors``, ``spm.model`` (a copy of the file ``spm``, or the bytes ``spm``) and
    ``config.json`` (its weights' bytes and sha256 filled in here) into ``out`` as one atomic directory;
    the caller checked ``out`` (:func:`check_out_dir`)."""
    from safetensors.torch import save_file

    from nmt.inference import CONFIG, EXPORT_FORMAT, EXPORT_VERSION, SPM, WEIGHTS

    try:
        with atomic_dir(out, overwrite=True) as tmp:  # check_out_dir decided what may be replaced
            save_file(state, str(tmp / WEIGHTS), metadata={"format": EXPORT_FORMAT,
                                                           "format_version": str(EXPORT_VERSION)})
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp / WEIGHTS, 0o666 & ~umask)  # safetensors creates it 0600; the others follow the umask
            config["weights"]["bytes"] = (tmp / WEIGHTS).stat().st_size
            config["weights"]["sha256"] = sha256_file(tmp / WEIGHTS)
            if isinstance(spm, bytes):
                (tmp / SPM).write_bytes(spm)
            else:
                shutil.copyfile(spm, tmp / SPM)
            if sha256_file(tmp / SPM) != config["tokenizer"]["sha256"]:
                name = spm if isinstance(spm, Path) else SPM
                raise UserError(f"{name} changed while it was being copied (sha256 differs from "
                                f"the checkpoint's); restore the run's spm.model and export again")
            (tmp / CONFIG).write_text(json.dumps(config, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            for f in (WEIGHTS, SPM, CONFIG):
                with open(tmp / f, "rb") as fh:
                    os.fsync(fh.fileno())
    except OSError as e:
        raise UserError(f"cannot write the export {out}: {e.strerror or e}; free disk space or choose another "
                        f"OUT_DIR (nothing was written there)") from None
    except TypeError as e:  # a config value JSON cannot hold
        raise UserError(f"{what} holds a config that cannot be written as JSON ({e})") from None


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    import importlib

    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    module, fn = FORMATS[args.format].split(":")
    options = {"quantization": args.quantization} if args.format == "ct2" else {}
    if args.quantization is not None and not options:
        raise UserError(f"--quantization applies to --format ct2 only; usage: {USAGE}")
    getattr(importlib.import_module(module), fn)(args.ckpt, args.out_dir, overwrite=args.overwrite, **options)


if __name__ == "__main__":
    main()
