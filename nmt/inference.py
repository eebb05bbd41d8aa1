"""Load a trained checkpoint and translate lists of sentences (used by evaluate and translate)."""

from __future__ import annotations

from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path

import torch

from nmt.config import EvalConfig, ModelConfig
from nmt.data.tokenizer import Tokenizer
from nmt.errors import UserError
from nmt.eval.search import beam_search
from nmt.langs import FLORES200, all_tag_tokens, normalize_lang
from nmt.models.build import build_model
from nmt.models.transformer import PAD, Transformer
from nmt.training.checkpoint import load_checkpoint


def _dataclass_from(cls, d: dict):
    """Rebuild a config dataclass (nested ones too, e.g. ModelConfig.moe) from a saved dict."""
    out = {}
    for f in fields(cls):
        if f.name not in d:
            continue
        default = f.default_factory() if f.default_factory is not MISSING else None  # type: ignore[misc]
        out[f.name] = _dataclass_from(type(default), d[f.name]) if is_dataclass(default) else d[f.name]
    return cls(**out)


def find_tokenizer(ckpt_path: Path, state: dict) -> Tokenizer:
    """The run directory's copy of ``spm.model`` (checked against the checkpoint's sha256)."""
    info = state.get("tokenizer", {})
    candidates = [ckpt_path.parent.parent / "spm.model", Path(info.get("path", ""))]
    for cand in candidates:
        if cand.is_file():
            tok = Tokenizer(cand)
            if info.get("sha256") and tok.sha256 != info["sha256"]:
                raise UserError(f"{cand} is not the vocabulary checkpoint {ckpt_path} was trained with "
                                f"(sha256 differs); restore the run directory's spm.model")
            return tok
    raise UserError(f"no spm.model found for checkpoint {ckpt_path}: expected {candidates[0]}")


class Translator:
    """A model, its tokenizer and default search settings."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, defaults: EvalConfig, device: torch.device):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.defaults = defaults
        self.device = device
        self.banned = [tokenizer.bos_id] + list(range(4, 4 + len(all_tag_tokens())))

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu") -> "Translator":
        path = Path(path)
        state = load_checkpoint(path)
        cfg = state.get("config", {})
        model_cfg = _dataclass_from(ModelConfig, cfg.get("model", {}))
        tok = find_tokenizer(path, state)
        model = build_model(model_cfg, tok.vocab_size)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise UserError(f"checkpoint {path} does not match its own model config "
                            f"({str(e).splitlines()[0][:200]})") from None
        if device == "cuda" and not torch.cuda.is_available():
            raise UserError("device=cuda but no CUDA device is visible; use device=cpu or auto")
        dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                           ("cpu" if device == "auto" else device))
        return cls(model.to(dev), tok, _dataclass_from(EvalConfig, cfg.get("eval", {})), dev)

    def translate(
        self,
        lines: list[str],
        src_lang: str,
        tgt_lang: str,
        beam_size: int | None = None,
        len_penalty: float | None = None,
        batch_size: int | None = None,
        max_len_a: float | None = None,
        max_len_b: int | None = None,
    ) -> list[str]:
        """One output per input line; empty (or whitespace-only) inputs give empty outputs."""
        d = self.defaults
        beam = beam_size or d.beam
        lenpen = d.lenpen if len_penalty is None else len_penalty
        bs = batch_size or d.batch_size
        src_lang = normalize_lang(src_lang, where="src_lang")
        tgt_lang = normalize_lang(tgt_lang, where="tgt_lang")
        tok = self.tokenizer
        src_tag, tgt_tag = tok.lang_id(src_lang), tok.lang_id(tgt_lang)
        max_src = self.model.cfg.max_positions - 2
        encoded = tok.encode_batch([line.strip() for line in lines])
        out = [""] * len(lines)
        todo = sorted((i for i, line in enumerate(lines) if line.strip()), key=lambda i: len(encoded[i]))
        src_idx, tgt_idx = FLORES200.index(src_lang), FLORES200.index(tgt_lang)
        for start in range(0, len(todo), bs):
            chunk = todo[start: start + bs]
            seqs = [[src_tag] + encoded[i][:max_src] + [tok.eos_id] for i in chunk]
            width = max(len(s) for s in seqs)
            src = torch.full((len(seqs), width), PAD, dtype=torch.long)
            for r, s in enumerate(seqs):
                src[r, : len(s)] = torch.tensor(s)
            n = len(chunk)
            hyps = beam_search(
                self.model, src.to(self.device), torch.full((n,), tgt_tag, device=self.device),
                eos=tok.eos_id, beam=beam, lenpen=lenpen,
                max_len_a=d.max_len_a if max_len_a is None else max_len_a,
                max_len_b=d.max_len_b if max_len_b is None else max_len_b,
                banned=self.banned,
                src_lang=torch.full((n,), src_idx, device=self.device),
                tgt_lang=torch.full((n,), tgt_idx, device=self.device))
            for i, h in zip(chunk, hyps):
                out[i] = tok.decode(h).replace("\n", " ").strip()
        return out
