"""Pre-LN Transformer encoder-decoder with tied embeddings (NLLB's dense architecture).

Sequences follow NLLB: encoder input ``__src__ x </s>``, decoder input ``</s> __tgt__ y``.
The model never touches files or distributed state: ``forward`` returns ``(logits, aux)``
where ``aux`` holds whatever the feed-forward slot modules reported (MoE/CMR losses, stats).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt.config import ModelConfig
from nmt.errors import UserError
from nmt.models.attention import MultiheadAttention
from nmt.models.dropout import dropout
from nmt.models.ffn import BatchContext, DenseFFN
from nmt.models.kv_cache import KVCache, LayerKV
from nmt.models.moe.cmr import finish_global_budget

PAD = 0

FFNFactory = Callable[[str, int], nn.Module]  # (side, layer index) -> module(x, ctx)
AdapterFactory = Callable[[str, int], "nn.Module | None"]  # (side, layer index) -> module(x, ctx) or None


def sinusoidal_table(n: int, d: int) -> Tensor:
    """``[n, d]`` table: sin on the first half of the channels, cos on the second (fairseq layout)."""
    half = d // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    angles = torch.arange(n, dtype=torch.float32)[:, None] * freq[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, ffn: nn.Module, impl: str):
        super().__init__()
        self.self_attn_ln = nn.LayerNorm(cfg.d_model)
        self.self_attn = MultiheadAttention(cfg.d_model, cfg.heads, cfg.attention_dropout, cross=False, impl=impl)
        self.ffn_ln = nn.LayerNorm(cfg.d_model)
        self.ffn = ffn
        self.adapter: nn.Module | None = None  # applied to the layer output (language/hyper-adapters)
        self.dropout = cfg.dropout

    def forward(self, x: Tensor, mask: Tensor | None, ctx: BatchContext) -> Tensor:
        h = self.self_attn(self.self_attn_ln(x), mask=mask)
        x = x + dropout(h, self.dropout, self.training)
        h = self.ffn(self.ffn_ln(x), ctx)
        x = x + dropout(h, self.dropout, self.training)
        return x if self.adapter is None else self.adapter(x, ctx)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, ffn: nn.Module, impl: str):
        super().__init__()
        self.self_attn_ln = nn.LayerNorm(cfg.d_model)
        self.self_attn = MultiheadAttention(cfg.d_model, cfg.heads, cfg.attention_dropout, cross=False, impl=impl)
        self.cross_attn_ln = nn.LayerNorm(cfg.d_model)
        self.cross_attn = MultiheadAttention(cfg.d_model, cfg.heads, cfg.attention_dropout, cross=True, impl=impl)
        self.ffn_ln = nn.LayerNorm(cfg.d_model)
        self.ffn = ffn
        self.adapter: nn.Module | None = None
        self.dropout = cfg.dropout

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        self_mask: Tensor | None,
        memory_mask: Tensor | None,
        ctx: BatchContext,
        cache: LayerKV | None = None,
    ) -> Tensor:
        h = self.self_attn(self.self_attn_ln(x), mask=self_mask, cache=cache)
        x = x + dropout(h, self.dropout, self.training)
        h = self.cross_attn(self.cross_attn_ln(x), memory=memory, mask=memory_mask, cache=cache)
        x = x + dropout(h, self.dropout, self.training)
        h = self.ffn(self.ffn_ln(x), ctx)
        x = x + dropout(h, self.dropout, self.training)
        return x if self.adapter is None else self.adapter(x, ctx)


def padding_mask(tokens: Tensor) -> Tensor:
    """Additive key mask ``[B, 1, 1, S]``: 0 for tokens, -inf for padding."""
    return torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device).masked_fill(
        tokens.eq(PAD), float("-inf"))[:, None, None, :]


def causal_mask(t: int, device: torch.device) -> Tensor:
    return torch.full((t, t), float("-inf"), device=device).triu(1)


class Transformer(nn.Module):
    """Encoder-decoder; ``ffn_factory(side, layer)`` fills each layer's feed-forward slot,
    ``adapter_factory(side, layer)`` its output adapter (or None); ``hypernet`` (a
    :class:`~nmt.models.adapters.HyperNetwork`) generates per-batch adapters for every layer."""

    positions: Tensor  # buffer: the sinusoidal position table [max_positions + 2 + position_offset, D]
    absent: Tensor  # buffer: vocabulary ids whose logits are -inf (cfg.absent_ids; see set_absent)

    def __init__(self, cfg: ModelConfig, vocab_size: int, ffn_factory: FFNFactory | None = None,
                 adapter_factory: AdapterFactory | None = None, hypernet: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        impl = cfg.attention  # "auto": chosen per call by dtype and hardware (nmt.models.attention.auto_impl)
        if ffn_factory is None:
            def ffn_factory(side: str, layer: int) -> nn.Module:
                return DenseFFN(cfg.d_model, cfg.ffn_dim, cfg.activation, cfg.activation_dropout)
        self.embed = nn.Embedding(vocab_size, cfg.d_model, padding_idx=PAD)
        nn.init.normal_(self.embed.weight, mean=0.0, std=cfg.d_model ** -0.5)
        with torch.no_grad():
            self.embed.weight[PAD].zero_()
        self.embed_scale = math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0
        self.register_buffer("positions", sinusoidal_table(cfg.max_positions + 2 + cfg.position_offset, cfg.d_model),
                             persistent=False)
        self.register_buffer("absent", torch.zeros(0, dtype=torch.long), persistent=False)
        self.set_absent(cfg.absent_ids)
        self.encoder_layers = nn.ModuleList(
            EncoderLayer(cfg, ffn_factory("encoder", i), impl) for i in range(cfg.encoder_layers))
        self.decoder_layers = nn.ModuleList(
            DecoderLayer(cfg, ffn_factory("decoder", i), impl) for i in range(cfg.decoder_layers))
        self.encoder_ln = nn.LayerNorm(cfg.d_model)
        self.decoder_ln = nn.LayerNorm(cfg.d_model)
        self.hypernet = hypernet
        self._init_linear()
        if adapter_factory is not None:  # after _init_linear: adapters initialise themselves
            for side, layers in (("encoder", self.encoder_layers), ("decoder", self.decoder_layers)):
                for i, layer in enumerate(layers):
                    assert isinstance(layer, (EncoderLayer, DecoderLayer))
                    layer.adapter = adapter_factory(side, i)

    def _init_linear(self) -> None:
        for mod in self.modules():
            if isinstance(mod, nn.Linear):
                nn.init.xavier_uniform_(mod.weight)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)

    def set_absent(self, ids: list[int]) -> None:
        """Vocabulary rows the model's origin lacked (``model.absent_ids``): :meth:`decode` gives
        them -inf logits, so softmaxes (beam search, scoring, the loss) run over the others only."""
        bad = [i for i in ids if not 4 <= i < self.vocab_size]
        if bad:
            raise UserError(f"model.absent_ids holds {bad[:5]}, outside the vocabulary's non-special ids "
                            f"4…{self.vocab_size - 1}; the checkpoint config does not belong to this vocabulary")
        self.absent = torch.tensor(sorted(set(ids)), dtype=torch.long, device=self.embed.weight.device)

    def _embed(self, tokens: Tensor, offset: int = 0) -> Tensor:
        t, first = tokens.shape[1], self.cfg.position_offset + offset  # position p uses table row offset + p
        x = self.embed(tokens) * self.embed_scale + self.positions[first: first + t].to(self.embed.weight.dtype)
        return dropout(x, self.cfg.dropout, self.training)

    def encode(self, src_tokens: Tensor, src_lang: Tensor | None = None, tgt_lang: Tensor | None = None,
               aux: dict[str, Tensor] | None = None, aux_loss_scale: float = 1.0) -> tuple[Tensor, Tensor]:
        """Returns the encoder output ``[B, S, D]`` and its additive key mask ``[B, 1, 1, S]``."""
        mask = padding_mask(src_tokens)
        ctx = BatchContext(src_lang, tgt_lang, src_tokens.eq(PAD), "encoder", 0, {} if aux is None else aux,
                           aux_loss_scale=aux_loss_scale)
        x = self._embed(src_tokens)
        if self.hypernet is not None:
            ctx.generated = self.hypernet(src_lang, tgt_lang, list(range(len(self.encoder_layers))), "encoder")
        for i, layer in enumerate(self.encoder_layers):
            ctx.layer = i
            x = layer(x, mask, ctx)
        return self.encoder_ln(x), mask

    def decode(
        self,
        prev_tokens: Tensor,
        memory: Tensor,
        memory_mask: Tensor,
        src_lang: Tensor | None = None,
        tgt_lang: Tensor | None = None,
        cache: KVCache | None = None,
        offset: int = 0,
        aux: dict[str, Tensor] | None = None,
        output_mask: Tensor | None = None,
        aux_loss_scale: float = 1.0,
    ) -> Tensor:
        """Decoder logits ``[B, T, V]``. With ``cache`` (from :meth:`new_cache`), ``prev_tokens``
        holds only the new positions starting at ``offset``. With ``output_mask`` ``[B, T]``,
        only those positions are projected to the vocabulary: ``[N, V]`` (training skips padding)."""
        t = prev_tokens.shape[1]
        self_mask = None if cache is not None and t == 1 else causal_mask(t, prev_tokens.device)
        ctx = BatchContext(src_lang, tgt_lang, prev_tokens.eq(PAD), "decoder", 0, {} if aux is None else aux,
                           aux_loss_scale=aux_loss_scale)
        x = self._embed(prev_tokens, offset)
        if self.hypernet is not None:
            first = len(self.encoder_layers)  # decoder layer ids follow the encoder's
            ctx.generated = self.hypernet(src_lang, tgt_lang, [first + i for i in range(len(self.decoder_layers))],
                                          "decoder")
        for i, layer in enumerate(self.decoder_layers):
            ctx.layer = i
            x = layer(x, memory, self_mask, memory_mask, ctx, None if cache is None else cache[i])
        x = self.decoder_ln(x)
        if output_mask is not None:
            x = x[output_mask]
        logits = F.linear(x, self.embed.weight)
        if len(self.absent):  # imported models only: models trained here keep their exact logits
            logits = logits.index_fill(-1, self.absent, float("-inf"))
        return logits

    def new_cache(self) -> KVCache:
        """An empty cache for :meth:`decode`, one entry per decoder layer."""
        return KVCache(len(self.decoder_layers))

    def forward(self, src_tokens: Tensor, prev_tokens: Tensor, src_lang: Tensor | None = None,
                tgt_lang: Tensor | None = None, output_mask: Tensor | None = None, aux_loss_scale: float = 1.0
                ) -> tuple[Tensor, dict[str, Tensor]]:
        """``aux_loss_scale``: the objective's weight on the aux losses (the trainer's number of
        target tokens); it reaches the MoE/CMR layers, whose aux-loss gradient under FSDP2 it is."""
        aux: dict[str, Tensor] = {}
        memory, mask = self.encode(src_tokens, src_lang, tgt_lang, aux, aux_loss_scale)
        logits = self.decode(prev_tokens, memory, mask, src_lang, tgt_lang, aux=aux, output_mask=output_mask,
                             aux_loss_scale=aux_loss_scale)
        finish_global_budget(aux, self.cfg.moe, aux_loss_scale)  # the CMR budget term over all layers
        return logits, aux


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
