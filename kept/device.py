"""Device, precision and process-group choices shared by every training stage (HSAP, the coder).

One home for what differs between a laptop, one GPU and `torchrun` on several: which device a rank
uses, which autocast dtype a GPU really has, the DDP set-up, and the AMP optimizer step (clip, skip
on overflow, schedule only steps that happened). Stages import these; none keeps its own copy.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from typing import Iterable, Iterator

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


def make_scaler(dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A loss scaler that is on only for fp16 (bf16 has fp32's range)."""
    return torch.amp.GradScaler("cuda", enabled=dtype == torch.float16 and torch.cuda.is_available())


def load_scaler_state(scaler: torch.amp.GradScaler, state: dict | None) -> None:
    """Restore a scaler, tolerating a run saved with another precision: a bf16/fp32 run saves an
    empty state, which an fp16 scaler refuses; it then starts from its initial scale."""
    if state and scaler.is_enabled():
        scaler.load_state_dict(state)


def optimizer_step(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer, scheduler,
                   params: Iterable[torch.Tensor], max_grad_norm: float | None) -> bool:
    """Unscale, clip, step, update; step the scheduler only if the optimizer stepped (an fp16
    overflow skips it, and the schedule must not run ahead). Returns whether it stepped."""
    scale = scaler.get_scale() if scaler.is_enabled() else None
    scaler.unscale_(optimizer)
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(list(params), max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    stepped = scale is None or scaler.get_scale() >= scale  # the scale drops only on a skipped step
    if stepped and scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return stepped


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


@contextlib.contextmanager
def maybe_no_sync(model: nn.Module, sync: bool) -> Iterator[None]:
    """DDP's `no_sync()` on accumulation micro-steps that are not the last one (one all-reduce per
    optimizer step instead of one per micro-step); a no-op for a plain module."""
    if sync or not hasattr(model, "no_sync"):
        yield
    else:
        with model.no_sync():
            yield


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP (for saving, evaluation and attribute access)."""
    return getattr(model, "module", model)


__all__ = ["resolve_device", "local_rank", "bf16_supported", "amp_dtype", "make_scaler", "load_scaler_state",
           "optimizer_step", "Dist", "maybe_no_sync", "unwrap", "PRECISIONS"]
