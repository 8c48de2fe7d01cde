"""Hierarchical metrics (coder.evaluation.hierarchy_metrics) on hand-worked notes over the bundled ICD-9-CM graph.

Chains used below (code, parent, ..., chapter; from kgraph/data):
  250.01 / 250.00 / 250.02 -> 250.0 -> 250 -> 249-259 -> 240-279
  401.9 -> 401 -> 401-405 -> 390-459          038.9 -> 038 -> 030-041 -> 001-139
  36.15 / 36.12 -> 36.1 -> 36 -> 35-39        38.93 -> 38.9 -> 38 -> 35-39
  39.61 -> 39.6 -> 39 -> 35-39                (procedures have no section level)
"""

from __future__ import annotations

import numpy as np
import pytest

from coder.evaluation import hierarchy_metrics as H
from coder.evaluation.metrics import all_metrics


@pytest.fixture(scope="module")
def G():
    return H.load_hierarchy()


def metrics(G, gold, pred):
    y, p, codes = H.sets_to_arrays(gold, pred)
    return H.hierarchical_metrics(y, p, codes, G)


def test_places_come_from_the_graph_and_are_cached(G):
    p = H.place(G, "250.01")
    assert p.chain == ("250.01", "250.0", "250", "249-259", "240-279") and p.parent == "250.0"
    assert p.at == {"code": "250.01", "category": "250", "section": "249-259", "chapter": "240-279"}
    assert H.place(G, "250.01") is p  # second lookup is the cached object
    proc = H.place(G, "36.15")
    assert proc.kind == "proc" and "section" not in proc.at and proc.at["chapter"] == "35-39"
    # 3-character leaf: it is its own category
    assert H.place(G, "042").at["category"] == "042"
    # not in the graph: placed under its category; nothing at all for a category the graph lacks
    lost = H.place(G, "250.99")
    assert not lost.in_graph and lost.chain == ("250.99", "250", "249-259", "240-279")
    assert H.place(G, "XYZ").chain == ("XYZ",) and H.place(G, "XYZ").kind is None


def test_near_miss_note_by_hand(G):
    m = metrics(G, [{"250.01", "401.9"}], [{"250.00", "038.9"}])
    # exact match: no predicted code is gold
    assert m["exact_f1@code"] == m["cophe_f1@code"] == 0.0
    # gold + ancestors: {250.01 250.0 250 249-259 240-279, 401.9 401 401-405 390-459} = 9 nodes;
    # pred + ancestors: {250.00 250.0 250 249-259 240-279, 038.9 038 030-041 001-139} = 9 nodes;
    # shared: {250.0 250 249-259 240-279} = 4 -> hP = hR = hF1 = 4/9
    assert m["hier_precision"] == pytest.approx(4 / 9) and m["hier_recall"] == pytest.approx(4 / 9)
    assert m["hier_f1"] == pytest.approx(4 / 9)
    # CoPHE, category: gold {250: 1, 401: 1}, pred {250: 1, 038: 1} -> TP 1, FP 1, FN 1 -> P = R = F1 = 1/2;
    # section {249-259, 401-405} vs {249-259, 030-041} and chapter {240-279, 390-459} vs {240-279, 001-139}: same
    for level in ("category", "section", "chapter"):
        for fam in ("cophe", "exact"):
            assert m[f"{fam}_precision@{level}"] == m[f"{fam}_recall@{level}"] == m[f"{fam}_f1@{level}"] == 0.5
    # all diagnoses: the .dx figures equal the overall ones; no procedure key without a procedure code
    assert m["cophe_f1@category.dx"] == 0.5 and not any(k.endswith(".proc") for k in m)
    # FPs: 250.00 shares parent 250.0 with gold 250.01 -> sibling; 038.9 shares no chapter -> unrelated
    assert (m["n_fp"], m["n_fp_sibling"], m["n_fp_unrelated"]) == (2, 1, 1)
    assert m["fp_share_sibling"] == m["fp_share_unrelated"] == 0.5 and m["fp_share_same_category"] == 0.0
    assert m["n_codes_not_in_graph"] == 0


def test_duplicates_under_one_ancestor_are_what_cophe_counts(G):
    # two gold codes under category 250, one predicted
    m = metrics(G, [{"250.01", "250.02"}], [{"250.00"}])
    # CoPHE category: gold 250 -> 2, pred 250 -> 1: TP = min = 1, FP = 0, FN = 2 - 1 = 1
    # -> P = 1, R = 1/2, F1 = 2*1 / (2*1 + 0 + 1) = 2/3
    assert (m["cophe_precision@category"], m["cophe_recall@category"]) == (1.0, 0.5)
    assert m["cophe_f1@category"] == pytest.approx(2 / 3)
    # exact match at the category: {250} vs {250} -> F1 = 1 (the duplicate is invisible to sets)
    assert m["exact_f1@category"] == 1.0
    # sets with ancestors: gold {250.01 250.02 250.0 250 249-259 240-279} = 6, pred {250.00 + 4} = 5,
    # shared 4 -> hP = 4/5, hR = 4/6, hF1 = 2*4 / (5 + 6) = 8/11
    assert m["hier_precision"] == pytest.approx(4 / 5) and m["hier_recall"] == pytest.approx(4 / 6)
    assert m["hier_f1"] == pytest.approx(8 / 11)
    # the other way round: one gold, two predicted under 250 -> TP 1, FP 1, FN 0 -> P = 1/2, R = 1
    m = metrics(G, [{"250.01"}], [{"250.00", "250.02"}])
    assert (m["cophe_precision@category"], m["cophe_recall@category"]) == (0.5, 1.0)
    assert m["n_fp_sibling"] == 2


def test_procedure_codes(G):
    m = metrics(G, [{"36.15", "38.93"}], [{"36.12", "39.61"}])
    # gold + ancestors {36.15 36.1 36 38.93 38.9 38 35-39} = 7, pred {36.12 36.1 36 39.61 39.6 39 35-39} = 7,
    # shared {36.1 36 35-39} = 3 -> hF1 = 3/7
    assert m["hier_f1"] == pytest.approx(3 / 7)
    # category {36, 38} vs {36, 39}: TP 1 FP 1 FN 1 -> 1/2; chapter: 35-39 holds 2 gold and 2 predicted
    # -> CoPHE TP 2, F1 1; exact {35-39} vs {35-39} -> F1 1
    assert m["cophe_f1@category.proc"] == m["cophe_f1@category"] == 0.5
    assert m["cophe_f1@chapter.proc"] == m["exact_f1@chapter.proc"] == 1.0
    # procedures have no sections: no section key at all for a procedure-only label space
    assert not any("@section" in k for k in m)
    # 36.12 shares parent 36.1 -> sibling; 39.61: category 39 not gold, no section, chapter 35-39 -> same_chapter
    assert (m["n_fp_sibling"], m["n_fp_same_chapter"]) == (1, 1)


def test_every_distance_class_and_mixed_kinds(G):
    gold = [{"250.01", "36.15"}, set()]
    pred = [{"250.01", "250.13", "251.0", "272.0", "038.9", "36.12"}, {"401.9"}]
    y, p, codes = H.sets_to_arrays(gold, pred)
    d = H.fp_distances(y, p, codes, G)
    # note 1: 250.13 (parent 250.1, category 250) -> same_category; 251.0 (section 249-259) -> same_section;
    # 272.0 (section 270-279, chapter 240-279) -> same_chapter; 038.9 -> unrelated; 36.12 -> sibling of 36.15.
    # note 2 has no gold code: its FP is unrelated.
    assert d.tolist() == [[1, 1, 1, 1, 1], [0, 0, 0, 0, 1]]
    m = H.hierarchical_metrics(y, p, codes, G)
    assert m["fp_share_unrelated"] == pytest.approx(2 / 6)
    # dx only, code level: gold {250.01}, pred {250.01 250.13 251.0 272.0 038.9} + {401.9} -> TP 1, FP 5, FN 0
    assert m["exact_precision@code.dx"] == pytest.approx(1 / 6) and m["exact_recall@code.dx"] == 1.0
    # proc only, code level: gold {36.15}, pred {36.12} -> TP 0
    assert m["exact_f1@code.proc"] == 0.0 and m["exact_f1@chapter.proc"] == 1.0
    # section level counts diagnoses only (no procedure section): overall == .dx
    assert m["cophe_f1@section"] == m["cophe_f1@section.dx"] and "cophe_f1@section.proc" not in m


def test_code_level_equals_micro_f1_and_edge_cases(G):
    rng = np.random.default_rng(0)
    codes = ["250.01", "250.00", "401.9", "038.9", "36.15", "38.93"]
    y = rng.random((30, 6)) < 0.3
    s = rng.random((30, 6))
    m = H.hierarchical_metrics(y, s >= 0.5, codes, G)
    assert m["exact_f1@code"] == pytest.approx(all_metrics(y, s, 0.5)["micro_f1"])
    assert m["cophe_f1@code"] == m["exact_f1@code"]
    # a perfect prediction scores 1 everywhere; nothing predicted or gold scores 0, shares 0
    perfect = H.hierarchical_metrics(y, y, codes, G)
    assert all(v == 1.0 for k, v in perfect.items() if k.split("@")[0].endswith("f1"))
    empty = H.hierarchical_metrics(np.zeros((2, 6)), np.zeros((2, 6)), codes, G)
    assert empty["hier_f1"] == 0.0 and empty["n_fp"] == 0 and empty["fp_share_sibling"] == 0.0
    # a code the graph lacks still counts at its category
    m = metrics(G, [{"250.01"}], [{"250.99"}])
    assert m["n_codes_not_in_graph"] == 1 and m["cophe_f1@category"] == 1.0 and m["n_fp_same_category"] == 1
    with pytest.raises(ValueError, match="must both be"):
        H.hierarchical_metrics(y, y[:, :2], codes, G)


def test_weighted_metrics_unit_weights_and_names(G):
    rng = np.random.default_rng(1)
    codes = ["250.01", "250.00", "401.9", "038.9", "36.15"]
    y, p = rng.random((20, 5)) < 0.4, rng.random((20, 5)) < 0.4
    names = ["hier_f1", "cophe_recall@category", "exact_f1@chapter.dx"]
    w = np.vstack([np.ones(20), rng.multinomial(20, np.full(20, 1 / 20), size=3)])
    got = H.weighted_metrics(w, y, p, codes, G, names)
    full = H.hierarchical_metrics(y, p, codes, G)
    for n in names:
        assert got[n].shape == (4,) and got[n][0] == pytest.approx(full[n])
    # a doubled document counts twice: same as repeating its row
    w2 = np.ones(20)
    w2[3] = 2
    rep = np.r_[np.arange(20), 3]
    assert H.weighted_metrics(w2[None], y, p, codes, G, ["hier_f1"])["hier_f1"][0] == pytest.approx(
        H.hierarchical_metrics(y[rep], p[rep], codes, G)["hier_f1"])
    assert H.is_bootstrappable("cophe_f1@section") and H.is_bootstrappable("hier_precision")
    assert not H.is_bootstrappable("fp_share_sibling") and not H.is_bootstrappable("micro_f1")
    assert not H.is_bootstrappable("hier_f1@code")
