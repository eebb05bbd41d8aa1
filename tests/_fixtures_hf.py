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


def build_nllb_tokenizer(root: Path, legacy: bool = False, without: tuple[str, ...] = ()):
    """``without``: language codes left out of the tokenizer (a model that lacks those languages)."""
    from transformers import NllbTokenizer
    from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES as ALL_CODES

    FAIRSEQ_LANGUAGE_CODES = [c for c in ALL_CODES if c not in without]

    root.mkdir(parents=True, exist_ok=True)
    (root / "train.txt").write_text("\n".join(text_lines(300)), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(root / "train.txt"), model_prefix=str(root / "sp"), vocab_size=250,
                                   model_type="bpe", character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2,
                                   pad_id=-1, minloglevel=2)
    spm_dir = root / "spm_only"
    spm_dir.mkdir()
    (root / "sp.model").rename(spm_dir / "sentencepiece.bpe.model")
    tok = NllbTokenizer.from_pretrained(str(spm_dir), extra_special_tokens=list(FAIRSEQ_LANGUAGE_CODES),
                                        mask_token=None, legacy_behaviour=legacy)
    tok.add_special_tokens({"mask_token": "<mask>"})
    sp = spm.SentencePieceProcessor(model_file=str(spm_dir / "sentencepiece.bpe.model"))
    n = sp.get_piece_size()
    assert tok.convert_tokens_to_ids(["<s>", "<pad>", "</s>", "<unk>"]) == [0, 1, 2, 3]
    assert tok.convert_tokens_to_ids([sp.id_to_piece(k) for k in range(3, n)]) == list(range(4, n + 1))
    codes = tok.convert_tokens_to_ids(list(FAIRSEQ_LANGUAGE_CODES))
    assert codes == list(range(n + 1, n + 1 + len(FAIRSEQ_LANGUAGE_CODES)))
    assert tok.convert_tokens_to_ids("<mask>") == len(tok) - 1 == n + 1 + len(codes)
    return tok, spm_dir / "sentencepiece.bpe.model"


def build_m2m100(root: Path, legacy: bool = False, seed: int = 0, without: tuple[str, ...] = (),
                 **overrides) -> Path:
    """A random M2M100ForConditionalGeneration (d 64, 2+2 layers) + NLLB tokenizer, saved in root/hf."""
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    tok, spm_path = build_nllb_tokenizer(root / "tok", legacy, without)
    cfg = {"vocab_size": len(tok) + EXTRA_ROWS, "d_model": 64, "encoder_layers": 2, "decoder_layers": 2,
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
    from nmt.interop.vocab_layout import make_layout

    ck = load_inference_checkpoint(ours_dir)
    src = json.loads((ours_dir / "config.json").read_text())["source"]["hf"]
    layout = make_layout(ck.tokenizer.vocab_size, src["codes"], src["mask"], src.get("spares"))
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
