"""KVCache: appending keys/values, reordering rows, and decoding after a reorder."""

import pytest
import torch

from nmt.models.kv_cache import KVCache, LayerKV
from test_model_search import EOS, TAG, tiny_model


def rows_tensor(values, t=1):
    """``[N, 1, t, 1]``: row ``i`` holds ``values[i]`` at every position."""
    return torch.tensor(values, dtype=torch.float32)[:, None, None, None].expand(-1, 1, t, 1).clone()


def test_append_grows_positions_and_returns_all():
    layer = LayerKV()
    k1, v1 = rows_tensor([1.0, 2.0]), rows_tensor([10.0, 20.0])
    k, v = layer.append_self(k1, v1)
    assert k.shape == (2, 1, 1, 1) and torch.equal(k, k1) and torch.equal(v, v1)
    k, v = layer.append_self(rows_tensor([3.0, 4.0]), rows_tensor([30.0, 40.0]))
    assert k.shape == (2, 1, 2, 1)
    assert k[:, 0, :, 0].tolist() == [[1.0, 3.0], [2.0, 4.0]]
    assert v[:, 0, :, 0].tolist() == [[10.0, 30.0], [20.0, 40.0]]
    assert layer.self_kv is not None and torch.equal(layer.self_kv[0], k)


def test_append_with_other_rows_than_cached_is_refused():
    layer = LayerKV()
    layer.append_self(rows_tensor([1.0, 2.0]), rows_tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="reorder the cache"):
        layer.append_self(rows_tensor([1.0, 2.0, 3.0]), rows_tensor([1.0, 2.0, 3.0]))


def filled_cache():
    cache = KVCache(2)
    for i, layer in enumerate(cache.layers):
        layer.append_self(rows_tensor([0.0, 1.0, 2.0], t=2) + i, rows_tensor([5.0, 6.0, 7.0], t=2) + i)
        layer.cross_kv = (rows_tensor([10.0, 11.0, 12.0], t=3) + i, rows_tensor([20.0, 21.0, 22.0], t=3) + i)
    return cache


def row_values(t):
    return t[:, 0, 0, 0].tolist()


def test_reorder_selects_rows_of_every_tensor_of_every_layer():
    cache = filled_cache()
    cache.reorder(torch.tensor([2, 0, 0]))  # reorder, drop row 1, repeat row 0
    for i in range(len(cache)):
        self_k, self_v = cache[i].self_kv
        cross_k, cross_v = cache[i].cross_kv
        assert row_values(self_k) == [2.0 + i, 0.0 + i, 0.0 + i]
        assert row_values(self_v) == [7.0 + i, 5.0 + i, 5.0 + i]
        assert row_values(cross_k) == [12.0 + i, 10.0 + i, 10.0 + i]
        assert row_values(cross_v) == [22.0 + i, 20.0 + i, 20.0 + i]
        assert self_k.shape == (3, 1, 2, 1) and cross_k.shape == (3, 1, 3, 1)


def test_reorder_drops_rows():
    cache = filled_cache()
    cache.reorder(torch.tensor([1]))
    assert row_values(cache[0].self_kv[0]) == [1.0]
    assert row_values(cache[1].cross_kv[1]) == [22.0]


def test_reorder_without_cross_keeps_cross_attention_tensors():
    cache = filled_cache()
    cross_before = cache[0].cross_kv
    cache.reorder(torch.tensor([1, 1, 0]), cross=False)
    assert row_values(cache[0].self_kv[0]) == [1.0, 1.0, 0.0]
    assert cache[0].cross_kv is cross_before


def test_reorder_of_an_empty_cache_is_a_no_op():
    cache = KVCache(3)
    cache.reorder(torch.tensor([0]))
    assert all(layer.self_kv is None and layer.cross_kv is None for layer in cache.layers)


def test_decoding_after_reorder_matches_decoding_the_reordered_batch():
    """Reordering the cache mid-decode gives the logits of decoding the reordered rows from scratch."""
    model = tiny_model()
    src = torch.tensor([[TAG, 260, 261, EOS], [TAG, 262, EOS, 0]])
    prev = torch.tensor([[EOS, TAG, 260, 261], [EOS, TAG, 262, 262]])
    order = torch.tensor([1, 0, 1])
    mem, mask = model.encode(src)
    cache = model.new_cache()
    model.decode(prev[:, :2], mem, mask, cache=cache, offset=0)
    cache.reorder(order)
    step = model.decode(prev[order, 2:3], mem[order], mask[order], cache=cache, offset=2)
    full, _ = model(src[order], prev[order, :3])
    assert torch.allclose(step[:, -1], full[:, -1], atol=1e-5)
