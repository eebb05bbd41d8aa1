"""``model.absent_ids``: -inf logits in ``Transformer.decode``, a loss over the present classes
only (label smoothing included), no effect on models trained here, and the record's helpers."""

from __future__ import annotations

import math

import torch

from nmt.config import ModelConfig
from nmt.interop.absent_rows import adopt, mark_present
from nmt.models.transformer import Transformer
from nmt.training.loss import label_smoothed_nll

V = 20


def _model(absent: list[int]) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=16, encoder_layers=1, decoder_layers=1, heads=2, ffn_dim=32, dropout=0.0,
                      max_positions=16, absent_ids=absent)
    return Transformer(cfg, V).eval()


def test_loss_ignores_absent_classes_hand_computed():
    logits = torch.tensor([[2.0, 0.0, 1.0, float("-inf")], [0.5, -1.0, 0.0, float("-inf")]], requires_grad=True)
    target = torch.tensor([2, 1])
    eps = 0.1
    out = label_smoothed_nll(logits, target, eps)
    lp = [[x - math.log(sum(math.exp(v) for v in row[:3])) for x in row[:3]] for row in logits.tolist()]
    eps_i = eps / 2  # 3 classes: the -inf column is none
    want = sum((1 - eps - eps_i) * -lp[r][t] + eps_i * -sum(lp[r]) for r, t in enumerate(target.tolist()))
    assert math.isclose(out.loss.item(), want, rel_tol=1e-6)
    out.loss.backward()
    ref = torch.tensor([row[:3] for row in logits.tolist()], requires_grad=True)
    label_smoothed_nll(ref, target, eps).loss.backward()  # the same loss over 3 classes
    assert torch.allclose(logits.grad[:, :3], ref.grad, atol=1e-6) and bool(logits.grad[:, 3].eq(0).all())


def test_decode_gives_absent_rows_minus_inf_and_training_stays_finite():
    plain, imported = _model([]), _model([5, 7])
    imported.load_state_dict(plain.state_dict())
    assert plain.state_dict().keys() == imported.state_dict().keys()  # the buffer is not persistent
    src, prev = torch.tensor([[4, 9, 10, 3]]), torch.tensor([[3, 6, 11, 12]])
    a, b = plain(src, prev)[0], imported(src, prev)[0]
    assert bool(b[..., [5, 7]].eq(float("-inf")).all())
    keep = [i for i in range(V) if i not in (5, 7)]
    assert torch.equal(a[..., keep], b[..., keep])
    imported.train()
    loss = label_smoothed_nll(imported(src, prev)[0].view(-1, V), torch.tensor([6, 11, 12, 3]), 0.1).loss
    loss.backward()
    assert math.isfinite(loss.item()) and all(bool(p.grad.isfinite().all()) for p in imported.parameters()
                                              if p.grad is not None)


def test_mark_present_and_adopt():
    cfg = {"absent_ids": [5, 7, 9]}
    assert mark_present(cfg, [7]) == [5, 9] and cfg["absent_ids"] == [5, 9]
    model, run_cfg = _model([]), {"absent_ids": []}
    assert adopt(model, run_cfg, {"absent_ids": [5, 9]}) == [5, 9]
    assert run_cfg["absent_ids"] == [5, 9] and model.absent.tolist() == [5, 9]
    model.set_absent(mark_present(run_cfg, [5]))  # what nmt.vocab add-language does for slot 5
    assert model.absent.tolist() == [9]
