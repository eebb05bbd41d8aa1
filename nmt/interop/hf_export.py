"""``python -m nmt.export CKPT OUT --format hf``: a checkpoint → a Transformers M2M100 (or NllbMoe) directory.

OUT holds ``config.json``, ``generation_config.json``, ``model.safetensors`` (written by
Transformers' own ``save_pretrained``), ``sentencepiece.bpe.model`` in the NLLB layout,
``tokenizer.json`` and ``tokenizer_config.json``. ``AutoModelForSeq2SeqLM`` and
``AutoTokenizer`` load it with no custom code; see docs/interop.md for the id layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from nmt.config import saved_model_config
from nmt.data.tokenizer import Tokenizer
from nmt.errors import UserError
from nmt.fileio import atomic_dir
from nmt.interop.hf_tokenizer import write_hf_tokenizer
from nmt.interop.m2m_vocab import piece_fids_of, write_m2m_tokenizer
from nmt.interop.state_map import NLLB_MOE_NAMES, moe_ffn_to_hf, ours_to_hf
from nmt.interop.vocab_layout import FAIRSEQ_SPECIALS, Layout, make_layout, spare_tokens, spm_to_fairseq
from nmt.langs import FLORES200

MARKER = "nmt_export"  # key in config.json that marks a directory this exporter wrote


def _refuse_unmappable(cfg: dict, src: Path) -> None:
    """One error naming the first option M2M100 cannot express."""
    if cfg.get("position_offset") != 2:
        raise UserError(f"{src} was trained with model.position_offset={cfg.get('position_offset')} (positions start "
                        f"at table row 0, a checkpoint from before the option existed); M2M100 starts them at row 2, "
                        f"so its outputs would differ: only models with position_offset=2 export to Transformers")
    moe = cfg.get("moe") or {}
    if moe.get("experts"):
        for key, ok, why in (("top_k", moe.get("top_k") == 2, "NllbMoe routes to 2 experts"),
                             ("expert_ffn_dim", moe.get("expert_ffn_dim") in (0, cfg["ffn_dim"]),
                              "NllbMoe experts have the dense FFN size"),
                             ("cmr", not moe.get("cmr"), "NllbMoe has no conditional routing gate"),
                             ("fom", not moe.get("fom"), "NllbMoe has no final output masking"),
                             ("inverted_masking", not moe.get("inverted_masking"),
                              "NllbMoe scales expert outputs by 1 - p at evaluation")):
            if not ok:
                raise UserError(f"{src}: model.moe.{key}={moe.get(key)!r} has no NllbMoe counterpart ({why}); "
                                f"only MoE models with NLLB-MoE's options export to Transformers")
    if (cfg.get("adapters") or {}).get("kind", "none") != "none":
        raise UserError(f"{src} has model.adapters.kind={cfg['adapters']['kind']}: M2M100 has no adapters")


def hf_config(cfg: dict, vocab: int):
    """M2M100Config, or NllbMoeConfig for a MoE model (``expert_capacity``, a training-only fixed
    capacity with no nmt counterpart, keeps Transformers' default; docs/interop.md)."""
    from transformers import M2M100Config, NllbMoeConfig

    common = dict(
        vocab_size=vocab, d_model=cfg["d_model"], encoder_layers=cfg["encoder_layers"],
        decoder_layers=cfg["decoder_layers"], encoder_attention_heads=cfg["heads"],
        decoder_attention_heads=cfg["heads"], encoder_ffn_dim=cfg["ffn_dim"], decoder_ffn_dim=cfg["ffn_dim"],
        activation_function=cfg["activation"], dropout=cfg["dropout"], attention_dropout=cfg["attention_dropout"],
        activation_dropout=cfg["activation_dropout"], encoder_layerdrop=0.0, decoder_layerdrop=0.0,
        max_position_embeddings=cfg["max_positions"], scale_embedding=cfg["scale_embedding"],
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, tie_word_embeddings=True)
    moe = cfg.get("moe") or {}
    if not moe.get("experts"):
        return M2M100Config(**common)
    return NllbMoeConfig(
        **common, num_experts=moe["experts"], encoder_sparse_step=moe["encoder_freq"],
        decoder_sparse_step=moe["decoder_freq"], router_bias=False, router_dtype="float32",
        second_expert_policy=moe["second_expert_policy"],
        moe_eval_capacity_token_fraction=moe["eval_capacity_token_fraction"],
        batch_prioritized_routing=moe["batch_prioritized"],
        normalize_router_prob_before_dropping=moe["normalize_before_dropping"], moe_token_dropout=moe["eom"],
        router_aux_loss_coef=moe["balance_loss_weight"], router_z_loss_coef=moe["z_loss_weight"])


def export_hf(ckpt_path: str | Path, out_dir: str | Path, overwrite: bool = False) -> dict:
    """Write the Transformers (M2M100 + NLLB tokenizer) export of ``ckpt_path``; returns config.json."""
    from transformers import GenerationConfig, M2M100ForConditionalGeneration, NllbMoeForConditionalGeneration

    from nmt.export import check_out_dir
    from nmt.inference import load_inference_checkpoint

    src, out = Path(ckpt_path), Path(out_dir)
    check_out_dir(out, src, overwrite, is_earlier=_is_earlier_hf_export)
    ck = load_inference_checkpoint(src)
    cfg = saved_model_config(ck.model_config)
    _refuse_unmappable(cfg, src)
    hf_info = (ck.info.get("source") or {}).get("hf") or {}
    codes = list(hf_info.get("codes") or FLORES200)
    m2m = hf_info.get("tokenizer") == "m2m100"
    added = ck.tokenizer.added_languages()
    if set(added) - (set(codes) if m2m else set()):  # not Flores-200: an NLLB tokenizer has no slot for them
        raise UserError(f"{src} has languages in spare tag slots ({', '.join(sorted(set(added) - set(codes)))}, "
                        f"added by nmt.vocab add-language); the Transformers export does not carry them yet: export "
                        f"a checkpoint without them, or use --format nmt")
    state = ck.build_model().state_dict()
    spm_bytes = ck.tokenizer.path.read_bytes()
    if m2m:  # M2M-100's own tokenizer (vocab.json) and rows: nmt/interop/m2m_vocab.py
        layout = make_layout(ck.tokenizer.vocab_size, codes, False, [], piece_fids_of(spm_bytes), added)
    else:
        fs_spm, has_mask = spm_to_fairseq(spm_bytes, str(ck.tokenizer.path))
        spares = _exported_spares(hf_info, has_mask)
        layout = make_layout(ck.tokenizer.vocab_size, codes, has_mask, spares)
    emb = layout.to_fairseq_layout(state["embed.weight"].float())
    if not layout.has_mask and not m2m:  # NLLB's tokenizer always has <mask>: a zero row, like our <pad> row
        emb = torch.cat([emb, emb.new_zeros(1, emb.shape[1])])
    state = {**state, "embed.weight": emb}
    moe = cfg.get("moe") or {}
    if moe.get("experts"):
        hf_state = ours_to_hf(state, cfg["encoder_layers"], cfg["decoder_layers"],
                              moe_ffn_to_hf(moe["encoder_freq"], moe["decoder_freq"]), NLLB_MOE_NAMES)
    else:
        hf_state = ours_to_hf(state, cfg["encoder_layers"], cfg["decoder_layers"])
    config = hf_config(cfg, emb.shape[0])
    model = (NllbMoeForConditionalGeneration if moe.get("experts") else M2M100ForConditionalGeneration)(config)
    missing, unexpected = model.load_state_dict(hf_state, strict=False)
    tied = ("embed_tokens.weight", "lm_head.weight", "embed_positions.weights")
    missing = [k for k in missing if not k.endswith(tied)]
    if missing or unexpected:  # a bug, not a user error: the map must cover the architecture
        raise RuntimeError(f"M2M100 state mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.tie_weights()
    legacy = cfg.get("source_convention") == "legacy"
    eval_cfg = ck.eval_config or {}
    gen = GenerationConfig(decoder_start_token_id=2, bos_token_id=0, eos_token_id=2, pad_token_id=1,
                           num_beams=int(eval_cfg.get("beam", 4)), length_penalty=float(eval_cfg.get("lenpen", 1.0)),
                           max_length=cfg["max_positions"], early_stopping=True)  # nmt's stopping rule
    model.generation_config = gen
    setattr(model.config, MARKER, {"source": str(src.resolve()), "codes": codes, "spares": layout.spares,
                                     "source_convention": cfg.get("source_convention")})
    with atomic_dir(out, overwrite=True) as tmp:
        model.save_pretrained(str(tmp))
        if m2m:
            write_m2m_tokenizer(tmp, spm_bytes, _m2m_vocab(ck.tokenizer, layout), _m2m_codes_name(hf_info))
        else:
            write_hf_tokenizer(tmp, fs_spm, codes, legacy, spares)
    print(f"wrote {out}/ (Transformers {type(model).__name__}, {emb.shape[0]} ids, {len(codes)} language codes); "
          f"load it with AutoModelForSeq2SeqLM.from_pretrained and generate with "
          f"forced_bos_token_id=<target code id>", flush=True)
    return json.loads((out / "config.json").read_text(encoding="utf-8"))


def _m2m_vocab(tok: Tokenizer, layout: Layout) -> dict[str, int]:
    """``vocab.json`` of an M2M-100 import: fairseq's specials, then every piece with a fairseq row
    below the language codes (the pieces read as ``<unk>`` have none)."""
    out = dict(zip(FAIRSEQ_SPECIALS, range(4), strict=True))
    first_code = 4 + layout.n_pieces
    out.update({tok.id_to_piece(i): f for i, f in enumerate(layout.fairseq_id) if 4 <= f < first_code})
    return out


def _m2m_codes_name(hf_info: dict) -> str:
    from transformers.models.m2m_100.tokenization_m2m_100 import FAIRSEQ_LANGUAGE_CODES

    names = [k for k, v in FAIRSEQ_LANGUAGE_CODES.items() if v == hf_info.get("m2m_codes")]
    if not names:
        raise UserError("the import records M2M-100 codes that are none of M2M100Tokenizer's lists; re-import it")
    return names[0]


def _exported_spares(hf_info: dict, has_mask: bool) -> list[str]:
    """The spare tag slots the export keeps as tokens after the codes. A model trained here keeps
    all but the last, which becomes Transformers' ``<mask>``: the export's rows are exactly ours,
    permuted (docs/interop.md). An import keeps what it came with (none for NLLB, whose
    ``<mask>`` is a real row and whose absent rows are ``model.absent_ids``)."""
    if hf_info:
        return list(hf_info.get("spares") or [])
    return [] if has_mask else spare_tokens()[:-1]


def _is_earlier_hf_export(out: Path) -> bool:
    try:
        return MARKER in json.loads((out / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False
