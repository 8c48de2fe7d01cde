"""Score fusion of the first stage and the reranker, its weight tuned on dev."""

from __future__ import annotations

import numpy as np
import pytest

from coder.retrieval.fusion import WEIGHT_GRID, fuse, tune_fusion
from coder.retrieval.rerank import evaluate_scores, merge_scores

SPACE = ["gold", "negated", "other"]


def test_fuse_interpolates_and_refuses_a_weight_outside_0_1():
    out = fuse([np.array([.8, .6])], [np.array([.2, 1.0])], 0.25)
    np.testing.assert_allclose(out[0], [.25 * .8 + .75 * .2, .25 * .6 + .75 * 1.0])
    np.testing.assert_allclose(fuse([np.array([.8])], [np.array([.2])], 1.0)[0], [.8])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fuse([np.array([.8])], [np.array([.2])], -0.1)


def _world(n: int = 6):
    """Each note: its gold code, a negated mention (stage 1 scores it like the gold one: the same
    words), and an unrelated code the reranker over-scores (its prior, not the note)."""
    codes = [list(SPACE)] * n
    stage1 = [np.array([.90, .90, .55], dtype=np.float32)] * n
    rerank = [np.array([.60, .10, .70], dtype=np.float32)] * n
    y = np.tile(np.array([[1, 0, 0]], dtype=np.uint8), (n, 1))
    return y, codes, stage1, rerank


def _micro_f1(y, codes, s):
    m = merge_scores(codes, s, SPACE)
    return evaluate_scores((y, *m), (y, *m))[1]["micro_f1"]


def test_neither_stage_alone_separates_what_their_fusion_does():
    y, codes, stage1, rerank = _world()
    assert _micro_f1(y, codes, stage1) < 1.0 and _micro_f1(y, codes, rerank) < 1.0
    weight, threshold, metrics = tune_fusion(y, codes, stage1, rerank, SPACE)
    assert 0.0 < weight < 1.0 and weight in WEIGHT_GRID
    assert metrics["micro_f1"] == 1.0
    fused = fuse(stage1, rerank, weight)[0]
    assert fused[0] >= threshold > max(fused[1], fused[2])


def test_a_tie_goes_to_the_smaller_weight():
    y, codes, stage1, _ = _world()
    perfect = [np.array([.9, .1, .1], dtype=np.float32)] * len(codes)  # the reranker alone is already right
    weight, _, metrics = tune_fusion(y, codes, stage1, perfect, SPACE)
    assert weight == 0.0 and metrics["micro_f1"] == 1.0
