"""Questions the graph answers. `cypher/queries.cypher` asks Neo4j the same ones."""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from kept.errors import KeptError
from kgraph.codes import normalize_code
from kgraph.graph import HAS_TERM, IS_A, TERM_KINDS, term_id
from kgraph.text import normalize_term


@dataclass(frozen=True)
class Term:
    text: str
    norm: str
    kind: str  # title | synonym | abbreviation
    source: str


def resolve(G: nx.DiGraph, code: str, kind: str | None = None) -> str:
    """The graph key of a code written either way (`25001`, `250.01`); KeptError if unknown."""
    if code in G and G.nodes[code].get("type") == "code":
        return code
    key = normalize_code(code, kind)
    if key not in G:
        raise KeptError(f"code {code!r} is not in the graph")
    return key


def _code(G: nx.DiGraph, code: str) -> str:
    # networkx would read an unknown string as an iterable of nodes and answer [] silently.
    if code not in G or G.nodes[code].get("type") != "code":
        raise KeptError(f"code {code!r} is not in the graph")
    return code


def parent(G: nx.DiGraph, code: str) -> str | None:
    for _, p, d in G.out_edges(_code(G, code), data=True):
        if d["rel"] == IS_A:
            return p
    return None


def ancestors(G: nx.DiGraph, code: str) -> list[str]:
    """Nearest first: `250.01` -> [`250.0`, `250`, `249-259`, `240-279`]."""
    out = []
    p = parent(G, code)
    while p is not None:
        out.append(p)
        p = parent(G, p)
    return out


def children(G: nx.DiGraph, code: str) -> list[str]:
    return sorted(c for c, _, d in G.in_edges(_code(G, code), data=True) if d["rel"] == IS_A)


def siblings(G: nx.DiGraph, code: str) -> list[str]:
    """Codes with the same parent, `code` excluded; chapters have none."""
    p = parent(G, code)
    return [] if p is None else [c for c in children(G, p) if c != code]


def terms_of(G: nx.DiGraph, code: str, kinds: tuple[str, ...] | None = None) -> list[Term]:
    """The code's terms, titles first, then synonyms, then abbreviations (each alphabetical)."""
    wanted = set(kinds or TERM_KINDS)
    found = [
        Term(G.nodes[t]["text"], G.nodes[t]["norm"], d["kind"], d["source"])
        for _, t, d in G.out_edges(_code(G, code), data=True)
        if d["rel"] == HAS_TERM and d["kind"] in wanted
    ]
    order = {k: i for i, k in enumerate(TERM_KINDS)}
    return sorted(found, key=lambda t: (order[t.kind], t.norm))


def codes_of_term(G: nx.DiGraph, text: str) -> list[str]:
    """Codes that have a term equal to `text` after normalisation."""
    tid = term_id(normalize_term(text))
    if tid not in G:
        return []
    return sorted(c for c, _, d in G.in_edges(tid, data=True) if d["rel"] == HAS_TERM)


def search(G: nx.DiGraph, text: str, limit: int = 20) -> list[tuple[str, str, str]]:
    """(code, term text, kind) for terms equal to `text`, else terms containing all its words."""
    norm = normalize_term(text)
    if not norm:
        return []
    exact = [term_id(norm)] if term_id(norm) in G else []
    hits = exact or [
        n for n, d in G.nodes(data=True)
        if d.get("type") == "term" and all(w in d["norm"].split() for w in norm.split())
    ]
    out = []
    for tid in sorted(hits, key=lambda t: (len(t), t)):
        for c, _, d in G.in_edges(tid, data=True):
            out.append((c, G.nodes[tid]["text"], d["kind"]))
            if len(out) >= limit:
                return out
    return out


def codes_at(G: nx.DiGraph, depth: int, kind: str | None = None) -> list[str]:
    return sorted(
        n for n, d in G.nodes(data=True)
        if d.get("type") == "code" and d["depth"] == depth and (kind is None or d["kind"] == kind)
    )


def stats(G: nx.DiGraph) -> dict[str, int]:
    out: dict[str, int] = {"nodes": G.number_of_nodes(), "edges": G.number_of_edges()}
    billable: dict[str, int] = {}  # leaf codes (the bundled CMS v32: 14,567 dx, 3,882 proc)
    for _, d in G.nodes(data=True):
        key = f"{d['kind']}_{d['level']}" if d["type"] == "code" else "terms"
        out[key] = out.get(key, 0) + 1
        if d["type"] == "code" and d.get("leaf"):
            billable[f"{d['kind']}_billable"] = billable.get(f"{d['kind']}_billable", 0) + 1
    out.update(sorted(billable.items()))
    for _, _, d in G.edges(data=True):
        key = "is_a" if d["rel"] == IS_A else f"has_term_{d['kind']}"
        out[key] = out.get(key, 0) + 1
    return out
