"""bench.demo_step on the smoke recipe: one JSON line with tokens/s and every update's loss,
the same losses in two runs with the same seed. Times nothing (speed on a loaded machine)."""

import json

from conftest import run_module


def _run(corpus, out, steps="2"):
    return run_module("bench.demo_step", "--corpus", corpus, "--recipe", "smoke", "--steps", steps, "--warmup", "1",
                      "--out", out, "--override", "trainer.precision=fp32", "trainer.threads=1", timeout=300)


def test_demo_step_reports_speed_and_losses_that_repeat(prepared_corpus, tmp_path):
    first = json.loads(_run(prepared_corpus, tmp_path / "a.json").stdout.strip().splitlines()[-1])
    again = json.loads(_run(prepared_corpus, tmp_path / "b.json").stdout.strip().splitlines()[-1])
    assert json.loads((tmp_path / "a.json").read_text()) == first
    assert first["steps"] == 2 and first["warmup"] == 1 and len(first["losses"]) == 3
    assert first["tokens"] > 0 and first["tok_s"] > 0 and first["precision"] == "fp32" and first["threads"] == 1
    assert first["losses"] == again["losses"]  # same seed, same numerics


def test_demo_step_refuses_zero_steps(prepared_corpus, tmp_path):
    proc = run_module("bench.demo_step", "--corpus", prepared_corpus, "--steps", "0", "--out", tmp_path / "a.json",
                      check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: --steps")
    assert not (tmp_path / "a.json").exists()
