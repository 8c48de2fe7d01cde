"""Every random-number state a training run draws from (Python, NumPy, torch CPU and CUDA), saved
into a checkpoint and restored on resume, so a resumed run gives the numbers of one never stopped."""

from __future__ import annotations

import random

__all__ = ["rng_state", "restore_rng_state"]


def rng_state() -> dict:
    """The current states, ready for `torch.save`."""
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict | None) -> None:
    """Put back what `rng_state` returned (a checkpoint without states is left as it is)."""
    import numpy as np
    import torch

    if not state:
        return
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    # torch.load(map_location=cuda) moves every tensor; the RNG setters want CPU byte tensors.
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda = [s.cpu() for s in state["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
