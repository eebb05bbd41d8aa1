"""Fine-tuning set-up: the model architecture taken from ``trainer.init_from`` (``model=from_init``),
frozen parameter groups (``trainer.freeze``) and a learning-rate multiplier for the parameters
that came from the checkpoint (``trainer.init_lr_scale``).

The Trainer calls :func:`take_architecture_from_init` before it builds anything,
:func:`freeze_parameters` after the weights are loaded, and :func:`lr_scales` for the optimizer.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from torch import nn

from nmt.config import Config, ModelConfig, MoEConfig, saved_model_config
from nmt.config_checks import FREEZE_GROUPS as GROUP_NAMES
from nmt.errors import UserError
from nmt.models.build import is_adapter_parameter

FROM_INIT = "from_init"  # model.preset of conf/model/from_init.yaml
# Keys a fine-tuning run sets itself (regularisation, kernels, added adapters); every other
# model.* key describes the checkpoint's function and is taken from it.
TRAINING_KEYS = frozenset({"preset", "dropout", "attention_dropout", "activation_dropout", "attention", "adapters"})
TRAINING_MOE_KEYS = frozenset({"eom", "fom", "balance_loss_weight", "z_loss_weight", "cmr_loss_weight",
                               "cmr_gate_dropout", "impl", "capacity_factor"})
# trainer.freeze groups: parameter-name prefixes (nmt.models.transformer.Transformer's names).
FREEZE_GROUPS: dict[str, tuple[str, ...]] = {
    "embeddings": ("embed.",),
    "encoder": ("encoder_layers.", "encoder_ln."),
    "decoder": ("decoder_layers.", "decoder_ln."),
    "experts": (".ffn.experts.",),  # MoE expert FFNs (routers stay trainable)
}


def init_model_config(path: Path) -> dict[str, Any]:
    """The model config recorded by a checkpoint or export (read without its weights for an export)."""
    from nmt.inference import checkpoint_kind, load_inference_checkpoint, read_export_config

    kind, where = checkpoint_kind(path)
    model = read_export_config(where)["model"] if kind == "export" else load_inference_checkpoint(path).model_config
    return saved_model_config(model)


def _architecture_items(model: dict[str, Any]) -> dict[str, Any]:
    """``{"d_model": …, "moe.experts": …}``: the keys taken from the checkpoint, flattened."""
    out = {k: v for k, v in model.items() if k not in TRAINING_KEYS and k != "moe"}
    out.update({f"moe.{k}": v for k, v in (model.get("moe") or {}).items() if k not in TRAINING_MOE_KEYS})
    return out


def take_architecture_from_init(cfg: Config, resolved: dict[str, Any]) -> None:
    """With ``model=from_init``, fill ``cfg.model`` (and the resolved config the run records) with the
    ``trainer.init_from`` checkpoint's architecture. A model key the run sets to a value other than
    the schema default and the checkpoint's is refused (it would not load, or change the model)."""
    if cfg.model.preset != FROM_INIT:
        return
    if not cfg.trainer.init_from:
        raise UserError("model=from_init (recipe nllb_finetune) takes the architecture from the model it "
                        "fine-tunes: set trainer.init_from=EXPORT_DIR (e.g. the output of python -m nmt.import_hf)")
    theirs = _architecture_items(init_model_config(Path(cfg.trainer.init_from)))
    ours = _architecture_items(asdict(cfg.model))
    default = _architecture_items(asdict(ModelConfig()))
    for key, value in theirs.items():
        if key not in ours:
            continue  # a key this version of nmt no longer has
        if ours[key] != default[key] and ours[key] != value:
            raise UserError(f"config key model.{key}={ours[key]!r} conflicts with trainer.init_from="
                            f"{cfg.trainer.init_from}, whose model has {value!r}: drop the override (model=from_init "
                            f"takes the architecture from the checkpoint)")
        _set(cfg.model, resolved["model"], key, value)


def _set(model: ModelConfig, resolved: dict[str, Any], key: str, value: Any) -> None:
    if key.startswith("moe."):
        name = key.removeprefix("moe.")
        setattr(model.moe, name, value)
        resolved["moe"][name] = value
    else:
        setattr(model, key, value)
        resolved[key] = value


def freeze_parameters(model: nn.Module, groups: list[str]) -> int:
    """Stop the gradients of ``trainer.freeze`` groups (names checked by nmt.config_checks.validate); returns
    the number of frozen tensors."""
    prefixes = tuple(p for g in groups for p in FREEZE_GROUPS[g])
    frozen = 0
    for name, p in model.named_parameters():
        if any(name.startswith(pre) if not pre.startswith(".") else pre in name for pre in prefixes):
            p.requires_grad_(False)
            frozen += 1
    if groups and not frozen:
        raise UserError(f"config key trainer.freeze={list(groups)} matches no parameter of this model "
                        f"(e.g. experts in a dense model): remove it")
    return frozen


def lr_scales(model: nn.Module, init_from: str, scale: float) -> dict[int, float]:
    """``id(parameter) → multiplier of optim.lr``: ``trainer.init_lr_scale`` for every parameter loaded
    from ``trainer.init_from`` (all but adapters and the hyper-network), none otherwise. ``model`` is
    the one the optimizer sees (DDP's ``module.`` prefix is ignored; FSDP2 keeps the names)."""
    if not init_from or scale == 1.0:
        return {}
    return {id(p): scale for name, p in model.named_parameters()
            if not is_adapter_parameter(name.removeprefix("module."))}


assert {f.name for f in fields(MoEConfig)} >= TRAINING_MOE_KEYS  # the names above are MoEConfig's
assert tuple(FREEZE_GROUPS) == GROUP_NAMES  # the names nmt.config_checks.validate accepts
