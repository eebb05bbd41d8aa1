"""bench/expert_matmuls.py: its six products are a ReLU-free expert FFN's forward and backward,
its three ways agree, and the CLI prints one JSON line. Times nothing."""

import json

import pytest
import torch

from bench.expert_matmuls import WAYS, Operands, bmm_step, loop_step, max_rel_diff, usable_ways
from conftest import run_module


def test_the_six_products_are_the_forward_and_backward_of_each_expert():
    torch.manual_seed(0)
    o = Operands(experts=3, rows=5, d=4, h=6, dtype=torch.float64)
    loop_step(o)
    for e in range(3):
        x, w1, w2 = (t[e].clone().requires_grad_() for t in (o.x, o.w1, o.w2))
        h = x @ w1
        y = h @ w2
        h.retain_grad()
        y.backward(o.g[e])
        torch.testing.assert_close(o.h[e], h.detach())
        torch.testing.assert_close(o.y[e], y.detach())
        torch.testing.assert_close(o.gh[e], h.grad)
        for got, want in ((o.gx, x.grad), (o.gw1, w1.grad), (o.gw2, w2.grad)):
            torch.testing.assert_close(got[e], want)


def test_the_ways_agree_and_a_wrong_way_would_show(monkeypatch):
    torch.manual_seed(0)
    o = Operands(experts=4, rows=8, d=16, h=32, dtype=torch.float32)
    ways, skipped = usable_ways(o)
    assert ways[:2] == ["loop", "bmm"] and set(ways) | set(skipped) == {"loop", "bmm", "grouped_mm"}
    assert max_rel_diff(o, ways) < 1e-5

    def wrong(o: Operands) -> None:
        bmm_step(o)
        o.gw1[1].mul_(1.01)

    monkeypatch.setitem(WAYS, "bmm", wrong)
    assert max_rel_diff(o, ["loop", "bmm"]) > 1e-3


@pytest.mark.parametrize("experts", ["3", "4,5"])
def test_expert_counts_that_do_not_divide_the_rows_are_refused(experts):
    proc = run_module("bench.expert_matmuls", "--tokens", "64", "--experts", experts, check=False)
    assert proc.returncode == 2 and "must divide evenly" in proc.stderr


def test_quick_run_prints_one_json_line():
    proc = run_module("bench.expert_matmuls", "--quick", "--precisions", "fp32", timeout=240)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    rows = report["results"]["fp32"]
    assert list(rows) == ["2", "8"]
    for e, row in rows.items():
        assert row["rows_per_expert"] * int(e) == 2 * report["tokens"]
        assert row["max_rel_diff"] < 1e-5 and row["loop"]["ms"] > 0 and row["bmm_over_loop"] > 0
    assert rows["2"]["loop_vs_first_e"] == 1.0
    assert {"model", "bf16_hardware"} <= report["cpu"].keys() and report["allocator"]


def test_bf16_is_skipped_only_where_emulated_and_not_forced(monkeypatch):
    import bench.machine as machine

    monkeypatch.setattr(machine, "bf16_matmul_emulated", lambda: (True, "bf16 0.1x fp32"))
    assert machine.bf16_skip_reason("fp32", force=False) is None
    assert machine.bf16_skip_reason("bf16", force=True) is None
    assert "bf16 0.1x fp32" in machine.bf16_skip_reason("bf16", force=False) and "--force-bf16" in \
        machine.bf16_skip_reason("bf16", force=False)
    monkeypatch.setattr(machine, "bf16_matmul_emulated", lambda: (False, "bf16 3x fp32"))
    assert machine.bf16_skip_reason("bf16", force=False) is None
