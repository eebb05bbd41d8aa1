"""Smoke run of bench.translate_speed (--quick): it runs end to end and prints its JSON line. Times nothing."""

import importlib.util
import json

import pytest

from conftest import run_module

SYSTEM_KEYS = {"sentences_per_s", "tokens_per_s", "peak_rss_gib", "seconds", "output_tokens", "load_s"}


@pytest.mark.skipif(importlib.util.find_spec("ctranslate2") is None or importlib.util.find_spec("transformers") is None,
                    reason="ctranslate2 and transformers (the 'dev' extra) are not installed")
@pytest.mark.skipif(importlib.util.find_spec("nmt.interop.hf_export") is None,
                    reason="nmt.interop.hf_export (nmt.export --format hf) is missing")
def test_quick_run_prints_one_json_line(tmp_path):
    out = tmp_path / "speed.json"
    proc = run_module("bench.translate_speed", "--quick", "--threads", "1", "--out", out, timeout=300)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert json.loads(out.read_text()) == report and out.with_suffix(".md").read_text().startswith("| model |")
    model = report["models"]["tiny-random"]
    assert model["sentences"] == 6 and model["direction"] == "eng_Latn-fra_Latn"
    for system, res in model["results"].items():
        if system == "ours_bf16" and "skipped" in res:
            continue
        assert SYSTEM_KEYS <= res.keys(), (system, res)
        assert res["sentences_per_s"] > 0 and res["peak_rss_gib"] > 0 and res["threads"] == 1
    ratios = report["ratios"]["tiny-random"]
    assert ratios["ours_over_transformers"] > 0 and ratios["ct2_int8_over_ours"] > 0
    assert "bf16_hardware" in report["cpu"]
