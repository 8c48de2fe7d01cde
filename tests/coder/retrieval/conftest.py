"""What the retrieval tests add to tests/coder/conftest.py: a briefly trained prompted coder to rerank
with (built once per test module)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def coder_dir(tiny_longformer_dir, tiny_data_dir, tmp_path_factory):
    from coder.config import load_config
    from coder.training import train_coder

    out = tmp_path_factory.mktemp("coder")
    cfg = load_config(epochs=1, batch_size=4, grad_accum=1, eval_batch_size=8, lr=1e-3, warmup_ratio=0.0,
                      max_length=256, device="cpu", seed=0, prompt_codes=4)
    train_coder(tiny_data_dir / "50", tiny_longformer_dir, out, cfg)
    return out / "best"
