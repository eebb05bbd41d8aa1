"""Smoke runs of the benchmarks: each runs and prints its JSON line. Times nothing."""

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
    assert report["target_met"]["fp32"] == (report["ratios"]["fp32"] >= report["target"]["fp32"] == 1.3)
    start, end = report["peak_gflops_start_end"]["fp32"]  # MFU uses the higher of the two peaks
    assert report["peak_gflops"]["fp32"] == pytest.approx(max(start, end), rel=1e-3)


@pytest.mark.skipif(importlib.util.find_spec("fairscale") is None, reason="fairscale is not installed")
def test_moe_layer_bench_quick_run_prints_one_json_line():
    proc = run_module("bench.moe_layer", "--quick", "--precisions", "fp32", timeout=240)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    row = report["results"]["fp32"]["4"]
    assert {"ours_s", "fairscale_s", "speedup", "ours_extra_mb", "fairscale_extra_mb", "memory_ratio"} <= row.keys()
    assert row["speedup"] > 0 and report["targets"] == {"speedup": 3.0, "memory_ratio": 2.0}
    assert {"model", "bf16_hardware"} <= report["cpu"].keys()  # figures travel with the CPU they came from


def test_moe_model_bench_quick_run_prints_one_json_line():
    proc = run_module("bench.moe_model", "--quick", timeout=240)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["ratio"] > 0 and report["moe_step_s"] > 0 and report["dense_step_s"] > 0
    assert report["expert_hidden"] * 2 == report["dense_hidden"]


def test_moe_inference_bench_quick_run_prints_one_json_line():
    proc = run_module("bench.moe_inference", "--quick", "--experts", "8", timeout=400)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    configs = report["results"]["random_E8"]["configs"]
    assert list(configs) == (["base", "static", "dynamic"]
                             + [f"buffer_K{k}_{p}" for k in (8, 4, 2) for p in ("lru", "lifo")])
    for name, row in configs.items():
        assert row["sentences_s"] > 0 and row["encoder_s"] > 0 and row["decoder_s"] > 0 and row["peak_rss_mib"] > 0
        assert (row["buffer"] is None) == (not name.startswith("buffer"))
        assert row["rss_end_mib"] <= row["peak_rss_mib"]
        assert row["expert_rss_mib"] == row["rss_end_mib"] - configs["base"]["rss_end_mib"]
    summary = report["results"]["random_E8"]["summary"]
    assert summary["encoder_speedup"] == configs["static"]["encoder_s"] / configs["dynamic"]["encoder_s"]
    assert {"decoder_speedup", "dynamic_target_met", "k_quarter_lru_time", "k_quarter_lifo_time"} <= summary.keys()
    full, quarter = configs["buffer_K8_lru"]["buffer"], configs["buffer_K2_lru"]["buffer"]
    assert full["evictions"] == 0 and full["loads"] <= 8 * 2  # K = E: each expert of the 2 MoE layers loaded once
    assert quarter["loads"] >= full["loads"] and quarter["evictions"] > 0


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                    reason="the peer (transformers, the 'bench' extra) is not installed")
def test_moe_model_peer_quick_run_prints_one_json_line():
    proc = run_module("bench.moe_model_peer", "--quick", "--threads", "1", timeout=240)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert {"results", "ratios", "target", "target_met", "peak_rss_gib", "cores", "threads", "cpu", "loadavg_before",
            "loadavg_after", "params", "shape", "peer"} <= report.keys()
    assert report["target"] == {"fp32": 1.15, "bf16": 1.5} and report["threads"] == 1
    assert report["params"]["ours"] == report["params"]["peer"]
    fp32 = report["results"]["fp32"]
    assert {"ratio_median", "ratio_paired_median", "ratio_best"} <= fp32.keys() and fp32["ratio_median"] > 0
    assert report["target_met"]["fp32"] == (fp32["ratio_median"] >= 1.15)
    assigned = report["shape"]["assignments_per_step"]
    for system in ("ours", "peer"):
        assert fp32[system]["steps_timed"] == 2 and fp32[system]["step_s_median"] > 0
        assert 0.5 * assigned <= fp32[system]["expert_rows_per_step"] <= assigned  # top-2, some dropped at most
    bf16 = report["results"]["bf16"]
    assert "skipped" in bf16 or bf16["ratio_median"] > 0
    assert report["peak_rss_gib"]["process_gib"] >= report["peak_rss_gib"]["ours_gib"] > 0
