"""MoE inference: dynamic vs static dispatch, expert buffering (LRU/LIFO), translate/evaluate options."""

from __future__ import annotations

import json

import pytest
import torch

from _moe_export import random_export
from conftest import run_module
from nmt.config import MoEConfig
from nmt.models.moe import MoELayer
from nmt.models.moe.buffer import BufferedExperts, TensorTier
from nmt.models.moe.dispatch import pad_to_capacity

LINES = ["time year people way", "", "day man thing woman life child", "world school"]


def _layer(fraction: float, top_k: int = 2, experts: int = 4) -> tuple[MoELayer, MoEConfig]:
    torch.manual_seed(0)
    cfg = MoEConfig(experts=experts, top_k=top_k, encoder_freq=1, eval_capacity_token_fraction=fraction)
    layer = MoELayer(8, 16, cfg, "enc0").eval()
    with torch.no_grad():
        layer.router.weight.normal_(0, 2.0)
        layer.experts.b1.normal_()
        layer.experts.b2.normal_()
    return layer, cfg


def _outputs(layer: MoELayer, cfg: MoEConfig, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {}
    for mode in ("capacity", "dynamic", "static"):
        cfg.inference = mode
        out[mode] = layer.forward_tokens(x, {})
    return out


def test_pad_to_capacity_places_rows_in_their_expert_slots():
    rows = torch.arange(1.0, 6.0)[:, None]  # 5 rows: 2 for expert 0, 0 for expert 1, 3 for expert 2
    padded, slot = pad_to_capacity(rows, [2, 0, 3], slots=3)
    assert slot.tolist() == [0, 1, 6, 7, 8]
    assert padded.squeeze(1).tolist() == [1, 2, 0, 0, 0, 0, 3, 4, 5]


def test_dynamic_and_static_match_when_nothing_overflows():
    layer, cfg = _layer(fraction=1.0)  # C = all tokens: no expert can overflow
    out = _outputs(layer, cfg, torch.randn(40, 8))
    torch.testing.assert_close(out["static"], out["capacity"], rtol=0, atol=1e-6)
    torch.testing.assert_close(out["dynamic"], out["capacity"], rtol=0, atol=1e-6)


def test_static_keeps_the_capacity_cut_and_dynamic_computes_every_routed_token():
    layer, cfg = _layer(fraction=0.05)  # C = ceil(0.05 * 40) = 2 slots per expert
    x = torch.randn(40, 8)
    aux: dict = {}
    cfg.inference = "capacity"
    layer.forward_tokens(x, aux)
    assert float(aux["moe/enc0/dropped"]) > 0.5  # 80 assignments, at most 4 * 2 = 8 kept
    out = _outputs(layer, cfg, x)
    torch.testing.assert_close(out["static"], out["capacity"], rtol=0, atol=1e-6)
    assert (out["capacity"].abs().sum(1) > 0).sum() <= 8
    assert (out["dynamic"].abs().sum(1) > 0).all()  # no drops: every token has its 2 experts


def _buffered(layer: MoELayer, k: int, policy: str) -> BufferedExperts:
    ex = layer.experts
    tier = TensorTier({n: getattr(ex, n).detach() for n in ("w1", "b1", "w2", "b2")}, torch.device("cpu"))
    return BufferedExperts(tier, ex.experts, k, policy, ex.act)


@pytest.mark.parametrize("policy", ["lru", "lifo"])
@pytest.mark.parametrize("k", [2, 4])
def test_buffered_experts_are_bit_identical_to_all_resident(policy, k):
    layer, cfg = _layer(fraction=1.0)
    x = torch.randn(50, 8)
    with torch.no_grad():
        want = layer.forward_tokens(x, {})
        layer.experts = _buffered(layer, k, policy)
        got = [layer.forward_tokens(x, {}) for _ in range(2)]
    assert all(torch.equal(g, want) for g in got)
    assert len(layer.experts.cache) <= k


@pytest.mark.parametrize("rule", ["exact", "fairseq"])
def test_buffered_experts_under_static_dispatch(rule):
    layer, cfg = _layer(fraction=0.1)
    cfg.inference, cfg.capacity_rule = "static", rule
    x = torch.randn(30, 8)
    with torch.no_grad():
        want = layer.forward_tokens(x, {}, batch_tokens=36)
        layer.experts = _buffered(layer, 2, "lru")
        assert torch.equal(layer.forward_tokens(x, {}, batch_tokens=36), want)


def test_lru_and_lifo_evictions_on_a_hand_made_sequence():
    layer, _ = _layer(fraction=1.0)
    x = torch.randn(1, 8)
    # one row for each listed expert per call; K = 2
    calls = [[1, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 1, 0, 0]]
    seen = {}
    for policy in ("lru", "lifo"):
        b = _buffered(layer, 2, policy)
        for counts in calls:
            b(x.expand(sum(counts), 8).contiguous(), counts)
        seen[policy] = (b.stats.hits, b.stats.loads, b.stats.evictions, sorted(b.cache))
    # LRU: {0,1} (0 used first) | 2 evicts 0 -> {1,2} | 0 evicts 1 -> {2,0} | 3 evicts 2 -> {0,3}
    #      | 1 evicts 0 -> {3,1}: 0 hits, 6 loads, 4 evictions
    assert seen["lru"] == (0, 6, 4, [1, 3])
    # LIFO: {0,1} | 2 evicts 1 (loaded last) -> {0,2} | 0 hit | 3 evicts 2 -> {0,3} | 1 evicts 3 -> {0,1}
    assert seen["lifo"] == (1, 5, 3, [0, 1])
    per_expert = sum(getattr(layer.experts, n)[0].numel() * 4 for n in ("w1", "b1", "w2", "b2"))
    assert b.stats.bytes_moved == 5 * per_expert


@pytest.fixture(scope="module")
def moe_export(prepared_corpus, tmp_path_factory):
    return random_export(tmp_path_factory.mktemp("moe_export") / "export", prepared_corpus / "spm.model")


def _translate(export, tmp_path, name, *extra, check=True):
    src = tmp_path / "in.txt"
    src.write_text("".join(line + "\n" for line in LINES), encoding="utf-8")
    return run_module("nmt.translate", f"ckpt={export}", "src_lang=eng_Latn", "tgt_lang=fra_Latn",
                      f"input={src}", f"output={tmp_path / name}", *extra, check=check)


def test_translate_buffered_and_static_outputs_equal_the_default(moe_export, tmp_path):
    _translate(moe_export, tmp_path, "plain.txt")
    lifo = _translate(moe_export, tmp_path, "lifo.txt", "moe.resident_experts=2", "moe.buffer_policy=lifo")
    _translate(moe_export, tmp_path, "static.txt", "moe.inference=static")
    _translate(moe_export, tmp_path, "dynamic.txt", "moe.inference=dynamic")
    plain = (tmp_path / "plain.txt").read_text(encoding="utf-8")
    assert len(plain.splitlines()) == len(LINES)
    assert (tmp_path / "lifo.txt").read_text(encoding="utf-8") == plain
    assert (tmp_path / "static.txt").read_text(encoding="utf-8") == plain
    assert (tmp_path / "dynamic.txt").read_text(encoding="utf-8") == plain  # fraction 1.0: nothing overflows
    assert "moe buffer: K=2/4 per layer (lifo), hit rate" in lifo.stderr


@pytest.mark.parametrize("args, needle", [
    (["moe.resident_experts=1"], "below the model's top_k=2"),
    (["moe.resident_experts=5"], "exceeds the 4 experts"),
    (["moe.buffer_policy=fifo"], "moe.buffer_policy='fifo'"),
    (["moe.inference=slots"], "moe.inference='slots'"),
])
def test_translate_bad_moe_options(moe_export, tmp_path, args, needle):
    proc = _translate(moe_export, tmp_path, "out.txt", *args, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0]
    assert not (tmp_path / "out.txt").exists()


def test_moe_options_on_a_dense_model_are_refused(prepared_corpus, tmp_path):
    dense = random_export(tmp_path / "dense", prepared_corpus / "spm.model", experts=0)
    proc = _translate(dense, tmp_path, "out.txt", "moe.resident_experts=2", check=False)
    assert proc.returncode == 2 and "is dense" in proc.stderr and not (tmp_path / "out.txt").exists()


def test_evaluate_reports_buffer_statistics(moe_export, prepared_corpus, tmp_path):
    run_module("nmt.evaluate", f"ckpt={moe_export}", f"flores.dir={prepared_corpus / 'flores'}",
               "directions=[eng_Latn-fra_Latn]", "max_lines=4", "beam=2", "max_len_a=0", "max_len_b=5",
               f"out_dir={tmp_path / 'eval'}", "moe.resident_experts=3", "moe.buffer_policy=lru")
    moe = json.loads((tmp_path / "eval" / "results.json").read_text())["moe"]
    buf = moe["buffer"]
    assert moe["inference"] == "capacity" and buf["resident_experts"] == 3 and buf["policy"] == "lru"
    assert buf["loads"] >= 3 * 4  # 4 MoE layers, each loads its experts at least once
    assert buf["hits"] + buf["loads"] > 0 and 0 <= buf["hit_rate"] <= 1 and buf["bytes_moved"] > 0



def test_buffered_export_holds_no_expert_weights_but_its_buffer(moe_export):
    from nmt.inference import Translator
    from nmt.moe_tools.options import MoEServeConfig
    from nmt.moe_tools.serving import buffer_stats, moe_layers

    plain = Translator.from_checkpoint(moe_export)
    buffered = Translator.from_checkpoint(moe_export, moe=MoEServeConfig(resident_experts=2, buffer_policy="lru"))
    names = [n for n, _ in buffered.model.named_parameters()]
    assert not [n for n in names if ".experts." in n]  # no placeholder or real expert tensor left
    assert names == [n for n, _ in plain.model.named_parameters() if ".experts." not in n]
    assert buffered.translate(LINES, "eng_Latn", "deu_Latn") == plain.translate(LINES, "eng_Latn", "deu_Latn")
    assert all(len(m.experts.cache) <= 2 for _, m in moe_layers(buffered.model))
    stats = buffer_stats(buffered.model)
    assert stats["loads"] == sum(v["loads"] for v in stats["layers"].values()) > 0
    assert stats["bytes_moved"] == stats["loads"] * (32 * 64 + 64 + 64 * 32 + 32) * 4


def test_buffer_tier_reads_without_mapping_the_file(moe_export):
    """Evicted experts leave nothing behind: the weights file is read, never memory-mapped (a map
    kept every page an expert had touched in the process's RSS), and a load equals the tensor."""
    from safetensors.torch import load_file

    from nmt.models.moe.buffer import SafetensorsTier

    path = moe_export / "model.safetensors"
    prefix = next(k[: -len("w1")] for k in load_file(str(path)) if k.endswith(".experts.w1"))
    tier = SafetensorsTier(path, prefix, torch.device("cpu"))
    full = load_file(str(path))
    for e in range(tier.sizes["w1"]):
        for name, t in zip(("w1", "b1", "w2", "b2"), tier.fetch(e), strict=True):
            assert torch.equal(t, full[prefix + name][e])
    assert torch.equal(tier.whole("w2"), full[prefix + "w2"])
    del full
    with open("/proc/self/maps") as maps:
        assert str(path.resolve()) not in maps.read()


def test_moe_options_need_the_torch_backend(tmp_path):
    from nmt.errors import UserError
    from nmt.interop.backend import load_translator
    from nmt.moe_tools.options import MoEServeConfig

    with pytest.raises(UserError, match="need backend=torch"):
        load_translator("ct2", str(tmp_path), "cpu", MoEServeConfig(inference="dynamic"))


def test_buffering_a_pt_checkpoint_uses_its_tensors_and_matches(moe_export, tmp_path):
    """The in-memory tier: a .pt checkpoint (same weights as the export) buffered with K=2."""
    import shutil

    from safetensors.torch import load_file

    from nmt.inference import Translator, read_export_config
    from nmt.moe_tools.options import MoEServeConfig
    from nmt.moe_tools.serving import buffer_stats
    from nmt.training.checkpoint import save_checkpoint

    meta = read_export_config(moe_export)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copyfile(moe_export / "spm.model", run / "spm.model")
    save_checkpoint({"model": load_file(moe_export / "model.safetensors"), "step": 0,
                     "config": {"model": meta["model"], "eval": meta["eval"]},
                     "tokenizer": {"sha256": meta["tokenizer"]["sha256"]}, "directions": meta["directions"]},
                    run / "checkpoints" / "best.pt")
    ckpt = run / "checkpoints" / "best.pt"
    plain = Translator.from_checkpoint(ckpt).translate(LINES, "eng_Latn", "fra_Latn")
    buffered = Translator.from_checkpoint(ckpt, moe=MoEServeConfig(resident_experts=2, buffer_policy="lifo"))
    assert buffered.translate(LINES, "eng_Latn", "fra_Latn") == plain
    assert buffer_stats(buffered.model)["loads"] > 0
