"""Train the corpus's SentencePiece model on a temperature-sampled sample of its training text.

    python -m data_prep.train_spm --corpus CORPUS [--vocab-size 8000] [--temperature 5]
        [--sample-sentences 1000000] [--character-coverage 0.9995] [--seed 1] [--overwrite]

Text is gathered per language over every training pair and de-duplicated (English appears
in many pairs). With ``n_l`` unique lines per language, ``q_l = n_l / sum(n)`` and
``p_l ∝ q_l ** (1 / T)``; language ``l`` contributes ``round(p_l * S)`` lines (at least one),
where ``S = min(--sample-sentences, sum(n))``. A language with fewer unique lines than its
share contributes all of them plus draws with replacement; the others are subsampled without
replacement. Writes ``spm.model``, ``spm.vocab`` and ``spm.json`` (the sample composition)
into the corpus directory; ids follow docs/architecture.md (tags at 4..259).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
import tempfile
from array import array
from pathlib import Path

import numpy as np

from nmt.errors import UserError, exit_on_user_error
from nmt.langs import all_tag_tokens, normalize_lang

MANIFEST_HINT = "run python -m data_prep.import_corpus or python -m data_prep.demo_corpus first"
_MIN_VOCAB = 4 + len(all_tag_tokens()) + 1


def read_manifest(corpus: Path) -> dict:
    """``<corpus>/manifest.json`` as a dict, or a UserError saying how to create it."""
    path = corpus / "manifest.json"
    if not path.is_file():
        raise UserError(f"{path}: not found; {MANIFEST_HINT}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e}); {MANIFEST_HINT}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("pairs"), dict):
        raise UserError(f"{path}: has no \"pairs\" object; {MANIFEST_HINT}")
    return manifest


def pair_langs(pair: str, where: str) -> tuple[str, str]:
    """``"deu_Latn-eng_Latn"`` -> both Flores-200 codes (UserError naming ``where``)."""
    parts = pair.split("-")
    if len(parts) != 2:
        raise UserError(f"{where}: bad pair name {pair!r}, expected A-B such as deu_Latn-eng_Latn")
    return (normalize_lang(parts[0], allow_alias=False, where=where),
            normalize_lang(parts[1], allow_alias=False, where=where))


def split_pairs(manifest: dict, split: str, corpus: Path) -> dict[str, dict]:
    pairs = manifest["pairs"].get(split) or {}
    if not isinstance(pairs, dict):
        raise UserError(f"{corpus / 'manifest.json'}: pairs.{split} is not an object; {MANIFEST_HINT}")
    return pairs


def bitext_path(corpus: Path, split: str, pair: str, lang: str) -> Path:
    return corpus / "bitext" / split / f"{pair}.{lang}"


def iter_lines(path: Path):
    """Lines of a UTF-8 corpus file without the newline (split on ``\\n`` only)."""
    if not path.is_file():
        raise UserError(f"{path}: listed in manifest.json but missing; {MANIFEST_HINT}")
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                yield raw.rstrip(b"\r\n").decode("utf-8")
            except UnicodeDecodeError:
                raise UserError(f"{path}:{n}: invalid UTF-8; re-run the import to clean it") from None


def language_files(corpus: Path, manifest: dict) -> dict[str, list[Path]]:
    """Training files per language, in manifest order."""
    files: dict[str, list[Path]] = {}
    where = f"{corpus / 'manifest.json'} pairs.train"
    for pair in split_pairs(manifest, "train", corpus):
        for lang in pair_langs(pair, where):
            files.setdefault(lang, []).append(bitext_path(corpus, "train", pair, lang))
    if not files:
        raise UserError(f"{corpus / 'manifest.json'}: no training pairs; {MANIFEST_HINT}")
    return files


def _line_hash(line: str) -> int:
    return int.from_bytes(hashlib.blake2b(line.encode("utf-8"), digest_size=8).digest(), "little")


def unique_positions(paths: list[Path]) -> np.ndarray:
    """Positions (in the concatenation of ``paths``) of each distinct non-empty line's first copy."""
    hashes = array("Q")
    positions = array("q")
    pos = 0
    for path in paths:
        for line in iter_lines(path):
            if line.strip():
                hashes.append(_line_hash(line))
                positions.append(pos)
            pos += 1
    if not hashes:
        return np.zeros(0, dtype=np.int64)
    _, first = np.unique(np.frombuffer(hashes, dtype=np.uint64), return_index=True)
    return np.sort(np.frombuffer(positions, dtype=np.int64)[first])


def sample_sizes(counts: dict[str, int], total: int, temperature: float) -> dict[str, int]:
    """Lines per language: ``p_l ∝ (n_l / sum n) ** (1/T)``, rounded to sum to ``total``."""
    langs = [lang for lang, n in counts.items() if n > 0]
    if not langs:
        return {}
    q = np.array([counts[lang] for lang in langs], dtype=np.float64)
    q /= q.sum()
    p = q ** (1.0 / temperature)
    p /= p.sum()
    exact = p * total
    k = np.floor(exact).astype(np.int64)
    for i in np.argsort(-(exact - k), kind="stable")[: total - int(k.sum())]:
        k[i] += 1  # largest remainders get the leftover lines
    return {lang: max(1, int(n)) for lang, n in zip(langs, k, strict=True)}


def draw(n_unique: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """How many times each of ``n_unique`` lines is taken so that ``k`` lines are drawn."""
    mult = np.zeros(n_unique, dtype=np.int64)
    if k <= n_unique:
        mult[rng.choice(n_unique, size=k, replace=False)] = 1
    else:
        mult += 1
        np.add.at(mult, rng.integers(0, n_unique, size=k - n_unique), 1)
    return mult


def write_sample(corpus: Path, manifest: dict, sample_sentences: int, temperature: float,
                 seed: int, out_path: Path) -> dict[str, dict]:
    """Write the sample to ``out_path`` (one line each) and return its composition."""
    files = language_files(corpus, manifest)
    positions = {lang: unique_positions(paths) for lang, paths in files.items()}
    counts = {lang: int(pos.size) for lang, pos in positions.items()}
    total_unique = sum(counts.values())
    if total_unique == 0:
        raise UserError(f"{corpus}: the training bitext is empty; {MANIFEST_HINT}")
    sizes = sample_sizes(counts, min(sample_sentences, total_unique), temperature)
    rng = np.random.default_rng(seed)
    q_total = float(total_unique)
    p_raw = {lang: (n / q_total) ** (1.0 / temperature) for lang, n in counts.items() if n}
    p_sum = sum(p_raw.values())
    composition: dict[str, dict] = {}
    with open(out_path, "w", encoding="utf-8") as out:
        for lang in sorted(files):
            if counts[lang] == 0:
                composition[lang] = {"unique_lines": 0, "share": 0.0, "sampled": 0, "upsampled": False}
                continue
            mult = draw(counts[lang], sizes[lang], rng)
            want = positions[lang][mult > 0].tolist()  # sorted line positions to copy
            times = mult[mult > 0].tolist()
            j, pos = 0, 0
            for path in files[lang]:
                if j == len(want):
                    break
                for line in iter_lines(path):
                    if j < len(want) and pos == want[j]:
                        out.write((line + "\n") * times[j])
                        j += 1
                    pos += 1
            composition[lang] = {"unique_lines": counts[lang], "share": p_raw[lang] / p_sum,
                                 "sampled": sizes[lang], "upsampled": sizes[lang] > counts[lang]}
    return composition


def train_model(text_path: Path, model_prefix: Path, vocab_size: int, character_coverage: float,
                log_path: Path) -> None:
    """Train a unigram model with the project's special ids and language tags."""
    import sentencepiece as spm

    with open(log_path, "w") as log:
        try:
            spm.SentencePieceTrainer.train(
                input=str(text_path), model_prefix=str(model_prefix), model_type="unigram",
                vocab_size=vocab_size, character_coverage=character_coverage,
                pad_id=0, unk_id=1, bos_id=2, eos_id=3,
                pad_piece="<pad>", unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
                user_defined_symbols=all_tag_tokens(), num_threads=2,
                input_sentence_size=0, shuffle_input_sentence=False, logstream=log,
            )
        except RuntimeError as e:
            msg = str(e)
            m = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", msg)
            if m:
                raise UserError(
                    f"--vocab-size {m.group(1)} is too large for this corpus: its sampled text "
                    f"supports at most {m.group(2)} pieces; lower --vocab-size to {m.group(2)} or "
                    "less (or add more training text / raise --sample-sentences)"
                ) from None
            raise UserError(f"sentencepiece training failed: {msg.splitlines()[-1] if msg else e}") from None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m data_prep.train_spm", description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", required=True, type=Path, help="corpus directory (has manifest.json)")
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--temperature", type=float, default=5.0, help="sampling temperature T (1 = proportional)")
    ap.add_argument("--sample-sentences", type=int, default=1_000_000, help="lines in the training sample")
    ap.add_argument("--character-coverage", type=float, default=0.9995)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--overwrite", action="store_true", help="replace an existing spm.model")
    run(ap.parse_args(argv))


@exit_on_user_error
def run(args: argparse.Namespace) -> None:
    corpus: Path = args.corpus
    if args.vocab_size < _MIN_VOCAB:
        raise UserError(f"--vocab-size {args.vocab_size} is too small: the 4 special tokens and "
                        f"{len(all_tag_tokens())} language tags need at least {_MIN_VOCAB}; use 300 or more")
    if args.temperature <= 0:
        raise UserError(f"--temperature {args.temperature} must be > 0 (1 = proportional, 5 = NLLB-like)")
    if args.sample_sentences <= 0:
        raise UserError(f"--sample-sentences {args.sample_sentences} must be > 0")
    if not 0 < args.character_coverage <= 1:
        raise UserError(f"--character-coverage {args.character_coverage} must be in (0, 1]")
    manifest = read_manifest(corpus)
    outputs = [corpus / n for n in ("spm.model", "spm.vocab", "spm.json")]
    if not args.overwrite and any(p.exists() for p in outputs):
        raise UserError(f"{corpus / 'spm.model'} already exists; pass --overwrite to retrain "
                        "(then re-run data_prep.binarize with --overwrite)")
    tmp = Path(tempfile.mkdtemp(prefix=".spm.", dir=corpus))
    try:
        sample = tmp / "sample.txt"
        composition = write_sample(corpus, manifest, args.sample_sentences, args.temperature,
                                   args.seed, sample)
        total = sum(c["sampled"] for c in composition.values())
        print(f"sample: {total} lines over {len(composition)} languages (T={args.temperature:g})")
        print(f"  {'language':<10} {'unique':>9} {'share':>7} {'sampled':>9}")
        for lang, c in composition.items():
            up = "  (upsampled)" if c["upsampled"] else ""
            print(f"  {lang:<10} {c['unique_lines']:>9} {c['share']:>7.2%} {c['sampled']:>9}{up}")
        sys.stdout.flush()
        train_model(sample, tmp / "spm", args.vocab_size, args.character_coverage, tmp / "train.log")
        sha = hashlib.sha256((tmp / "spm.model").read_bytes()).hexdigest()
        info = {"vocab_size": args.vocab_size, "temperature": args.temperature,
                "sample_sentences": args.sample_sentences, "sample_total": total,
                "character_coverage": args.character_coverage, "seed": args.seed,
                "spm_sha256": sha, "languages": composition}
        (tmp / "spm.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
        # spm.model last: its presence means the other two are in place.
        for name in ("spm.vocab", "spm.json", "spm.model"):
            (tmp / name).replace(corpus / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {corpus / 'spm.model'} ({args.vocab_size} pieces, sha256 {sha[:12]}…)")


if __name__ == "__main__":
    main()
