"""The one training loop every model goes through (HSAP's encoder, the coder): gradient accumulation,
precision (autocast and the fp16 loss scaler), clipping, the learning-rate schedule, DDP's one
all-reduce per optimizer step, and the checkpoint state (optimizer, scheduler, scaler, every RNG)
with which a resumed run gives the numbers of one never stopped.

A model brings only its `TrainingStep`: a forward pass over one micro-batch (run under autocast) and
a loss over that output (run outside it, in the precision the model chooses), as the
medical-coding-reproducibility Trainer takes each model's `training_step` and sentence-transformers'
fit takes any loss module. What a run does between steps (logging, evaluation, saving its model) stays
with the run.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol, Sequence

import torch
from torch import nn

from kept.device import autocast
from kept.io import atomic_path
from kept.rng import restore_rng_state, rng_state

__all__ = ["TrainingStep", "Trainer", "make_scaler", "load_scaler_state", "optimizer_step", "maybe_no_sync"]


class TrainingStep(Protocol):
    """What a model gives the trainer. `forward(item)` turns one micro-batch (whatever the run's batches
    hold: sampler indices, example ids) into an output; `loss(output)` returns the scalar to minimise,
    or an object whose `.loss` is it (the model may keep more there, e.g. per-kind sums for its log)."""

    def forward(self, item: Any) -> Any: ...

    def loss(self, output: Any) -> Any: ...


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


@contextlib.contextmanager
def maybe_no_sync(model: nn.Module, sync: bool) -> Iterator[None]:
    """DDP's `no_sync()` on accumulation micro-steps that are not the last one (one all-reduce per
    optimizer step instead of one per micro-step); a no-op for a plain module."""
    if sync or not hasattr(model, "no_sync"):
        yield
    else:
        with model.no_sync():
            yield


class Trainer:
    """Optimizer steps over groups of micro-batches, and the state a checkpoint needs to resume.

    `model` is what the step's forward runs through (DDP-wrapped under torchrun: its `no_sync` is
    used); `params` are the trainable parameters to clip, in a fixed order. `optimizer` may be None
    for a run that only evaluates (its state then holds the RNGs alone)."""

    def __init__(self, model: nn.Module, step: TrainingStep, optimizer: torch.optim.Optimizer | None, scheduler,
                 params: Sequence[torch.Tensor], *, device: torch.device, dtype: torch.dtype | None = None,
                 grad_accum: int = 1, max_grad_norm: float | None = None):
        self.model, self.step, self.optimizer, self.scheduler = model, step, optimizer, scheduler
        self.params, self.device, self.dtype = list(params), device, dtype
        self.grad_accum, self.max_grad_norm = grad_accum, max_grad_norm
        self.scaler = make_scaler(dtype)

    def train_step(self, items: Sequence) -> list[tuple[Any, Any]]:
        """One optimizer step over `items` (at most `grad_accum` micro-batches; an epoch's last group
        may hold fewer and is still divided by `grad_accum`). DDP synchronises gradients on the last
        micro-batch only. Returns each micro-batch's (output, loss) as the step gave them."""
        results = []
        for i, item in enumerate(items):
            with maybe_no_sync(self.model, sync=i == len(items) - 1):
                with autocast(self.device, self.dtype):
                    output = self.step.forward(item)
                loss = self.step.loss(output)
                self.scaler.scale(getattr(loss, "loss", loss) / self.grad_accum).backward()
            results.append((output, loss))
        optimizer_step(self.scaler, self.optimizer, self.scheduler, self.params, self.max_grad_norm)
        return results

    def steps(self, groups: Iterable[Sequence]) -> Iterator[list[tuple[Any, Any]]]:
        """The loop: one `train_step` per group of micro-batches, yielding each step's results so the
        run can log, evaluate or save between steps."""
        for items in groups:
            yield self.train_step(items)

    def state_dict(self) -> dict:
        state = {"rng": rng_state()}
        if self.optimizer is not None:
            state.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                         scaler=self.scaler.state_dict())
        return state

    def load_state_dict(self, state: dict, rng: bool = True) -> None:
        """Put back what `state_dict` saved; `rng=False` keeps this process's RNG states (a checkpoint
        of rank 0 resumed by several ranks)."""
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            load_scaler_state(self.scaler, state.get("scaler"))
        if rng:
            restore_rng_state(state.get("rng"))

    def save(self, path: str | Path, **extra) -> None:
        """The run's `extra` fields and the trainer's state in one file, written atomically."""
        with atomic_path(path) as tmp:
            torch.save({**extra, **self.state_dict()}, tmp)

    def load(self, path: str | Path, map_location=None, rng: bool = True) -> dict:
        """Load a file `save` wrote into the trainer; returns it for the run's own fields."""
        state = torch.load(path, map_location=map_location, weights_only=False)
        self.load_state_dict(state, rng=rng)
        return state
