"""Model shapes, KV-cache decoding, and beam search against exhaustive search."""

import itertools
import math

import pytest
import torch

from nmt.config import ModelConfig
from nmt.eval.search import beam_search
from nmt.models.transformer import Transformer, sinusoidal_table

EOS, TAG = 3, 50
VOCAB = 263
ALLOWED = [260, 261, 262]
BANNED = [1, 2] + list(range(4, 260))


def tiny_model(seed=0, attention="math"):
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=32, encoder_layers=1, decoder_layers=2, heads=4, ffn_dim=64, dropout=0.0,
                      attention=attention)
    model = Transformer(cfg, VOCAB).eval()
    with torch.no_grad():  # sharper distributions so that search choices matter
        model.embed.weight.mul_(4.0)
    return model


def test_sinusoidal_table_values():
    t = sinusoidal_table(3, 4)
    # half=2, freq = [1, 10000^-1]; position 1: sin(1), sin(1e-4), cos(1), cos(1e-4)
    assert torch.allclose(t[1], torch.tensor([math.sin(1), math.sin(1e-4), math.cos(1), math.cos(1e-4)]))
    assert torch.allclose(t[0], torch.tensor([0.0, 0.0, 1.0, 1.0]))


@pytest.mark.parametrize("attention", ["math", "sdpa"])
def test_incremental_decoding_matches_full_forward(attention):
    model = tiny_model(attention=attention)
    src = torch.tensor([[TAG, 260, 261, EOS], [TAG, 262, EOS, 0]])
    prev = torch.tensor([[EOS, TAG, 260, 261], [EOS, TAG, 262, 262]])
    full, _ = model(src, prev)
    mem, mask = model.encode(src)
    cache = model.new_cache()
    steps = [model.decode(prev[:, i:i + 1], mem, mask, cache=cache, offset=i) for i in range(prev.shape[1])]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def test_padding_does_not_change_encoder_output():
    model = tiny_model()
    a, _ = model.encode(torch.tensor([[TAG, 260, EOS]]))
    b, _ = model.encode(torch.tensor([[TAG, 260, EOS, 0, 0]]))
    assert torch.allclose(a, b[:, :3], atol=1e-5)


@torch.no_grad()
def sequence_score(model, src, seq, lenpen):
    prev = torch.tensor([[EOS, TAG] + seq[:-1]])
    logits, _ = model(src, prev)
    lp = torch.log_softmax(logits.float(), -1)[0]
    total = sum(float(lp[i + 1, tok]) for i, tok in enumerate(seq))
    return total / len(seq) ** lenpen


@pytest.mark.parametrize("lenpen", [0.0, 1.0])
def test_beam_search_equals_exhaustive_search(lenpen):
    model = tiny_model(seed=3)
    src = torch.tensor([[TAG, 260, 262, EOS]])
    max_len = 3  # max_len_a=0, max_len_b=3: up to 3 generated tokens including </s>
    candidates = [list(p) + [EOS] for n in range(max_len) for p in itertools.product(ALLOWED, repeat=n)]
    assert len(candidates) == 13
    best = max(candidates, key=lambda s: sequence_score(model, src, s, lenpen))
    hyp = beam_search(model, src, torch.tensor([TAG]), eos=EOS, beam=16, lenpen=lenpen,
                      max_len_a=0.0, max_len_b=max_len, banned=BANNED)[0]
    assert hyp + [EOS] == best


def test_beam_one_is_greedy_and_batching_is_consistent():
    model = tiny_model(seed=5)
    srcs = [torch.tensor([[TAG, 260, 261, 262, EOS]]), torch.tensor([[TAG, 262, EOS]])]
    greedy = []
    for src in srcs:
        seq = []
        for _ in range(6):
            prev = torch.tensor([[EOS, TAG] + seq])
            lp = torch.log_softmax(model(src, prev)[0][0, -1].float(), -1)
            lp[BANNED + [0]] = float("-inf")
            tok = int(lp.argmax())
            if tok == EOS:
                break
            seq.append(tok)
        greedy.append(seq)
    one = [beam_search(model, s, torch.tensor([TAG]), eos=EOS, beam=1, max_len_a=0.0, max_len_b=7,
                       banned=BANNED)[0] for s in srcs]
    assert one == greedy
    batch = torch.tensor([[TAG, 260, 261, 262, EOS], [TAG, 262, EOS, 0, 0]])
    for beam in (1, 4):
        together = beam_search(model, batch, torch.tensor([TAG, TAG]), eos=EOS, beam=beam, max_len_a=0.0,
                               max_len_b=7, banned=BANNED)
        alone = [beam_search(model, s, torch.tensor([TAG]), eos=EOS, beam=beam, max_len_a=0.0, max_len_b=7,
                             banned=BANNED)[0] for s in srcs]
        assert together == alone


def test_sentences_leaving_the_batch_early_do_not_change_the_others():
    """Finished sentences are dropped from the batch; every result must equal decoding alone."""
    model = tiny_model(seed=11)
    g = torch.Generator().manual_seed(0)
    lengths = [1, 5, 2, 7, 3, 1]
    srcs = [[TAG] + torch.randint(260, 263, (n,), generator=g).tolist() + [EOS] for n in lengths]
    batch = torch.zeros(len(srcs), max(map(len, srcs)), dtype=torch.long)
    for i, s in enumerate(srcs):
        batch[i, : len(s)] = torch.tensor(s)
    kw = dict(eos=EOS, beam=3, max_len_a=1.0, max_len_b=2, banned=BANNED)
    together = beam_search(model, batch, torch.full((len(srcs),), TAG), **kw)
    alone = [beam_search(model, torch.tensor([s]), torch.tensor([TAG]), **kw)[0] for s in srcs]
    assert together == alone
    assert all(len(h) <= n + 2 for h, n in zip(together, (len(s) for s in srcs), strict=True))
