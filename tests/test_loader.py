"""ParallelData, collate, TrainLoader (plan, resume, sharding, realised proportions), ValidLoader.

Uses an in-memory stand-in with the IndexedDataset interface (len, sizes, ds[i])."""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import fields

import numpy as np
import pytest
import torch

from nmt.data.loader import Batch, ParallelData, TrainLoader, ValidLoader, build_epoch_plan, collate, valid_batches
from nmt.errors import UserError

ENG, FRA, DEU = 48, 57, 43  # Flores-200 indices: tag ids 52, 61, 47
EF, FE, ED = "eng_Latn-fra_Latn", "fra_Latn-eng_Latn", "eng_Latn-deu_Latn"


class MemDataset:
    """Stand-in for nmt.data.indexed.IndexedDataset."""

    def __init__(self, seqs):
        self._seqs = [np.asarray(s, dtype=np.int64) for s in seqs]
        self.sizes = np.array([len(s) for s in self._seqs], dtype=np.int32)

    def __len__(self):
        return len(self._seqs)

    def __getitem__(self, i):
        return self._seqs[i]


def random_side(rng, n, max_len=12):
    return MemDataset([rng.integers(260, 400, rng.integers(1, max_len + 1)) for _ in range(n)])


def make_data(n_ef=40, n_ed=15, **kw) -> ParallelData:
    rng = np.random.default_rng(0)
    eng, fra = random_side(rng, n_ef), random_side(rng, n_ef)
    eng2, deu = random_side(rng, n_ed), random_side(rng, n_ed)
    datasets = {EF: (eng, fra), FE: (fra, eng), ED: (eng2, deu)}
    return ParallelData([EF, FE, ED], datasets, **kw)


def proportional(data: ParallelData) -> dict[str, float]:
    sizes = data.sizes()
    return {d: n / sum(sizes.values()) for d, n in sizes.items()}


def same(a: Batch, b: Batch) -> bool:
    for f in fields(Batch):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, torch.Tensor):
            if x.shape != y.shape or not torch.equal(x, y):
                return False
        elif x != y:
            return False
    return True


# -- collate -----------------------------------------------------------------------------------
def test_collate_layout_written_out():
    b = collate(
        src=[np.array([10, 11, 12]), np.array([13])],
        tgt=[np.array([20]), np.array([21, 22, 23])],
        src_lang=[ENG, FRA], tgt_lang=[FRA, ENG], direction=[0, 1], index=[7, 9],
    )
    assert b.src_tokens.tolist() == [[52, 10, 11, 12, 3], [61, 13, 3, 0, 0]]
    assert b.prev_output_tokens.tolist() == [[3, 61, 20, 0, 0], [3, 52, 21, 22, 23]]
    assert b.target.tolist() == [[0, 20, 3, 0, 0], [0, 21, 22, 23, 3]]  # tag position = pad
    assert b.src_lang.tolist() == [ENG, FRA] and b.tgt_lang.tolist() == [FRA, ENG]
    assert b.direction.tolist() == [0, 1] and b.index.tolist() == [7, 9]
    assert (b.n_src_tokens, b.n_tgt_tokens) == (5 + 3, 2 + 4)
    for t in (b.src_tokens, b.prev_output_tokens, b.target, b.src_lang, b.direction):
        assert t.dtype == torch.int64
    wide = collate([np.array([10])], [np.array([20])], [ENG], [FRA], [0], pad_to_multiple=8)
    assert wide.src_tokens.tolist() == [[52, 10, 3, 0, 0, 0, 0, 0]] and wide.target.shape == (1, 8)


# -- ParallelData --------------------------------------------------------------------------------
def test_filter_counts_and_skips_without_truncating():
    src = MemDataset([[5] * 1, [5] * 4, [5] * 2, [5] * 9])  # lengths with tag+eos: 3, 6, 4, 11
    tgt = MemDataset([[6] * 1, [6] * 1, [6] * 5, [6] * 1])  # 3, 3, 7, 3
    data = ParallelData(["en-fr"], {EF: (src, tgt)}, max_source_positions=6, max_target_positions=6)
    assert data.directions == [EF]  # alias normalised
    assert data.sizes() == {EF: 2}
    assert data.filtered[EF] == {"total": 4, "kept": 2, "skipped": 2, "source_too_long": 1, "target_too_long": 1}
    b = data.collate(np.array([0, 0]), np.array([0, 1]))
    assert b.index.tolist() == [0, 1] and b.src_tokens.tolist() == [[52, 5, 3, 0, 0, 0], [52, 5, 5, 5, 5, 3]]


def test_open_finds_pair_in_either_order(tmp_path):
    bin_dir = tmp_path / "bin" / "train"
    bin_dir.mkdir(parents=True)
    for lang in ("eng_Latn", "fra_Latn"):
        for ext in ("bin", "idx"):
            (bin_dir / f"eng_Latn-fra_Latn.{lang}.{ext}").write_bytes(b"")
    opened = []

    def opener(prefix):
        opened.append(prefix)
        return MemDataset([[300 + len(prefix) % 7]])

    data = ParallelData.open(tmp_path, "train", [FE, EF], opener=opener)
    assert data.directions == [FE, EF]
    # both directions share the two files, each opened once
    assert sorted(opened) == sorted(str(bin_dir / f"eng_Latn-fra_Latn.{x}") for x in ("eng_Latn", "fra_Latn"))
    fe, ef = data.collate(np.array([0]), np.array([0])), data.collate(np.array([1]), np.array([0]))
    assert fe.src_tokens[0, 1:-1].tolist() == ef.prev_output_tokens[0, 2:].tolist()  # sides swapped
    assert fe.src_tokens[0, 0].item() == 61 and ef.src_tokens[0, 0].item() == 52


def test_open_missing_files_names_them_and_binarize(tmp_path):
    (tmp_path / "bin" / "train").mkdir(parents=True)
    (tmp_path / "bin" / "train" / "deu_Latn-eng_Latn.deu_Latn.bin").write_bytes(b"")
    with pytest.raises(UserError) as e:
        ParallelData.open(tmp_path, "train", [ED], opener=MemDataset)
    msg = str(e.value)
    assert "deu_Latn-eng_Latn.deu_Latn.idx" in msg and "deu_Latn-eng_Latn.eng_Latn.bin" in msg
    assert "deu_Latn-eng_Latn.deu_Latn.bin" not in msg and "data_prep.binarize" in msg
    with pytest.raises(UserError, match="data_prep.binarize"):
        ParallelData.open(tmp_path, "valid", [ED], opener=MemDataset)


@pytest.mark.parametrize("dirs, key", [(["eng_Latn-eng_Latn"], "itself"), ([EF, "en-fr"], "twice"), ([], "empty")])
def test_bad_directions(dirs, key):
    with pytest.raises(UserError, match=key):
        ParallelData(dirs, {})


# -- TrainLoader: plan -----------------------------------------------------------------------------
def test_plan_is_pure_and_respects_budget_and_counts():
    data = make_data()
    loader = TrainLoader(data, proportional(data), max_tokens=64, seed=3)
    a = build_epoch_plan(3, 2, loader.settings, loader.pools)
    b = build_epoch_plan(3, 2, loader.settings, loader.pools)
    assert [x.tolist() for x in a.batches] == [x.tolist() for x in b.batches]
    assert sum(a.counts.values()) == sum(data.sizes().values()) == len(a.examples)
    ex = a.examples
    for batch in a.batches:
        assert len(batch) * ex.cost_len[batch].max() <= 64
    for i, d in enumerate(data.directions):  # count <= n: drawn without replacement
        picked = ex.index[ex.direction == i]
        assert len(picked) == a.counts[d] and len(set(picked.tolist())) == len(picked)
    c = build_epoch_plan(3, 3, loader.settings, loader.pools)
    assert [x.tolist() for x in a.batches] != [x.tolist() for x in c.batches]


def test_plan_upsamples_with_whole_permutations():
    data = make_data()
    loader = TrainLoader(data, {ED: 1.0}, max_tokens=64, seed=0, epoch_size=40)  # ED has 15 examples
    plan = loader.plan()
    counts = np.bincount(plan.examples.index, minlength=15)
    assert plan.counts == {ED: 40} and sorted(set(counts.tolist())) == [2, 3]  # 2 full passes + 10


def test_resume_is_exact_including_epoch_boundary():
    data = make_data()
    kw = dict(max_tokens=64, seed=11)
    reference = TrainLoader(data, proportional(data), **kw)
    steps = reference.plan().steps
    run = [next(reference) for _ in range(3 * steps)]
    for n in (0, 3, steps - 1, steps, steps + 2):
        first = TrainLoader(data, proportional(data), **kw)
        for _ in range(n):
            next(first)
        state = json.loads(json.dumps(first.state_dict()))
        resumed = TrainLoader(data, proportional(data), **kw)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            resumed.load_state_dict(state)
        for m in range(steps + 3):
            assert same(next(resumed), run[n + m]), (n, m)


def test_state_dict_contents():
    data = make_data()
    loader = TrainLoader(data, proportional(data), max_tokens=64, seed=5)
    next(loader)
    s = loader.state_dict()
    assert (s["epoch"], s["batch_in_epoch"], s["seed"]) == (0, 1, 5)
    assert s["settings"]["max_tokens"] == 64 and s["settings"]["directions"] == [EF, FE, ED]
    assert sum(s["realised"]["sentences"].values()) == len(loader.plan().batches[0])
    assert len(json.dumps(s)) < 2000


def test_changed_setting_resumes_at_next_epoch_with_warning():
    data = make_data()
    old = TrainLoader(data, proportional(data), max_tokens=64, seed=1)
    for _ in range(4):
        next(old)
    state = old.state_dict()
    new = TrainLoader(data, proportional(data), max_tokens=80, seed=1)
    with pytest.warns(UserWarning, match="max_tokens"):
        new.load_state_dict(state)
    assert (new.epoch, new.batch_in_epoch) == (1, 0)
    assert new.state_dict()["realised"] == state["realised"]  # only batching changed: counts carry over
    plan = build_epoch_plan(1, 1, new.settings, new.pools)
    first = plan.batches[0]
    assert same(next(new), data.collate(plan.examples.direction[first], plan.examples.index[first]))
    fresh = TrainLoader(data, {EF: 1.0}, max_tokens=64, seed=1)
    with pytest.warns(UserWarning, match="directions, probs, sizes"):
        fresh.load_state_dict(state)
    assert sum(fresh.state_dict()["realised"]["sentences"].values()) == 0  # restart with new probs


def test_world_size_two_shards_are_disjoint_and_cover_the_plan():
    data = make_data()
    probs = proportional(data)
    kw = dict(max_tokens=48, seed=7, world_size=2, epoch_size=60)  # counts < n: no repeats
    r0, r1 = TrainLoader(data, probs, rank=0, **kw), TrainLoader(data, probs, rank=1, **kw)
    plan = r0.plan()
    assert len(plan.batches) % 2 == 0 and plan.steps == r1.plan().steps
    single = build_epoch_plan(7, 0, TrainLoader(data, probs, max_tokens=48, seed=7, epoch_size=60).settings, r0.pools)
    assert len(single.batches) - len(plan.batches) == plan.dropped_batches < 2
    seen0, seen1 = set(), set()
    for k in range(plan.steps):
        b0, b1 = next(r0), next(r1)
        seen0 |= set(zip(b0.direction.tolist(), b0.index.tolist(), strict=True))
        seen1 |= set(zip(b1.direction.tolist(), b1.index.tolist(), strict=True))
        for got, want in ((b0, plan.batches[2 * k]), (b1, plan.batches[2 * k + 1])):
            assert same(got, data.collate(plan.examples.direction[want], plan.examples.index[want]))
    ex = plan.examples
    everything = np.concatenate(plan.batches)
    planned = zip(ex.direction[everything], ex.index[everything], strict=True)
    all_pairs = {(int(d), int(data.kept(d)[i])) for d, i in planned}
    assert not seen0 & seen1 and seen0 | seen1 == all_pairs
    # the state is rank-independent: rank 1 resumes from rank 0's state
    state, nxt1 = r0.state_dict(), next(r1)
    r1b = TrainLoader(data, probs, rank=1, **kw)
    r1b.load_state_dict(state)
    assert same(next(r1b), nxt1)


def test_realised_proportions_converge_to_probs():
    data = make_data()
    probs = {EF: 0.6, FE: 0.1, ED: 0.3}
    loader = TrainLoader(data, probs, max_tokens=64, seed=2)
    for _ in range(400):
        next(loader)
    got = loader.realised()
    assert got == pytest.approx(probs, abs=0.02)
    assert sum(loader.realised("tokens").values()) == pytest.approx(1.0)


def test_set_directions_starts_fresh_plan_and_keeps_direction_ids():
    data = make_data()
    loader = TrainLoader(data, {EF: 1.0}, max_tokens=64, seed=0)
    assert all(next(loader).direction.eq(0).all() for _ in range(2))
    loader.set_directions([ED, FE], {ED: 1.0, FE: 1.0})
    assert (loader.epoch, loader.batch_in_epoch) == (1, 0)
    ids = torch.cat([next(loader).direction for _ in range(20)])
    assert set(ids.tolist()) == {1, 2}  # indices into data.directions
    assert set(loader.realised()) == {FE, ED}
    with pytest.raises(UserError, match="probabilities cover"):
        loader.set_directions([ED], {FE: 1.0})
    with pytest.raises(UserError, match="not in data.directions"):
        loader.set_directions(["eng_Latn-spa_Latn"], {"eng_Latn-spa_Latn": 1.0})


def test_examples_over_max_tokens_are_skipped_and_counted():
    src = MemDataset([[5] * 2, [5] * 30, [5] * 3])
    tgt = MemDataset([[6] * 2, [6] * 2, [6] * 3])
    data = ParallelData([EF], {EF: (src, tgt)})
    with pytest.warns(UserWarning, match="max_tokens"):
        loader = TrainLoader(data, {EF: 1.0}, max_tokens=10, seed=0, epoch_size=6)
    assert loader.skipped_over_max_tokens == {EF: 1}
    for _ in range(10):
        b = next(loader)
        assert b.index.tolist() and 1 not in b.index.tolist()
        assert len(b) * max(b.src_tokens.shape[1], b.prev_output_tokens.shape[1]) <= 10


def test_plan_for_a_million_examples_is_fast():
    rng = np.random.default_rng(0)

    class SizesOnly:
        def __init__(self, n):
            self.sizes = rng.integers(1, 120, n).astype(np.int32)

        def __len__(self):
            return len(self.sizes)

    dirs = [EF, ED, "eng_Latn-rus_Cyrl"]
    sizes = zip(dirs, (600_000, 300_000, 100_000), strict=True)
    data = ParallelData(dirs, {d: (SizesOnly(n), SizesOnly(n)) for d, n in sizes})
    loader = TrainLoader(data, {EF: 0.4, ED: 0.35, "eng_Latn-rus_Cyrl": 0.25}, max_tokens=4096, seed=0)
    t = time.perf_counter()
    plan = loader.plan()
    assert time.perf_counter() - t < 10.0 and len(plan.examples) == 1_000_000  # ~0.5 s idle


# -- ValidLoader ----------------------------------------------------------------------------------
def test_valid_loader_covers_each_direction_once_deterministically():
    data = make_data(max_source_positions=12)
    valid = ValidLoader(data, max_tokens=40)
    batches = list(valid)
    assert len(batches) == len(valid) and all(same(a, b) for a, b in zip(batches, list(valid), strict=True))
    for i, d in enumerate(data.directions):
        got = sorted(int(x) for b in batches if b.direction[0] == i for x in b.index)
        assert got == sorted(data.kept(i).tolist()) and len(got) == data.sizes()[d]
    assert all(len(set(b.direction.tolist())) == 1 for b in batches)
    assert [b.direction[0].item() for b in batches] == sorted(b.direction[0].item() for b in batches)
    halves = list(ValidLoader(data, max_tokens=40, rank=0, world_size=2)) + list(
        ValidLoader(data, max_tokens=40, rank=1, world_size=2)
    )
    assert sorted(len(b) for b in halves) == sorted(len(b) for b in batches)
    assert all(same(a, b) for a, b in zip(valid_batches(data, 40), batches, strict=True))


def test_changed_seed_at_epoch_start_keeps_the_epoch_number():
    data = make_data()
    old = TrainLoader(data, proportional(data), max_tokens=64, seed=1)
    for _ in range(old.plan().steps):  # exactly one epoch: state is (epoch 1, batch 0)
        next(old)
    new = TrainLoader(data, proportional(data), max_tokens=64, seed=2)
    with pytest.warns(UserWarning, match="seed"):
        new.load_state_dict(old.state_dict())
    assert (new.epoch, new.batch_in_epoch, new.seed) == (1, 0, 2)
    with pytest.raises(UserError, match="not understood"):
        new.load_state_dict({"format": 1})
