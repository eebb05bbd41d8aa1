"""StopPolicy: one all-reduce per poll, and which reason wins."""

from __future__ import annotations

import torch

from nmt.training.stop import StopPolicy, StopReason
from nmt.training.train_state import TrainState


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def policy(signal=None, other_rank=(0.0, 0.0), max_time=0.0, clock=None):
    calls = []

    def all_sum(t):
        calls.append(t.clone())
        return t + torch.tensor(other_rank)

    p = StopPolicy(10, max_time, 3, all_sum, lambda: signal, **({"clock": clock} if clock else {}))
    return p, calls


def test_going_on_costs_one_all_reduce():
    p, calls = policy()
    assert p.poll(TrainState(step=5)) is None and len(calls) == 1


def test_max_steps():
    p, _ = policy()
    assert p.poll(TrainState(step=10)) is StopReason.MAX_STEPS


def test_time_limit_on_any_rank_stops_every_rank():
    clock = Clock()
    p, _ = policy(max_time=1.0, clock=clock)
    assert p.poll(TrainState(step=1)) is None
    clock.now += 61
    assert p.poll(TrainState(step=2)) is StopReason.MAX_TIME
    p, _ = policy(other_rank=(1.0, 0.0))  # another rank ran out of time
    assert p.poll(TrainState(step=2)) is StopReason.MAX_TIME


def test_a_signal_wins_over_the_last_step_and_reaches_every_rank(caplog):
    caplog.set_level("INFO")
    p, _ = policy(signal="SIGUSR1")
    assert p.poll(TrainState(step=10)) is StopReason.PREEMPTED
    assert "SIGUSR1 received: saving at step 10" in caplog.text
    p, _ = policy(other_rank=(0.0, 1.0))  # the signal reached another rank first
    assert p.poll(TrainState(step=4)) is StopReason.PREEMPTED


def test_too_many_bad_updates_in_a_row(tmp_path):
    p, calls = policy(signal="SIGTERM")
    assert p.poll(TrainState(step=4, bad_in_a_row=2)) is StopReason.PREEMPTED
    assert p.poll(TrainState(step=4, bad_in_a_row=3)) is StopReason.BAD_UPDATES
    assert len(calls) == 2  # the collective runs on every rank even when the answer is local
    message = str(p.bad_updates_error(TrainState(step=4), tmp_path))
    assert "trainer.max_bad_updates=3" in message and "at step 4" in message and str(tmp_path) in message
