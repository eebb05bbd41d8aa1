"""Small random Transformers checkpoints with an NLLB-layout tokenizer, built offline.

The tokenizer comes from a locally trained BPE SentencePiece model (NLLB's is BPE) and
Transformers' own ``NllbTokenizer``, with the 202 codes added explicitly and ``<mask>`` after
them (docs: /work/shared/notes/interop.md pitfalls); the layout is asserted before use.
"""

from __future__ import annotations

from pathlib import Path

import sentencepiece as spm
import torch

from _fixtures_spm import sentences

LANGS = ("eng_Latn", "fra_Latn", "deu_Latn", "rus_Cyrl")
EXTRA_ROWS = 2  # like nllb-200 (256,206 rows for 256,204 ids): rows the tokenizer never produces


def text_lines(n: int = 120, seed: int = 0) -> list[str]:
    return [s for lang in LANGS for s in sentences(lang, n, seed)]


def train_bpe_spm(root: Path) -> Path:
    """A BPE SentencePiece model (NLLB's and M2M-100's are BPE) in ``root/spm_only``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.txt").write_text("\n".join(text_lines(300)), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(root / "train.txt"), model_prefix=str(root / "sp"), vocab_size=250,
                                   model_type="bpe", character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2,
                                   pad_id=-1, minloglevel=2)
    spm_dir = root / "spm_only"
    spm_dir.mkdir()
    (root / "sp.model").rename(spm_dir / "sentencepiece.bpe.model")
    return spm_dir / "sentencepiece.bpe.model"


def build_nllb_tokenizer(root: Path, legacy: bool = False, without: tuple[str, ...] = ()):
    """``without``: language codes left out of the tokenizer (a model that lacks those languages)."""
    from transformers import NllbTokenizer
    from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES as ALL_CODES

    FAIRSEQ_LANGUAGE_CODES = [c for c in ALL_CODES if c not in without]

    spm_path = train_bpe_spm(root)
    spm_dir = spm_path.parent
    tok = NllbTokenizer.from_pretrained(str(spm_dir), extra_special_tokens=list(FAIRSEQ_LANGUAGE_CODES),
                                        mask_token=None, legacy_behaviour=legacy)
    tok.add_special_tokens({"mask_token": "<mask>"})
    sp = spm.SentencePieceProcessor(model_file=str(spm_path))
    n = sp.get_piece_size()
    assert tok.convert_tokens_to_ids(["<s>", "<pad>", "</s>", "<unk>"]) == [0, 1, 2, 3]
    assert tok.convert_tokens_to_ids([sp.id_to_piece(k) for k in range(3, n)]) == list(range(4, n + 1))
    codes = tok.convert_tokens_to_ids(list(FAIRSEQ_LANGUAGE_CODES))
    assert codes == list(range(n + 1, n + 1 + len(FAIRSEQ_LANGUAGE_CODES)))
    assert tok.convert_tokens_to_ids("<mask>") == len(tok) - 1 == n + 1 + len(codes)
    return tok, spm_path


M2M_LEFT_OUT = 6  # SentencePiece pieces vocab.json lacks (Transformers reads them as <unk>)
M2M_ONLY = ("madeupword0000",)  # a vocab.json token that is not a SentencePiece piece
MADEUP_ROWS = 8  # M2M-100's num_madeup_words: rows after the codes that no token produces


def build_m2m_tokenizer(root: Path, seed: int = 0):
    """Transformers' ``M2M100Tokenizer`` over a local BPE model and a ``vocab.json`` in a shuffled
    (non-identity) order that lacks ``M2M_LEFT_OUT`` pieces the test text uses (frequent and rare
    ones, so ``<unk>`` occurs) and has ``M2M_ONLY``; returns it and the left-out pieces."""
    import collections
    import json
    import random

    from transformers import M2M100Tokenizer

    spm_path = train_bpe_spm(root)
    sp = spm.SentencePieceProcessor(model_file=str(spm_path))
    used = collections.Counter(p for line in text_lines(60) for p in sp.encode(line, out_type=str))
    ranked = [p for p, _ in used.most_common() if p != "▁"]
    left_out = [ranked[i] for i in (2, 7, 15, 30, 60, 90)][:M2M_LEFT_OUT]
    pieces = [sp.id_to_piece(k) for k in range(3, sp.get_piece_size()) if sp.id_to_piece(k) not in left_out]
    pieces += list(M2M_ONLY)
    random.Random(seed).shuffle(pieces)
    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", *pieces])}
    (spm_path.parent / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    tok = M2M100Tokenizer(str(spm_path.parent / "vocab.json"), str(spm_path), src_lang="en", tgt_lang="fr")
    assert tok.get_lang_id("af") == len(vocab) and tok.convert_tokens_to_ids(left_out) == [3] * len(left_out)
    return tok, spm_path, left_out


def build_m2m100(root: Path, legacy: bool = False, seed: int = 0, without: tuple[str, ...] = (),
                 tokenizer: str = "nllb", **overrides) -> Path:
    """A random M2M100ForConditionalGeneration (d 64, 2+2 layers) saved in root/hf, with an NLLB
    tokenizer or (``tokenizer="m2m100"``) an M2M-100 one (:func:`build_m2m_tokenizer`)."""
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    if tokenizer == "m2m100":
        tok, spm_path, _ = build_m2m_tokenizer(root / "tok", seed)
        rows = len(tok) + len(tok.lang_code_to_id) + MADEUP_ROWS
    else:
        tok, spm_path = build_nllb_tokenizer(root / "tok", legacy, without)
        rows = len(tok) + EXTRA_ROWS
    cfg = {"vocab_size": rows, "d_model": 64, "encoder_layers": 2, "decoder_layers": 2,
               "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 128,
               "decoder_ffn_dim": 128,
               "max_position_embeddings": 128, "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0,
               "encoder_layerdrop": 0.0, "decoder_layerdrop": 0.0, "init_std": 0.2}
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = M2M100ForConditionalGeneration(M2M100Config(**cfg)).eval()
    out = root / "hf"
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    (out / "sentencepiece.bpe.model").write_bytes(spm_path.read_bytes())
    return out


def build_nllb_moe(root: Path, seed: int = 0, without: tuple[str, ...] = ()) -> Path:
    """A random NllbMoeForConditionalGeneration (d 64, 2+2 layers, 4 experts every 2nd layer,
    no token dropout at eval) + NLLB tokenizer, saved in root/hf."""
    from transformers import NllbMoeConfig, NllbMoeForConditionalGeneration

    tok, spm_path = build_nllb_tokenizer(root / "tok", without=without)
    cfg = NllbMoeConfig(vocab_size=len(tok) + EXTRA_ROWS, d_model=64, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                        decoder_ffn_dim=128, max_position_embeddings=128, num_experts=4, encoder_sparse_step=2,
                        decoder_sparse_step=2, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                        moe_token_dropout=0.2, encoder_layerdrop=0.0, decoder_layerdrop=0.0, init_std=0.2,
                        decoder_start_token_id=2)
    torch.manual_seed(seed)
    model = NllbMoeForConditionalGeneration(cfg).eval()
    out = root / "hf"
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    (out / "sentencepiece.bpe.model").write_bytes(spm_path.read_bytes())
    return out


def maps(ours_dir: Path):
    """An import's checkpoint, ``fid`` (our id -> fairseq id, -1: none) and ``inv`` (the reverse)."""
    import json

    from nmt.inference import load_inference_checkpoint
    from nmt.interop.m2m_vocab import piece_fids_of
    from nmt.interop.vocab_layout import make_layout

    ck = load_inference_checkpoint(ours_dir)
    config = json.loads((ours_dir / "config.json").read_text())
    src = config["source"]["hf"]
    layout = make_layout(ck.tokenizer.vocab_size, src["codes"], src["mask"], src.get("spares"),
                         piece_fids_of(ck.tokenizer.path.read_bytes()), config.get("added_languages"))
    fid = torch.tensor(layout.fairseq_id)
    inv = torch.full((src["embedding_rows"],), -1)  # fairseq id -> ours (-1: a row nmt drops)
    inv[fid[fid >= 0]] = torch.nonzero(fid >= 0).squeeze(1)
    return ck, fid, inv


def hf_model(hf_dir: Path, **kw):
    import transformers

    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(hf_dir)).eval()
    return model, transformers.AutoTokenizer.from_pretrained(str(hf_dir), **kw)


def ban_after_tag(ids: list[int]):
    """Logits processors for ``generate`` that ban ``ids`` after the forced code, as nmt's
    Translator bans ``<s>``, ``<pad>`` and the tags."""
    import transformers

    class _Ban(transformers.LogitsProcessor):
        def __call__(self, input_ids, scores):
            if input_ids.shape[1] >= 2:
                scores[:, ids] = float("-inf")
            return scores

    return transformers.LogitsProcessorList([_Ban()])


def assert_generate_ids(gen: torch.Tensor, hyps: list[list[int]], fid: torch.Tensor, code: int) -> list[bool]:
    """Every ``generate`` row is ``</s> code`` then nmt's hypothesis (our ids mapped by ``fid``),
    ended by ``</s>`` or cut at the limit; returns which rows ended with ``</s>``."""
    ended = []
    for row, hyp in zip(gen.tolist(), hyps, strict=True):
        assert row[:2] == [2, code]
        theirs = [t for t in row[2:] if t != 1]
        ended.append(bool(theirs) and theirs[-1] == 2)
        assert [int(fid[t]) for t in hyp] == (theirs[:-1] if ended[-1] else theirs)
    return ended
