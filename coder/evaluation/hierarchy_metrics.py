"""Hierarchical evaluation over the kept graph: exact match scores 250.00-for-250.01 like 038.9-for-250.01;
these metrics do not. Plain numpy/scipy functions over (docs, codes) arrays (no torch), like coder.evaluation.metrics.

Definitions (docs/coder.md has them with worked numbers):

- **Set-based hierarchical P/R/F1** (Kosmopoulos et al. 2015): each document's gold and predicted
  sets are augmented with every ancestor of their codes (all graph levels, the 4-character
  subcategory included), then compared as sets; micro over documents.
- **CoPHE** (Falis et al. 2021): per document and per node of a level, the number of predicted and of
  gold codes under it; TP = min, FP = predicted excess, FN = gold excess; micro over documents
  and nodes. Levels: code (= exact match), category (`250`), section (`249-259`), chapter.
- **Exact match at a level**: codes mapped to their node at that level, then set comparison (a
  category predicted once counts once however many gold codes sit under it).
- **FP distance**: each false positive gets the class of the nearest gold code of its note:
  sibling (same parent node), same_category, same_section, same_chapter, else unrelated.

Edge cases:
- A zero denominator gives 0 (as coder.evaluation.metrics): P with nothing predicted, every FP share when a
  split has no false positive.
- ICD-9-CM procedures (volume 3) have no sections: section-level figures count diagnoses only,
  and a procedure FP goes from same_category straight to same_chapter.
- A code the graph lacks sits under its category when the graph has that (`250.99` -> `250`),
  else it stands alone: it counts at the code level only (``n_codes_not_in_graph`` says how many).
- A document with no gold code puts all its false positives in ``unrelated``.
- A predicted ancestor of a gold code (`250.0` for `250.01`) is not a sibling; it is same_category.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import networkx as nx
import numpy as np
from scipy import sparse

from coder.evaluation.metrics import _safe_div
from kgraph.query import ancestors

__all__ = ["LEVELS", "KINDS", "DISTANCES", "SUMMARY_NAMES", "TABLE_NAMES", "CodePlace", "place", "load_hierarchy",
           "doc_counts", "fp_distances", "prf", "is_bootstrappable", "hierarchical_metrics",
           "hierarchical_block", "weighted_metrics", "sets_to_arrays"]

LEVELS = ("code", "category", "section", "chapter")
KINDS = ("dx", "proc")
DISTANCES = ("sibling", "same_category", "same_section", "same_chapter", "unrelated")
# What the demo's tables show: one F1 and where the false positives fall.
SUMMARY_NAMES = ("hier_f1", *(f"fp_share_{d}" for d in DISTANCES))
# What `kept coder eval` prints (the rest is in metrics.json).
TABLE_NAMES = ("hier_precision", "hier_recall", "hier_f1", *(f"{f}_f1@{lv}" for f in ("exact", "cophe")
               for lv in LEVELS[1:]), "n_fp", *(f"fp_share_{d}" for d in DISTANCES))


@dataclass(frozen=True)
class CodePlace:
    """Where a code sits: itself then its ancestors nearest first, and its node at each level."""

    code: str
    kind: str | None  # dx | proc; None for a code the graph cannot place
    chain: tuple[str, ...]  # (code, parent, ..., chapter)
    at: dict  # level -> node; "code" is the code itself; a missing level has no key
    in_graph: bool

    @property
    def parent(self) -> str | None:
        return self.chain[1] if len(self.chain) > 1 else None


# One cache of places per graph object (weak, so a dropped graph frees its cache).
_PLACES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def place(G: nx.DiGraph, code: str) -> CodePlace:
    """The code's place in `G`, looked up once per (graph, code) and cached."""
    cache = _PLACES.setdefault(G, {})
    if code not in cache:
        cache[code] = _locate(G, code)
    return cache[code]


def _is_code(G: nx.DiGraph, node: str) -> bool:
    return node in G and G.nodes[node].get("type") == "code"


def _locate(G: nx.DiGraph, code: str) -> CodePlace:
    if _is_code(G, code):
        chain, kind, known = (code, *ancestors(G, code)), G.nodes[code]["kind"], True
    else:
        # A retired or unbundled code (MIMIC has a few): its category still places it.
        category = code.partition(".")[0]
        if category != code and _is_code(G, category):
            chain, kind = (code, category, *ancestors(G, category)), G.nodes[category]["kind"]
        else:
            chain, kind = (code,), None
        known = False
    at = {G.nodes[n]["level"]: n for n in chain if _is_code(G, n) and G.nodes[n]["level"] != "code"}
    at["code"] = code
    return CodePlace(code, kind, chain, at, known)


@functools.lru_cache(maxsize=4)
def load_hierarchy(graph_dir: str | None = None) -> nx.DiGraph:
    """The graph a coder was built on: a `kept graph build` folder, or None for the bundled ICD-9-CM."""
    from kgraph.graph import icd9_graph
    from kgraph.store import load_graph

    return icd9_graph() if graph_dir is None else load_graph(Path(graph_dir))


def _node_matrix(places: Sequence[CodePlace], nodes_of) -> sparse.csr_matrix:
    """(codes, nodes) 0/1 matrix: code j is under node n. `nodes_of(place)` lists a code's nodes."""
    index: dict[str, int] = {}
    rows, cols = [], []
    for j, p in enumerate(places):
        for n in nodes_of(p):
            rows.append(j)
            cols.append(index.setdefault(n, len(index)))
    data = np.ones(len(rows), dtype=np.int32)
    return sparse.csr_matrix((data, (rows, cols)), shape=(len(places), max(len(index), 1)))


def _tp_fp_fn(gold: sparse.spmatrix, pred: sparse.spmatrix) -> np.ndarray:
    """(docs, 3) per-document TP = sum min(gold, pred), FP = pred - TP, FN = gold - TP over nodes."""
    tp = np.asarray(gold.minimum(pred).sum(axis=1)).ravel()
    fp = np.asarray(pred.sum(axis=1)).ravel() - tp
    fn = np.asarray(gold.sum(axis=1)).ravel() - tp
    return np.stack([tp, fp, fn], axis=1).astype(np.int64)


def _binary(m: sparse.spmatrix) -> sparse.csr_matrix:
    out = sparse.csr_matrix(m, copy=True)
    out.data = (out.data > 0).astype(np.int32)
    return out


def _as_bool(y_true: np.ndarray, y_pred: np.ndarray, n_codes: int) -> tuple[np.ndarray, np.ndarray]:
    y, p = np.asarray(y_true).astype(bool), np.asarray(y_pred).astype(bool)
    if y.ndim != 2 or y.shape != p.shape or y.shape[1] != n_codes:
        raise ValueError(f"y_true {y.shape} and y_pred {p.shape} must both be (docs, {n_codes} codes)")
    return y, p


def _level_nodes(level: str):
    return lambda p: [p.at[level]] if level in p.at else []


def doc_counts(y_true: np.ndarray, y_pred: np.ndarray, codes: Sequence[str], G: nx.DiGraph) -> dict[str, np.ndarray]:
    """Per-document (tp, fp, fn), shape (docs, 3), for every hierarchical figure.

    Keys: `hier` (set-based, ancestors added), `cophe@LEVEL` and `exact@LEVEL` for each of LEVELS,
    and the same with `.dx` / `.proc` for one kind of code. A (level, kind) that no code of the
    label space reaches is left out (ICD-9-CM procedures have no section).
    """
    places = [place(G, str(c)) for c in codes]
    y, p = _as_bool(y_true, y_pred, len(places))
    Y, P = sparse.csr_matrix(y, dtype=np.int32), sparse.csr_matrix(p, dtype=np.int32)
    augment = _node_matrix(places, lambda q: q.chain)
    out = {"hier": _tp_fp_fn(_binary(Y @ augment), _binary(P @ augment))}
    kinds = np.array([q.kind for q in places], dtype=object)
    for level in LEVELS:
        M = _node_matrix(places, _level_nodes(level))
        reached = np.asarray(M.sum(axis=1)).ravel() > 0
        for suffix, keep in (("", np.ones(len(places), bool)), *((f".{k}", kinds == k) for k in KINDS)):
            if not (keep & reached).any():
                continue
            # Zeroing the rows of other kinds' codes keeps the node columns the same for every kind.
            Mk = sparse.diags(keep.astype(np.int32), dtype=np.int32) @ M
            gold, pred = Y @ Mk, P @ Mk
            out[f"cophe@{level}{suffix}"] = _tp_fp_fn(gold, pred)
            out[f"exact@{level}{suffix}"] = _tp_fp_fn(_binary(gold), _binary(pred))
    return out


def fp_distances(y_true: np.ndarray, y_pred: np.ndarray, codes: Sequence[str], G: nx.DiGraph) -> np.ndarray:
    """(docs, len(DISTANCES)) false positives per class of distance to the note's nearest gold code."""
    places = [place(G, str(c)) for c in codes]
    y, p = _as_bool(y_true, y_pred, len(places))
    rows, cols = np.nonzero(p & ~y)
    cls = np.full(rows.size, len(DISTANCES) - 1)
    Y = sparse.csr_matrix(y, dtype=np.int32)
    keys = [lambda q: [q.parent] if q.parent else [], *(_level_nodes(lv) for lv in LEVELS[1:])]
    # From the farthest class to the nearest, so a nearer match overwrites a farther one.
    for i in reversed(range(len(keys))):
        M = _node_matrix(places, keys[i])  # at most one node per code
        node = np.full(len(places), -1)
        code_idx, node_idx = M.nonzero()
        node[code_idx] = node_idx
        has = node[cols] >= 0
        gold_has = (Y @ M).tocsr()
        hit = np.zeros(rows.size, dtype=bool)
        if has.any():
            hit[has] = np.asarray(gold_has[rows[has], node[cols[has]]]).ravel() > 0
        cls[hit] = i
    out = np.zeros((y.shape[0], len(DISTANCES)), dtype=np.int64)
    np.add.at(out, (rows, cls), 1)
    return out


def prf(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Micro precision, recall, F1 from (..., 3) summed (tp, fp, fn); 0 on a zero denominator."""
    c = np.asarray(counts, dtype=float)
    tp, fp, fn = c[..., 0], c[..., 1], c[..., 2]
    return _safe_div(tp, tp + fp), _safe_div(tp, tp + fn), _safe_div(2 * tp, 2 * tp + fp + fn)


def _metric_name(key: str, stat: str) -> str:
    """`hier` -> hier_f1; `cophe@category.dx` -> cophe_f1@category.dx."""
    head, at, where = key.partition("@")
    return f"{head}_{stat}{at}{where}"


def _count_key(name: str) -> tuple[str, int] | None:
    """Inverse of _metric_name: (count key, index into prf's tuple), or None for another metric."""
    head, at, where = name.partition("@")
    family, _, stat = head.rpartition("_")
    stats = ("precision", "recall", "f1")
    if stat not in stats or family not in ("hier", "cophe", "exact") or (family == "hier") == bool(at):
        return None
    return f"{family}{at}{where}", stats.index(stat)


def is_bootstrappable(name: str) -> bool:
    """Whether `kept report` can resample metric `name` (every P/R/F1 here; not the FP shares)."""
    return _count_key(name) is not None


def hierarchical_metrics(y_true: np.ndarray, y_pred: np.ndarray, codes: Sequence[str],
                         G: nx.DiGraph) -> dict[str, float]:
    """Every hierarchical figure as one flat dict (names as in docs/coder.md).

    hier_{precision,recall,f1}; cophe_{...}@LEVEL[.KIND] and exact_{...}@LEVEL[.KIND];
    n_fp, n_fp_CLASS and fp_share_CLASS for each of DISTANCES; n_codes_not_in_graph.
    """
    out: dict[str, float] = {}
    for key, c in doc_counts(y_true, y_pred, codes, G).items():
        for stat, value in zip(("precision", "recall", "f1"), prf(c.sum(axis=0))):
            out[_metric_name(key, stat)] = float(value)
    fp = fp_distances(y_true, y_pred, codes, G).sum(axis=0)
    out["n_fp"] = int(fp.sum())
    for d, n in zip(DISTANCES, fp):
        out[f"n_fp_{d}"] = int(n)
        out[f"fp_share_{d}"] = float(_safe_div(n, fp.sum()))
    out["n_codes_not_in_graph"] = sum(not place(G, str(c)).in_graph for c in codes)
    return out


def hierarchical_block(y_true: np.ndarray, y_pred: np.ndarray, codes: Sequence[str],
                       graph_dir: str | None = None) -> dict:
    """The `hierarchical` entry of a run's metrics.json: the graph (null = bundled ICD-9-CM) and the figures."""
    graph = None if graph_dir is None else str(graph_dir)
    return {"graph": graph, "metrics": hierarchical_metrics(y_true, y_pred, codes, load_hierarchy(graph))}


def weighted_metrics(weights: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, codes: Sequence[str],
                     G: nx.DiGraph, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Metrics `names` (is_bootstrappable) on resamples given as document weights (B, docs)."""
    counts = doc_counts(y_true, y_pred, codes, G)
    out = {}
    for name in names:
        found = _count_key(name)
        if found is None or found[0] not in counts:
            raise ValueError(f"{name!r} is not a hierarchical P/R/F1 of this label space")
        out[name] = prf(np.asarray(weights, dtype=float) @ counts[found[0]])[found[1]]
    return out


def sets_to_arrays(gold: Sequence[set[str]], pred: Sequence[set[str]]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per-document code sets -> (y_true, y_pred, codes) over the sorted union of their codes."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sets but {len(pred)} predicted sets")
    codes = sorted(set().union(*gold, *pred))
    col = {c: j for j, c in enumerate(codes)}
    y, p = np.zeros((len(gold), len(codes)), bool), np.zeros((len(gold), len(codes)), bool)
    for i, (g, q) in enumerate(zip(gold, pred)):
        y[i, [col[c] for c in g]] = True
        p[i, [col[c] for c in q]] = True
    return y, p, codes
