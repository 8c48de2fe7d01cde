"""The training loop's AMP step and scaler state (kept/trainer.py): the fp16 paths, checked on CPU.
The loop itself runs in the HSAP and coder tests, whose resumed runs must give unbroken runs' numbers."""

from __future__ import annotations

import pytest
import torch

from kept.trainer import load_scaler_state, optimizer_step


def _setup():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    return p, opt, sched


def test_scheduler_does_not_step_when_fp16_scaler_skips():
    p, opt, sched = _setup()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    (scaler.scale(p.sum()) * float("inf")).backward()  # overflow: the scaler skips this step
    assert not optimizer_step(scaler, opt, sched, [p], 1.0)
    assert sched.last_epoch == 0 and torch.equal(p.detach(), torch.ones(3))
    scaler.scale(p.sum()).backward()
    assert optimizer_step(scaler, opt, sched, [p], 1.0)
    assert sched.last_epoch == 1 and not torch.equal(p.detach(), torch.ones(3))


def test_disabled_scaler_always_steps_the_schedule():
    p, opt, sched = _setup()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    p.sum().backward()
    assert optimizer_step(scaler, opt, sched, [p], None) and sched.last_epoch == 1


def test_bf16_checkpoint_resumes_under_fp16():
    """A bf16 (or fp32) run saves the disabled scaler's empty state; an fp16 resume must accept it."""
    saved = torch.amp.GradScaler("cpu", enabled=False).state_dict()
    assert saved == {}
    fp16 = torch.amp.GradScaler("cpu", init_scale=1024.0)
    with pytest.raises(RuntimeError):
        fp16.load_state_dict(saved)  # what the trainers did before
    load_scaler_state(fp16, saved)
    assert fp16.get_scale() == 1024.0
    other = torch.amp.GradScaler("cpu", init_scale=8.0)
    load_scaler_state(other, fp16.state_dict())
    assert other.get_scale() == 1024.0
