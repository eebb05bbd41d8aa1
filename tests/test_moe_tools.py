"""python -m nmt.moe_tools: load-balanced expert placement and per-language expert pruning."""

from __future__ import annotations

import json

import pytest
import torch

from _moe_export import random_export
from conftest import run_module
from nmt.moe_tools.calibrate import ExpertUsage
from nmt.moe_tools.placement import contiguous, greedy
from nmt.moe_tools.prune import choose, importance, parse_keep, pruned_state

LAYERS = ["encoder_layers.0.ffn", "encoder_layers.1.ffn", "decoder_layers.0.ffn", "decoder_layers.1.ffn"]
LOAD = [10.0, 9.0, 1.0, 1.0, 8.0, 1.0, 1.0, 1.0]  # 32 in all, mean rank load 8 over 4 ranks


def test_contiguous_placement_is_trainings_blocks():
    p = contiguous(LOAD, 4)
    assert p.ranks == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert p.rank_load == [19.0, 2.0, 9.0, 2.0] and p.imbalance == pytest.approx(19 / 8)


def test_greedy_largest_first_by_hand():
    p = greedy(LOAD, 4)
    # 10 -> r0, 9 -> r1, 8 -> r2; the 1s (e2, e3, e5, e6, e7) to the least-loaded rank with a free
    # slot (2 each): e2, e3 -> r3 (0, 1); e5 -> r2 (8 -> 9); e6 -> r1 (9, tie with r2: lower rank); e7 -> r0
    assert p.ranks == [[0, 7], [1, 6], [4, 5], [2, 3]]
    assert p.rank_load == [11.0, 10.0, 9.0, 2.0] and p.imbalance == pytest.approx(11 / 8)


def test_greedy_with_replicas_splits_the_hottest_experts():
    p = greedy([12.0, 2.0, 1.0, 1.0], 2, replicate=1)
    # copies 6 (e0), 6 (e0), 2, 1, 1 over 3 slots per rank: r0 e0, r1 e0, r0 e1, r1 e2, r1 e3
    assert p.ranks == [[0, 1], [0, 2, 3]]
    assert p.rank_load == [8.0, 8.0] and p.imbalance == 1.0


def test_importance_sums_per_direction_shares_and_keeps_the_top():
    a, b = ExpertUsage(), ExpertUsage()
    a.load["enc0"] = torch.tensor([6.0, 2.0, 0.0, 2.0], dtype=torch.float64)  # shares .6 .2 0 .2
    b.load["enc0"] = torch.tensor([0.0, 10.0, 10.0, 0.0], dtype=torch.float64)  # shares 0 .5 .5 0
    scores = importance([a, b], "load")["enc0"]
    assert scores.tolist() == pytest.approx([0.6, 0.7, 0.5, 0.2])
    assert choose({"enc0": scores}, 2) == {"enc0": [0, 1]}
    assert choose({"x": torch.tensor([1.0, 1.0, 1.0])}, 2) == {"x": [0, 1]}  # ties: lower id


def test_pruned_state_keeps_router_rows_and_expert_slices():
    state = {"l.router.weight": torch.arange(8.0).view(4, 2), "other": torch.ones(3)}
    for p in ("w1", "b1", "w2", "b2"):
        state[f"l.experts.{p}"] = torch.arange(4.0).view(4, 1) * torch.ones(4, 3)
    out = pruned_state(state, {"l": [1, 3]})
    assert out["l.router.weight"].tolist() == [[2.0, 3.0], [6.0, 7.0]]
    assert out["l.experts.w2"][:, 0].tolist() == [1.0, 3.0] and out["other"] is state["other"]


def test_parse_keep_fraction_and_count():
    assert parse_keep("0.2", 16, 2) == 4 and parse_keep("3", 16, 2) == 3 and parse_keep("0.5", 4, 2) == 2


@pytest.fixture(scope="module")
def export(prepared_corpus, tmp_path_factory):
    return random_export(tmp_path_factory.mktemp("tools") / "export", prepared_corpus / "spm.model")


def _flores(prepared_corpus):
    return prepared_corpus / "flores"


def test_placement_cli(export, prepared_corpus, tmp_path):
    out = tmp_path / "placement.json"
    proc = run_module("nmt.moe_tools", "placement", export, "--calib", _flores(prepared_corpus), "--split",
                      "devtest", "--ranks", "2", "--max-lines", "8", "--out", out)
    report = json.loads(out.read_text())
    assert list(report["layers"]) == LAYERS
    for layer in report["layers"].values():
        assert layer["after"]["max_over_mean"] <= layer["before"]["max_over_mean"] + 1e-9
        assert sorted(sum(layer["after"]["ranks"], [])) == [0, 1, 2, 3]
    assert "before max/mean" in proc.stdout


def test_prune_cli_writes_a_smaller_export_that_translates(export, prepared_corpus, tmp_path):
    out = tmp_path / "pruned"
    proc = run_module("nmt.moe_tools", "prune", export, out, "--calib", _flores(prepared_corpus), "--split",
                      "devtest", "--directions", "eng_Latn-fra_Latn", "--keep", "0.5", "--max-lines", "6",
                      "--beam", "1")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["moe"]["experts"] == 2 and cfg["directions"] == ["eng_Latn-fra_Latn"]
    assert all(len(ids) == 2 and ids == sorted(ids) for ids in cfg["pruned"]["kept"].values())
    report = json.loads((tmp_path / "pruned.prune.json").read_text())
    assert report["pruned"]["bytes"] < report["unpruned"]["bytes"]
    assert report["pruned"]["parameters"] == cfg["weights"]["parameters"]
    assert 0 <= report["pruned"]["chrf++"] <= 100 and "chrF++" in proc.stdout
    assert (tmp_path / "pruned.prune.md").is_file()
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        for layer in LAYERS:
            assert f.get_slice(f"{layer}.router.weight").get_shape() == [2, 32]
            assert f.get_slice(f"{layer}.experts.w1").get_shape() == [2, 32, 64]
    assert list(cfg["pruned"]["kept"]) == LAYERS


@pytest.mark.parametrize("args, needle", [
    (["--keep", "1"], "fewer than the model's top_k=2"),
    (["--keep", "9"], "has only 4 experts"),
    (["--directions", "eng_Latn-rus_Cyrl"], "is not one"),
])
def test_prune_bad_input(export, prepared_corpus, tmp_path, args, needle):
    base = {"--directions": "eng_Latn-fra_Latn", "--keep": "2"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    proc = run_module("nmt.moe_tools", "prune", export, tmp_path / "out", "--calib", _flores(prepared_corpus),
                      "--split", "devtest", *[x for kv in base.items() for x in kv], check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0]
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args, needle", [(["--ranks", "3"], "split evenly"),
                                          (["--ranks", "1", "--replicate", "1"], "--replicate 1")])
def test_placement_bad_input(export, prepared_corpus, tmp_path, args, needle):
    proc = run_module("nmt.moe_tools", "placement", export, "--calib", _flores(prepared_corpus), "--split",
                      "devtest", "--out", tmp_path / "p.json", *args, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0]
    assert not (tmp_path / "p.json").exists()


def test_prune_refuses_a_dense_checkpoint(prepared_corpus, tmp_path):
    dense = random_export(tmp_path / "dense", prepared_corpus / "spm.model", experts=0)
    proc = run_module("nmt.moe_tools", "prune", dense, tmp_path / "out", "--calib", _flores(prepared_corpus),
                      "--directions", "eng_Latn-fra_Latn", "--keep", "2", check=False)
    assert proc.returncode == 2 and "dense model" in proc.stderr and not (tmp_path / "out").exists()
