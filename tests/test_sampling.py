"""Direction sampling probabilities and per-epoch counts, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from nmt.data.sampling import direction_probs, epoch_counts
from nmt.errors import UserError

SIZES = {"a": 100, "b": 10}


# p_a = 100^(1/T) / (100^(1/T) + 10^(1/T)) = 1 / (1 + 10^(-1/T))
@pytest.mark.parametrize(
    "temperature, p_a, p_b",
    [
        (1.0, 0.9090909091, 0.0909090909),  # 100/110, 10/110
        (2.0, 0.7597469266, 0.2402530734),  # 10/(10+sqrt 10)
        (5.0, 0.6131368202, 0.3868631798),  # 1/(1+10^-0.2) = 1/1.6309573445
        (math.inf, 0.5, 0.5),
    ],
)
def test_temperature_two_directions(temperature, p_a, p_b):
    p = direction_probs(SIZES, "temperature", temperature=temperature)
    assert list(p) == ["a", "b"]
    assert p["a"] == pytest.approx(p_a, abs=1e-10)
    assert p["b"] == pytest.approx(p_b, abs=1e-10)


def test_temperature_huge_temperature_and_tiny_direction_do_not_underflow():
    p = direction_probs({"a": 10**12, "b": 1}, "temperature", temperature=1e6)
    assert p["a"] == pytest.approx(0.5, abs=1e-4) and p["b"] > 0.49


def test_uniform():
    probs = direction_probs({"a": 7, "b": 1, "c": 100, "d": 3}, "uniform")
    assert probs == {"a": 0.25, "b": 0.25, "c": 0.25, "d": 0.25}


def test_unimax_by_hand():
    # Sizes a=10 b=50 c=200 d=1000, budget B=400, N=2 epochs, visited in ascending order:
    # a: share 400/4 = 100, cap 2*10 = 20   -> 20, B_rem 380
    # b: share 380/3 = 126.7, cap 2*50 = 100 -> 100, B_rem 280   (a's and b's caps redistribute)
    # c: share 280/2 = 140, cap 400          -> 140, B_rem 140
    # d: share 140/1 = 140, cap 2000         -> 140
    # sum 400 -> p = 0.05, 0.25, 0.35, 0.35
    sizes = {"d": 1000, "b": 50, "a": 10, "c": 200}  # input order is kept in the output
    p = direction_probs(sizes, "unimax", unimax_budget=400, unimax_max_epochs=2)
    assert list(p) == ["d", "b", "a", "c"]
    assert p == pytest.approx({"a": 0.05, "b": 0.25, "c": 0.35, "d": 0.35}, abs=1e-12)


def test_unimax_default_budget_is_total_size():
    # B = 1 + 3 = 4, N = 1: a: share 2, cap 1 -> 1; b: share 3, cap 3 -> 3 => proportional.
    assert direction_probs({"a": 1, "b": 3}, "unimax") == pytest.approx({"a": 0.25, "b": 0.75})
    # B larger than N * total: everything is capped at N * U -> proportional again (2, 6).
    assert direction_probs({"a": 1, "b": 3}, "unimax", unimax_budget=100, unimax_max_epochs=2) == pytest.approx(
        {"a": 0.25, "b": 0.75}
    )
    # Small budget, nothing capped: uniform (share 1 each, caps 1 and 3).
    assert direction_probs({"a": 1, "b": 3}, "unimax", unimax_budget=2) == pytest.approx({"a": 0.5, "b": 0.5})


def test_fixed_weights_normalised():
    p = direction_probs({"a": 5, "b": 5, "c": 1}, "fixed", weights={"a": 2, "b": 1, "c": 1})
    assert p == {"a": 0.5, "b": 0.25, "c": 0.25}


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"weights": {"a": 1, "b": 1, "zzz": 1}}, "zzz"),
        ({"weights": {"a": 1}}, "no weight for: b"),
        ({"weights": None}, "sampling.weights"),
        ({"weights": {"a": -1, "b": 1}}, "sampling.weights.a"),
        ({"weights": {"a": 0, "b": 0}}, "all be zero"),
    ],
)
def test_fixed_weight_errors(kwargs, key):
    with pytest.raises(UserError, match=key):
        direction_probs({"a": 1, "b": 1}, "fixed", **kwargs)


@pytest.mark.parametrize(
    "sizes, kwargs, key",
    [
        ({"a": 1}, {"method": "temperature", "temperature": 0}, "sampling.temperature"),
        ({"a": 1}, {"method": "temperature", "temperature": -2}, "sampling.temperature"),
        ({"a": 1}, {"method": "temperature", "temperature": float("nan")}, "sampling.temperature"),
        ({}, {"method": "temperature"}, "data.directions"),
        ({"a": 0, "b": 3}, {"method": "uniform"}, "direction a has no training examples"),
        ({"a": 1}, {"method": "bogus"}, "sampling.method"),
        ({"a": 1}, {"method": "unimax", "unimax_budget": 0}, "sampling.unimax_budget"),
        ({"a": 1}, {"method": "unimax", "unimax_max_epochs": 0}, "sampling.unimax_max_epochs"),
    ],
)
def test_validation_errors_name_the_key(sizes, kwargs, key):
    with pytest.raises(UserError, match=key):
        direction_probs(sizes, **kwargs)


def test_epoch_counts_sum_exactly_and_floor_part():
    probs = {"a": 0.5, "b": 0.3, "c": 0.2}
    sizes = {"a": 50, "b": 30, "c": 20}
    # V = 100: 50, 30, 20 exactly, nothing left for the multinomial.
    assert epoch_counts(probs, sizes, None, torch.Generator().manual_seed(0)) == {"a": 50, "b": 30, "c": 20}
    for v in (1, 7, 11, 999):
        c = epoch_counts(probs, sizes, v, torch.Generator().manual_seed(v))
        assert sum(c.values()) == v
        for d in probs:  # floor(V p) <= count <= floor(V p) + remainder
            assert math.floor(v * probs[d]) <= c[d] <= math.floor(v * probs[d]) + 2


def test_epoch_counts_remainder_is_unbiased_and_seeded():
    probs = {"a": 0.5, "b": 0.5}
    sizes = {"a": 1, "b": 1}
    # V = 11: floor 5, 5 and one remainder draw with weights 0.5 / 0.5.
    draws = [epoch_counts(probs, sizes, 11, torch.Generator().manual_seed(s))["a"] for s in range(400)]
    assert set(draws) == {5, 6}
    assert sum(draws) / len(draws) == pytest.approx(5.5, abs=0.1)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert epoch_counts(probs, sizes, 11, g1) == epoch_counts(probs, sizes, 11, g2)


def test_epoch_counts_errors():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(UserError, match="data.epoch_size"):
        epoch_counts({"a": 1.0}, {"a": 3}, 0, g)
    with pytest.raises(UserError, match="without data"):
        epoch_counts({"x": 1.0}, {"a": 3}, 5, g)
