"""bench.scaling: the quick smoke run prints one JSON line with every part, and the CLI checks.
Times nothing: the numbers only have to be there and positive."""

import importlib.util
import json

import pytest
import torch

from conftest import REPO, run_module

# by path: `pytest` (unlike `python -m pytest`) does not put the repository root on sys.path
_spec = importlib.util.spec_from_file_location("bench_scaling", REPO / "bench" / "scaling.py")
scaling = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(scaling)


@pytest.mark.slow  # ~25-30 s on 2 busy cores: a 1-process launch and a 2-rank torchrun launch
def test_quick_run_prints_one_json_line(prepared_corpus, tmp_path):
    out = tmp_path / "scaling.json"
    two_gpus = torch.cuda.is_available() and torch.cuda.device_count() >= 2
    proc = run_module("bench.scaling", "--quick", "--corpus", prepared_corpus, "--out", out,
                      *(["--no-gpu"] if two_gpus else []), timeout=300)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout[-2000:]
    report = json.loads(lines[0])
    assert json.loads(out.read_text()) == report
    assert {"bench", "cpu", "gpu", "summary", "cores", "loadavg_before", "loadavg_after", "versions"} <= report.keys()
    assert report["bench"] == "scaling" and report["quick"] is True

    dp = report["cpu"]["data_parallel"]
    assert set(dp) == {"dense", "moe"}
    for r in dp.values():
        assert r["tokens_per_s_1"] > 0 and r["tokens_per_s_2"] > 0 and r["efficiency"] > 0
        assert r["efficiency"] == pytest.approx(r["tokens_per_s_2"] / (2 * r["tokens_per_s_1"]))
        assert [x["world_size"] for x in r["runs_1"]] == [1] and [x["world_size"] for x in r["runs_2"]] == [2]
        two = r["runs_2"][0]
        assert two["tokens"] > 0 and two["grad_allreduce_s"] > 0 and two["grad_allreduce_bytes"] > 0
        assert len(two["effective_cores_per_rank"]) == 2
    assert dp["moe"]["moe_experts"] == 2

    ep = report["cpu"]["expert_parallel"]
    assert ep["world_size"] == 2 and ep["experts_per_rank_ep"] == ep["experts"] // 2
    assert all(ep["step_s"][k] > 0 for k in ("local", "local_dp", "ep"))
    assert ep["ep_vs_local"] > 0 and ep["ep_vs_local_dp"] > 0
    a2a = ep["all_to_all"]
    assert a2a["calls_per_step"] == 5  # counts, dispatch, combine; backward of combine and dispatch
    assert 0 < a2a["bytes_to_other_ranks_per_rank_step"] <= a2a["bytes_incl_own_share_per_rank_step"]

    if two_gpus:
        assert report["gpu"] == {"skipped": "--no-gpu"}
    else:
        assert "CUDA device" in report["gpu"]["skipped"]
    assert report["summary"]["cpu/dense/efficiency"] == dp["dense"]["efficiency"]
    assert all(v > 0 for v in report["summary"].values())


def test_quick_keeps_explicit_flags_and_odd_expert_counts_are_refused(tmp_path, capsys):
    args = scaling.parse_args(["--quick", "--moe-experts", "0", "--steps", "5", "--corpus", str(tmp_path)])
    assert (args.model, args.moe_experts, args.steps, args.rounds) == ("tiny", 0, 5, 1)
    for flags in (["--moe-experts", "3"], ["--layer-experts", "5"], ["--corpus", "/nonexistent/corpus"]):
        with pytest.raises(SystemExit):
            scaling.parse_args(flags)
    assert "does not split over 2 ranks" in capsys.readouterr().err
