"""Direction sampling probabilities and per-epoch counts, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nmt.config import Config, StageConfig
from nmt.data.sampling import (
    direction_probs,
    epoch_counts,
    mean_example_tokens,
    probs_for_run,
    stage_steps,
    unimax_run_budget,
)
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


def test_unimax_budget_that_caps_everything_is_refused_unless_allowed():
    # B = 1 + 3 = 4, N = 1: a: share 2, cap 1 -> 1; b: share 3, cap 3 -> 3: every direction capped,
    # which is proportional sampling (T = 1) and is refused by default.
    with pytest.raises(UserError, match="sampling.unimax_allow_proportional") as e:
        direction_probs({"a": 1, "b": 3}, "unimax", unimax_budget=4)
    assert "sampling.unimax_budget" in str(e.value) and "trainer.max_steps" in str(e.value)
    p = direction_probs({"a": 1, "b": 3}, "unimax", unimax_budget=4, unimax_allow_proportional=True)
    assert p == pytest.approx({"a": 0.25, "b": 0.75})
    # B larger than N * total: everything capped at N * U (2, 6) -> proportional again.
    with pytest.raises(UserError, match="proportional"):
        direction_probs({"a": 1, "b": 3}, "unimax", unimax_budget=100, unimax_max_epochs=2)
    # B = 3.9 < 4: b gets 2.9 < 3, not capped: a = 1, b = 2.9 -> 1/3.9, 2.9/3.9 (accepted).
    assert direction_probs({"a": 1, "b": 3}, "unimax", unimax_budget=3.9) == pytest.approx(
        {"a": 1 / 3.9, "b": 2.9 / 3.9})
    # Small budget, nothing capped: uniform (share 1 each, caps 1 and 3).
    assert direction_probs({"a": 1, "b": 3}, "unimax", unimax_budget=2) == pytest.approx({"a": 0.5, "b": 0.5})
    # Equal sizes: every method is proportional, nothing to refuse.
    assert direction_probs({"a": 5, "b": 5}, "unimax", unimax_budget=100) == pytest.approx({"a": 0.5, "b": 0.5})
    with pytest.raises(UserError, match="needs a budget"):
        direction_probs({"a": 1, "b": 3}, "unimax")


def test_unimax_run_budget_by_hand():
    # 1000 updates x 2 accumulated x 4 ranks x 4096 tokens / 32 tokens per example = 1,024,000.
    assert unimax_run_budget(1000, 4096, 2, 4, 32.0) == pytest.approx(1_024_000)
    with pytest.raises(UserError, match="sampling.unimax_budget"):
        unimax_run_budget(1000, 4096, 1, 1, 0.0)


class _Data:
    """ParallelData stand-in: directions and (src_len, tgt_len) of the kept examples."""

    def __init__(self):
        self.directions = ["a-b", "c-d"]
        self._lens = {0: ([3, 10], [5, 4]), 1: ([6, 6, 6, 6], [2, 2, 2, 2])}

    def lengths(self, i):
        return np.array(self._lens[i][0]), np.array(self._lens[i][1])


def test_mean_example_tokens_uses_the_batch_cost_length():
    # max(src, tgt): a-b 5, 10; c-d 6 x 4 -> (15 + 24) / 6 = 6.5; only the asked directions count.
    assert mean_example_tokens(_Data(), ["a-b", "c-d"]) == pytest.approx(6.5)
    assert mean_example_tokens(_Data(), ["a-b"]) == pytest.approx(7.5)


def test_probs_for_run_derives_the_budget_from_the_run():
    cfg = Config()
    cfg.sampling.method, cfg.sampling.unimax_max_epochs = "unimax", 1.0
    cfg.trainer.max_steps, cfg.trainer.update_freq, cfg.data.max_tokens = 1, 1, 13
    # Mean length 6.5 -> B = 1 x 1 x 1 x 13 / 6.5 = 2 examples over sizes a-b 2, c-d 4: uniform.
    sizes = {"a-b": 2, "c-d": 4}
    assert probs_for_run(cfg, sizes, {}, _Data(), 1) == pytest.approx({"a-b": 0.5, "c-d": 0.5})
    # Two ranks: B = 4 -> a-b share 2 = cap 2, c-d 2 (cap 4): still uniform, not all capped.
    assert probs_for_run(cfg, sizes, {}, _Data(), 2) == pytest.approx({"a-b": 0.5, "c-d": 0.5})
    # Three ranks: B = 6 = 2 + 4, every direction capped -> refused, naming the keys.
    with pytest.raises(UserError, match="unimax_allow_proportional"):
        probs_for_run(cfg, sizes, {}, _Data(), 3)
    cfg.sampling.unimax_budget = 3.0  # explicit budget wins: a-b 1.5, c-d 1.5
    assert probs_for_run(cfg, sizes, {}, _Data(), 3) == pytest.approx({"a-b": 0.5, "c-d": 0.5})


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
        ({"a": 1}, {"method": "unimax", "unimax_budget": 1, "unimax_max_epochs": 0}, "sampling.unimax_max_epochs"),
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


class _StageData(_Data):
    """The same lengths under real direction names (curriculum stages validate them)."""

    def __init__(self):
        super().__init__()
        self.directions = ["deu_Latn-eng_Latn", "eng_Latn-fra_Latn"]

    def sizes(self):
        return {"deu_Latn-eng_Latn": 2, "eng_Latn-fra_Latn": 4}


def test_unimax_budget_of_a_curriculum_stage_is_its_own_span():
    a, b = _StageData().directions
    cfg = Config()
    cfg.sampling.method = "unimax"
    cfg.trainer.max_steps, cfg.trainer.update_freq, cfg.data.max_tokens = 3, 1, 13
    cfg.curriculum.stages = [StageConfig(0, [a]), StageConfig(1, [a, b])]
    assert stage_steps(cfg, [a], [a, b]) == 1 and stage_steps(cfg, [a, b], [a, b]) == 2
    # Stage 1 trains 2 of the 3 updates: B = 2 x 13 / 6.5 = 4 -> a 2 (its cap), b 2 (cap 4): uniform.
    # (The whole run's B = 3 x 13 / 6.5 = 6 would cap both and be refused.)
    assert probs_for_run(cfg, _StageData().sizes(), {}, _StageData(), 1) == pytest.approx({a: 0.5, b: 0.5})
    assert probs_for_run(cfg, {a: 2}, {}, _StageData(), 1) == {a: 1.0}
    # Four updates: stage 1 spans 3, B = 6 caps both: refused already when stage 0 starts.
    cfg.trainer.max_steps = 4
    with pytest.raises(UserError, match="unimax_allow_proportional"):
        probs_for_run(cfg, {a: 2}, {}, _StageData(), 1)
