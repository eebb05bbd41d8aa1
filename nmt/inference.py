"""Load a trained model and translate lists of sentences (used by evaluate and translate).

:func:`load_inference_checkpoint` is the one loader: it takes any of

- a single-file training checkpoint ``<run>/checkpoints/{last,best,step_N}.pt``;
- a sharded one, ``<run>/checkpoints/{last,best,step_N}.dcp/`` (read in one process, at any
  world size it was written with);
- an export directory written by ``python -m nmt.export`` (``model.safetensors``,
  ``config.json``, ``spm.model``), or its ``model.safetensors`` / ``config.json``;

and returns the model config, the full state dict and the tokenizer (checked against the
sha256 the checkpoint records). No code from any of these files is ever run.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import torch

from nmt.config import EvalConfig, ModelConfig, saved_model_config
from nmt.data.batching import source_sequence
from nmt.data.tokenizer import FIRST_TAG_ID, Tokenizer
from nmt.device import resolve_device
from nmt.errors import UserError
from nmt.eval.search import beam_search
from nmt.fileio import read_json_object, sha256_file
from nmt.langs import all_tag_tokens, languages_of, normalize_lang
from nmt.models.build import build_model
from nmt.models.transformer import PAD, Transformer
from nmt.training.checkpoint import load_checkpoint

# The export directory layout (python -m nmt.export); see docs/export.md.
EXPORT_FORMAT = "nmt-inference"
EXPORT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
SPM = "spm.model"

MAX_LISTED = 40  # languages named in a refusal (an imported NLLB model knows 202)
KINDS = "a .pt checkpoint, a .dcp checkpoint directory or an export directory (python -m nmt.export)"


def _dataclass_from(cls, d: dict):
    """Rebuild a config dataclass (nested ones too, e.g. ModelConfig.moe) from a saved dict."""
    out = {}
    for f in fields(cls):
        if f.name not in d:
            continue
        default = f.default_factory() if f.default_factory is not MISSING else None
        out[f.name] = _dataclass_from(type(default), d[f.name]) if is_dataclass(default) else d[f.name]
    return cls(**out)


def find_tokenizer(ckpt_path: Path, state: dict) -> Tokenizer:
    """The run directory's copy of ``spm.model`` (checked against the checkpoint's sha256):
    ``<run>/spm.model`` beside ``<run>/checkpoints/``, else the path the checkpoint recorded."""
    info = state.get("tokenizer", {}) or {}
    want: str | None = info.get("sha256")
    beside = ckpt_path.parent.parent / SPM
    candidates = list(dict.fromkeys([beside, Path(info["path"]) if info.get("path") else beside]))
    mismatched: list[Tokenizer] = []
    for cand in candidates:
        if cand.is_file():
            tok = Tokenizer(cand)
            if not want or tok.sha256 == want:
                return tok
            mismatched.append(tok)
    if mismatched:
        raise UserError(f"{mismatched[0].path} is not the vocabulary checkpoint {ckpt_path} was trained with "
                        f"(sha256 {mismatched[0].sha256[:12]}… where the checkpoint records {str(want)[:12]}…); "
                        f"restore the run directory's spm.model")
    raise UserError(f"no spm.model found for checkpoint {ckpt_path}: expected {candidates[0]}; "
                    f"copy the run's spm.model (sha256 {str(want)[:12]}…) back there")


@dataclass
class InferenceCheckpoint:
    """What a model needs for inference, from any checkpoint kind (:func:`load_inference_checkpoint`)."""

    path: Path  # the path given
    kind: str  # pt | dcp | export
    model_config: dict[str, Any]  # the run's ``model`` config (rebuilds the architecture)
    state: dict[str, torch.Tensor]  # the full model state dict (MoE experts as whole [E, ...] tensors)
    tokenizer: Tokenizer  # checked against the sha256 the checkpoint records
    eval_config: dict[str, Any] = field(default_factory=dict)  # the run's ``eval`` defaults (beam, lenpen, ...)
    info: dict[str, Any] = field(default_factory=dict)  # step, directions, source, ... (provenance only)
    languages: list[str] | None = None  # the languages it was trained on (None: no record, no directions)

    def build_model(self, lazy=None) -> Transformer:
        """The model with every expert on this process, weights loaded, in eval mode. ``lazy``:
        a predicate of the tensors the loader left on disk (expert buffering, nmt/moe_tools)."""
        cfg = _dataclass_from(ModelConfig, saved_model_config(self.model_config))  # old configs: position_offset 0
        model = build_model(cfg, self.tokenizer.vocab_size)
        try:
            missing, unexpected = model.load_state_dict(self.state, strict=False)
        except RuntimeError as e:  # shape mismatches
            why = str(e).splitlines()[-1].strip()[:200]
            raise UserError(f"checkpoint {self.path} does not match its own model config ({why}); "
                            f"re-export it or use another checkpoint") from None
        if self.kind == "dcp":  # a sharded checkpoint holds parameters only: buffers come from the config
            params = {n for n, _ in model.named_parameters()}
            missing = [k for k in missing if k in params]
        if lazy is not None:
            missing = [k for k in missing if not lazy(k)]
        if missing or unexpected:
            names = ", ".join((list(missing) + list(unexpected))[:4])
            raise UserError(f"checkpoint {self.path} does not match its own model config ({len(missing)} missing, "
                            f"{len(unexpected)} unexpected tensors: {names}); re-export it or use another checkpoint")
        return model.eval()


def checkpoint_kind(path: str | Path) -> tuple[str, Path]:
    """``("pt", file)``, ``("dcp", dir)`` or ``("export", export dir)`` for a path given by the user."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"checkpoint {p} does not exist; pass {KINDS}")
    if p.is_file():
        if p.suffix == ".safetensors" or (p.name == CONFIG and (p.parent / WEIGHTS).exists()):
            return "export", p.parent
        return "pt", p
    from nmt.training.sharded import MANIFEST, SUFFIX

    if (p / WEIGHTS).exists() or (p / CONFIG).exists():
        return "export", p
    if p.name.endswith(SUFFIX) or (p / MANIFEST).exists():
        return "dcp", p
    if p.name.endswith(SUFFIX + ".tmp"):
        raise UserError(f"checkpoint {p} is an interrupted sharded save (a .dcp.tmp directory); use "
                        f"{p.name[:-4]} or another checkpoint of the run")
    hint = ""
    if (p / "checkpoints").is_dir():
        hint = f" (a run directory: pass e.g. {p / 'checkpoints' / 'best.pt'} or best.dcp)"
    elif any(p.glob("*.pt")) or any(p.glob("*" + SUFFIX)):
        hint = f" (a checkpoints directory: pass one checkpoint in it, e.g. {p / 'best.pt'})"
    raise UserError(f"checkpoint {p} is a directory but not an nmt checkpoint{hint}; pass {KINDS}")


def load_inference_checkpoint(path: str | Path, lazy=None) -> InferenceCheckpoint:
    """Path → model config, full state dict and tokenizer, for every checkpoint kind (``lazy``:
    a predicate of tensor names an export leaves on disk, e.g. MoE experts to buffer).

    Every problem (missing, corrupt or foreign file, missing or different tokenizer) is a
    UserError naming the file and the fix."""
    kind, where = checkpoint_kind(path)
    if kind == "export":
        return _load_export(Path(path), where, lazy)
    if kind == "dcp":
        from nmt.training.sharded import EXTRA, load_model_tensors

        try:
            with warnings.catch_warnings():  # "torch.distributed is disabled ...": one process is the intent
                warnings.filterwarnings("ignore", message=".*torch.distributed is disabled")
                tensors = load_model_tensors(where)  # checks every file against the manifest first
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - DCP metadata/reader errors
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise UserError(f"sharded checkpoint {where} cannot be read ({first}); use another checkpoint") from None
        state = load_checkpoint(where / EXTRA, require_model=False)  # the files were verified just above
    else:
        state = load_checkpoint(where)
        tensors = state["model"]
    cfg = state.get("config") or {}
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        raise UserError(f"checkpoint {where} records no model config (config.model); it was not written by "
                        f"nmt.train: use a checkpoint from a run's checkpoints/ directory")
    tok = find_tokenizer(where, state)
    info = {k: state.get(k) for k in ("step", "directions", "world_size", "best_step")}
    info["tokenizer_sha256"] = (state.get("tokenizer") or {}).get("sha256") or tok.sha256
    return InferenceCheckpoint(Path(path), kind, cfg["model"], tensors, tok, cfg.get("eval") or {}, info,
                               model_languages(state.get("languages"), state.get("directions")))


def model_languages(recorded: Any, directions: Any) -> list[str] | None:
    """The language set a model records; a checkpoint that predates the record gets the languages of
    the directions it trained (None when it records neither)."""
    if isinstance(recorded, list) and recorded:
        return sorted(str(c) for c in recorded)
    return languages_of(directions) if directions else None



def read_export_config(export_dir: Path) -> dict[str, Any]:
    """``config.json`` of an export directory, checked for format and version."""
    cfg_path = export_dir / CONFIG
    fix = "re-export it with python -m nmt.export CKPT DIR --overwrite"
    meta = read_json_object(cfg_path, missing=f", so {export_dir} is not a complete export", fix=fix)
    if meta.get("format") != EXPORT_FORMAT:
        raise UserError(f"{cfg_path} is not an nmt export config (\"format\": \"{EXPORT_FORMAT}\" expected); {fix}")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > EXPORT_VERSION:
        raise UserError(f"{cfg_path} has export format_version {version!r}, newer than this nmt reads "
                        f"({EXPORT_VERSION}); upgrade nmt or re-export with this version")
    if not isinstance(meta.get("model"), dict) or not isinstance(meta.get("tokenizer"), dict):
        raise UserError(f"{cfg_path} lacks its model or tokenizer section; {fix}")
    return meta


def _load_export(given: Path, export_dir: Path, lazy=None) -> InferenceCheckpoint:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    fix = "re-export it with python -m nmt.export CKPT DIR --overwrite"
    meta = read_export_config(export_dir)
    wpath = export_dir / WEIGHTS
    if not wpath.is_file():
        raise UserError(f"{wpath} is missing, so {export_dir} is not a complete export; {fix}")
    weights = meta.get("weights") or {}
    size = wpath.stat().st_size
    if weights.get("bytes") not in (None, size):
        raise UserError(f"{wpath} has {size} bytes where {CONFIG} says {weights.get('bytes')} (truncated?); {fix}")
    if weights.get("sha256") and sha256_file(wpath) != weights["sha256"]:
        raise UserError(f"{wpath} does not match the sha256 in {CONFIG} (corrupt); {fix}")
    try:
        state = load_file(wpath) if lazy is None else _load_eager_part(wpath, lazy)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{wpath} is not a readable safetensors file ({str(e)[:160]}); {fix}") from None
    spm = export_dir / (meta["tokenizer"].get("file") or SPM)
    if not spm.is_file():
        raise UserError(f"{spm} is missing: the export needs the vocabulary it was trained with; copy the run's "
                        f"spm.model there (sha256 {str(meta['tokenizer'].get('sha256'))[:12]}…) or {fix}")
    tok = Tokenizer(spm)
    want = meta["tokenizer"].get("sha256")
    if want and tok.sha256 != want:
        raise UserError(f"{spm} is not the vocabulary this model was trained with (sha256 {tok.sha256[:12]}… where "
                        f"{CONFIG} records {want[:12]}…); copy the run's spm.model there or {fix}")
    vocab = meta.get("vocab_size")
    if vocab is not None and vocab != tok.vocab_size:
        raise UserError(f"{spm} has {tok.vocab_size} pieces where {CONFIG} says {vocab}; {fix}")
    src = meta.get("source") or {}
    info = {"step": src.get("step"), "directions": meta.get("directions"), "world_size": src.get("world_size"),
            "best_step": src.get("best_step"), "tokenizer_sha256": want or tok.sha256, "source": src}
    return InferenceCheckpoint(given, "export", meta["model"], state, tok, meta.get("eval") or {}, info,
                               model_languages(meta.get("languages"), meta.get("directions")))


def _load_eager_part(wpath: Path, lazy) -> dict[str, torch.Tensor]:
    """The tensors of ``wpath`` except those ``lazy`` names (they stay in the file)."""
    from safetensors import safe_open

    with safe_open(str(wpath), framework="pt", device="cpu") as f:
        return {k: f.get_tensor(k) for k in f.keys() if not lazy(k)}


class Translator:
    """A model, its tokenizer and default search settings."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, defaults: EvalConfig, device: torch.device,
                 languages: list[str] | None = None):
        self.model = model.eval()
        self.languages = languages  # trained languages (None: unknown, nothing is refused)
        self.tokenizer = tokenizer
        self.defaults = defaults
        self.device = device
        self.banned = [tokenizer.bos_id] + list(range(4, 4 + len(all_tag_tokens())))

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", moe=None) -> Translator:
        """A .pt checkpoint, a .dcp directory or an export (see :func:`load_inference_checkpoint`);
        ``moe``: a :class:`nmt.moe_tools.options.MoEServeConfig` (dispatch mode, expert buffering)."""
        dev = resolve_device(device)
        if moe is None or not moe.active:
            ckpt = load_inference_checkpoint(path)
            model = ckpt.build_model()
        else:
            from nmt.moe_tools.serving import load_served

            ckpt, model = load_served(path, moe, dev)
        return cls(model.to(dev), ckpt.tokenizer, _dataclass_from(EvalConfig, ckpt.eval_config), dev,
                   ckpt.languages)

    def resolve_lang(self, code: str, where: str) -> str:
        """A code of this model: Flores-200 codes and aliases, or a language added to its vocabulary."""
        if code in self.tokenizer.added_languages():
            return code
        return normalize_lang(code, where=where)

    def check_languages(self, pairs: list[tuple[str, str]], allow_untrained: bool = False) -> None:
        """Refuse (UserError) a source or target language the model was not trained on, or only
        warn with ``allow_untrained``. Call it before anything is written."""
        if self.languages is None:
            return
        known = set(self.languages)
        outside = sorted({c for pair in pairs for c in pair if c not in known})
        if not outside:
            return
        shown = self.languages[:MAX_LISTED]
        listed = ", ".join(shown) + (f" … ({len(self.languages)} in all)" if len(shown) < len(self.languages) else "")
        if allow_untrained:
            print(f"warning: the model was not trained on {', '.join(outside)} (its languages: {listed}); "
                  f"translating anyway (allow_untrained_lang=true)", file=sys.stderr, flush=True)
            return
        raise UserError(f"the model was not trained on {', '.join(outside)}: its languages are {listed}; pass "
                        f"allow_untrained_lang=true to translate anyway, or use a model that knows the language")

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
        length_convention: str | None = None,
    ) -> list[str]:
        """One output per input line; empty (or whitespace-only) inputs give empty outputs.
        ``length_convention``: ``nmt`` | ``hf`` (nmt/eval/search.py); None: the checkpoint's."""
        d = self.defaults
        beam = beam_size or d.beam
        lenpen = d.lenpen if len_penalty is None else len_penalty
        bs = batch_size or d.batch_size
        src_lang = self.resolve_lang(src_lang, where="src_lang")
        tgt_lang = self.resolve_lang(tgt_lang, where="tgt_lang")
        tok = self.tokenizer
        src_tag, tgt_tag = tok.lang_id(src_lang), tok.lang_id(tgt_lang)
        max_src = self.model.cfg.max_positions - 2
        encoded = tok.encode_batch([line.strip() for line in lines])
        out = [""] * len(lines)
        todo = sorted((i for i, line in enumerate(lines) if line.strip()), key=lambda i: len(encoded[i]))
        src_idx, tgt_idx = src_tag - FIRST_TAG_ID, tgt_tag - FIRST_TAG_ID  # tag slot = language index
        for start in range(0, len(todo), bs):
            chunk = todo[start: start + bs]
            seqs = [source_sequence(encoded[i][:max_src], src_tag, tok.eos_id, self.model.cfg.source_convention)
                    for i in chunk]
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
                banned=self.banned, length_convention=length_convention or d.length_convention,
                src_lang=torch.full((n,), src_idx, device=self.device),
                tgt_lang=torch.full((n,), tgt_idx, device=self.device))
            for i, h in zip(chunk, hyps, strict=True):
                out[i] = tok.decode(h).replace("\n", " ").strip()
        return out
