"""Query the graph by meaning: free text against the term index of `kept coder index`.

The graph's own search (kgraph.query.search) matches words, so "heart attack" finds nothing when
the titles say "acute myocardial infarction". The FAISS index already holds an embedding of every
term of every code; embedding the query with the same encoder answers with the nearest terms.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["TermHit", "semantic_search"]


@dataclass(frozen=True)
class TermHit:
    code: str
    term: str  # the code's term nearest to the query
    kind: str  # title | synonym | abbreviation
    score: float  # cosine of query and term


def semantic_search(index_dir: str | Path, text: str, limit: int = 20, model: str | Path | None = None,
                    device: str = "auto") -> list[TermHit]:
    """The `limit` codes whose best term is nearest to `text`, best first (one row per code)."""
    from coder.retrieval.index import load_index
    from kept.encoder import load_encoder

    ti = load_index(index_dir, gpu=False)
    encoder = load_encoder(model or ti.meta["model"], ti.meta["pooling"], device)
    q = encoder.embed([text], max_length=ti.meta.get("max_length", 32))
    n = int(ti.index.ntotal)
    # limit x (most terms of one code) hits always hold `limit` distinct codes (search_notes's bound).
    k = max(1, min(n, limit * max(ti.max_terms_per_code, 1)))
    sims, ids = ti.index.search(q, k)
    out: list[TermHit] = []
    seen: set[str] = set()
    for s, i in zip(sims[0].tolist(), ids[0].tolist()):
        if i < 0:
            continue
        code = ti.codes[ti.row_code[i]]
        if code in seen:
            continue
        seen.add(code)
        row = ti.terms.iloc[i]
        out.append(TermHit(code, str(row["term"]), str(row.get("kind", "")), float(np.float32(s))))
        if len(out) >= limit:
            break
    return out
