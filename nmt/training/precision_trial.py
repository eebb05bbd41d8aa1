"""Time the configured model's own training step in fp32 and in bf16 autocast, then put
everything back: weights, buffers, optimizer state, gradients, RNG streams and the loader's
position are as they were, so a run that measured and chose X continues bit for bit as a run
with X fixed.

One trial step = forward (train mode, dropout on) on the loader's first batch, the label-smoothed
loss plus the model's ``loss/...`` aux losses, backward, ``optimizer.step()``, ``zero_grad``:
what the trainer does for one micro-batch. Steps run interleaved (fp32, bf16, bf16, fp32, ...)
after one warm-up step each, so a neighbour's load hits both alike; the number of timed steps
is cut to fit ``budget_s`` (at least one each) and agreed over ranks, whose collectives must
line up.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from itertools import chain
from typing import Any

import torch
import torch.distributed as dist

from nmt.models.transformer import PAD
from nmt.training.loss import label_smoothed_nll

PRECISIONS = ("fp32", "bf16")


@dataclass
class TrialResult:
    step_s: dict[str, float]  # median seconds per timed step, the slowest rank's
    tokens: int  # target tokens of the batch (this rank)
    sentences: int
    timed_steps: int  # per precision, after one warm-up step each
    seconds: float  # wall time of the whole trial

    def tok_s(self, precision: str) -> float:
        return self.tokens / max(self.step_s[precision], 1e-12)


def _peek_batch(loader: Any) -> Any:
    """The loader's next batch, leaving the loader where it was (its exact-resume state)."""
    state = loader.state_dict()
    batch = next(loader)
    loader.load_state_dict(state)
    return batch


@contextmanager
def _untouched(model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> Iterator[None]:
    """Everything a trial step changes comes back afterwards, bit for bit."""
    tensors = list(chain(model.parameters(), model.buffers()))
    saved = [t.detach().clone() for t in tensors]
    opt_state = copy.deepcopy(optimizer.state_dict())
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    was_training = model.training
    try:
        yield
    finally:
        with torch.no_grad():
            for t, s in zip(tensors, saved, strict=True):
                t.copy_(s)
        optimizer.load_state_dict(opt_state)
        optimizer.zero_grad(set_to_none=True)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, device)
        model.train(was_training)


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Any, precision: str,
          label_smoothing: float, n_directions: int, device: torch.device) -> float:
    """One timed training step; seconds (device work included)."""
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    _sync(device)
    start = time.perf_counter()
    counted = batch.target.ne(PAD)
    with autocast:
        logits, aux = model(batch.src_tokens, batch.prev_output_tokens, batch.src_lang, batch.tgt_lang,
                            output_mask=counted, aux_loss_scale=float(counted.sum()))
    direction = batch.direction[:, None].expand_as(batch.target)[counted]
    out = label_smoothed_nll(logits, batch.target[counted], label_smoothing, direction, n_directions)
    loss = out.loss
    for key, value in aux.items():
        if key.startswith("loss/") and torch.is_tensor(value) and value.requires_grad:
            loss = loss + value * out.ntokens
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    _sync(device)
    return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reduce_max(values: list[float], device: torch.device) -> list[float]:
    """Element-wise maximum over ranks (the values themselves in one process)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def timed_steps(warmup_s: float, budget_s: float, max_steps: int) -> int:
    """Timed steps per precision that fit ``budget_s`` after warm-ups that took ``warmup_s``
    (both precisions together): at least 1, at most ``max_steps``."""
    left = budget_s - warmup_s
    return max(1, min(max_steps, int(left // max(warmup_s, 1e-9))))


def time_both(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: Any, label_smoothing: float,
              device: torch.device, budget_s: float, max_steps: int) -> TrialResult:
    """Median step time of each precision on the loader's first batch; nothing is left changed."""
    start = time.perf_counter()
    batch = _peek_batch(loader).to(device)
    n_dir = len(loader.directions)
    times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    with _untouched(model, optimizer, device):
        model.train()
        warm = sum(_step(model, optimizer, batch, p, label_smoothing, n_dir, device) for p in PRECISIONS)
        n = timed_steps(reduce_max([warm], device)[0], budget_s, max_steps)
        for i in range(n):
            for p in PRECISIONS if i % 2 == 0 else PRECISIONS[::-1]:
                times[p].append(_step(model, optimizer, batch, p, label_smoothing, n_dir, device))
    medians = reduce_max([statistics.median(times[p]) for p in PRECISIONS], device)
    return TrialResult(step_s=dict(zip(PRECISIONS, medians, strict=True)), tokens=int(batch.n_tgt_tokens),
                       sentences=len(batch), timed_steps=n, seconds=time.perf_counter() - start)
