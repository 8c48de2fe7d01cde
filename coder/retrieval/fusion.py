"""Score fusion: the reranker's probability interpolated with the first stage's.

The two stages read a note differently. The first stage scores how closely a sentence of the note
matches a code's terms; it cannot read "no evidence of ...", "ruled out", "family history of ...",
so negated or past mentions of a code's sibling are most of its false positives. The trained
reranker reads those cues, but from a few hundred training notes it learns the rare codes' prior
badly. Interpolating the two, `w * stage1 + (1 - w) * rerank` (as retrieve-then-rerank systems
commonly do), keeps what each does well. The weight is chosen on dev with the threshold, never on test.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["WEIGHT_GRID", "fuse", "tune_fusion"]

# Weights of the first stage tried on dev: 0 is the reranker alone, 1 the first stage alone.
WEIGHT_GRID = tuple(round(x, 2) for x in np.arange(0.0, 1.0001, 0.05))


def fuse(stage1: Sequence[np.ndarray], rerank: Sequence[np.ndarray], weight: float) -> list[np.ndarray]:
    """Per note, `weight * stage1 + (1 - weight) * rerank` over its candidates (both in [0, 1])."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"the first stage's weight must be in [0, 1], got {weight}")
    return [(weight * np.asarray(a, dtype=np.float32) + (1.0 - weight) * np.asarray(b, dtype=np.float32))
            for a, b in zip(stage1, rerank)]


def tune_fusion(y: np.ndarray, cand_codes: Sequence[Sequence[str]], stage1: Sequence[np.ndarray],
                rerank: Sequence[np.ndarray], label_space: Sequence[str],
                grid: Sequence[float] = WEIGHT_GRID) -> tuple[float, float, dict]:
    """The weight of `grid` (and its threshold) with the best micro-F1 on these notes (dev), as
    (weight, threshold, metrics); a tie goes to the smaller weight (the reranker's say)."""
    from coder.retrieval.rerank import evaluate_scores, merge_scores

    best = None
    for w in grid:
        s, mask = merge_scores(cand_codes, fuse(stage1, rerank, w), label_space)
        threshold, metrics = evaluate_scores((y, s, mask), (y, s, mask))
        if best is None or metrics["micro_f1"] > best[2]["micro_f1"]:
            best = (float(w), threshold, metrics)
    return best
