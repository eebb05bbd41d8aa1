"""A random Transformers M2M100 directory in the NLLB id layout, for the CTranslate2 tests.

``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, SentencePiece piece k → k + 1, then the
language codes as special tokens (docs: /work/shared/notes/interop.md, "Tokenizer pitfalls").
The SentencePiece model is trained here (NLLB's own id layout: unk 0, bos 1, eos 2).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import dict_sentences, render

CODES = ["eng_Latn", "fra_Latn", "deu_Latn"]
SPM = "sentencepiece.bpe.model"
EOS_BIAS = 1.2  # tuned: with seed 0, lenpen 0 and 1 both give hypotheses of many lengths


def train_plain_spm(out_dir: Path) -> Path:
    import sentencepiece as spm

    out_dir.mkdir(parents=True, exist_ok=True)
    text = out_dir / "text.txt"
    sents = dict_sentences(300, 7)
    text.write_text("".join(render(s, lang) + "\n" for s in sents for lang in ("eng_Latn", "fra_Latn")),
                    encoding="utf-8")
    with open(out_dir / "spm.log", "w") as log:
        spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(out_dir / "plain"), vocab_size=200,
                                       model_type="unigram", hard_vocab_limit=False, logstream=log)
    return out_dir / "plain.model"


def nllb_tokenizer_dir(spm_model: Path, out: Path):
    """Save an NLLB tokenizer for ``spm_model`` with CODES added; reload it and check the layout."""
    import sentencepiece as spm
    from transformers import NllbTokenizer

    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(spm_model, out / SPM)
    tok = NllbTokenizer.from_pretrained(str(out))
    tok.add_special_tokens({"additional_special_tokens": CODES})
    tok.save_pretrained(str(out))
    tok = NllbTokenizer.from_pretrained(str(out))
    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["<s>", "<pad>", "</s>", "<unk>"]
    for k in range(3, sp.get_piece_size()):
        assert tok.convert_tokens_to_ids(sp.id_to_piece(k)) == k + 1, sp.id_to_piece(k)
    ids = tok.convert_tokens_to_ids(CODES)
    assert min(ids) > sp.get_piece_size() and len(set(ids)) == len(CODES), ids
    return tok


def random_m2m100_dir(out: Path, spm_model: Path, seed: int = 0) -> Path:
    """A random M2M100 (d 64, 2+2 layers) with an NLLB-layout tokenizer, saved with save_pretrained.

    Its output layer makes </s> frequent (hypotheses of many lengths) and the tokens every
    search bans (<s>, <pad>, <mask>, language codes) improbable, so that banning them before
    the softmax (CTranslate2) or after it (ours, Transformers) gives the same scores."""
    import torch
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    tok = nllb_tokenizer_dir(spm_model, out)
    cfg = M2M100Config(vocab_size=len(tok), d_model=64, encoder_layers=2, decoder_layers=2,
                       encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                       decoder_ffn_dim=128, max_position_embeddings=128, scale_embedding=True, init_std=0.3,
                       tie_word_embeddings=False,
                       pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
    torch.manual_seed(seed)
    model = M2M100ForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # logit biases along u (the final norm's bias): </s> likely, banned tokens not
        u = torch.nn.functional.normalize(torch.randn(cfg.d_model), dim=0)
        model.model.decoder.layer_norm.bias.copy_(3.0 * u)
        model.lm_head.weight[cfg.eos_token_id] = EOS_BIAS * u
        banned = tok.convert_tokens_to_ids(["<s>", "<pad>", "<mask>", *CODES])
        model.lm_head.weight[banned] = -5.0 * u
    model.save_pretrained(str(out))
    return out
