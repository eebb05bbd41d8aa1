"""Token-budget batching: budget, coverage, grouping by direction, determinism."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nmt.data.batching import Examples, batch_by_tokens, batch_cost
from nmt.errors import UserError


def make(src, tgt, direction=None) -> Examples:
    n = len(src)
    d = np.zeros(n, dtype=np.int64) if direction is None else np.asarray(direction, dtype=np.int64)
    return Examples(d, np.arange(n, dtype=np.int64), np.asarray(src, dtype=np.int64), np.asarray(tgt, dtype=np.int64))


def test_small_example_by_hand():
    # cost lengths max(src, tgt): 3, 5, 4, 10, 2, 4 ; sorted: 2(#4) 3(#0) 4(#2) 4(#5) 5(#1) 10(#3)
    ex = make([3, 5, 2, 10, 2, 4], [2, 3, 4, 1, 1, 1])
    batches = batch_by_tokens(ex, max_tokens=12)
    # greedy: [#4,#0,#2] cost 3*4=12; [#5,#1] 2*5=10 (adding #3 would be 3*10); [#3] 10
    assert [b.tolist() for b in batches] == [[4, 0, 2], [5, 1], [3]]
    assert [batch_cost(ex, b) for b in batches] == [12, 10, 10]


def test_max_sentences_caps_batch_size():
    ex = make([2] * 10, [2] * 10)
    batches = batch_by_tokens(ex, max_tokens=1000, max_sentences=4)
    assert [len(b) for b in batches] == [4, 4, 2]


def test_oversized_example_gets_its_own_batch():
    ex = make([2, 50, 2], [2, 2, 60])
    # cost lengths 2, 50, 60 with a budget of 10: both long ones alone, nothing dropped
    assert [b.tolist() for b in batch_by_tokens(ex, max_tokens=10)] == [[0], [1], [2]]
    ex2 = make([2, 2, 50], [2, 2, 2])
    assert [b.tolist() for b in batch_by_tokens(ex2, max_tokens=10)] == [[0, 1], [2]]


def test_one_direction_per_batch_groups():
    ex = make([2, 2, 2, 2, 2, 2], [2] * 6, direction=[1, 0, 1, 0, 2, 1])
    mixed = batch_by_tokens(ex, max_tokens=100)
    assert len(mixed) == 1
    grouped = batch_by_tokens(ex, max_tokens=100, one_direction_per_batch=True)
    assert [b.tolist() for b in grouped] == [[1, 3], [0, 2, 5], [4]]


def test_generator_makes_it_random_but_reproducible():
    rng = np.random.default_rng(0)
    ex = make(rng.integers(2, 30, 500), rng.integers(2, 30, 500))
    a = batch_by_tokens(ex, 256, generator=torch.Generator().manual_seed(1))
    b = batch_by_tokens(ex, 256, generator=torch.Generator().manual_seed(1))
    c = batch_by_tokens(ex, 256, generator=torch.Generator().manual_seed(2))
    assert [x.tolist() for x in a] == [x.tolist() for x in b]
    assert [x.tolist() for x in a] != [x.tolist() for x in c]
    plain = batch_by_tokens(ex, 256)
    assert [x.tolist() for x in plain] == [x.tolist() for x in batch_by_tokens(ex, 256)]


@pytest.mark.parametrize("kwargs", [{"max_tokens": 0}, {"max_tokens": 2.5}, {"max_tokens": 10, "max_sentences": 0}])
def test_bad_budget_is_user_error(kwargs):
    with pytest.raises(UserError, match="data.max_"):
        batch_by_tokens(make([2], [2]), **kwargs)


def test_empty_input():
    assert batch_by_tokens(make([], []), 10) == []


@settings(max_examples=150, deadline=None)
@given(
    lens=st.lists(st.tuples(st.integers(2, 40), st.integers(2, 40), st.integers(0, 3)), max_size=120),
    max_tokens=st.integers(1, 200),
    max_sentences=st.one_of(st.none(), st.integers(1, 12)),
    grouped=st.booleans(),
    seed=st.one_of(st.none(), st.integers(0, 2**31)),
)
def test_property_budget_and_coverage(lens, max_tokens, max_sentences, grouped, seed):
    ex = make([a for a, _, _ in lens], [b for _, b, _ in lens], [d for _, _, d in lens])
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    batches = batch_by_tokens(ex, max_tokens, max_sentences, one_direction_per_batch=grouped, generator=gen)
    used = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
    assert sorted(used.tolist()) == list(range(len(lens)))  # every example exactly once
    for b in batches:
        assert len(b) >= 1
        if max_sentences is not None:
            assert len(b) <= max_sentences
        if len(b) > 1 or ex.cost_len[b[0]] <= max_tokens:
            assert batch_cost(ex, b) <= max_tokens
        if grouped:
            assert len(set(ex.direction[b].tolist())) == 1


@settings(max_examples=60, deadline=None)
@given(lens=st.lists(st.integers(1, 30), min_size=1, max_size=80), max_tokens=st.integers(30, 120))
def test_property_greedy_batches_are_full(lens, max_tokens):
    """Without a generator, each batch but the last could not have taken the next example."""
    ex = make(lens, [1] * len(lens))
    batches = batch_by_tokens(ex, max_tokens)
    for b, nxt in itertools.pairwise(batches):
        grown = np.concatenate([b, nxt[:1]])
        assert batch_cost(ex, grown) > max_tokens
