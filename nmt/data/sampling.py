"""Sampling probabilities over translation directions and per-epoch example counts.

``direction_probs`` turns per-direction sizes (sentence pairs after filtering) into sampling
probabilities p_l with one of four methods:

* ``temperature``: q_l = n_l / sum(n), p_l proportional to q_l^(1/T). ``T = 1`` is
  proportional sampling, ``T = inf`` is uniform.
* ``uniform``: p_l = 1 / L (the same as ``temperature`` with ``T = inf``).
* ``fixed``: user-given weights, normalised to sum to one.
* ``unimax`` (Chung et al. 2023): sizes U_l, character/sentence budget B, at most N epochs per
  direction. Visit directions from smallest to largest; the i-th (0-based) of L gets
  a_l = min(B_rem / (L - i), N * U_l) and B_rem -= a_l; p_l = a_l / sum(a).

``epoch_counts`` turns probabilities into integer counts that sum to the epoch size exactly.
Every validation failure is a :class:`~nmt.errors.UserError` naming the config key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

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
    return {d: float(x) for d, x in zip(sizes, p)}


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


def _unimax(sizes: Mapping[str, int], budget: float | None, max_epochs: float) -> dict[str, float]:
    n_max = _positive_number(max_epochs, "sampling.unimax_max_epochs")
    b = float(sum(sizes.values())) if budget is None else _positive_number(budget, "sampling.unimax_budget")
    # Ascending by size; ties broken by name (the result does not depend on the tie order).
    order = sorted(sizes, key=lambda d: (sizes[d], d))
    alloc: dict[str, float] = {}
    remaining = b
    for i, d in enumerate(order):
        share = remaining / (len(order) - i)
        alloc[d] = min(share, n_max * sizes[d])
        remaining -= alloc[d]
    total = sum(alloc.values())
    return {d: alloc[d] / total for d in sizes}


def direction_probs(
    sizes: Mapping[str, int],
    method: str,
    temperature: float = 1.0,
    weights: Mapping[str, float] | None = None,
    unimax_budget: float | None = None,
    unimax_max_epochs: float = 1.0,
) -> dict[str, float]:
    """Sampling probability of each direction, keys in the order of ``sizes``.

    ``sizes`` maps a direction (``"eng_Latn-fra_Latn"``) to its number of examples (> 0).
    ``temperature`` is used by ``temperature``; ``weights`` by ``fixed``; ``unimax_budget``
    (default: the total size, i.e. sum of ``sizes``) and ``unimax_max_epochs`` by ``unimax``.
    """
    _check_sizes(sizes)
    if method == "temperature":
        return _temperature(sizes, temperature)
    if method == "uniform":
        return {d: 1.0 / len(sizes) for d in sizes}
    if method == "fixed":
        return _fixed(sizes, weights)
    if method == "unimax":
        return _unimax(sizes, unimax_budget, unimax_max_epochs)
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
    for d, x in zip(probs, p):
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
    return {d: int(c) for d, c in zip(probs, counts)}
