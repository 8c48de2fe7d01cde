"""Device, precision and AMP-step helpers (kept/device.py): the GPU-only paths, checked on CPU."""

from __future__ import annotations

import pytest
import torch

from kept.device import amp_dtype, bf16_supported, resolve_device
from kept.trainer import load_scaler_state, optimizer_step


def test_bare_cuda_maps_to_this_ranks_gpu():
    """`--device cuda` under torchrun: each rank its own GPU, never `torch.device("cuda")` (no index),
    which torch.cuda.set_device rejects."""
    assert resolve_device("cuda", local=1) == torch.device("cuda:1")
    assert resolve_device("cuda", local=0).index == 0
    assert resolve_device("cuda:3", local=1) == torch.device("cuda:3")  # explicit index kept
    assert resolve_device("cpu", local=1) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto", local=1) == torch.device("cpu")


def test_local_rank_from_torchrun_env(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert resolve_device("cuda") == torch.device("cuda:2")


def test_emulated_bf16_is_not_bf16(monkeypatch):
    """V100/T4 report bf16 support through emulation; auto precision must pick fp16 there."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    calls = []

    def is_bf16_supported(including_emulation=True):
        calls.append(including_emulation)
        return including_emulation  # emulated only

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert not bf16_supported() and calls == [False]
    assert amp_dtype(torch.device("cuda:0"), "auto") == torch.float16
    assert amp_dtype(torch.device("cuda:0"), "bf16") == torch.bfloat16
    assert amp_dtype(torch.device("cpu"), "auto") is None
    assert amp_dtype(torch.device("cuda:0"), "fp32") is None and amp_dtype(torch.device("cuda:0"), "none") is None


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
