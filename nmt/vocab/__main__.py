"""``python -m nmt.vocab add-language CKPT OUT --lang CODE [--init mean|from:LANG] [--text FILE --new-pieces N]``

Adds a language to a trained model (a .pt/.dcp checkpoint or an export directory) and writes a
new export directory OUT (nothing is changed in place); see nmt.vocab.add_language and README
"Adapt a model to a new language".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nmt.errors import UserError, exit_on_user_error

USAGE = ("python -m nmt.vocab add-language CKPT OUT --lang CODE [--init mean|from:LANG] "
         "[--text FILE --new-pieces N] [--old-text FILE [--keep-old-segmentation]] [--overwrite]")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one "error:" line and exit code 2, like every other entry point
        raise UserError(f"{message}; usage: {USAGE}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m nmt.vocab", description=__doc__.split("\n\n")[1])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    a = sub.add_parser("add-language", help="add a language tag (and new pieces) to a model")
    a.add_argument("ckpt", metavar="CKPT", type=Path, help="a .pt or .dcp checkpoint, or an export directory")
    a.add_argument("out", metavar="OUT", type=Path, help="the new export directory to write")
    a.add_argument("--lang", required=True, help="the language code, xxx_Scrp (optionally _glottocode)")
    a.add_argument("--init", default="mean", help="tag row: mean (of the model's language tags) or from:LANG")
    a.add_argument("--text", type=Path, default=None, help="UTF-8 text of the new language (one segment a line)")
    a.add_argument("--new-pieces", type=int, default=0, help="append up to N pieces learned from --text")
    a.add_argument("--old-text", type=Path, default=None,
                   help="old-language text: report the share of its lines whose segmentation changed")
    a.add_argument("--keep-old-segmentation", action="store_true",
                   help="skip new pieces that occur in --old-text, so its segmentation does not change")
    a.add_argument("--overwrite", action="store_true", help="replace an existing export in OUT")
    return p


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    from nmt.vocab.add_language import AddLanguage, add_language

    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    add_language(AddLanguage(args.ckpt, args.out, args.lang, args.init, args.text, args.new_pieces,
                             args.old_text, args.keep_old_segmentation, args.overwrite))


if __name__ == "__main__":
    main()
