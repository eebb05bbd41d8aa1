"""``python -m nmt.translate ckpt=PATH src_lang=eng_Latn tgt_lang=fra_Latn < in.txt > out.txt``

Exactly one output line per input line (an empty input line gives an empty output line).
``ckpt`` is a training checkpoint (``<run>/checkpoints/best.pt`` or ``best.dcp/``) or an export
directory written by ``python -m nmt.export`` (see docs/export.md).
Options: ``input=FILE`` instead of stdin, ``output=FILE`` (written atomically) instead of stdout,
``beam``, ``lenpen``, ``batch_size``, ``device``, ``allow_untrained_lang`` (translate from or into a
language the model was not trained on, with a warning, instead of refusing), ``backend``
(``torch``, or ``ct2`` for a CTranslate2 export written by
``python -m nmt.export CKPT OUT --format ct2``); MoE models: ``moe.inference=capacity|dynamic|static``,
``moe.resident_experts=K`` and ``moe.buffer_policy=lru|lifo`` (expert buffering, docs/moe_serving.md).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from nmt.cli import parse_overrides
from nmt.errors import UserError, exit_on_user_error
from nmt.fileio import atomic_write
from nmt.interop.backend import check_backend, load_translator
from nmt.langs import is_lang_code, normalize_lang
from nmt.moe_tools.options import MoEServeConfig


@dataclass
class TranslateArgs:
    ckpt: str = ""
    src_lang: str = ""
    tgt_lang: str = ""
    input: str = ""  # default: stdin
    output: str = ""  # default: stdout
    beam: int = 0  # 0: the checkpoint's eval.beam
    lenpen: float = -1.0  # <0: the checkpoint's eval.lenpen
    batch_size: int = 0  # 0: the checkpoint's eval.batch_size
    length_convention: str = ""  # nmt | hf (Transformers' generate); "": the checkpoint's eval.length_convention
    device: str = "cpu"  # cpu | cuda | auto
    overwrite: bool = False  # replace an existing output=FILE
    allow_untrained_lang: bool = False  # warn instead of refusing a language the model was not trained on
    backend: str = "torch"  # torch | ct2 (ckpt is then a CTranslate2 export directory)
    moe: MoEServeConfig = field(default_factory=MoEServeConfig)  # MoE dispatch and expert buffering

    def validate(self) -> None:
        for key in ("ckpt", "src_lang", "tgt_lang"):
            if not getattr(self, key):
                raise UserError(f"missing {key}=...: usage: python -m nmt.translate ckpt=PATH "
                                f"src_lang=eng_Latn tgt_lang=fra_Latn < input.txt")
        for key in ("src_lang", "tgt_lang"):  # a code added to one model resolves when the model is loaded
            if not is_lang_code(getattr(self, key)):
                normalize_lang(getattr(self, key), where=key)
        if self.beam < 0 or self.batch_size < 0:
            raise UserError("beam and batch_size must be positive (or 0 for the checkpoint's defaults)")
        if self.length_convention not in ("", "nmt", "hf"):
            raise UserError(f"length_convention={self.length_convention!r}: use nmt or hf (docs/interop.md)")
        if self.length_convention and self.backend != "torch":
            raise UserError(f"length_convention={self.length_convention} is an option of backend=torch (nmt's beam "
                            f"search); CTranslate2 keeps its own rule (nmt/interop/ct2_translate.py)")
        if self.device not in ("cpu", "cuda", "auto"):
            raise UserError(f"device={self.device!r}: use cpu, cuda or auto")
        check_backend(self.backend)
        self.moe.validate()
        if self.output:
            out = Path(self.output)
            if out.is_dir():
                raise UserError(f"output={self.output} is a directory; give a file path")
            if not out.parent.is_dir():
                raise UserError(f"output={self.output}: directory {out.parent} does not exist")
            if out.exists() and not self.overwrite:
                raise UserError(f"output={self.output} exists; pass overwrite=true to replace it")


def read_lines(path: str) -> list[str]:
    name = path or "<stdin>"
    raw = sys.stdin.buffer.read() if not path else _read_file(path)
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for i, line in enumerate(lines, 1):
        try:
            out.append(line.rstrip(b"\r").decode("utf-8"))
        except UnicodeDecodeError as e:
            raise UserError(f"{name}:{i}: invalid UTF-8 at byte {e.start}; convert the input to UTF-8") from None
    return out


def _read_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"cannot read input={path}: {e.strerror}") from None


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_overrides(TranslateArgs, sys.argv[1:] if argv is None else argv)
    translator = load_translator(args.backend, args.ckpt, args.device, args.moe)
    pair = (translator.resolve_lang(args.src_lang, "src_lang"), translator.resolve_lang(args.tgt_lang, "tgt_lang"))
    translator.check_languages([pair], allow_untrained=args.allow_untrained_lang)
    lines = read_lines(args.input)
    hyps = translator.translate(
        lines, args.src_lang, args.tgt_lang, beam_size=args.beam or None,
        len_penalty=None if args.lenpen < 0 else args.lenpen, batch_size=args.batch_size or None,
        **({"length_convention": args.length_convention} if args.length_convention else {}))
    text = "".join(h + "\n" for h in hyps)
    if args.moe.resident_experts:
        from nmt.moe_tools.serving import buffer_stats, describe

        stats = buffer_stats(translator.model)
        if stats is not None:
            print(describe(stats), file=sys.stderr, flush=True)
    if args.output:
        atomic_write(args.output, text, overwrite=args.overwrite)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
