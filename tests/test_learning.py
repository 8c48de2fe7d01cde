"""Each trainable head must learn: on a handful of notes it fits its own training set (train = dev
here, so the dev figure *is* the train-set fit). These fail when training is broken (a detached
loss, a frozen model, labels misaligned with the masks), which smoke tests that only run do not."""

from __future__ import annotations

import pytest

from coder.modeling import load_config
from coder.train import train_coder
from tests.conftest import TINY_CODES, _notes, write_set

# a few hundred tiny steps: seconds on CPU
OVERFIT = dict(batch_size=4, grad_accum=1, eval_batch_size=8, warmup_ratio=0.0, max_length=256,
               device="cpu", seed=0)


@pytest.fixture(scope="module")
def handful(tmp_path_factory):
    notes = _notes(12, 7)
    return write_set(tmp_path_factory.mktemp("handful") / "50", TINY_CODES,
                     {"train": notes, "dev": notes, "test": notes})


@pytest.mark.parametrize("head,epochs,lr", [("prompt", 25, 3e-3), ("label-attention", 25, 3e-3)])
def test_head_overfits_a_handful_of_notes(head, epochs, lr, handful, tiny_longformer_dir, tmp_path):
    cfg = load_config(**OVERFIT, head=head, epochs=epochs, lr=lr, head_lr=lr)
    summary = train_coder(handful, tiny_longformer_dir, tmp_path / head, cfg)
    losses = [h["train_loss"] for h in summary["history"]]
    assert losses[-1] < 0.3 * losses[0], losses
    assert summary["best_dev_micro_f1"] >= 0.95, [round(h["dev"]["micro_f1"], 3) for h in summary["history"]]


def test_tfidf_head_fits_its_training_notes(handful, tmp_path):
    summary = train_coder(handful, None, tmp_path / "tfidf", load_config(head="tfidf-lr"))
    assert summary["best_dev_micro_f1"] >= 0.95
