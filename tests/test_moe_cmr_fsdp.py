"""The global CMR budget under FSDP2: the term is formed after all layers ran, and its gradient
reaches every CMR gate through the layer outputs (attach_aux). FSDP2 must follow DDP, where the
term enters the loss directly (2 CPU ranks, torchrun, gloo)."""

from __future__ import annotations

import json

import pytest

from test_distributed_train import COMMON, MOE, assert_close, losses, torchrun, weights

pytestmark = pytest.mark.slow

CMR = [*MOE, "model.moe.cmr=true", "model.moe.cmr_budget_loss=global", "model.moe.cmr_loss_weight=1.0"]


def test_fsdp_follows_ddp_with_the_global_cmr_budget(prepared_corpus, tmp_path):
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    torchrun(prepared_corpus, ddp, *COMMON, *CMR)
    torchrun(prepared_corpus, fsdp, *COMMON, *CMR, "trainer.parallel=fsdp")
    assert losses(ddp) == pytest.approx(losses(fsdp), rel=1e-5)
    assert_close(weights(ddp), weights(fsdp))
    last = json.loads((fsdp / "train_log.jsonl").read_text().splitlines()[-1])
    assert last["loss/cmr_budget"] > 0 and 0 < last["cmr_share"] < 1
