"""Evaluation metrics for multi-label ICD coding: plain numpy functions over (docs, codes) arrays.

Conventions shared by every function (Edin et al. write theirs down the same way):

- ``y_true`` is a (n_docs, n_codes) 0/1 array, ``y_score`` the same shape of real scores
  (probabilities; AUC and P@k only use their order), ``y_pred`` the same shape of 0/1 or bool.
- Predictions are ``y_score >= threshold``; the threshold is tuned on dev (``tune_threshold``)
  and only applied to test.
- Macro F1/precision/recall average over codes with >= 1 positive in the split; macro AUC over
  codes with >= 1 positive AND >= 1 negative (AUC is undefined otherwise). ``all_metrics``
  reports how many codes counted (``n_codes_macro``, ``n_codes_auc``). CAML/KEPT average over
  every label column instead, so on MIMIC-full their macro numbers also include zero-positive
  codes scored P = R = 0: ``macro_f1_all_columns`` is that number (KEPT's full-set Table 3).
- Three macro F1s, named: ``macro_f1`` (CAML's harmonic mean of macro P and R, codes present),
  ``macro_f1_mean`` (Edin et al.'s mean per-code F1, codes present), ``macro_f1_all_columns``
  (CAML's harmonic mean over every label column, codes absent from the split included).
- Ranking metrics (AUC, P@k, R@k) take ``rank_score`` where given: raw logits, because float32
  sigmoids saturate and tie at 1.0, which makes P@k depend on code order.
- A zero denominator gives 0 (scikit-learn's ``zero_division=0``): precision of a code never
  predicted, F1 when nothing is predicted or gold. Quantities with nothing to measure are NaN:
  AUC with one class only, F1 of a code with no positives, any average over an empty set.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

DEFAULT_GRID = np.linspace(0.01, 0.99, 99)
# Columns per chunk in the per-code AUC: bounds the sort's temporaries to ~4M entries.
_AUC_CHUNK_ENTRIES = 4_000_000


def _labels(y_true: np.ndarray) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 2:
        raise ValueError(f"y_true must be 2-D (docs, codes), got shape {y.shape}")
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            raise ValueError("y_true must hold only 0 and 1")
        y = y.astype(bool)
    return y


def _pair(y_true: np.ndarray, other: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    y = _labels(y_true)
    x = np.asarray(other)
    if x.shape != y.shape:
        raise ValueError(f"{name} shape {x.shape} differs from y_true shape {y.shape}")
    if name == "y_score":
        if not np.issubdtype(x.dtype, np.number):
            raise ValueError("y_score must be numeric")
        if np.isnan(x).any():
            raise ValueError("y_score contains NaN")
    else:
        x = x.astype(bool)
    return y, x


def _safe_div(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


# ---------------------------------------------------------------- AUC


def _positive_rank_sums(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Sum of the 1-based mid-ranks of the positives in each row of (rows, n) arrays.

    Tied scores share the mean of the ranks they span (Mann-Whitney), which makes the AUC equal
    scikit-learn's trapezoidal ROC AUC, where a tied positive/negative pair counts one half.
    """
    rows, n = s.shape
    order = np.argsort(s, axis=1)
    ss = np.take_along_axis(s, order, axis=1).ravel()
    yy = np.take_along_axis(y, order, axis=1).ravel()
    new = np.empty(ss.size, dtype=bool)
    new[0] = True
    np.not_equal(ss[1:], ss[:-1], out=new[1:])
    new[::n] = True  # a row boundary always starts a new tie group
    starts = np.flatnonzero(new)
    sizes = np.diff(np.append(starts, ss.size))
    positives = np.add.reduceat(yy.astype(np.int64), starts)
    midrank = starts % n + (sizes + 1) / 2.0
    return np.bincount(starts // n, weights=midrank * positives, minlength=rows)


def per_code_auc(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """ROC AUC of each code (column); NaN for a code whose column has no positive or no negative."""
    y, s = _pair(y_true, y_score, "y_score")
    n_docs, n_codes = y.shape
    pos = y.sum(axis=0).astype(float)
    neg = n_docs - pos
    rank_sums = np.zeros(n_codes)
    chunk = max(1, _AUC_CHUNK_ENTRIES // max(n_docs, 1))
    for lo in range(0, n_codes, chunk):
        hi = min(lo + chunk, n_codes)
        # Work code-major so each sort runs over contiguous memory.
        rank_sums[lo:hi] = _positive_rank_sums(
            np.ascontiguousarray(y[:, lo:hi].T), np.ascontiguousarray(s[:, lo:hi].T)
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (rank_sums - pos * (pos + 1) / 2.0) / (pos * neg)
    auc[(pos == 0) | (neg == 0)] = np.nan
    return auc


def macro_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Mean per-code AUC over codes with >= 1 positive and >= 1 negative; NaN if there are none.

    ``n_codes_auc(y_true)`` says how many codes that mean covers.
    """
    auc = per_code_auc(y_true, y_score)
    return float(np.nanmean(auc)) if np.isfinite(auc).any() else float("nan")


def n_codes_auc(y_true: np.ndarray) -> int:
    """Number of codes macro AUC averages over: those with >= 1 positive and >= 1 negative."""
    y = _labels(y_true)
    pos = y.sum(axis=0)
    return int(((pos > 0) & (pos < y.shape[0])).sum())


def micro_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """AUC over the flattened (doc, code) matrix, ties counted one half; NaN with a single class."""
    y, s = _pair(y_true, y_score, "y_score")
    pos = float(y.sum())
    neg = y.size - pos
    if pos == 0 or neg == 0:
        return float("nan")
    rank_sum = _positive_rank_sums(y.reshape(1, -1), s.reshape(1, -1))[0]
    return float((rank_sum - pos * (pos + 1) / 2.0) / (pos * neg))


# ---------------------------------------------------------------- thresholded metrics


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-code (tp, fp, fn) counts as int64 arrays of length n_codes."""
    y, p = _pair(y_true, y_pred, "y_pred")
    tp = (y & p).sum(axis=0, dtype=np.int64)
    return tp, p.sum(axis=0, dtype=np.int64) - tp, y.sum(axis=0, dtype=np.int64) - tp


def micro_precision(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Correct predictions / all predictions, pooled over every (doc, code); 0 when nothing is predicted."""
    tp, fp, _ = confusion_counts(y_true, y_pred)
    return float(_safe_div(tp.sum(), tp.sum() + fp.sum()))


def micro_recall(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Correct predictions / all gold codes, pooled; 0 when there are no gold codes."""
    tp, _, fn = confusion_counts(y_true, y_pred)
    return float(_safe_div(tp.sum(), tp.sum() + fn.sum()))


def micro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """2 TP / (2 TP + FP + FN) pooled over every (doc, code); 0 when nothing is predicted or gold."""
    tp, fp, fn = confusion_counts(y_true, y_pred)
    return float(_safe_div(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum()))


def _macro_pr(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[float, float]:
    present = (tp + fn) > 0
    if not present.any():
        return float("nan"), float("nan")
    precision = _safe_div(tp[present], tp[present] + fp[present])
    recall = _safe_div(tp[present], tp[present] + fn[present])
    return float(precision.mean()), float(recall.mean())


def macro_precision(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean per-code precision over codes with >= 1 positive (a code never predicted scores 0)."""
    return _macro_pr(*confusion_counts(y_true, y_pred))[0]


def macro_recall(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean per-code recall over codes with >= 1 positive."""
    return _macro_pr(*confusion_counts(y_true, y_pred))[1]


def _harmonic(p: float, r: float) -> float:
    if np.isnan(p) or np.isnan(r):
        return float("nan")
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """CAML/KEPT macro F1: harmonic mean of macro precision and macro recall (codes with >= 1 positive).

    It is >= ``macro_f1_mean`` and the two differ whenever codes trade precision for recall
    unevenly; papers that do not say which they report are not comparable on this number.
    """
    return _harmonic(*_macro_pr(*confusion_counts(y_true, y_pred)))


def macro_pr_all_columns(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    """CAML's macro precision and recall: the mean over EVERY label column, a code with no
    positives (recall 0/0) or never predicted (precision 0/0) counting 0. NaN with no columns."""
    tp, fp, fn = confusion_counts(y_true, y_pred)
    if tp.size == 0:
        return float("nan"), float("nan")
    return float(_safe_div(tp, tp + fp).mean()), float(_safe_div(tp, tp + fn).mean())


def macro_f1_all_columns(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """CAML/KEPT's macro F1 over every label column (KEPT's full-set Table 3): harmonic mean of
    ``macro_pr_all_columns``. Codes absent from the split pull it down; ``macro_f1`` leaves them out."""
    return _harmonic(*macro_pr_all_columns(y_true, y_pred))


def per_code_f1(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """F1 of each code; NaN for a code with no positives, 0 for one with positives but no hit."""
    tp, fp, fn = confusion_counts(y_true, y_pred)
    f1 = _safe_div(2 * tp, 2 * tp + fp + fn)
    f1[(tp + fn) == 0] = np.nan
    return f1


def macro_f1_mean(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Edin et al.'s macro F1: mean of per-code F1 over codes with >= 1 positive."""
    f1 = per_code_f1(y_true, y_pred)
    return float(np.nanmean(f1)) if np.isfinite(f1).any() else float("nan")


# ---------------------------------------------------------------- ranking metrics


def top_k_hits(y_true: np.ndarray, y_score: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """Gold codes among each doc's k best-scored codes, and the k actually used (min(k, n_codes)).

    Ties at the k-th score are broken toward the lower code index, as a stable sort of
    ``-y_score`` would; done with a partition, not a full sort, to stay fast on 8,692 codes.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    y, s = _pair(y_true, y_score, "y_score")
    n_docs, n_codes = y.shape
    k_eff = min(k, n_codes)
    if n_codes == 0 or n_docs == 0:
        return np.zeros(n_docs, dtype=np.int64), k_eff
    if k_eff == n_codes:
        return y.sum(axis=1, dtype=np.int64), k_eff
    kth = -np.partition(-s, k_eff - 1, axis=1)[:, k_eff - 1 : k_eff]
    chosen = s > kth
    tied = s == kth
    need = k_eff - chosen.sum(axis=1)
    extra = tied.sum(axis=1) > need  # rows where only some of the tied codes fit
    chosen |= tied & ~extra[:, None]
    if extra.any():
        rows = np.flatnonzero(extra)
        first = tied[rows] & (np.cumsum(tied[rows], axis=1) <= need[rows, None])
        chosen[rows] |= first
    return (y & chosen).sum(axis=1, dtype=np.int64), k_eff


def precision_at_k(y_true: np.ndarray, y_score: np.ndarray, k: int) -> float:
    """Mean over all docs of (gold codes in the top k) / min(k, n_codes).

    A doc with no gold codes scores 0. When k exceeds the number of codes the denominator is the
    number of codes (CAML's convention: every code is "in the top k").
    """
    hits, k_eff = top_k_hits(y_true, y_score, k)
    return float(hits.mean() / k_eff) if hits.size else float("nan")


def recall_at_k(y_true: np.ndarray, y_score: np.ndarray, k: int) -> float:
    """Mean over docs with >= 1 gold code of (gold codes in the top k) / (gold codes of the doc).

    Docs with no gold codes are left out (recall is undefined for them; CAML counted them as 0);
    ``all_metrics`` reports how many docs counted as ``n_docs_recall``. NaN if none has gold codes.
    """
    hits, _ = top_k_hits(y_true, y_score, k)
    gold = _labels(y_true).sum(axis=1)
    has_gold = gold > 0
    return float((hits[has_gold] / gold[has_gold]).mean()) if has_gold.any() else float("nan")


# ---------------------------------------------------------------- threshold and summary


def tune_threshold(
    y_true: np.ndarray, y_score: np.ndarray, grid: Sequence[float] | np.ndarray | str | None = None
) -> float:
    """The threshold t maximising micro-F1 of ``y_score >= t``; call it on dev, apply it to test.

    ``grid``: None (or ``"grid"``) for ``np.linspace(0.01, 0.99, 99)``, an array of candidates, or
    ``"exact"`` (alias ``"unique"``) for every distinct score as a candidate: the exact optimum, found
    with one sort and a cumulative count. Among equally good thresholds the lowest wins.
    Counting is vectorised (one bincount or one sort), so full MIMIC dev takes seconds.
    Raises ValueError when y_true has no positives: every threshold would score F1 = 0.
    """
    y, s = _pair(y_true, y_score, "y_score")
    y, s = y.ravel(), s.ravel()
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ValueError("y_true has no positive labels: cannot tune a threshold on it")
    if isinstance(grid, str) and grid == "grid":
        grid = None
    if isinstance(grid, str):
        if grid not in ("exact", "unique"):
            raise ValueError(f"grid must be None, an array, 'grid' or 'exact', got {grid!r}")
        order = np.argsort(s, kind="stable")
        ss, yy = s[order], y[order]
        starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
        candidates = ss[starts]
        predicted = s.size - starts  # scores >= each distinct value
        tp = n_pos - np.r_[0, np.cumsum(yy, dtype=np.int64)][starts]
    else:
        candidates = np.sort(np.asarray(DEFAULT_GRID if grid is None else grid, dtype=float))
        if candidates.ndim != 1 or candidates.size == 0:
            raise ValueError("grid must be a non-empty 1-D sequence of thresholds")
        # bins[i] = how many candidates are <= score i, so score i is predicted at candidates[:bins[i]].
        bins = np.searchsorted(candidates, s, side="right")
        size = candidates.size + 1
        predicted = np.cumsum(np.bincount(bins, minlength=size)[::-1])[::-1][1:]
        tp = np.cumsum(np.bincount(bins[y], minlength=size)[::-1])[::-1][1:]
    f1 = _safe_div(2 * tp, predicted + n_pos)
    return float(candidates[int(np.argmax(f1))])


def all_metrics(
    y_true: np.ndarray, y_score: np.ndarray, threshold: float, ks: Sequence[int] = (5, 8, 15),
    rank_score: np.ndarray | None = None,
) -> dict[str, float]:
    """Every reported metric for one split at a fixed (dev-tuned) threshold.

    Keys: micro_auc, macro_auc, n_codes_auc, micro_precision, micro_recall, micro_f1,
    macro_precision, macro_recall, macro_f1 (CAML), macro_f1_mean (Edin), n_codes_macro,
    macro_precision_all_columns, macro_recall_all_columns, macro_f1_all_columns (CAML over every
    column, KEPT's full-set Table 3), p@k and r@k for each k, n_docs_recall, n_docs, n_codes.
    Macro averages cover codes with >= 1 positive in the split (``n_codes_macro``) except the
    ``*_all_columns`` ones; macro AUC also needs >= 1 negative. ``rank_score`` (raw logits, same
    shape), where given, orders the AUC and P@k/R@k instead of ``y_score``.
    """
    y, s = _pair(y_true, y_score, "y_score")
    r = s if rank_score is None else _pair(y, rank_score, "y_score")[1]
    pred = s >= threshold
    tp, fp, fn = confusion_counts(y, pred)
    m_p, m_r = _macro_pr(tp, fp, fn)
    a_p = float(_safe_div(tp, tp + fp).mean()) if tp.size else float("nan")
    a_r = float(_safe_div(tp, tp + fn).mean()) if tp.size else float("nan")
    f1 = per_code_f1(y, pred)
    gold_per_doc = y.sum(axis=1)
    out: dict[str, float] = {
        "micro_auc": micro_auc(y, r),
        "macro_auc": macro_auc(y, r),
        "n_codes_auc": n_codes_auc(y),
        "micro_precision": float(_safe_div(tp.sum(), tp.sum() + fp.sum())),
        "micro_recall": float(_safe_div(tp.sum(), tp.sum() + fn.sum())),
        "micro_f1": float(_safe_div(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum())),
        "macro_precision": m_p,
        "macro_recall": m_r,
        "macro_f1": _harmonic(m_p, m_r),
        "macro_f1_mean": float(np.nanmean(f1)) if np.isfinite(f1).any() else float("nan"),
        "n_codes_macro": int(((tp + fn) > 0).sum()),
        "macro_precision_all_columns": a_p,
        "macro_recall_all_columns": a_r,
        "macro_f1_all_columns": _harmonic(a_p, a_r),
    }
    for k in ks:
        hits, k_eff = top_k_hits(y, r, k)
        out[f"p@{k}"] = float(hits.mean() / k_eff) if hits.size else float("nan")
        has_gold = gold_per_doc > 0
        out[f"r@{k}"] = float((hits[has_gold] / gold_per_doc[has_gold]).mean()) if has_gold.any() else float("nan")
    out["n_docs_recall"] = int((gold_per_doc > 0).sum())
    out["n_docs"], out["n_codes"] = int(y.shape[0]), int(y.shape[1])
    return out


def per_code_table(
    codes: Sequence[str], train_counts: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-code F1 beside training frequency, for the F1-vs-frequency plot; rows sorted by frequency.

    ``train_counts`` is each code's number of training documents (``y_train.sum(axis=0)``).
    Returns columns code, train_count, test_positives, f1 (NaN where the code has no test positive).
    """
    y = _labels(y_true)
    counts = np.asarray(train_counts)
    if len(codes) != y.shape[1] or counts.shape != (y.shape[1],):
        raise ValueError(f"need one code and one train count per column ({y.shape[1]})")
    order = np.argsort(-counts, kind="stable")
    return {
        "code": np.asarray(codes, dtype=str)[order],
        "train_count": counts[order],
        "test_positives": y.sum(axis=0)[order],
        "f1": per_code_f1(y, y_pred)[order],
    }
