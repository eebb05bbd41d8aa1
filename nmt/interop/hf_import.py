"""A Transformers NLLB-200 / M2M100 directory → an nmt export directory (``python -m nmt.import_hf``).

The result is what ``python -m nmt.export`` writes (``model.safetensors``, ``config.json``,
``spm.model``), so ``nmt.translate``, ``nmt.evaluate``, ``nmt.export`` and ``trainer.init_from``
read it. The vocabulary is rebuilt in nmt's id layout and the embedding rows permuted to
match (nmt/interop/vocab_layout.py); docs/interop.md has the tables.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from pathlib import Path

import torch

from nmt import __version__
from nmt.config import ModelConfig, MoEConfig
from nmt.data.tokenizer import FIRST_TAG_ID
from nmt.errors import UserError
from nmt.interop import hf_read
from nmt.interop.absent_rows import absent_ids
from nmt.interop.m2m_codes import M2M100_TO_NMT, outside_flores
from nmt.interop.m2m_vocab import VOCAB_FILE, m2m_spm_to_internal
from nmt.interop.state_map import (
    M2M100_NAMES,
    NLLB_MOE_NAMES,
    hf_to_ours,
    moe_ffn_to_ours,
)
from nmt.interop.vocab_layout import SPARE, make_layout, spm_pb2, spm_to_internal
from nmt.langs import FLORES200

ARCHITECTURES = {"m2m_100": "dense", "nllb-moe": "moe"}
# config.json keys whose value must be this for the computation to be ours (key -> (allowed, why))
FIXED = {"pad_token_id": ((1,), "the fairseq layout has <pad> at 1"),
         "eos_token_id": ((2,), "the fairseq layout has </s> at 2"),
         "decoder_start_token_id": ((2, None), "nmt's decoder starts with </s>"),
         "tie_word_embeddings": ((True, None), "nmt ties input and output embeddings"),
         "activation_function": (("relu", "gelu"), "nmt has relu and gelu feed-forward layers")}


def _check_config(hf_cfg: dict, where: Path) -> str:
    kind = ARCHITECTURES.get(hf_cfg.get("model_type", ""))
    if kind is None:
        arch = hf_cfg.get("architectures") or [hf_cfg.get("model_type")]
        raise UserError(f"{where}: model_type {hf_cfg.get('model_type')!r} ({arch[0]}) is not one nmt imports; "
                        f"use M2M100ForConditionalGeneration (NLLB-200 dense) or NllbMoeForConditionalGeneration")
    for key, (allowed, why) in FIXED.items():
        if hf_cfg.get(key) not in allowed:
            raise UserError(f"{where}: {key}={hf_cfg.get(key)!r} would change the computation ({why}); "
                            f"only {' or '.join(map(repr, allowed))} can be imported")
    for a, b in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
        if hf_cfg.get(a) != hf_cfg.get(b):
            raise UserError(f"{where}: {a}={hf_cfg.get(a)} differs from {b}={hf_cfg.get(b)}; nmt uses one value "
                            f"for encoder and decoder")
    if kind == "moe":
        _check_moe(hf_cfg, where)
    return kind


def _check_moe(hf_cfg: dict, where: Path) -> None:
    if hf_cfg.get("router_bias"):
        raise UserError(f"{where}: router_bias=true; nmt's router has no bias (NLLB-MoE's has none)")
    if hf_cfg.get("second_expert_policy", "all") not in ("all", "sampling", "random"):
        raise UserError(f"{where}: second_expert_policy={hf_cfg.get('second_expert_policy')!r} is unknown to nmt")
    if hf_cfg.get("router_dtype", "float32") != "float32":
        raise UserError(f"{where}: router_dtype={hf_cfg.get('router_dtype')!r}; nmt routes in float32")


def moe_config(hf_cfg: dict) -> MoEConfig:
    """``model.moe`` for an NllbMoe config. ``expert_capacity`` (a fixed training capacity) has no
    counterpart: the import uses fairseq's rule, 2·ceil(S/E) with S counting padding (what
    Transformers does when ``expert_capacity`` is None)."""
    return MoEConfig(
        experts=int(hf_cfg["num_experts"]), top_k=2, capacity_factor=1.0, capacity_rule="fairseq",
        encoder_freq=int(hf_cfg.get("encoder_sparse_step", 0)),
        decoder_freq=int(hf_cfg.get("decoder_sparse_step", 0)),
        second_expert_policy=hf_cfg.get("second_expert_policy", "all"),
        eval_capacity_token_fraction=float(hf_cfg.get("moe_eval_capacity_token_fraction", 1.0)),
        batch_prioritized=bool(hf_cfg.get("batch_prioritized_routing", False)),
        normalize_before_dropping=bool(hf_cfg.get("normalize_router_prob_before_dropping", False)),
        eom=float(hf_cfg.get("moe_token_dropout", 0.0)),
        balance_loss_weight=float(hf_cfg.get("router_aux_loss_coef", 0.01)),
        z_loss_weight=float(hf_cfg.get("router_z_loss_coef", 0.0)))


def model_config(hf_cfg: dict, convention: str, kind: str = "dense") -> dict:
    """Our model config dict for a Transformers M2M100 / NllbMoe config."""
    cfg = ModelConfig(
        preset="hf-import", d_model=hf_cfg["d_model"], encoder_layers=hf_cfg["encoder_layers"],
        decoder_layers=hf_cfg["decoder_layers"], heads=hf_cfg["encoder_attention_heads"],
        ffn_dim=hf_cfg["encoder_ffn_dim"], dropout=float(hf_cfg.get("dropout", 0.1)),
        attention_dropout=float(hf_cfg.get("attention_dropout", 0.0)),
        activation_dropout=float(hf_cfg.get("activation_dropout", 0.0)),
        activation=hf_cfg.get("activation_function", "relu"), max_positions=int(hf_cfg["max_position_embeddings"]),
        scale_embedding=bool(hf_cfg.get("scale_embedding", True)), position_offset=2, source_convention=convention)
    if kind == "moe":
        cfg.moe = moe_config(hf_cfg)
    return dataclasses.asdict(cfg)


def _embedding_rows(state: dict, expected: int, where: Path) -> int:
    rows = state["embed.weight"].shape[0]
    if rows < expected:
        raise UserError(f"{where}: the embedding has {rows} rows but the tokenizer has {expected} ids; the "
                        f"tokenizer files are not this checkpoint's (copy the model's own tokenizer files)")
    return rows


def _split_spares(tail: list[str], has_mask: bool, where: Path) -> tuple[list[str], list[str]]:
    """The language codes and the spare tag tokens (``__spareN__``: an hf export of a model trained
    by nmt, whose ``<mask>`` is its last spare slot) among the added tokens after the pieces."""
    spares = [t for t in tail if SPARE.match(t)]
    codes = tail[: len(tail) - len(spares)]
    if spares and (tail[len(codes):] != spares or not has_mask):
        raise UserError(f"{where}: the spare tag tokens (__spareN__) must follow the language codes and precede "
                        f"<mask>, as nmt.export --format hf writes them; this tokenizer has another layout")
    return codes, spares


@dataclasses.dataclass
class _Vocabulary:
    """The checkpoint's vocabulary in nmt's layout and what ``make_layout`` needs to map it."""

    spm: bytes  # our SentencePiece model
    codes: list[str]  # nmt codes, in fairseq order
    codes_from: str
    tokenizer: str = "nllb"  # or "m2m100"
    has_mask: bool = False
    spares: list[str] = dataclasses.field(default_factory=list)
    piece_fids: list[int] | None = None  # None: our piece k is fairseq piece k (NLLB)
    added: dict[str, int] = dataclasses.field(default_factory=dict)  # non-Flores code -> spare slot id
    extra: dict = dataclasses.field(default_factory=dict)  # more for config.json's source.hf


def _read_vocabulary(src: Path, hf_cfg: dict) -> _Vocabulary:
    spm_bytes = hf_read.read_spm(src)
    proto = spm_pb2.ModelProto()
    try:
        proto.ParseFromString(spm_bytes)
    except Exception:  # noqa: BLE001 - protobuf DecodeError
        raise UserError(f"{src / hf_read.SPM_FILE} is not a SentencePiece model") from None
    where = str(src / hf_read.SPM_FILE)
    if hf_read.is_m2m_tokenizer(src):
        return _m2m_vocabulary(src, spm_bytes, int(hf_cfg.get("vocab_size") or 0), where)
    tail, has_mask, codes_from = hf_read.read_codes(src, len(proto.pieces))
    codes, spares = _split_spares(tail, has_mask, src / codes_from)
    return _Vocabulary(spm_to_internal(spm_bytes, has_mask and not spares, where), codes, codes_from,
                       has_mask=has_mask, spares=spares)


def _m2m_vocabulary(src: Path, spm_bytes: bytes, config_rows: int, where: str) -> _Vocabulary:
    """M2M-100: pieces through ``vocab.json``, ``__xx__`` codes renamed (nmt/interop/m2m_codes.py);
    codes outside Flores-200 take spare tag slots."""
    vocab, m2m = hf_read.read_m2m_tokenizer(src, config_rows)
    codes = [M2M100_TO_NMT[c] for c in m2m]
    extra = outside_flores(codes)
    ours, fids = m2m_spm_to_internal(spm_bytes, vocab, where, extra)
    added = {c: FIRST_TAG_ID + len(FLORES200) + i for i, c in enumerate(extra)}
    unread = sum(f < 0 for f in fids)
    return _Vocabulary(ours, codes, f"{VOCAB_FILE} (language_codes of tokenizer_config.json)", "m2m100",
                       piece_fids=fids, added=added,
                       extra={"m2m_codes": m2m, "pieces_read_as_unk": max(unread - 2, 0)})


def import_hf(hf_dir: str | Path, out_dir: str | Path, overwrite: bool = False) -> dict:
    """Convert ``hf_dir`` into an nmt export in ``out_dir``; returns its config.json object."""
    from nmt.export import check_out_dir, tensors_for_safetensors, write_export_dir
    from nmt.inference import EXPORT_FORMAT, EXPORT_VERSION, SPM, WEIGHTS
    from nmt.models.build import build_model

    src, out = Path(hf_dir), Path(out_dir)
    if not src.is_dir():
        raise UserError(f"{src} is not a directory; pass a Transformers model directory (save_pretrained output)")
    check_out_dir(out, src, overwrite)
    hf_cfg = hf_read.read_json(src / "config.json")
    kind = _check_config(hf_cfg, src / "config.json")
    vocab = _read_vocabulary(src, hf_cfg)
    convention = "tag_first" if vocab.tokenizer == "m2m100" else hf_read.source_convention(src)
    ours_spm, codes, codes_from = vocab.spm, vocab.codes, vocab.codes_from
    n_internal = len(spm_pb2.ModelProto.FromString(ours_spm).pieces)
    layout = make_layout(n_internal, codes, vocab.has_mask, vocab.spares, vocab.piece_fids, vocab.added)

    hf_state = hf_read.read_weights(src)
    bias = hf_state.pop("final_logits_bias", None)
    if bias is not None and bool(bias.ne(0).any()):
        raise UserError(f"{src}: final_logits_bias is non-zero; nmt's output layer has no bias")
    mcfg = model_config(hf_cfg, convention, kind)
    mcfg["absent_ids"] = absent_ids(layout)  # -inf logits: Transformers' softmax has no such rows
    ffn_map = moe_ffn_to_ours(mcfg["moe"]["encoder_freq"], mcfg["moe"]["decoder_freq"]) if kind == "moe" else None
    state = hf_to_ours(hf_state, hf_cfg["encoder_layers"], hf_cfg["decoder_layers"], str(src), ffn_map,
                       NLLB_MOE_NAMES if kind == "moe" else M2M100_NAMES)
    rows = _embedding_rows(state, layout.fairseq_size, src)
    state["embed.weight"] = layout.to_internal(state["embed.weight"][: layout.fairseq_size])
    from nmt.inference import _dataclass_from

    model = build_model(_dataclass_from(ModelConfig, mcfg), n_internal)
    model.load_state_dict(state, strict=True)  # proves the map covers the architecture
    state = tensors_for_safetensors({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    sha = hashlib.sha256(ours_spm).hexdigest()
    config = {
        "format": EXPORT_FORMAT, "format_version": EXPORT_VERSION, "nmt_version": __version__,
        "torch_version": torch.__version__, "model": mcfg, "vocab_size": n_internal,
        "eval": {"length_convention": "hf"},  # translate as Transformers' generate does (docs/interop.md)
        "directions": [], "languages": sorted(codes), "tokenizer": {"file": SPM, "sha256": sha},
        "weights": {"file": WEIGHTS, "tensors": len(state), "parameters": sum(t.numel() for t in state.values()),
                    "dtypes": sorted({str(t.dtype).removeprefix("torch.") for t in state.values()})},
        "source": {"kind": "hf", "checkpoint": str(src.resolve()), "step": None,
                   "hf": {"model_type": hf_cfg.get("model_type"), "architectures": hf_cfg.get("architectures"),
                          "tokenizer": vocab.tokenizer, "codes": codes, "codes_from": codes_from,
                          "mask": vocab.has_mask, "spares": vocab.spares, "source_convention": convention,
                          "embedding_rows": rows, "unused_rows_dropped": rows - layout.fairseq_size,
                          **vocab.extra}},
    }
    if vocab.added:
        config["added_languages"] = vocab.added
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / SPM).write_bytes(ours_spm)
        write_export_dir(out, state, config, Path(tmp) / SPM, what=f"checkpoint {src}")
    spare = f"; {', '.join(vocab.added)} (no Flores-200 code) in spare tag slots" if vocab.added else ""
    print(f"imported {src} ({hf_cfg.get('model_type')}, {len(codes)} language codes from {codes_from}, "
          f"source convention {convention}{spare}); wrote {out}/: use it with python -m nmt.translate ckpt={out} "
          f"src_lang=eng_Latn tgt_lang=fra_Latn", flush=True)
    return config

