"""Typed configuration schema (registered in Hydra's ConfigStore); its checks are in nmt/config_checks.py.

Hydra composes ``conf/config.yaml`` + group files on top of :class:`Config`, so a value of the
wrong type is rejected by OmegaConf with the key named. :func:`nmt.config_checks.validate` then checks ranges and
cross-field rules once at start-up and raises a :class:`~nmt.errors.UserError` that names the
key, the bad value and the allowed range.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

INFERENCE_MODES = ("capacity", "dynamic", "static")  # MoEConfig.inference, see nmt/models/moe/layer.py
BUFFER_POLICIES = ("lru", "lifo")  # expert buffering's eviction policy, see nmt/models/moe/buffer.py


@dataclass
class MoEConfig:
    """Mixture-of-Experts feed-forward layers (GShard/NLLB semantics, see nmt/models/moe/)."""

    experts: int = 0  # 0: a dense model
    top_k: int = 2  # 1 | 2
    expert_ffn_dim: int = 0  # 0: model.ffn_dim
    encoder_freq: int = 0  # encoder layer i is MoE when (i+1) % encoder_freq == 0; 0: none
    decoder_freq: int = 0  # same for the decoder
    second_expert_policy: str = "all"  # all (NLLB) | sampling (Gumbel noise) | random (keep if 2*g2 > U)
    capacity_factor: float = 1.0  # cf in the capacity rule
    capacity_rule: str = "exact"  # exact: ceil(cf*k*real_tokens/E) | fairseq: int(cf*k*ceil(S/E)), S with padding
    dropless: bool = False  # no capacity: every assignment is computed
    eval_capacity_token_fraction: float = 1.0  # eval C = ceil(fraction * tokens); <= 0: training rule
    batch_prioritized: bool = False  # fill slots by router confidence instead of token order
    normalize_before_dropping: bool = False  # NLLB: renormalise g1, g2 over the surviving assignments
    balance_loss_weight: float = 0.01  # load-balancing loss weight (summed over layers)
    z_loss_weight: float = 0.0  # router z-loss weight (ST-MoE); 0: off
    eom: float = 0.0  # expert output masking rate
    fom: float = 0.0  # final output masking rate
    inverted_masking: bool = False  # EOM/FOM: scale by 1/(1-p) in training instead of (1-p) at eval
    cmr: bool = False  # conditional MoE routing: y = (1-g) dense(x) + g moe(x)
    cmr_gate_dropout: float = 0.0
    cmr_budget: float = 0.8  # target share p of tokens sent to the MoE branch
    cmr_loss_weight: float = 0.1
    cmr_budget_loss: str = "global"  # global: w*|sum used / sum total - p| over all CMR layers (fairseq) | per_layer
    impl: str = "native"  # native | fairscale (reference backend, optional extra)
    inference: str = "capacity"  # evaluation dispatch: capacity (cut, routed rows) | dynamic | static


@dataclass
class AdapterConfig:
    """Language adapters and hyper-adapters after every layer (nmt/models/adapters.py)."""

    kind: str = "none"  # none | language | hyper
    size: int = 64  # bottleneck width
    encoder_key: str = "src"  # language adapters: src | tgt | pair
    decoder_key: str = "tgt"
    ln_affine: bool = True  # language adapters: a LayerNorm scale/shift per adapter
    languages: list[str] = field(default_factory=list)  # filled from the training directions at start
    pairs: list[str] = field(default_factory=list)  # ditto (for key=pair)
    freeze_base: bool = False  # train only adapter / hyper-network parameters
    hyper_dim: int = 128  # d_h
    hyper_embed_dim: int = 64
    hyper_blocks: int = 2
    hyper_dropout: float = 0.0
    hyper_encoder_inputs: list[str] = field(default_factory=lambda: ["src", "tgt", "layer"])
    hyper_decoder_inputs: list[str] = field(default_factory=lambda: ["src", "tgt", "layer"])
    hyper_generate_ln: bool = False  # also generate the adapter LayerNorm's scale (1 + g) and shift
    hyper_rescale: bool = True  # divide generated tensors by sqrt(d_h) (the paper's fix)


@dataclass
class ModelConfig:
    preset: str = "tiny"
    d_model: int = 128
    encoder_layers: int = 2
    decoder_layers: int = 2
    heads: int = 4
    ffn_dim: int = 512
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    activation: str = "relu"  # relu | gelu
    max_positions: int = 512
    scale_embedding: bool = True
    attention: str = "auto"  # auto (sdpa; math for bf16 on a CPU with bf16 units) | sdpa | math
    # Row of the sinusoidal table that position 0 uses. 2 = fairseq/M2M100 (positions start at
    # padding_idx + 1 in fairseq's layout), so new models export exactly to Transformers; a saved
    # config without this key (written before it existed) means 0: see saved_model_config.
    position_offset: int = 2
    # Encoder input: "tag_first" = [src_tag] x </s> (NLLB paper, Transformers since 2023) |
    # "legacy" = x </s> [src_tag] (Transformers' legacy_behaviour=True); set by nmt.import_hf.
    source_convention: str = "tag_first"
    # Sorted vocabulary ids whose rows the model's origin lacked (nmt.import_hf: the tag slots the
    # Transformers checkpoint has no code for); their logits are -inf wherever a distribution over
    # the vocabulary is formed (Transformer.decode). Empty for models trained here. A tag made
    # present (nmt.vocab add-language) leaves it: nmt.interop.absent_rows.mark_present.
    absent_ids: list[int] = field(default_factory=list)
    moe: MoEConfig = field(default_factory=MoEConfig)
    adapters: AdapterConfig = field(default_factory=AdapterConfig)


LENGTH_CONVENTIONS = ("nmt", "hf")  # eval.length_convention (nmt/eval/search.py)
LEGACY_POSITION_OFFSET = 0  # what a saved model config without position_offset was trained with


def saved_model_config(model: dict[str, Any]) -> dict[str, Any]:
    """A model config dict read from a checkpoint/export, with the keys that configs written before
    they existed lack filled with the behaviour those models were trained with. Hydra's defaults
    are for new runs; they must not change what an old checkpoint computes."""
    out = dict(model)
    out.setdefault("position_offset", LEGACY_POSITION_OFFSET)  # positions started at table row 0
    out.setdefault("source_convention", "tag_first")
    out.setdefault("absent_ids", [])
    return out


@dataclass
class DataConfig:
    corpus: str = "data/demo"
    directions: list[str] = field(default_factory=lambda: ["all"])  # "all": both ways of every train pair
    valid_directions: list[str] = field(default_factory=lambda: ["train"])  # "train": same as directions
    max_tokens: int = 4096
    max_sentences: int = 0  # 0: no limit
    one_direction_per_batch: bool = False
    epoch_size: int = 0  # sentences per sampled epoch; 0: size of the training split
    # Keep only N usable training pairs of a direction: ++data.subsample={eng_Latn-rus_Cyrl:2000}. The
    # subset is the first N of a permutation keyed on (subsample_seed, direction), so it does not
    # depend on trainer.seed and a smaller N is a subset of a larger one.
    subsample: dict[str, int] = field(default_factory=dict)
    subsample_seed: int = 0


@dataclass
class SamplingConfig:
    method: str = "temperature"  # temperature | uniform | fixed | unimax
    temperature: float = 1.0
    weights: dict[str, float] = field(default_factory=dict)  # for method=fixed
    # Examples (sentence pairs). 0: what the run (a curriculum stage: its updates) consumes,
    # trainer.max_steps x update_freq x world size x data.max_tokens / mean max(src_len, tgt_len).
    unimax_budget: float = 0.0
    unimax_max_epochs: float = 1.0
    unimax_allow_proportional: bool = False  # accept a budget that caps every direction (= T=1)


@dataclass
class OptimConfig:
    lr: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    weight_decay: float = 0.0
    warmup_steps: int = 4000
    warmup_init_lr: float = 1e-7
    schedule: str = "inverse_sqrt"  # inverse_sqrt (NLLB) | cosine | linear (decay to min_lr at trainer.max_steps)
    min_lr: float = 0.0
    clip_norm: float = 0.0  # 0: no clipping (NLLB)
    label_smoothing: float = 0.1


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    max_time_minutes: float = 0.0  # stop (validate, save) after this much training time; 0: no limit
    update_freq: int = 1  # gradient accumulation
    precision: str = "auto"  # auto (measure) | bf16 (autocast) | fp32
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch intra-op threads; 0: torch's default
    reuse_memory: bool = True  # on CPU, keep freed memory in the process for the next step (nmt/malloc.py)
    seed: int = 1
    log_interval: int = 50
    valid_interval: int = 500
    save_interval: int = 0  # keep a step_N checkpoint every N steps; 0: only last and best
    keep_last: int = 2  # step_N checkpoints kept
    resume: str = "auto"  # auto: continue the run in the run dir when its config is the same | true | false
    parallel: str = "ddp"  # with several ranks (torchrun / Slurm tasks): ddp | fsdp (FSDP2 fully_shard)
    checkpoint_format: str = "auto"  # auto: single .pt files in one process, sharded .dcp dirs with several | pt | dcp
    progress: bool = True
    valid_max_sentences: int = 0  # per direction (the first N); 0: whole validation split
    max_bad_updates: int = 5  # stop after this many consecutive updates with a non-finite loss/gradient
    init_from: str = ""  # start from this checkpoint's weights (adapter parameters may be missing)
    # Fine-tuning (nmt/training/finetune.py): parameter groups that get no gradient, a subset of
    # [embeddings, encoder, decoder, experts]; and the multiplier of optim.lr for the parameters loaded
    # from init_from (adapters added on top keep optim.lr).
    freeze: list[str] = field(default_factory=list)
    init_lr_scale: float = 1.0
    best_by: list[str] = field(default_factory=list)  # best.pt by these directions' mean valid loss; []: all
    # Count the forced target-language tag in the loss, as fairseq does without --ignore-prefix-size 1
    # (for comparing losses with fairseq logs); false: the tag position is ignored (NLLB inference forces it).
    loss_include_tag: bool = False


@dataclass
class EvalConfig:
    beam: int = 4
    lenpen: float = 1.0
    batch_size: int = 64
    max_len_a: float = 1.2
    max_len_b: int = 10
    # Beam hypothesis length and the length limit (nmt/eval/search.py): "nmt" = generated tokens
    # with </s>, the forced tag neither counted nor scored, </s> forced at the limit; "hf" =
    # Transformers' generate: the tag counted (scored 0), no </s> forced at the limit.
    length_convention: str = "nmt"


@dataclass
class StageConfig:
    start_step: int = 0  # first update (0-based) trained with these directions
    directions: list[str] = field(default_factory=list)


@dataclass
class CurriculumConfig:
    stages: list[StageConfig] = field(default_factory=list)  # empty: every direction from step 0 (nmt/curriculum.py)


@dataclass
class InterferenceConfig:
    """One cell of an interference sweep (recipes/interference, nmt/sweeps/interference.py)."""

    focus: str = ""  # the focus direction, e.g. eng_Latn-rus_Cyrl; "": not an interference run
    focus_size: int = 0  # training pairs of the focus direction (data.subsample); 0: all
    arm: str = ""  # bi (the focus direction alone) | multi (every direction of data.directions)
    test_max_sentences: int = 0  # chrF++/BLEU on the first N test lines of the focus direction; 0: all


@dataclass
class Config:
    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    interference: InterferenceConfig = field(default_factory=InterferenceConfig)


def register() -> None:
    """Register the schema so that ``conf/config.yaml`` can name it as its first default."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="schema", node=Config)
