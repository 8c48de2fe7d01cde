"""Licence-free evaluation of a term encoder: ICD-9-CM short title -> long title retrieval.

Short titles are abbreviation-heavy (`DMII wo cmp nt st uncntrl`). For each held-out billable code
(split by 3-digit category, the categories HSAP training never sees), its short title is the query
and the long titles of the candidate codes (by default every billable code, dx and proc: 18,449 in
the bundled graph) are ranked by cosine similarity. Reported: Acc@1, Acc@5, MRR, and among top-1
errors the share that lands on a sibling of the gold code (the paper's 285.1 vs 285.9 analysis).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import networkx as nx
import numpy as np

from contrastive.sampling import HeldOut
from kept.encoder import TermEncoder
from kept.errors import KeptError
from kgraph.graph import IS_A


@dataclass(frozen=True)
class EvalSet:
    queries: list[tuple[str, str]]      # (gold code, short title)
    candidates: list[tuple[str, str]]   # (code, long title)
    skipped_same_title: int             # held-out codes whose short title equals the long one


def eval_set(G: nx.DiGraph, heldout: HeldOut, candidates: str = "leaves", max_candidates: int | None = None,
             seed: int = 0) -> EvalSet:
    """Queries: held-out billable codes with a short title different from the long one.
    Candidates: `leaves` (billable codes) or `all` (every code with a title). `max_candidates`
    keeps every gold code plus a seeded random sample of the rest (for fast tests only)."""
    if candidates not in ("leaves", "all"):
        raise KeptError(f"candidates must be 'leaves' or 'all'; got {candidates!r}")
    codes = [(n, d) for n, d in G.nodes(data=True) if d.get("type") == "code" and d["description"]]
    queries, skipped = [], 0
    for n, d in sorted(codes):
        if n in heldout.codes and d["leaf"] and d.get("short_title"):
            if d["short_title"].strip().lower() == d["description"].strip().lower():
                skipped += 1
            else:
                queries.append((n, d["short_title"]))
    cands = sorted((n, d["description"]) for n, d in codes if candidates == "all" or d["leaf"])
    if max_candidates is not None and len(cands) > max_candidates:
        gold = {c for c, _ in queries}
        rest = [c for c in cands if c[0] not in gold]
        keep = max(max_candidates - len(gold), 0)
        cands = sorted([c for c in cands if c[0] in gold] + random.Random(seed).sample(rest, keep))
    if not queries:
        raise KeptError("no held-out code has a short title: raise the held-out fraction")
    return EvalSet(queries, cands, skipped)


def rank_metrics(q: np.ndarray, c: np.ndarray, gold: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """1-based rank of each query's gold candidate (ties count against it) and its top-1 index."""
    ranks = np.empty(len(q), dtype=np.int64)
    top1 = np.empty(len(q), dtype=np.int64)
    for s in range(0, len(q), chunk):
        sims = q[s:s + chunk] @ c.T
        g = sims[np.arange(len(sims)), gold[s:s + chunk]]
        ranks[s:s + chunk] = 1 + (sims > g[:, None]).sum(axis=1)
        top1[s:s + chunk] = sims.argmax(axis=1)
    return ranks, top1


def evaluate(encoder: TermEncoder, G: nx.DiGraph, es: EvalSet, batch_size: int = 256,
             progress: bool = True) -> dict:
    t0 = time.perf_counter()
    c_vec = encoder.embed([t for _, t in es.candidates], batch_size, progress, desc="candidates")
    q_vec = encoder.embed([t for _, t in es.queries], batch_size, progress, desc="queries")
    embed_s = time.perf_counter() - t0
    pos = {code: i for i, (code, _) in enumerate(es.candidates)}
    gold = np.array([pos[c] for c, _ in es.queries])
    ranks, top1 = rank_metrics(q_vec, c_vec, gold)
    parent = {u: v for u, v, d in G.edges(data=True) if d["rel"] == IS_A}
    wrong = [(es.queries[i][0], es.candidates[top1[i]][0]) for i in range(len(ranks)) if ranks[i] > 1]
    sib = sum(1 for g, p in wrong if parent.get(g) is not None and parent.get(g) == parent.get(p))
    same_cat = sum(1 for g, p in wrong if _category(G, g, parent) == _category(G, p, parent))
    out = {
        "n_queries": len(es.queries), "n_candidates": len(es.candidates),
        "skipped_same_title": es.skipped_same_title,
        "acc@1": float((ranks == 1).mean()), "acc@5": float((ranks <= 5).mean()),
        "mrr": float((1.0 / ranks).mean()), "errors": len(wrong),
        "sibling_error_share": sib / len(wrong) if wrong else 0.0,
        "same_category_error_share": same_cat / len(wrong) if wrong else 0.0,
        "embed_seconds": round(embed_s, 1),
    }
    for kind in ("dx", "proc"):
        m = np.array([G.nodes[c]["kind"] == kind for c, _ in es.queries])
        if m.any():
            out[f"acc@1_{kind}"] = float((ranks[m] == 1).mean())
    out["examples"] = [
        {"code": es.queries[i][0], "query": es.queries[i][1], "predicted": es.candidates[top1[i]][0],
         "predicted_title": es.candidates[top1[i]][1], "gold_rank": int(ranks[i])}
        for i in range(min(len(ranks), 10))
    ]
    return out


def _category(G: nx.DiGraph, code: str, parent: dict[str, str]) -> str | None:
    while code is not None and G.nodes[code]["depth"] > 2:
        code = parent.get(code)
    return code
