"""``python -m nmt.import_hf HF_DIR OUT_DIR [--overwrite]``: a Transformers NLLB-200 / M2M100 model
directory → an nmt export directory (docs/interop.md)."""

from __future__ import annotations

import argparse
import sys

from nmt.errors import UserError, exit_on_user_error

USAGE = "python -m nmt.import_hf HF_DIR OUT_DIR [--overwrite]"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one "error:" line and exit code 2
        raise UserError(f"{message}; usage: {USAGE}")


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    p = _Parser(prog="python -m nmt.import_hf", description=__doc__.split("\n\n")[0])
    p.add_argument("hf_dir", metavar="HF_DIR", help="a Transformers model directory (config.json, weights, tokenizer)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="the nmt export directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in OUT_DIR")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    from nmt.interop.hf_import import import_hf

    import_hf(args.hf_dir, args.out_dir, overwrite=args.overwrite)


if __name__ == "__main__":
    main()
