"""Device, precision and process-group choices shared by every stage (HSAP, the coder, the first stage).

One home for what differs between a laptop, one GPU and `torchrun` on several: which device a rank
uses, which autocast dtype a GPU really has, and the DDP set-up. Stages import these; none keeps its
own copy (the training loop's AMP step is in kept/trainer.py).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from typing import Iterator

import torch
from torch import nn

from kept.errors import KeptError

PRECISIONS = ("auto", "bf16", "fp16", "fp32", "none")


def local_rank() -> int:
    """This process's GPU slot on its node (torchrun's LOCAL_RANK; 0 outside torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(name: str = "auto", local: int | None = None) -> torch.device:
    """`auto` -> this rank's GPU, else CPU; a bare `cuda` -> `cuda:LOCAL_RANK` (under torchrun every
    rank would otherwise claim GPU 0, and `torch.cuda.set_device("cuda")` raises); `cuda:N`, `cpu`
    as given."""
    local = local_rank() if local is None else local
    if name == "auto":
        return torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise KeptError(f"unknown device {name!r} (auto, cpu, cuda, cuda:N)") from exc
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local)
    return device


def bf16_supported() -> bool:
    """Native bf16 on the current GPU (compute capability >= 8: A100, H100, RTX 30xx+).

    `torch.cuda.is_bf16_supported()` also says True where bf16 is only emulated (V100, T4), which
    runs far slower than fp16 there."""
    if not torch.cuda.is_available():
        return False
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch < 2.3 has no such argument
        return torch.cuda.get_device_capability()[0] >= 8


def amp_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """Autocast dtype, or None for fp32. `auto`: bf16 on a GPU that has it natively, else fp16; on
    CPU fp32 (CPU autocast is slower here). An explicit bf16/fp16 is honoured on any device."""
    if precision not in PRECISIONS:
        raise KeptError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision in ("fp32", "none") or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "fp16" or (precision == "auto" and not bf16_supported()):
        return torch.float16
    return torch.bfloat16


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """torch.autocast to `dtype` on `device`'s type; nothing for None (fp32)."""
    if dtype is None:
        yield
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield


class Dist:
    """torchrun's environment: rank, world size and this rank's device; the process group is
    started (nccl on GPU, gloo on CPU) only when WORLD_SIZE > 1."""

    def __init__(self, device: str = "auto"):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local = local_rank()
        self.device = resolve_device(device, self.local)
        if self.world > 1 and not torch.distributed.is_initialized():
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            # Rank 0 evaluates and saves while the others wait at a barrier: allow it an hour or two.
            torch.distributed.init_process_group("nccl" if self.device.type == "cuda" else "gloo",
                                                 timeout=datetime.timedelta(hours=2))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP around `model` when several processes run, else `model` itself."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP (for saving, evaluation and attribute access)."""
    return getattr(model, "module", model)


__all__ = ["resolve_device", "local_rank", "bf16_supported", "amp_dtype", "autocast", "Dist", "unwrap", "PRECISIONS"]
