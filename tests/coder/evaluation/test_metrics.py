"""coder.evaluation.metrics against scikit-learn on random data with ties, and on small hand-worked examples."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from coder.evaluation import metrics as M


@pytest.fixture(scope="module")
def random_case() -> tuple[np.ndarray, np.ndarray]:
    """120 docs x 25 codes; scores on a 0.1 grid (many ties); one code never positive, one doc with no codes,
    one code positive everywhere else (so its AUC rests on the single empty doc)."""
    rng = np.random.default_rng(7)
    y = (rng.random((120, 25)) < 0.15).astype(np.uint8)
    y[:, 3] = 0  # a code with no positives
    y[:, 4] = 1
    y[10] = 0  # a document with no codes
    s = np.round(np.clip(rng.random(y.shape) * 0.7 + 0.3 * y, 0, 1), 1)
    return y, s


def _ref_top_k_hits(y: np.ndarray, s: np.ndarray, k: int) -> np.ndarray:
    # CAML-style reference: full stable sort of -score, ties to the lower code index.
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(y, top, axis=1).sum(axis=1)


# ---------------------------------------------------------------- against scikit-learn


def test_auc_matches_sklearn_with_ties(random_case):
    y, s = random_case
    assert M.micro_auc(y, s) == pytest.approx(roc_auc_score(y, s, average="micro"), abs=1e-12)
    per_code = M.per_code_auc(y, s)
    valid = ~np.isnan(per_code)
    assert not valid[3] and valid.sum() == 24 == M.n_codes_auc(y)
    for j in np.flatnonzero(valid):
        assert per_code[j] == pytest.approx(roc_auc_score(y[:, j], s[:, j]), abs=1e-12)
    assert M.macro_auc(y, s) == pytest.approx(roc_auc_score(y[:, valid], s[:, valid], average="macro"), abs=1e-12)


def test_auc_chunking_gives_the_same_result(random_case, monkeypatch):
    y, s = random_case
    whole = M.per_code_auc(y, s)
    monkeypatch.setattr(M, "_AUC_CHUNK_ENTRIES", 1)  # one code per chunk
    np.testing.assert_array_equal(M.per_code_auc(y, s), whole)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.8])
def test_thresholded_metrics_match_sklearn(random_case, threshold):
    y, s = random_case
    pred = (s >= threshold).astype(int)
    present = np.flatnonzero(y.sum(axis=0) > 0)  # our macro averages skip code 3
    kw = dict(zero_division=0)
    assert M.micro_precision(y, pred) == pytest.approx(precision_score(y, pred, average="micro", **kw))
    assert M.micro_recall(y, pred) == pytest.approx(recall_score(y, pred, average="micro", **kw))
    assert M.micro_f1(y, pred) == pytest.approx(f1_score(y, pred, average="micro", **kw))
    macro_p = precision_score(y, pred, average="macro", labels=present, **kw)
    macro_r = recall_score(y, pred, average="macro", labels=present, **kw)
    assert M.macro_precision(y, pred) == pytest.approx(macro_p)
    assert M.macro_recall(y, pred) == pytest.approx(macro_r)
    assert M.macro_f1(y, pred) == pytest.approx(2 * macro_p * macro_r / (macro_p + macro_r))
    assert M.macro_f1_mean(y, pred) == pytest.approx(f1_score(y, pred, average="macro", labels=present, **kw))
    per_code = M.per_code_f1(y, pred)
    assert np.isnan(per_code[3])
    np.testing.assert_allclose(per_code[present], f1_score(y, pred, average=None, labels=present, **kw))


@pytest.mark.parametrize("k", [1, 5, 8, 15, 25, 40])
def test_top_k_matches_a_full_sort(random_case, k):
    y, s = random_case
    hits = _ref_top_k_hits(y, s, k)
    assert M.precision_at_k(y, s, k) == pytest.approx(np.mean(hits / min(k, y.shape[1])))
    gold = y.sum(axis=1)
    assert M.recall_at_k(y, s, k) == pytest.approx(np.mean(hits[gold > 0] / gold[gold > 0]))


def test_all_metrics_agrees_with_the_building_blocks(random_case):
    y, s = random_case
    out = M.all_metrics(y, s, 0.5, ks=(5, 8))
    pred = s >= 0.5
    assert out["micro_auc"] == M.micro_auc(y, s) and out["macro_auc"] == M.macro_auc(y, s)
    for name in ("micro_precision", "micro_recall", "micro_f1", "macro_precision", "macro_recall", "macro_f1"):
        assert out[name] == pytest.approx(getattr(M, name)(y, pred))
    assert out["macro_f1_mean"] == pytest.approx(M.macro_f1_mean(y, pred))
    assert out["p@5"] == M.precision_at_k(y, s, 5) and out["r@8"] == M.recall_at_k(y, s, 8)
    assert (out["n_codes_macro"], out["n_codes_auc"], out["n_docs_recall"]) == (24, 24, 119)
    assert (out["n_docs"], out["n_codes"]) == (120, 25)
    assert set(out) >= {"p@8", "r@5"} and "p@15" not in out


# ---------------------------------------------------------------- hand-worked examples


def test_auc_hand_worked_with_a_tie():
    # positives score 0.8, 0.3; negatives 0.8, 0.1. Pairs (pos, neg):
    # (0.8, 0.8) tie -> 1/2, (0.8, 0.1) -> 1, (0.3, 0.8) -> 0, (0.3, 0.1) -> 1: AUC = 2.5 / 4 = 0.625
    y = np.array([[1], [0], [1], [0]])
    s = np.array([[0.8], [0.8], [0.3], [0.1]])
    assert M.per_code_auc(y, s)[0] == pytest.approx(0.625)
    assert M.micro_auc(y, s) == pytest.approx(0.625)
    # a code positive in every doc has no negative: AUC undefined (NaN), left out of macro AUC
    y2 = np.hstack([y, np.ones_like(y)])
    s2 = np.hstack([s, s])
    assert np.isnan(M.per_code_auc(y2, s2)[1]) and M.n_codes_auc(y2) == 1
    assert M.macro_auc(y2, s2) == pytest.approx(0.625)


def test_two_macro_f1_definitions_differ_hand_worked():
    # 4 docs x 3 codes; doc 2 and doc 3 have no codes, code C has no positives.
    y = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]])
    pred = np.array([[1, 1, 0], [1, 0, 1], [1, 0, 0], [1, 0, 0]])
    # code A: tp 2, fp 2, fn 0 -> P 1/2, R 1, F1 2/3
    # code B: tp 1, fp 0, fn 0 -> P 1,   R 1, F1 1
    # code C: no positives -> left out of every macro average (its fp still counts in micro)
    # macro P = (1/2 + 1)/2 = 3/4, macro R = 1; CAML macro F1 = 2 * 3/4 * 1 / (3/4 + 1) = 6/7
    # Edin macro F1 = mean(2/3, 1) = 5/6
    assert M.macro_precision(y, pred) == pytest.approx(0.75)
    assert M.macro_recall(y, pred) == pytest.approx(1.0)
    assert M.macro_f1(y, pred) == pytest.approx(6 / 7)
    assert M.macro_f1_mean(y, pred) == pytest.approx(5 / 6)
    f1 = M.per_code_f1(y, pred)
    assert f1[:2] == pytest.approx([2 / 3, 1.0]) and np.isnan(f1[2])
    # micro: tp 3, fp 2 + 0 + 1 = 3, fn 0 -> P 1/2, R 1, F1 = 6 / (6 + 3) = 2/3
    assert M.micro_precision(y, pred) == pytest.approx(0.5)
    assert M.micro_recall(y, pred) == pytest.approx(1.0)
    assert M.micro_f1(y, pred) == pytest.approx(2 / 3)
    assert M.all_metrics(y, pred.astype(float), 0.5)["n_codes_macro"] == 2
    # CAML's all-columns macro (KEPT's full-set Table 3): code C counts with P = 0 (1 fp), R = 0/0 = 0.
    # macro P = (1/2 + 1 + 0)/3 = 1/2, macro R = (1 + 1 + 0)/3 = 2/3, F1 = 2 * 1/2 * 2/3 / (7/6) = 4/7
    assert M.macro_pr_all_columns(y, pred) == pytest.approx((0.5, 2 / 3))
    assert M.macro_f1_all_columns(y, pred) == pytest.approx(4 / 7)
    out = M.all_metrics(y, pred.astype(float), 0.5)
    assert out["macro_f1_all_columns"] == pytest.approx(4 / 7) and out["macro_f1"] == pytest.approx(6 / 7)
    assert out["macro_precision_all_columns"] == pytest.approx(0.5)


def test_all_columns_macro_f1_matches_sklearn_over_every_label(random_case):
    # = the harmonic mean of scikit-learn's macro P and R with zero_division=0 over all 25 columns
    y, s = random_case
    pred = s >= 0.5
    p = precision_score(y, pred, average="macro", zero_division=0)
    r = recall_score(y, pred, average="macro", zero_division=0)
    assert M.macro_f1_all_columns(y, pred) == pytest.approx(2 * p * r / (p + r))


def test_ranking_uses_logits_where_sigmoids_tie():
    # float32 sigmoid of 20 and of 30 are both exactly 1.0: P@1 by probability depends on code order
    logits = np.array([[20.0, 30.0, -5.0]], dtype=np.float32)
    probs = (1 / (1 + np.exp(-logits.astype(np.float64)))).astype(np.float32)
    assert probs[0, 0] == probs[0, 1] == 1.0
    y = np.array([[0, 1, 0]])
    assert M.all_metrics(y, probs, 0.5, ks=(1,))["p@1"] == 0.0  # the tie goes to code 0
    out = M.all_metrics(y, probs, 0.5, ks=(1,), rank_score=logits)
    assert out["p@1"] == 1.0 and out["micro_precision"] == 0.5  # thresholded metrics still on probs


def test_precision_recall_at_k_hand_worked():
    y = np.array([[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0]])
    s = np.array([[0.9, 0.8, 0.7, 0.1], [0.5, 0.4, 0.3, 0.2], [0.2, 0.2, 0.2, 0.9]])
    # k = 2: doc 0 takes codes 0, 1 -> 1 hit; doc 1 has no codes -> 0 hits;
    #   doc 2 takes code 3 then the lowest-index of the tied 0.2s (code 0) -> 0 hits.
    # P@2 = (1/2 + 0 + 0) / 3 = 1/6; R@2 over docs 0 and 2 only = (1/2 + 0/1) / 2 = 1/4
    assert M.precision_at_k(y, s, 2) == pytest.approx(1 / 6)
    assert M.recall_at_k(y, s, 2) == pytest.approx(1 / 4)
    # k = 10 > 4 codes: every code is in the top k, denominator 4 -> P = (2/4 + 0 + 1/4) / 3 = 1/4; R = 1
    assert M.precision_at_k(y, s, 10) == pytest.approx(1 / 4)
    assert M.recall_at_k(y, s, 10) == pytest.approx(1.0)
    out = M.all_metrics(y, s, 0.5, ks=(2, 10))
    assert (out["p@2"], out["r@2"], out["n_docs_recall"]) == (pytest.approx(1 / 6), pytest.approx(1 / 4), 2)


def test_all_zero_scores_and_empty_cases():
    y = np.array([[1, 0], [0, 0], [0, 1]])
    s = np.zeros((3, 2))
    # every pair tied -> AUC 1/2 for both codes and micro
    assert M.macro_auc(y, s) == pytest.approx(0.5) and M.micro_auc(y, s) == pytest.approx(0.5)
    out = M.all_metrics(y, s, 0.5)
    assert out["micro_f1"] == 0.0 and out["micro_precision"] == 0.0 and out["macro_f1"] == 0.0
    # no positives at all: AUC, macro averages and recall are undefined, not 0
    none = np.zeros((3, 2), dtype=int)
    out = M.all_metrics(none, s, 0.5)
    assert np.isnan(out["micro_auc"]) and np.isnan(out["macro_auc"]) and np.isnan(out["macro_f1"])
    assert np.isnan(out["r@5"]) and out["p@5"] == 0.0 and out["n_codes_macro"] == 0
    with pytest.raises(ValueError, match="no positive"):
        M.tune_threshold(none, s)


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="shape"):
        M.micro_auc(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="0 and 1"):
        M.micro_f1(np.full((2, 2), 2), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        M.micro_auc(np.eye(2), np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="k must be"):
        M.precision_at_k(np.eye(2), np.eye(2), 0)


# ---------------------------------------------------------------- threshold tuning


def test_tune_threshold_finds_the_grid_and_exact_optimum(random_case):
    y, s = random_case
    grid = np.linspace(0.01, 0.99, 99)
    brute = [f1_score(y.ravel(), s.ravel() >= t) for t in grid]
    t = M.tune_threshold(y, s)
    assert t == pytest.approx(grid[int(np.argmax(brute))])  # the first (lowest) of equal maxima
    unique = np.unique(s)
    brute_u = [f1_score(y.ravel(), s.ravel() >= t) for t in unique]
    assert M.tune_threshold(y, s, grid="unique") == unique[int(np.argmax(brute_u))]
    assert M.tune_threshold(y, s, grid="exact") == unique[int(np.argmax(brute_u))]
    assert M.tune_threshold(y, s, grid="grid") == t


def test_exact_threshold_on_continuous_scores_beats_or_equals_the_grid():
    rng = np.random.default_rng(3)
    y = (rng.random((300, 40)) < 0.1).astype(np.uint8)
    s = np.clip(rng.normal(0.3 + 0.3 * y, 0.15), 0, 1).astype(np.float32)
    t_exact, t_grid = M.tune_threshold(y, s, grid="exact"), M.tune_threshold(y, s)
    f1 = lambda t: f1_score(y.ravel(), s.ravel() >= t)  # noqa: E731
    assert t_exact in set(s.ravel().tolist())  # a dev score itself
    assert f1(t_exact) >= f1(t_grid)
    brute = max(f1(t) for t in np.unique(s)[::7])  # a sample of candidates can only do as well
    assert f1(t_exact) >= brute
    with pytest.raises(ValueError, match="exact"):
        M.tune_threshold(y, s, grid="best")
    assert M.tune_threshold(y, s, grid=[0.9, 0.2]) in (0.2, 0.9)


def test_threshold_is_tuned_on_dev_and_applied_to_test():
    rng = np.random.default_rng(3)
    # Dev and test come from models calibrated differently: positives score ~0.35 on dev, ~0.75 on test.
    y_dev = (rng.random((300, 10)) < 0.2).astype(int)
    y_test = (rng.random((300, 10)) < 0.2).astype(int)
    s_dev = np.clip(0.1 + 0.25 * y_dev + rng.normal(0, 0.03, y_dev.shape), 0, 1)
    s_test = np.clip(0.5 + 0.25 * y_test + rng.normal(0, 0.03, y_test.shape), 0, 1)
    t = M.tune_threshold(y_dev, s_dev)  # the function is only ever given dev arrays
    assert 0.15 < t < 0.35
    test_at_dev_t = M.all_metrics(y_test, s_test, t)["micro_f1"]
    best_on_test = M.all_metrics(y_test, s_test, M.tune_threshold(y_test, s_test))["micro_f1"]
    # A test-tuned threshold would look better: exactly the leak the dev-only rule prevents.
    assert test_at_dev_t < 0.5 < best_on_test


def test_per_code_table_sorted_by_training_frequency():
    y = np.array([[1, 0, 0], [1, 1, 0]])
    pred = np.array([[1, 0, 0], [0, 1, 0]])
    table = M.per_code_table(["401.9", "038.9", "V45.81"], np.array([5, 40, 1]), y, pred)
    assert list(table["code"]) == ["038.9", "401.9", "V45.81"]
    assert list(table["train_count"]) == [40, 5, 1]
    assert list(table["test_positives"]) == [1, 2, 0]
    # 038.9: tp 1 -> F1 1; 401.9: tp 1, fn 1 -> F1 2/3; V45.81: no test positive -> NaN
    assert table["f1"][:2] == pytest.approx([1.0, 2 / 3]) and np.isnan(table["f1"][2])


def test_metrics_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, coder.evaluation.metrics; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
