"""Sampling probabilities over translation directions and per-epoch example counts.

``direction_probs`` turns per-direction sizes (sentence pairs after filtering) into sampling
probabilities p_l with one of four methods:

* ``temperature``: q_l = n_l / sum(n), p_l proportional to q_l^(1/T). ``T = 1`` is
  proportional sampling, ``T = inf`` is uniform.
* ``uniform``: p_l = 1 / L (the same as ``temperature`` with ``T = inf``).
* ``fixed``: user-given weights, normalised to sum to one.
* ``unimax`` (Chung et al. 2023): sizes U_l, budget B (in examples, the unit of the sizes), at
  most N epochs per direction. Visit directions from smallest to largest; the i-th (0-based) of
  L gets a_l = min(B_rem / (L - i), N * U_l) and B_rem -= a_l; p_l = a_l / sum(a).
  When every direction hits its cap (B >= N * sum(U)) this is proportional sampling (T = 1);
  that is refused unless ``unimax_allow_proportional`` (see :func:`unimax_run_budget` for the
  budget the trainer derives from the run's length).

``epoch_counts`` turns probabilities into integer counts that sum to the epoch size exactly.
Every validation failure is a :class:`~nmt.errors.UserError` naming the config key.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from nmt.errors import UserError

METHODS = ("temperature", "uniform", "fixed", "unimax")


def _check_sizes(sizes: Mapping[str, int]) -> None:
    if not sizes:
        raise UserError("no training directions to sample from: list at least one direction in data.directions")
    for d, n in sizes.items():
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise UserError(f"direction {d}: size must be a non-negative integer, got {n!r}")
        if n == 0:
            raise UserError(
                f"direction {d} has no training examples (after length filtering): remove it from "
                "data.directions or raise model.max_positions"
            )


def _positive_number(value: object, key: str, *, allow_inf: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise UserError(f"{key} must be a number, got {value!r}")
    v = float(value)
    if math.isnan(v) or v <= 0 or (math.isinf(v) and not allow_inf):
        what = "a positive number (or inf)" if allow_inf else "a positive finite number"
        raise UserError(f"{key} must be {what}, got {value!r}")
    return v


def _temperature(sizes: Mapping[str, int], temperature: float) -> dict[str, float]:
    t = _positive_number(temperature, "sampling.temperature", allow_inf=True)
    if math.isinf(t):
        return {d: 1.0 / len(sizes) for d in sizes}
    n = np.array([float(v) for v in sizes.values()])
    # q^(1/T) in log space with the maximum subtracted: no underflow for large T or tiny q.
    logits = (np.log(n) - np.log(n.sum())) / t
    w = np.exp(logits - logits.max())
    p = w / w.sum()
    return {d: float(x) for d, x in zip(sizes, p, strict=True)}


def _fixed(sizes: Mapping[str, int], weights: Mapping[str, float] | None) -> dict[str, float]:
    if weights is None:
        raise UserError("sampling.method=fixed needs sampling.weights: a weight for every direction")
    unknown = sorted(set(weights) - set(sizes))
    if unknown:
        raise UserError(
            f"sampling.weights names directions that are not trained: {', '.join(unknown)}; "
            f"the directions are {', '.join(sizes)}"
        )
    missing = [d for d in sizes if d not in weights]
    if missing:
        raise UserError(f"sampling.weights has no weight for: {', '.join(missing)} (give one per direction)")
    w = {}
    for d in sizes:
        x = weights[d]
        if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
            raise UserError(f"sampling.weights.{d} must be a number, got {x!r}")
        if not math.isfinite(float(x)) or float(x) < 0:
            raise UserError(f"sampling.weights.{d} must be finite and >= 0, got {x!r}")
        w[d] = float(x)
    total = sum(w.values())
    if total <= 0:
        raise UserError("sampling.weights must not all be zero")
    return {d: x / total for d, x in w.items()}


def _unimax(sizes: Mapping[str, int], budget: float | None, max_epochs: float,
            allow_proportional: bool) -> dict[str, float]:
    n_max = _positive_number(max_epochs, "sampling.unimax_max_epochs")
    if budget is None:
        raise UserError("sampling.method=unimax needs a budget: set sampling.unimax_budget (examples), or "
                        "leave it at 0 so the trainer derives it from trainer.max_steps and data.max_tokens")
    b = _positive_number(budget, "sampling.unimax_budget")
    # Ascending by size; ties broken by name (the result does not depend on the tie order).
    order = sorted(sizes, key=lambda d: (sizes[d], d))
    alloc: dict[str, float] = {}
    remaining = b
    for i, d in enumerate(order):
        share = remaining / (len(order) - i)
        alloc[d] = min(share, n_max * sizes[d])
        remaining -= alloc[d]
    all_capped = all(alloc[d] >= n_max * sizes[d] * (1 - 1e-12) for d in sizes)  # float slack
    if all_capped and len(set(sizes.values())) > 1 and not allow_proportional:
        examples = sum(sizes.values())
        raise UserError(
            f"sampling.method=unimax with sampling.unimax_budget={b:.6g} examples and "
            f"sampling.unimax_max_epochs={n_max:g} caps every direction at N epochs (budget >= "
            f"{n_max:g} x {examples} examples), which is exactly proportional sampling (T = 1): lower "
            "sampling.unimax_budget or sampling.unimax_max_epochs (or trainer.max_steps / data.max_tokens, "
            "from which the default budget comes), or set sampling.unimax_allow_proportional=true"
        )
    total = sum(alloc.values())
    return {d: alloc[d] / total for d in sizes}


def unimax_run_budget(max_steps: int, max_tokens: int, update_freq: int, world_size: int,
                      mean_example_tokens: float) -> float:
    """The examples a run consumes, the default UniMax budget B (in the sizes' unit, examples).

    A batch costs ``n_sentences * max(src_len, tgt_len)`` padded tokens (nmt/data/batching.py),
    so one update of one rank holds about ``max_tokens / mean_example_tokens`` examples, where
    ``mean_example_tokens`` is the mean ``max(src_len, tgt_len)`` of the training examples:
    B = max_steps * update_freq * world_size * max_tokens / mean_example_tokens. Greedy packing
    leaves batches a little short of ``max_tokens``, so this is a slight over-estimate.
    """
    if not mean_example_tokens > 0:
        raise UserError(f"cannot derive the UniMax budget: mean example length {mean_example_tokens!r} "
                        "tokens; set sampling.unimax_budget explicitly")
    return max_steps * update_freq * world_size * max_tokens / float(mean_example_tokens)


def direction_probs(
    sizes: Mapping[str, int],
    method: str,
    temperature: float = 1.0,
    weights: Mapping[str, float] | None = None,
    unimax_budget: float | None = None,
    unimax_max_epochs: float = 1.0,
    unimax_allow_proportional: bool = False,
) -> dict[str, float]:
    """Sampling probability of each direction, keys in the order of ``sizes``.

    ``sizes`` maps a direction (``"eng_Latn-fra_Latn"``) to its number of examples (> 0).
    ``temperature`` is used by ``temperature``; ``weights`` by ``fixed``; ``unimax_budget``
    (required: examples, e.g. from :func:`unimax_run_budget`), ``unimax_max_epochs`` and
    ``unimax_allow_proportional`` by ``unimax``.
    """
    _check_sizes(sizes)
    if method == "temperature":
        return _temperature(sizes, temperature)
    if method == "uniform":
        return {d: 1.0 / len(sizes) for d in sizes}
    if method == "fixed":
        return _fixed(sizes, weights)
    if method == "unimax":
        return _unimax(sizes, unimax_budget, unimax_max_epochs, unimax_allow_proportional)
    raise UserError(f"sampling.method={method!r} is not known: use one of {', '.join(METHODS)}")


def epoch_counts(
    probs: Mapping[str, float],
    sizes: Mapping[str, int],
    epoch_size: int | None,
    generator: torch.Generator,
) -> dict[str, int]:
    """Examples to draw from each direction in one epoch of ``epoch_size`` (V) examples.

    count_l = floor(V * p_l) plus a multinomial share of the remainder R = V - sum(floor(.)).
    The R remainder draws are weighted by the fractional parts V * p_l - floor(V * p_l), which
    sum to R, so E[count_l] = V * p_l exactly. The counts sum to V. ``epoch_size=None`` means
    V = sum of ``sizes``. A direction may get more examples than it has (drawn with repeats
    by the caller). Keys follow ``probs``.
    """
    unknown = [d for d in probs if d not in sizes]
    if unknown:
        raise UserError(f"sampling probabilities given for directions without data: {', '.join(unknown)}")
    if epoch_size is None:
        epoch_size = int(sum(sizes[d] for d in probs))
    if isinstance(epoch_size, bool) or not isinstance(epoch_size, (int, np.integer)) or epoch_size <= 0:
        raise UserError(f"data.epoch_size must be a positive integer, got {epoch_size!r}")
    p = np.array([float(probs[d]) for d in probs], dtype=np.float64)
    if len(p) == 0 or not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise UserError(f"sampling probabilities must be finite, >= 0 and not all zero, got {dict(probs)}")
    for d, x in zip(probs, p, strict=True):
        if x > 0 and sizes[d] <= 0:
            raise UserError(f"direction {d} has probability {x:.3g} but no examples")
    p = p / p.sum()
    exact = epoch_size * p
    counts = np.floor(exact).astype(np.int64)
    # Float rounding may push sum(floor) one past V; take the excess from the largest counts.
    while counts.sum() > epoch_size:
        counts[int(np.argmax(counts))] -= 1
    remainder = int(epoch_size - counts.sum())
    if remainder > 0:
        frac = np.clip(exact - counts, 0.0, None)
        weights = frac if frac.sum() > 0 else p
        draws = torch.multinomial(torch.from_numpy(weights), remainder, replacement=True, generator=generator)
        counts += np.bincount(draws.numpy(), minlength=len(p))
    return {d: int(c) for d, c in zip(probs, counts, strict=True)}


def mean_example_tokens(data: Any, directions: Iterable[str]) -> float:
    """Mean batch-cost length ``max(src_len, tgt_len)`` (tags and eos included) over the kept
    training examples of ``directions`` in ``data`` (a :class:`~nmt.data.parallel.ParallelData`)."""
    wanted = set(directions)
    total = count = 0
    for i, d in enumerate(data.directions):
        if d in wanted:
            src_len, tgt_len = data.lengths(i)
            total += int(np.maximum(src_len, tgt_len).sum())
            count += len(src_len)
    return total / count if count else 0.0


def stage_steps(cfg: Any, directions: Iterable[str], train_directions: list[str]) -> int:
    """Updates trained with exactly ``directions``: the summed spans of the curriculum stages that
    list them (stage i runs ``start_i <= step < start_{i+1}``, the last one to trainer.max_steps),
    0 when no stage does; trainer.max_steps without a curriculum."""
    from nmt.curriculum import check_stages  # lazy: the curriculum module imports the config

    max_steps = int(cfg.trainer.max_steps)
    stages = check_stages(list(cfg.curriculum.stages), train_directions)
    if not stages:
        return max_steps
    wanted = set(directions)
    ends = [start for start, _ in stages[1:]] + [max_steps]
    spans = zip(stages, ends, strict=True)
    return sum(max(0, min(end, max_steps) - start) for (start, dirs), end in spans if set(dirs) == wanted)


def probs_for_run(cfg: Any, sizes: Mapping[str, int], weights: Mapping[str, float], data: Any,
                  world_size: int) -> dict[str, float]:
    """``direction_probs`` with the settings of ``cfg`` (a :class:`~nmt.config.Config`) for the
    directions of ``sizes`` (all of them, or one curriculum stage's).

    For ``unimax`` with ``sampling.unimax_budget=0`` the budget is :func:`unimax_run_budget` over
    the updates those directions train (:func:`stage_steps`) and their mean example length in
    ``data``. With a curriculum, every stage's UniMax settings are checked on the first call, so
    that a refused stage stops the run at its start, not in the middle."""
    sp = cfg.sampling

    def probs(sz: Mapping[str, int], w: Mapping[str, float]) -> dict[str, float]:
        budget = float(sp.unimax_budget) or None
        if sp.method == "unimax" and budget is None:
            steps = stage_steps(cfg, sz, list(data.directions)) or int(cfg.trainer.max_steps)
            budget = unimax_run_budget(steps, cfg.data.max_tokens, cfg.trainer.update_freq, world_size,
                                       mean_example_tokens(data, sz))
        return direction_probs(sz, sp.method, sp.temperature, w, budget, sp.unimax_max_epochs,
                               bool(sp.unimax_allow_proportional))

    if sp.method == "unimax" and cfg.curriculum.stages:
        from nmt.curriculum import check_stages

        every = data.sizes()
        for _, dirs in check_stages(list(cfg.curriculum.stages), list(data.directions)):
            if stage_steps(cfg, dirs, list(data.directions)) > 0:  # a stage past max_steps never trains
                probs({d: every[d] for d in dirs}, {})
    return probs(sizes, weights)
