"""Checks of a composed :class:`~nmt.config.Config` beyond its types: ranges and cross-field rules.

:func:`validate` runs once at start-up (train, params, sweeps) and raises a
:class:`~nmt.errors.UserError` that names the key, the bad value and the allowed range.
"""

from __future__ import annotations

import math
from typing import Any

from nmt.config import (
    INFERENCE_MODES,
    LENGTH_CONVENTIONS,
    AdapterConfig,
    Config,
    ModelConfig,
    MoEConfig,
    TrainerConfig,
)
from nmt.errors import UserError


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise UserError(f"config key {key}={value!r} is not allowed: {allowed}")


def validate_adapters(a: AdapterConfig) -> None:
    _check(a.kind in ("none", "language", "hyper"), "model.adapters.kind", a.kind, "use none, language or hyper")
    for key in ("size", "hyper_dim", "hyper_embed_dim"):
        _check(getattr(a, key) >= 1, f"model.adapters.{key}", getattr(a, key), "use a positive integer")
    _check(a.hyper_blocks >= 0, "model.adapters.hyper_blocks", a.hyper_blocks, "use 0 or more")
    _check(0 <= a.hyper_dropout < 1, "model.adapters.hyper_dropout", a.hyper_dropout, "use a value in [0, 1)")
    for key in ("encoder_key", "decoder_key"):
        _check(getattr(a, key) in ("src", "tgt", "pair"), f"model.adapters.{key}", getattr(a, key),
               "use src, tgt or pair")
    for key in ("hyper_encoder_inputs", "hyper_decoder_inputs"):
        v = list(getattr(a, key))
        _check(set(v) <= {"src", "tgt", "layer"}, f"model.adapters.{key}", v, "use a subset of [src,tgt,layer]")
    _check(a.kind != "none" or not a.freeze_base, "model.adapters.freeze_base", a.freeze_base,
           "freezing the base needs adapters: set model.adapters.kind=language or hyper")


def validate_moe(x: MoEConfig, m: ModelConfig) -> None:
    _check(x.experts >= 0, "model.moe.experts", x.experts, "use 0 (dense) or a positive count")
    if x.experts == 0:
        _check(x.encoder_freq == 0 and x.decoder_freq == 0, "model.moe.experts", x.experts,
               "set a positive expert count when model.moe.encoder_freq/decoder_freq place MoE layers")
        return
    _check(x.top_k in (1, 2), "model.moe.top_k", x.top_k, "use 1 or 2")
    _check(x.experts >= x.top_k, "model.moe.experts", x.experts, f"need at least top_k={x.top_k} experts")
    _check(x.expert_ffn_dim >= 0, "model.moe.expert_ffn_dim", x.expert_ffn_dim, "use 0 (model.ffn_dim) or more")
    for key, layers in (("encoder_freq", m.encoder_layers), ("decoder_freq", m.decoder_layers)):
        v = getattr(x, key)
        _check(0 <= v <= layers, f"model.moe.{key}", v, f"use 0 (no MoE layer) up to the layer count {layers}")
    _check(x.encoder_freq > 0 or x.decoder_freq > 0, "model.moe.encoder_freq", x.encoder_freq,
           "model.moe.experts > 0 needs MoE layers: set model.moe.encoder_freq and/or decoder_freq (e.g. 4)")
    policies = ("all", "sampling", "random")
    _check(x.second_expert_policy in policies, "model.moe.second_expert_policy", x.second_expert_policy,
           "use one of " + ", ".join(policies))
    _check(x.capacity_factor > 0, "model.moe.capacity_factor", x.capacity_factor, "use a value > 0 (1.0 = fairseq)")
    _check(x.eval_capacity_token_fraction <= 1.0, "model.moe.eval_capacity_token_fraction",
           x.eval_capacity_token_fraction, "use a value <= 1 (1.0: no drops at eval; <= 0: training rule)")
    for key in ("balance_loss_weight", "z_loss_weight", "cmr_loss_weight"):
        _check(getattr(x, key) >= 0, f"model.moe.{key}", getattr(x, key), "use a value >= 0")
    for key in ("eom", "fom", "cmr_gate_dropout"):
        _check(0 <= getattr(x, key) < 1, f"model.moe.{key}", getattr(x, key), "use a rate in [0, 1)")
    _check(0 <= x.cmr_budget <= 1, "model.moe.cmr_budget", x.cmr_budget, "use a share in [0, 1]")
    _check(x.cmr_budget_loss in ("global", "per_layer"), "model.moe.cmr_budget_loss", x.cmr_budget_loss,
           "use global (one term over all CMR layers, as fairseq) or per_layer")
    _check(x.capacity_rule in ("exact", "fairseq"), "model.moe.capacity_rule", x.capacity_rule,
           "use exact (ceil(cf*k*real_tokens/E)) or fairseq (int(cf*k*ceil(batch_tokens/E)), padding counted)")
    _check(x.impl in ("native", "fairscale"), "model.moe.impl", x.impl, "use native or fairscale")
    _check(x.inference in INFERENCE_MODES, "model.moe.inference", x.inference,
           "use capacity (the capacity cut, routed rows only), dynamic (no capacity) or static ([E, C, D] slots)")
    if x.impl == "fairscale":
        _check(x.top_k == 2 and x.second_expert_policy == "sampling" and not x.dropless and x.eom == 0
               and x.fom == 0 and not x.batch_prioritized and x.capacity_factor == 1.0,
               "model.moe.impl", x.impl, "fairscale's Top2Gate is fixed to top_k=2, second_expert_policy=sampling, "
               "capacity_factor=1.0, no dropless/EOM/FOM/batch_prioritized: change those keys or use impl=native")


FREEZE_GROUPS = ("embeddings", "encoder", "decoder", "experts")  # nmt.training.finetune names their parameters


def validate_finetune(t: TrainerConfig) -> None:
    _check(set(t.freeze) <= set(FREEZE_GROUPS) and len(set(t.freeze)) == len(t.freeze), "trainer.freeze",
           list(t.freeze), f"use a subset of [{','.join(FREEZE_GROUPS)}], each once (model.adapters.freeze_base "
           f"trains only adapters)")
    _check(0 < t.init_lr_scale <= 1, "trainer.init_lr_scale", t.init_lr_scale,
           "use a value in (0, 1]: the learning-rate multiplier of the parameters loaded from trainer.init_from")
    _check(t.init_lr_scale == 1 or bool(t.init_from), "trainer.init_lr_scale", t.init_lr_scale,
           "it scales the parameters loaded from trainer.init_from: set trainer.init_from or use 1")


def validate(cfg: Config) -> None:
    """Range and cross-field checks; the first violation raises a UserError naming its key."""
    m, d, s, o, t, e = cfg.model, cfg.data, cfg.sampling, cfg.optim, cfg.trainer, cfg.eval
    for key in ("d_model", "encoder_layers", "decoder_layers", "heads", "ffn_dim", "max_positions"):
        v = getattr(m, key)
        _check(v >= 1, f"model.{key}", v, "use a positive integer")
    _check(m.d_model % m.heads == 0, "model.heads", m.heads, f"must divide model.d_model={m.d_model}")
    _check((m.d_model // m.heads) % 2 == 0, "model.heads", m.heads, "head size d_model/heads must be even")
    _check(m.d_model % 2 == 0, "model.d_model", m.d_model, "use an even number (sinusoidal positions)")
    for key in ("dropout", "attention_dropout", "activation_dropout"):
        v = getattr(m, key)
        _check(0.0 <= v < 1.0, f"model.{key}", v, "use a value in [0, 1)")
    _check(m.activation in ("relu", "gelu"), "model.activation", m.activation, "use relu or gelu")
    _check(m.attention in ("auto", "sdpa", "math"), "model.attention", m.attention, "use auto, sdpa or math")
    _check(m.position_offset >= 0, "model.position_offset", m.position_offset,
           "use 2 (fairseq/M2M100, exports to Transformers) or 0 (models trained before it existed)")
    _check(m.source_convention == "tag_first", "model.source_convention", m.source_convention,
           "training builds [src_lang] x </s> batches (tag_first); legacy is for inference of imported models")
    validate_moe(m.moe, m)
    validate_adapters(m.adapters)

    _check(d.max_tokens >= 8, "data.max_tokens", d.max_tokens, "use at least 8 tokens per batch")
    _check(d.max_sentences >= 0, "data.max_sentences", d.max_sentences, "use 0 (no limit) or a positive number")
    _check(d.epoch_size >= 0, "data.epoch_size", d.epoch_size, "use 0 (training split size) or a positive number")
    _check(len(d.directions) > 0, "data.directions", d.directions, "list at least one direction, or [all]")

    methods = ("temperature", "uniform", "fixed", "unimax")
    _check(s.method in methods, "sampling.method", s.method, "use one of " + ", ".join(methods))
    _check(s.temperature > 0 and not math.isnan(s.temperature), "sampling.temperature", s.temperature,
           "use a temperature > 0 (1 = proportional, inf = uniform)")
    _check(s.method != "fixed" or len(s.weights) > 0, "sampling.weights", dict(s.weights),
           "method=fixed needs a weight per direction, e.g. ++sampling.weights={eng_Latn-fra_Latn:1}")
    _check(s.unimax_budget >= 0, "sampling.unimax_budget", s.unimax_budget, "use 0 (auto) or a positive budget")
    _check(s.unimax_max_epochs > 0, "sampling.unimax_max_epochs", s.unimax_max_epochs, "use a value > 0")

    _check(o.lr > 0, "optim.lr", o.lr, "use a learning rate > 0")
    _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas", list(o.betas),
           "use two values in [0, 1), e.g. [0.9,0.98]")
    _check(o.eps > 0, "optim.eps", o.eps, "use a value > 0")
    _check(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "use a value >= 0")
    _check(o.warmup_steps >= 0, "optim.warmup_steps", o.warmup_steps, "use a value >= 0")
    _check(0 <= o.warmup_init_lr <= o.lr, "optim.warmup_init_lr", o.warmup_init_lr,
           f"use a value in [0, optim.lr={o.lr}]")
    _check(o.schedule in ("inverse_sqrt", "cosine", "linear"), "optim.schedule", o.schedule,
           "use inverse_sqrt, cosine or linear")
    _check(0 <= o.min_lr <= o.lr, "optim.min_lr", o.min_lr, f"use a value in [0, optim.lr={o.lr}]")
    _check(o.clip_norm >= 0, "optim.clip_norm", o.clip_norm, "use 0 (off) or a positive norm")
    _check(0 <= o.label_smoothing < 1, "optim.label_smoothing", o.label_smoothing, "use a value in [0, 1)")

    _check(t.max_steps >= 1, "trainer.max_steps", t.max_steps, "use at least 1")
    _check(t.max_time_minutes >= 0, "trainer.max_time_minutes", t.max_time_minutes, "use 0 (no limit) or more")
    _check(o.warmup_steps <= t.max_steps, "optim.warmup_steps", o.warmup_steps,
           f"warm-up longer than trainer.max_steps={t.max_steps}: lower it or train longer")
    _check(t.update_freq >= 1, "trainer.update_freq", t.update_freq, "use at least 1")
    _check(t.precision in ("auto", "bf16", "fp32"), "trainer.precision", t.precision, "use auto, bf16 or fp32")
    _check(t.device in ("auto", "cpu", "cuda"), "trainer.device", t.device, "use auto, cpu or cuda")
    _check(t.threads >= 0, "trainer.threads", t.threads, "use 0 (default) or a positive count")
    for key in ("log_interval", "valid_interval"):
        v = getattr(t, key)
        _check(v >= 1, f"trainer.{key}", v, "use at least 1")
    _check(t.save_interval >= 0, "trainer.save_interval", t.save_interval, "use 0 (off) or a positive interval")
    _check(t.keep_last >= 1, "trainer.keep_last", t.keep_last, "keep at least 1")
    _check(m.adapters.kind != "hyper" or d.one_direction_per_batch, "data.one_direction_per_batch",
           d.one_direction_per_batch,
           "hyper-adapters are generated once per batch: set data.one_direction_per_batch=true")
    _check(str(t.resume).lower() in ("auto", "true", "false"), "trainer.resume", t.resume, "use auto, true or false")
    _check(t.parallel in ("ddp", "fsdp"), "trainer.parallel", t.parallel, "use ddp or fsdp")
    _check(t.checkpoint_format in ("auto", "pt", "dcp"), "trainer.checkpoint_format", t.checkpoint_format,
           "use auto, pt or dcp")
    _check(t.max_bad_updates >= 1, "trainer.max_bad_updates", t.max_bad_updates, "use at least 1")
    validate_finetune(t)
    _check(t.valid_max_sentences >= 0, "trainer.valid_max_sentences", t.valid_max_sentences, "use 0 (all) or more")
    for direction, n in d.subsample.items():
        _check(n >= 1, f"data.subsample.{direction}", n, "keep at least 1 pair (or remove the entry)")
    i = cfg.interference
    _check(i.arm in ("", "bi", "multi"), "interference.arm", i.arm, "use bi or multi (or leave it empty)")
    _check(not i.arm or bool(i.focus), "interference.focus", i.focus,
           "an interference run needs a focus direction, e.g. interference.focus=eng_Latn-rus_Cyrl")
    _check(i.focus_size >= 0, "interference.focus_size", i.focus_size, "use 0 (all pairs) or a positive count")
    _check(i.test_max_sentences >= 0, "interference.test_max_sentences", i.test_max_sentences,
           "use 0 (all) or a positive count")

    _check(e.beam >= 1, "eval.beam", e.beam, "use at least 1")
    _check(e.batch_size >= 1, "eval.batch_size", e.batch_size, "use at least 1")
    _check(e.length_convention in LENGTH_CONVENTIONS, "eval.length_convention", e.length_convention,
           "use nmt (default) or hf (Transformers' generate)")
