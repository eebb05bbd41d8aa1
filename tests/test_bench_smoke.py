"""Smoke run of the training-throughput benchmark: it runs and prints its JSON line. Times nothing."""

import importlib.util
import json

import pytest

from conftest import run_module

KEYS = {"results", "ratios", "target_met", "peak_gflops", "flops_per_step", "flops_formula", "peak_rss_gib",
        "cores", "loadavg_before", "loadavg_after", "params", "shape"}
SYSTEM_KEYS = {"tok_s_median", "tok_s_best", "mfu_median", "step_s", "steps_timed"}


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                    reason="the peer (transformers, the 'bench' extra) is not installed")
def test_quick_fp32_run_prints_one_json_line(tmp_path):
    out = tmp_path / "bench.json"
    # one thread: with two threads on cores that other jobs share, the tiny steps stall on thread sync
    proc = run_module("bench.train_throughput", "--quick", "--precisions", "fp32", "--threads", "1",
                      "--out", out, timeout=240)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert json.loads(out.read_text()) == report
    assert KEYS <= report.keys()
    fp32 = report["results"]["fp32"]
    assert SYSTEM_KEYS <= fp32["ours"].keys() and SYSTEM_KEYS <= fp32["peer"].keys()
    assert fp32["peer_attention"] in ("eager", "sdpa")
    assert report["ratios"]["fp32"] > 0
    assert report["cores"]["torch_threads"] == 1
    assert report["params"]["ours"] == report["params"]["peer"]
