"""Read a Transformers checkpoint directory: config.json, weights, NLLB or M2M-100 tokenizer files.

Every problem is a UserError naming the file and the fix; nothing here writes anything.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from nmt.errors import UserError
from nmt.fileio import read_json_object
from nmt.interop.hf_tokenizer import SPM_FILE
from nmt.interop.m2m_vocab import VOCAB_FILE, check_vocab

NLLB_DEFAULT_CODES_NOTE = "Transformers' NLLB default list (FAIRSEQ_LANGUAGE_CODES)"


def read_json(path: Path) -> dict:
    return read_json_object(path, missing="", fix="pass a Transformers model directory (save_pretrained output)")


def read_weights(hf_dir: Path) -> dict[str, Tensor]:
    """``model.safetensors`` or ``pytorch_model.bin`` (loaded with ``weights_only=True``)."""
    st, bin_ = hf_dir / "model.safetensors", hf_dir / "pytorch_model.bin"
    try:
        if st.is_file():
            from safetensors.torch import load_file

            return load_file(str(st))
        if bin_.is_file():
            state = torch.load(bin_, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and isinstance(state.get("model"), dict):
                state = state["model"]
            if not isinstance(state, dict):
                raise UserError(f"{bin_} holds no state dict")
            return state
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - corrupt or foreign file
        raise UserError(f"the weights in {hf_dir} cannot be read ({str(e).splitlines()[0][:160]})") from None
    sharded = list(hf_dir.glob("*.index.json"))
    hint = " (sharded weights: merge them with save_pretrained(max_shard_size='100GB') first)" if sharded else ""
    raise UserError(f"{hf_dir} has neither model.safetensors nor pytorch_model.bin{hint}")


def read_spm(hf_dir: Path) -> bytes:
    path = hf_dir / SPM_FILE
    if not path.is_file():
        raise UserError(f"{path} is missing; the import needs the tokenizer files (copy sentencepiece.bpe.model and "
                        f"tokenizer.json, or vocab.json for M2M-100, from the model's repository)")
    return path.read_bytes()


def is_m2m_tokenizer(hf_dir: Path) -> bool:
    """An M2M-100 tokenizer (``vocab.json`` beside the SentencePiece model) rather than NLLB's."""
    return (hf_dir / VOCAB_FILE).is_file()


def read_m2m_tokenizer(hf_dir: Path, config_rows: int) -> tuple[dict[str, int], list[str]]:
    """``vocab.json`` (checked) and the M2M-100 language codes in id order (``__xx__`` at
    ``len(vocab) + i``: Transformers' list named by ``tokenizer_config.json``'s ``language_codes``)."""
    from transformers.models.m2m_100.tokenization_m2m_100 import FAIRSEQ_LANGUAGE_CODES

    tc = hf_dir / "tokenizer_config.json"
    name = read_json(tc).get("language_codes", "m2m100") if tc.is_file() else "m2m100"
    if name not in FAIRSEQ_LANGUAGE_CODES:
        raise UserError(f"{tc}: language_codes={name!r} is not one of M2M100Tokenizer's lists "
                        f"({', '.join(FAIRSEQ_LANGUAGE_CODES)})")
    codes = list(FAIRSEQ_LANGUAGE_CODES[name])
    vocab = read_json_object(hf_dir / VOCAB_FILE, missing="", fix="use the model's own vocab.json")
    return check_vocab(vocab, len(codes), config_rows, hf_dir / VOCAB_FILE), codes


def read_codes(hf_dir: Path, n_pieces: int) -> tuple[list[str], bool, str]:
    """The language codes in id order (ids ``n_pieces + 1`` …), whether ``<mask>`` follows them, and
    where they came from: ``tokenizer.json``'s added tokens, else ``tokenizer_config.json``'s
    ``added_tokens_decoder``, else the NLLB default list."""
    first = n_pieces + 1  # fairseq id of the first token after the pieces
    added: dict[int, str] = {}
    source = ""
    tj, tc = hf_dir / "tokenizer.json", hf_dir / "tokenizer_config.json"
    if tj.is_file():
        added = {int(t["id"]): t["content"] for t in read_json(tj).get("added_tokens") or []}
        source = tj.name
    elif tc.is_file() and read_json(tc).get("added_tokens_decoder"):
        added = {int(i): t["content"] for i, t in read_json(tc)["added_tokens_decoder"].items()}
        source = tc.name
    if not added:
        from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

        return list(FAIRSEQ_LANGUAGE_CODES), True, NLLB_DEFAULT_CODES_NOTE
    tail = [added[i] for i in sorted(added) if i >= first]
    ids = sorted(i for i in added if i >= first)
    if ids != list(range(first, first + len(ids))):
        raise UserError(f"{hf_dir / source}: the added tokens after the {n_pieces} pieces are not contiguous "
                        f"(ids {ids[:3]}…); this is not an NLLB tokenizer layout")
    has_mask = bool(tail) and tail[-1] == "<mask>"
    codes = tail[:-1] if has_mask else tail
    return codes, has_mask, source


def source_convention(hf_dir: Path) -> str:
    tc = hf_dir / "tokenizer_config.json"
    legacy = bool(read_json(tc).get("legacy_behaviour", False)) if tc.is_file() else False
    return "legacy" if legacy else "tag_first"
