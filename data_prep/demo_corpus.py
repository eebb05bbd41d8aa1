"""Build a real multi-way parallel demo corpus offline from software translation catalogs.

    python -m data_prep.demo_corpus --out CORPUS [--source libreoffice|django|auto]
        [--langs deu_Latn fra_Latn ...] [--cache DIR] [--max-train-per-lang N] [--overwrite]

The text is human translation of user-interface messages (English msgid -> translated
msgstr): LibreOffice's UI catalogs from Debian's ``libreoffice-l10n-<locale>`` packages
(``apt-get download`` into the cache, then ``dpkg-deb -x``), or, with no apt, the catalogs that
ship inside the installed ``django`` package. ``--source auto`` tries LibreOffice first.

Choices (see also data_prep.clean):
* strings: accelerator markers and HTML tags removed, whitespace collapsed; a message is
  dropped when its translation is empty, identical to the English, or has other placeholders
  than the English; English strings without words (``%1``, ``<=``) are dropped; plural
  messages contribute their singular form. Placeholders are kept verbatim.
* one translation per English string and language: the most frequent across catalogs and
  contexts, ties broken by the smallest string (deterministic).
* splits by a hash of the normalised English key (data_prep.clean.split_key), so a string,
  all its translations and its near-variants always share a split. valid and test take
  ``--eval-size`` strings each (at most a quarter of the multi-way pool) among those
  translated into every chosen language; strings of an eval key that are not multi-way are
  held out of train too. Everything else is train, per language, so train sizes differ.
* manifest.json's ``cleaning`` counts the length/ratio checks per split and pair; the catalog
  level drops (identical, placeholders, no words, empty) are in the printed table.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from tqdm import tqdm

from data_prep import clean
from data_prep.demo_catalogs import (
    Catalogs,
    django_catalogs,
    extract,
    libreoffice_catalogs,
)
from data_prep.import_corpus import ArgParser
from data_prep.manifest import (
    LineWriter,
    add_input,
    add_pair,
    atomic_dir,
    check_writable,
    new_manifest,
    pair_name,
    write_manifest,
)
from nmt.errors import UserError, exit_on_user_error
from nmt.langs import ENGLISH, normalize_lang

# English and seven languages in seven other scripts, with a natural imbalance in LibreOffice 7.4
# (unique English strings kept: ~17.5k ru/zh/el, ~15k ja, ~13k ar, ~10k he, ~7k hi). Latin-script
# targets work as well (e.g. --langs deu_Latn fra_Latn spa_Latn ...) but UI strings share so many
# tokens with English there that copying the source already scores 17-25 chrF++.
DEFAULT_LANGS = ("rus_Cyrl", "zho_Hans", "jpn_Jpan", "ell_Grek", "heb_Hebr", "arb_Arab", "hin_Deva")
EVAL_SIZE = 500
def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def assign_splits(have: dict[str, set[str]], langs: list[str],
                  eval_size: int) -> tuple[dict[str, str], set[str], int]:
    """Split English strings: (split of each string, held-out strings, eval size used).

    ``have`` maps each English string to the languages it is translated into.
    """
    groups: dict[str, list[str]] = defaultdict(list)
    for en in have:
        groups[clean.split_key(en)].append(en)
    full = set(langs)
    multi = {key: sum(have[e] >= full for e in ens) for key, ens in groups.items()}
    size = min(eval_size, sum(multi.values()) // 4)
    split_of = dict.fromkeys(have, "train")
    held: set[str] = set()
    filled = {"valid": 0, "test": 0}
    targets = iter(("valid", "test"))
    target = next(targets)
    for key in sorted((k for k, n in multi.items() if n), key=_hash):
        if filled[target] + multi[key] > size:
            continue
        for en in groups[key]:
            if have[en] >= full:
                split_of[en] = target
            else:
                held.add(en)
                del split_of[en]
        filled[target] += multi[key]
        if filled[target] == size:
            target = next(targets, "")
            if not target:
                break
    return split_of, held, size


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = ArgParser(prog="python -m data_prep.demo_corpus",
                                 description="Build a multi-way demo corpus from UI translations.")
    ap.add_argument("--out", required=True, type=Path, help="corpus directory to create")
    ap.add_argument("--source", choices=["libreoffice", "django", "auto"], default="libreoffice")
    ap.add_argument("--langs", nargs="+", default=list(DEFAULT_LANGS),
                    help="non-English languages (Flores-200 codes or aliases)")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get(
        "NMT_CACHE", Path.home() / ".cache" / "nmt")), help="download cache ($NMT_CACHE)")
    ap.add_argument("--eval-size", type=int, default=EVAL_SIZE, help="segments in valid and in test")
    ap.add_argument("--max-train-per-lang", type=int, default=0, help="cap train pairs (0: no cap)")
    ap.add_argument("--max-len", type=int, default=clean.DEFAULT_MAX_LEN,
                    help="drop strings longer than this many words (0: no limit)")
    ap.add_argument("--max-ratio", type=float, default=clean.DEFAULT_MAX_RATIO,
                    help="drop pairs whose length ratio exceeds this (0: no limit)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = ap.parse_args(argv)
    if args.eval_size < 1 or args.max_train_per_lang < 0:
        raise UserError("--eval-size must be at least 1 and --max-train-per-lang at least 0")
    return args


def resolve_langs(codes: list[str]) -> list[str]:
    langs = []
    for code in codes:
        flores = normalize_lang(code, where="--langs")
        if flores != code:
            print(f"note: --langs {code!r} read as {flores}")
        if flores == ENGLISH:
            print("note: eng_Latn is always included (it is the pivot)")
        elif flores not in langs:
            langs.append(flores)
    if not langs:
        raise UserError("--langs needs at least one language other than English")
    return langs


def get_catalogs(args: argparse.Namespace, langs: list[str]) -> Catalogs:
    if args.source == "django":
        return django_catalogs(langs)
    if args.source == "libreoffice":
        return libreoffice_catalogs(langs, args.cache)
    try:
        cats = libreoffice_catalogs(langs, args.cache)
    except UserError as e:
        print(f"LibreOffice catalogs unavailable ({e}); using Django's")
        return django_catalogs(langs)
    return cats


def write_corpus(root: Path, langs: list[str], trans: dict[str, dict[str, str]],
                 split_of: dict[str, str], drops: dict[str, list[tuple[str, str]]],
                 cap: int, cats: Catalogs) -> tuple[dict, dict[str, Counter]]:
    """Write bitext, Flores-layout eval sets and the manifest; returns (manifest, counts)."""
    manifest = new_manifest()
    counts: dict[str, Counter] = {c: Counter() for c in langs}
    # a dropped string is counted in the split its key went to (keys not in valid/test: train)
    key_split = {clean.split_key(e): s for e, s in split_of.items() if s != "train"}
    for split, fsplit in (("train", None), ("valid", "dev"), ("test", "devtest")):
        ens = sorted((e for e, s in split_of.items() if s == split), key=_hash)
        if fsplit:
            fdir = root / "flores" / fsplit
            fdir.mkdir(parents=True)
            for code in [ENGLISH, *langs]:
                w = LineWriter(fdir / f"{code}.{fsplit}")
                for en in ens:
                    w.write(en if code == ENGLISH else trans[code][en])
                w.close()
            manifest["flores"][fsplit] = sorted([ENGLISH, *langs])
        out = root / "bitext" / split
        out.mkdir(parents=True)
        for code in tqdm(langs, desc=f"write {split}", unit="lang", disable=None):
            rows = [en for en in ens if en in trans[code]]
            if split == "train" and cap and len(rows) > cap:
                counts[code]["over_cap"] = len(rows) - cap
                rows = rows[:cap]
            name = pair_name(ENGLISH, code)
            we, wx = LineWriter(out / f"{name}.{ENGLISH}"), LineWriter(out / f"{name}.{code}")
            for en in rows:
                we.write(en)
                wx.write(trans[code][en])
            cleaning = clean.empty_counts()
            cleaning["kept"] = len(rows)
            for en, reason in drops[code]:
                if key_split.get(clean.split_key(en), "train") == split:
                    cleaning["dropped"][reason] += 1
            add_pair(manifest, split, name, len(rows), {ENGLISH: we.close(), code: wx.close()}, cleaning)
            counts[code][split] = len(rows)
    for path in cats.inputs:
        add_input(manifest, path)
    return manifest, counts


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    t0 = time.time()
    check_writable(args.out, args.overwrite, is_dir=True)
    langs = resolve_langs(args.langs)
    cats = get_catalogs(args, langs)
    print(f"source: {cats.source}; languages: {', '.join(f'{c} ({cats.locales[c]})' for c in langs)}")
    trans: dict[str, dict[str, str]] = {}
    why: dict[str, Counter] = {}
    drops: dict[str, list[tuple[str, str]]] = {}
    english: dict[str, tuple[str, bool, list[str]]] = {}
    for code in tqdm(langs, desc="read catalogs", unit="lang", disable=None):
        pick, why[code] = extract(cats.files[code], cats.accelerators, english)
        drops[code] = []
        for en, tr in list(pick.items()):
            reason = clean.drop_reason(en, tr, ENGLISH, code, max_len=args.max_len or None,
                                       max_ratio=args.max_ratio or None)
            if reason:
                drops[code].append((en, reason))
                why[code][reason] += 1
                del pick[en]
        trans[code] = pick
    have: dict[str, set[str]] = defaultdict(set)
    for code, pick in trans.items():
        for en in pick:
            have[en].add(code)
    split_of, held, size = assign_splits(have, langs, args.eval_size)
    if size < args.eval_size:
        print(f"note: only {sum(len(h) == len(langs) for h in have.values())} strings are translated "
              f"into all {len(langs)} languages: valid and test get {size} each")
    if size == 0:
        raise UserError("no string is translated into all of --langs; choose fewer languages")
    with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
        manifest, counts = write_corpus(tmp, langs, trans, split_of, drops, args.max_train_per_lang, cats)
        write_manifest(tmp, manifest)
    print_report(langs, cats, why, counts, held, trans)
    print(f"wrote {args.out} in {time.time() - t0:.1f} s (manifest: {args.out / 'manifest.json'})")


def print_report(langs: list[str], cats: Catalogs, why: dict[str, Counter],
                 counts: dict[str, Counter], held: set[str], trans: dict[str, dict[str, str]]) -> None:
    """Per-language table: catalog messages, what was dropped, and the split sizes."""
    cols = ["lang", "locale", "messages", "identical", "placeholders", "empty", "too_long", "ratio",
            "unique", "train", "valid", "test", "held_out"]
    rows = [cols]
    for c in langs:
        w, n = why[c], counts[c]
        rows.append([c, cats.locales[c], *(str(w[k]) for k in cols[2:8]), str(len(trans[c])),
                     *(str(n[k]) for k in ("train", "valid", "test")),
                     str(sum(e in held for e in trans[c]))])
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    for r in rows:
        print("  ".join(v.ljust(wd) if i < 2 else v.rjust(wd) for i, (v, wd) in enumerate(zip(r, widths, strict=True))))
    capped = {c: counts[c]["over_cap"] for c in langs if counts[c]["over_cap"]}
    if capped:
        print(f"train capped by --max-train-per-lang: {capped}")


if __name__ == "__main__":
    main(sys.argv[1:])
