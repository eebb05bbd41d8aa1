"""Mixture-of-Experts feed-forward layer: GShard/NLLB routing with index-based dispatch.

Semantics follow fairseq's ``nllb`` branch (``Top1Gate``/``Top2Gate``/``MOELayer``):

* The router runs in fp32: ``probs = softmax(x · W_g)``; top-1 or top-2. The second expert is
  the best other expert (``all``), the best after Gumbel noise on the logits (``sampling``), or
  kept only when ``2·g2 > U(0, 1)`` (``random``).
* Capacity ``C = ceil(capacity_factor · k · S / E)`` slots per expert in training (fairseq uses
  ``k · ceil(S / E)``: the same when E divides S), ``ceil(eval_capacity_token_fraction · S)`` in
  evaluation, none in ``dropless`` mode. Slots fill with all first choices before any second
  choice, in token order or, with ``batch_prioritized``, by router confidence. A token whose
  assignments were all dropped passes through the residual only.
* Top-2 gates are renormalised over the assignments that survived the capacity cut (NLLB), or
  before it (``normalize_before_dropping``); top-1 uses the raw probability (Switch/GShard).
* Load-balancing loss ``E · Σ_e mean_s(probs[s, e]) · frac_s(top1 == e)``, optional router
  z-loss ``mean_s(logsumexp(logits_s)²)``. Both are added to ``ctx.aux`` (weighted, summed over
  layers) as ``loss/moe_balance`` and ``loss/moe_z``.
* EOM drops single token→expert outputs, FOM a token's whole MoE output, with probability p in
  training; NLLB scales by ``1 - p`` at evaluation (``inverted_masking``: by ``1/(1 - p)`` in
  training instead). Masked assignments are not computed at all.

Differences from fairseq, on purpose: padding never reaches the router (S counts real tokens,
so padding takes no slots and does not dilute the balancing loss), and nothing builds the
one-hot ``[S, E, C]`` dispatch tensors: assignments are sorted by expert, gathered, run as one
contiguous slice per expert, scaled by their gate and ``index_add``-ed back.

Expert parallelism (``group`` of W ranks): each rank holds ``E/W`` experts; kept rows travel with
``all_to_all_single`` (per-expert counts exchanged first) and come back the same way. Expert
gradients are divided by W so that they match data-parallel averaging of the dense gradients.
``state_dict`` always holds all E experts (gathered), so checkpoints load on any world size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from nmt.config import MoEConfig
from nmt.models.ffn import BatchContext


@dataclass
class Routing:
    """Kept assignments in expert-major order (what the experts compute)."""

    expert: Tensor  # [N] expert of each kept assignment (non-decreasing)
    token: Tensor  # [N] row of the token it came from
    gate: Tensor  # [N] combine weight (differentiable w.r.t. the router)
    balance: Tensor  # load-balancing loss (scalar)
    z: Tensor  # router z-loss (scalar)
    load: Tensor  # [E] share of routed assignments per expert, before the capacity cut
    dropped: Tensor  # share of routed assignments dropped by the capacity cut


def capacity(tokens: int, experts: int, k: int, cfg: MoEConfig, training: bool) -> int | None:
    """Slots per expert, or None for no limit."""
    if cfg.dropless:
        return None
    if not training and cfg.eval_capacity_token_fraction > 0:
        return math.ceil(cfg.eval_capacity_token_fraction * tokens)
    return math.ceil(cfg.capacity_factor * k * tokens / experts)


def route(logits: Tensor, cfg: MoEConfig, cap: int | None) -> Routing:
    """Top-k routing of ``[S, E]`` fp32 logits with GShard's slot order and capacity cut."""
    s, e = logits.shape
    k = cfg.top_k
    probs = F.softmax(logits, dim=-1)
    arange = torch.arange(s, device=logits.device)
    e1 = probs.argmax(dim=-1)
    g1 = probs[arange, e1]
    experts, tokens, slot, gates = [e1], [arange], [torch.zeros_like(e1)], [g1]
    if k == 2:
        second = logits.detach()
        if cfg.second_expert_policy == "sampling":
            u = torch.rand_like(second).clamp_(min=1e-20)
            second = second - torch.log(-torch.log(u))  # Gumbel noise
        e2 = second.scatter(1, e1[:, None], float("-inf")).argmax(dim=-1)
        g2 = probs[arange, e2]
        if cfg.normalize_before_dropping:
            denom = (g1 + g2).clamp(min=torch.finfo(probs.dtype).eps)
            g1, g2 = g1 / denom, g2 / denom
            gates[0] = g1
        use2 = torch.ones_like(e2, dtype=torch.bool)
        if cfg.second_expert_policy == "random":
            use2 = 2 * g2.detach() > torch.rand_like(g2)
        experts.append(e2[use2])
        tokens.append(arange[use2])
        slot.append(torch.ones_like(e2[use2]))
        gates.append(g2[use2])
    a_exp, a_tok, a_slot, a_gate = (torch.cat(x) for x in (experts, tokens, slot, gates))

    # Priority inside an expert: slot (first choices first), then token order or confidence.
    if cfg.batch_prioritized:
        rank = torch.empty_like(arange)
        rank[torch.sort(-probs.detach().max(dim=-1).values, stable=True).indices] = arange
    else:
        rank = arange
    key = a_exp * (2 * s) + a_slot * s + rank[a_tok]
    order = torch.sort(key, stable=True).indices
    counts = torch.bincount(a_exp, minlength=e)
    n = a_exp.numel()
    if cap is None:
        keep_sorted = torch.ones(n, dtype=torch.bool, device=logits.device)
    else:
        starts = torch.cumsum(counts, 0) - counts
        position = torch.arange(n, device=logits.device) - starts[a_exp[order]]
        keep_sorted = position < cap
    keep = torch.empty_like(keep_sorted)
    keep[order] = keep_sorted

    if k == 2 and not cfg.normalize_before_dropping:  # NLLB: renormalise over survivors
        kept_gate = a_gate * keep
        denom = torch.zeros(s, dtype=probs.dtype, device=logits.device).index_add(0, a_tok, kept_gate)
        a_gate = a_gate / denom.clamp(min=torch.finfo(probs.dtype).eps)[a_tok]

    sel = order[keep_sorted]
    me = probs.mean(dim=0)
    ce = torch.bincount(e1, minlength=e).to(probs.dtype) / max(s, 1)
    balance = e * (me * ce).sum()
    z = torch.logsumexp(logits, dim=-1).pow(2).mean()
    return Routing(expert=a_exp[sel], token=a_tok[sel], gate=a_gate[sel], balance=balance, z=z,
                   load=counts.to(probs.dtype).detach() / max(n, 1),
                   dropped=(1.0 - keep_sorted.float().mean()).detach() if n else probs.new_zeros(()))


class AuxLossThroughOutput(torch.autograd.Function):
    """``forward(out, loss) = out``; backward also gives ``loss`` the gradient ``scale``.

    Used when a layer's auxiliary loss must start its backward together with the layer's output
    (FSDP2 gathers a layer's parameters for backward when its output's gradient arrives; a loss
    that leaves the layer on the side would run its backward outside that window and its
    gradient would be lost). ``scale`` is d(objective)/d(aux loss), set by the trainer before
    each backward (the number of target tokens: aux losses are per-token means)."""

    scale = 1.0

    @staticmethod
    def forward(ctx, out: Tensor, loss: Tensor) -> Tensor:  # type: ignore[override]
        ctx.loss_shape, ctx.loss_dtype = loss.shape, loss.dtype
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return grad, torch.full(ctx.loss_shape, AuxLossThroughOutput.scale, dtype=ctx.loss_dtype, device=grad.device)


def add_aux_loss(module: nn.Module, aux: dict, key: str, term: Tensor, out: Tensor) -> Tensor:
    """Record ``term`` under ``aux[key]`` (summed over layers) and return ``out``: the trainer adds
    ``aux`` losses to its objective, unless the module has ``attach_aux`` (FSDP2), where the
    value is only logged and the gradient travels with ``out``."""
    if getattr(module, "attach_aux", False):
        aux[key] = aux.get(key, 0.0) + term.detach()
        return AuxLossThroughOutput.apply(out, term)
    aux[key] = aux.get(key, 0.0) + term
    return out


class _ScaleGrad(torch.autograd.Function):
    """Identity whose backward multiplies the gradient by a constant."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


class _AllToAll(torch.autograd.Function):
    """``all_to_all_single`` with variable splits; backward sends the gradients back."""

    @staticmethod
    def forward(ctx, x: Tensor, out_splits: list[int], in_splits: list[int], group) -> Tensor:  # type: ignore[override]
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        out_splits, in_splits = ctx.splits
        back = grad.new_empty((sum(in_splits), *grad.shape[1:]))
        dist.all_to_all_single(back, grad.contiguous(), in_splits, out_splits, group=ctx.group)
        return back, None, None, None


class _ReluExperts(torch.autograd.Function):
    """Every local expert's ReLU FFN on its contiguous slice, with a hand-written backward that
    writes each expert's gradients straight into one ``[E, ...]`` tensor per parameter (autograd
    through per-expert views would allocate and sum a full-size gradient per expert). Activation
    dropout is inverted dropout on the hidden units; ReLU's derivative is read off the saved
    hidden activations (``h > 0``), so nothing else is kept for backward."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, counts: list[int], p: float, scale: float):  # type: ignore[override]
        out = x.new_empty((x.shape[0], w2.shape[-1]))
        hidden = x.new_empty((x.shape[0], w1.shape[-1]))
        start = 0
        for i, c in enumerate(counts):
            if c == 0:
                continue
            h = hidden[start:start + c]
            torch.addmm(b1[i], x[start:start + c], w1[i], out=h)
            h.clamp_(min=0)
            if p > 0:
                h.mul_(torch.rand_like(h).ge_(p).div_(1 - p))
            torch.addmm(b2[i], h, w2[i], out=out[start:start + c])
            start += c
        ctx.save_for_backward(x, w1, w2, hidden)
        ctx.counts, ctx.p, ctx.scale = counts, p, scale
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, w1, w2, hidden = ctx.saved_tensors
        grad = grad.contiguous()
        gx = torch.empty_like(x)
        gw1, gw2 = torch.zeros_like(w1), torch.zeros_like(w2)
        gb1 = w1.new_zeros(w1.shape[0], w1.shape[2])
        gb2 = w2.new_zeros(w2.shape[0], w2.shape[2])
        start = 0
        for i, c in enumerate(ctx.counts):
            if c == 0:
                continue
            g, h = grad[start:start + c], hidden[start:start + c]
            torch.mm(h.t(), g, out=gw2[i])
            torch.sum(g, 0, out=gb2[i])
            dh = torch.mm(g, w2[i].t())
            dh.mul_(h > 0)  # ReLU (and dropout's zeros); kept units carry dropout's 1/(1-p)
            if ctx.p > 0:
                dh.mul_(1.0 / (1 - ctx.p))
            torch.mm(x[start:start + c].t(), dh, out=gw1[i])
            torch.sum(dh, 0, out=gb1[i])
            torch.mm(dh, w1[i].t(), out=gx[start:start + c])
            start += c
        if ctx.scale != 1.0:
            for t in (gw1, gb1, gw2, gb2):
                t.mul_(ctx.scale)
        return gx, gw1, gb1, gw2, gb2, None, None, None


class Experts(nn.Module):
    """``E_local`` position-wise FFNs stored as ``[E, d, h]`` / ``[E, h, d]`` tensors.

    ``forward(x, counts)`` takes rows grouped by expert (``counts[i]`` rows for local expert i)
    and runs each expert on its contiguous slice. With an expert-parallel group the module holds
    experts ``rank·E/W … (rank+1)·E/W - 1`` while its state dict holds all E.
    """

    def __init__(self, experts: int, d_model: int, hidden: int, activation: str = "relu",
                 activation_dropout: float = 0.0, group=None):
        super().__init__()
        self.world = dist.get_world_size(group) if group is not None else 1
        self.rank = dist.get_rank(group) if group is not None else 0
        if experts % self.world:
            raise ValueError(f"{experts} experts do not split evenly over {self.world} expert-parallel ranks")
        self.experts, self.local = experts, experts // self.world
        self.group = group
        self.act = F.relu if activation == "relu" else F.gelu
        self.activation_dropout = activation_dropout
        self.w1 = nn.Parameter(torch.empty(self.local, d_model, hidden))
        self.b1 = nn.Parameter(torch.zeros(self.local, hidden))
        self.w2 = nn.Parameter(torch.empty(self.local, hidden, d_model))
        self.b2 = nn.Parameter(torch.zeros(self.local, d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform per expert (as ``nn.Linear`` layers get in the dense model)."""
        for w in (self.w1, self.w2):
            bound = math.sqrt(6.0 / (w.shape[1] + w.shape[2]))
            nn.init.uniform_(w, -bound, bound)
        nn.init.zeros_(self.b1)
        nn.init.zeros_(self.b2)

    def forward(self, x: Tensor, counts: list[int]) -> Tensor:
        scale = 1.0 / self.world  # tokens of all ranks reach these experts: match DP's gradient average
        if self.act is F.relu and not torch.is_autocast_enabled(x.device.type):
            p = self.activation_dropout if self.training else 0.0
            return _ReluExperts.apply(x, self.w1, self.b1, self.w2, self.b2, counts, p, scale)
        w1, b1, w2, b2 = self.w1, self.b1, self.w2, self.b2
        if self.world > 1:
            w1, b1, w2, b2 = (_ScaleGrad.apply(p, scale) for p in (w1, b1, w2, b2))
        # unbind once: its backward stacks the per-expert gradients into one [E, ...] tensor
        # (indexing w1[i] per expert would allocate and add a full-size zero gradient per expert).
        w1s, b1s, w2s, b2s = w1.unbind(0), b1.unbind(0), w2.unbind(0), b2.unbind(0)
        outs, start = [], 0
        for i, c in enumerate(counts):
            if c == 0:
                continue
            h = self.act(torch.addmm(b1s[i], x[start:start + c], w1s[i]))
            if self.activation_dropout > 0:
                h = F.dropout(h, p=self.activation_dropout, training=self.training)
            outs.append(torch.addmm(b2s[i], h, w2s[i]))
            start += c
        return torch.cat(outs) if outs else x.new_zeros((0, w2.shape[-1]))

    # Checkpoints always hold all experts, whatever the expert-parallel world size.
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        for name, p in self._parameters.items():
            t = p if keep_vars else p.detach()
            if self.world > 1:
                parts = [torch.empty_like(t) for _ in range(self.world)]
                dist.all_gather(parts, t.detach().contiguous(), group=self.group)
                t = torch.cat(parts)
            destination[prefix + name] = t

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        lo, hi = self.rank * self.local, (self.rank + 1) * self.local
        for name in self._parameters:
            key = prefix + name
            if key in state_dict and state_dict[key].shape[0] == self.experts and self.experts != self.local:
                state_dict[key] = state_dict[key][lo:hi]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


def _regroup(counts: Tensor) -> Tensor:
    """Permutation taking rows ordered (rank, expert) to (expert, rank); counts is ``[W, E_local]``."""
    lens_rank_major = counts.reshape(-1)
    starts = torch.cumsum(lens_rank_major, 0) - lens_rank_major
    lens = counts.t().reshape(-1)  # expert-major segment lengths
    seg_starts = starts.view(counts.shape).t().reshape(-1)
    total = int(lens.sum())
    within = torch.arange(total, device=counts.device) - torch.repeat_interleave(torch.cumsum(lens, 0) - lens, lens)
    return torch.repeat_interleave(seg_starts, lens) + within


def run_experts(experts: Experts, x: Tensor, expert_ids: Tensor) -> Tensor:
    """Run rows ``x`` (sorted by global expert id ``expert_ids``) through their experts, locally
    or across the expert-parallel group; returns the outputs in the same row order."""
    counts = torch.bincount(expert_ids, minlength=experts.experts)
    if experts.world == 1:
        return experts(x, counts.tolist())
    w, el, group = experts.world, experts.local, experts.group
    recv_counts = torch.empty_like(counts)
    dist.all_to_all_single(recv_counts, counts, group=group)  # [W * E_local]: rows each rank sends me
    send_splits = counts.view(w, el).sum(1).tolist()
    recv_splits = recv_counts.view(w, el).sum(1).tolist()
    recv = _AllToAll.apply(x, recv_splits, send_splits, group)
    perm = _regroup(recv_counts.view(w, el))
    y = experts(recv[perm], recv_counts.view(w, el).sum(0).tolist())
    y = y[torch.argsort(perm)]
    return _AllToAll.apply(y, send_splits, recv_splits, group)


def on_real_tokens(fn, x: Tensor, ctx: BatchContext) -> Tensor:
    """Apply ``fn(tokens [S, d], aux) -> [S, d]`` to the non-padding rows of ``x [B, T, d]``;
    padding rows come back as zeros (padding never reaches a router)."""
    shape = x.shape
    flat = x.reshape(-1, shape[-1])
    if ctx.pad_mask is None:
        return fn(flat, ctx.aux).view(shape)
    rows = (~ctx.pad_mask).reshape(-1).nonzero().squeeze(1)
    y = fn(flat.index_select(0, rows), ctx.aux)
    return flat.new_zeros(flat.shape).index_copy(0, rows, y).view(shape)


class MoELayer(nn.Module):
    """The MoE feed-forward slot: ``forward(x [B, T, d], ctx) -> [B, T, d]``."""

    def __init__(self, d_model: int, hidden: int, cfg: MoEConfig, name: str, activation: str = "relu",
                 activation_dropout: float = 0.0, group=None):
        super().__init__()
        self.cfg, self.name = cfg, name
        self.router = nn.Linear(d_model, cfg.experts, bias=False)
        self.experts = Experts(cfg.experts, d_model, hidden, activation, activation_dropout, group)

    def forward(self, x: Tensor, ctx: BatchContext) -> Tensor:
        return on_real_tokens(self.forward_tokens, x, ctx)

    def forward_tokens(self, x: Tensor, aux: dict[str, Tensor]) -> Tensor:
        """MoE over real tokens ``[S, d]``; writes losses and statistics to ``aux``."""
        cfg, s = self.cfg, x.shape[0]
        if s == 0:  # nothing to route (e.g. a batch of padding only): no output, no statistics
            return x.new_zeros(x.shape)
        with torch.autocast(x.device.type, enabled=False):
            dtype = torch.promote_types(x.dtype, torch.float32)  # fp32 at least (fp64 in tests)
            logits = F.linear(x.to(dtype), self.router.weight.to(dtype))
        r = route(logits, cfg, capacity(s, cfg.experts, cfg.top_k, cfg, self.training))
        expert, token, gate = r.expert, r.token, r.gate
        scale = 1.0
        if self.training and (cfg.eom > 0 or cfg.fom > 0) and token.numel():
            keep = torch.ones_like(token, dtype=torch.bool)
            if cfg.eom > 0:
                keep &= torch.rand(token.shape, device=x.device) >= cfg.eom
            if cfg.fom > 0:
                keep &= (torch.rand(s, device=x.device) >= cfg.fom)[token]
            aux[f"moe/{self.name}/masked"] = 1.0 - keep.float().mean()
            expert, token, gate = expert[keep], token[keep], gate[keep]
            if cfg.inverted_masking:
                scale = 1.0 / ((1.0 - cfg.eom) * (1.0 - cfg.fom))
        elif not self.training and not cfg.inverted_masking:
            scale = (1.0 - cfg.eom) * (1.0 - cfg.fom)
        h = run_experts(self.experts, x.index_select(0, token), expert)
        weight = gate if scale == 1.0 else gate * scale
        out = torch.zeros(x.shape, dtype=torch.promote_types(h.dtype, weight.dtype), device=x.device)
        out.index_add_(0, token, h * weight[:, None].to(out.dtype))
        out = add_aux_loss(self, aux, "loss/moe_balance", cfg.balance_loss_weight * r.balance, out)
        if cfg.z_loss_weight > 0:
            out = add_aux_loss(self, aux, "loss/moe_z", cfg.z_loss_weight * r.z, out)
        self._report(aux, r)
        return out.to(x.dtype)

    def _report(self, aux: dict[str, Tensor], r: Routing) -> None:
        cfg, name = self.cfg, self.name
        aux[f"moe/{name}/balance"] = r.balance.detach()
        aux[f"moe/{name}/z"] = r.z.detach()
        aux[f"moe/{name}/dropped"] = r.dropped
        aux[f"moe/{name}/load_max"] = r.load.max() * cfg.experts  # 1.0: perfectly balanced
        aux[f"moe/{name}/load"] = r.load


class CMRLayer(nn.Module):
    """Conditional MoE routing: ``y = (1 - g)·dense(x) + g·moe(x)``, ``g = sigmoid(w·x + b)``.

    Gate dropout is ordinary (inverted) dropout on g; padding gets g = 0. The budget loss
    ``|mean(g) - p|`` over real tokens is added as ``loss/cmr_budget`` (weighted, summed over
    layers); ``cmr/<layer>/share`` is the mean gate, the share of each token sent to the MoE.
    """

    def __init__(self, d_model: int, dense: nn.Module, moe: MoELayer, cfg: MoEConfig, name: str):
        super().__init__()
        self.cfg, self.name = cfg, name
        self.gate = nn.Linear(d_model, 1)
        self.dense, self.moe = dense, moe

    def forward(self, x: Tensor, ctx: BatchContext) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            dtype = torch.promote_types(x.dtype, torch.float32)
            g = torch.sigmoid(F.linear(x.to(dtype), self.gate.weight.to(dtype), self.gate.bias.to(dtype))).squeeze(-1)
        g = F.dropout(g, p=self.cfg.cmr_gate_dropout, training=self.training)
        if ctx.pad_mask is not None:
            g = g.masked_fill(ctx.pad_mask, 0.0)
            n = (~ctx.pad_mask).sum().clamp(min=1)
        else:
            n = torch.tensor(g.numel(), device=g.device)
        share = g.sum() / n
        ctx.aux[f"cmr/{self.name}/share"] = share.detach()
        g = g[..., None].to(x.dtype)
        out = (1 - g) * self.dense(x, ctx) + g * self.moe(x, ctx)
        budget = self.cfg.cmr_loss_weight * (share - self.cfg.cmr_budget).abs()
        return add_aux_loss(self, ctx.aux, "loss/cmr_budget", budget, out)
