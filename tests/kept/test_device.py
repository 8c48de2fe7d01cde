"""Device and precision choices (kept/device.py): the GPU-only paths, checked on CPU."""

from __future__ import annotations

import torch

from kept.device import amp_dtype, bf16_supported, resolve_device


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
