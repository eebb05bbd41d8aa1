"""``model.attention=auto`` picks the implementation per call: math for bf16 on a CPU with bf16
units, sdpa otherwise; both implementations compute the same attention."""

import pytest
import torch

import nmt.models.attention as attention
from nmt.device import cpu_flags, cpu_has_bf16
from nmt.models.attention import MultiheadAttention, auto_impl


@pytest.mark.parametrize(("dtype", "has_bf16", "expected"), [
    (torch.bfloat16, True, "math"), (torch.bfloat16, False, "sdpa"),
    (torch.float32, True, "sdpa"), (torch.float32, False, "sdpa")])
def test_auto_impl_by_dtype_and_cpu(monkeypatch, dtype, has_bf16, expected):
    monkeypatch.setattr(attention, "cpu_has_bf16", lambda: has_bf16)
    assert auto_impl(torch.zeros(1, 1, 2, 4, dtype=dtype)) == expected


def test_cpu_has_bf16_reads_the_flags():
    assert cpu_has_bf16() == bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


@pytest.mark.parametrize("has_bf16", [True, False])
def test_auto_calls_the_chosen_implementation_under_autocast(monkeypatch, has_bf16):
    monkeypatch.setattr(attention, "cpu_has_bf16", lambda: has_bf16)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    layer = MultiheadAttention(16, 2, 0.0, cross=False, impl="auto")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(torch.randn(2, 3, 16))
    assert len(calls) == (0 if has_bf16 else 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_math_and_sdpa_agree_with_padding_and_causal_masks(dtype):
    torch.manual_seed(0)
    layers = {impl: MultiheadAttention(16, 2, 0.0, cross=False, impl=impl) for impl in ("math", "sdpa")}
    layers["sdpa"].load_state_dict(layers["math"].state_dict())
    x = torch.randn(2, 5, 16)
    pad = torch.zeros(2, 1, 1, 5).masked_fill(torch.tensor([[0, 0, 0, 0, 1], [0, 0, 1, 1, 1]]).bool()[:, None, None],
                                              float("-inf"))
    causal = torch.full((5, 5), float("-inf")).triu(1)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    for mask in (pad, causal):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = {impl: layer(x, mask=mask).float() for impl, layer in layers.items()}
        assert torch.allclose(out["math"], out["sdpa"], atol=tol, rtol=tol)
