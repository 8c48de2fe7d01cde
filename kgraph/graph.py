"""Build the knowledge graph: ICD-9-CM codes with IS_A edges, and their terms with HAS_TERM edges.

Node keys: a code node is keyed by its dotted code (`250.01`); a term node by `t:` plus its
normalised text, so one term shared by several codes is one node (that is what makes
"codes of a term" a graph query). Edge attributes: `rel` (`IS_A` child -> parent, `HAS_TERM`
code -> term), and for HAS_TERM `kind` (title / synonym / abbreviation) and `source`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import networkx as nx

from kept.errors import KeptError
from kgraph.icd9 import load_icd9_nodes
from kgraph.lexicon import iter_lrabr
from kgraph.text import normalize_term
from kgraph.umls import load_icd9_synonyms

log = logging.getLogger(__name__)

IS_A, HAS_TERM = "IS_A", "HAS_TERM"
TERM_KINDS = ("title", "synonym", "abbreviation")  # in order of precedence
_RANK = {k: i for i, k in enumerate(TERM_KINDS)}


def term_id(norm: str) -> str:
    return f"t:{norm}"


def add_term(G: nx.DiGraph, code: str, text: str, kind: str, source: str) -> bool:
    """Link `code` to the term `text`; returns False when the text normalises to nothing.

    One edge per (code, term): when a term arrives twice (a UMLS string equal to the title),
    the stronger kind wins and the sources are merged, so nothing is counted twice.
    """
    norm = normalize_term(text)
    if not norm:
        return False
    tid = term_id(norm)
    if tid not in G:
        G.add_node(tid, type="term", text=text, norm=norm)
    edge = G.get_edge_data(code, tid)
    if edge is None:
        G.add_edge(code, tid, rel=HAS_TERM, kind=kind, source=source)
    else:
        if _RANK[kind] < _RANK[edge["kind"]]:
            edge["kind"] = kind
        if source not in edge["source"].split(";"):
            edge["source"] = f"{edge['source']};{source}"
    return True


def icd9_graph() -> nx.DiGraph:
    """The bundled ICD-9-CM hierarchy with its titles as terms (no licensed data needed)."""
    G = nx.DiGraph(name="kept ICD-9-CM graph")
    for n in load_icd9_nodes():
        G.add_node(n.code, type="code", kind=n.kind, level=n.level, depth=n.depth, leaf=n.leaf,
                   description=n.long_title, short_title=n.short_title,
                   description_source=n.title_source if n.long_title else "none")
        if n.parent:
            G.add_edge(n.code, n.parent, rel=IS_A)
    for n in load_icd9_nodes():
        if n.long_title:
            add_term(G, n.code, n.long_title, "title", f"{n.title_source}-long")
        if n.short_title and n.short_title != n.long_title:
            add_term(G, n.code, n.short_title, "title", f"{n.title_source}-short")
    return G


def add_umls_synonyms(G: nx.DiGraph, mrconso: str | Path, *, keep_suppressed: bool = False,
                      progress: bool = True) -> dict[str, int]:
    """Attach the English strings of each code's UMLS concepts; fill empty descriptions."""
    syn = load_icd9_synonyms(mrconso, keep_suppressed=keep_suppressed, progress=progress)
    stats = defaultdict(int, rows_read=syn.rows_read, rows_english=syn.rows_english,
                        rows_suppressed=syn.rows_suppressed)
    for code, strings in syn.strings.items():
        if code not in G or G.nodes[code].get("type") != "code":
            stats["icd9_codes_not_in_graph"] += 1
            continue
        stats["codes_with_synonyms"] += 1
        for s in strings:
            # UMLS's own ICD9CM strings are the code's titles; everything else is a synonym.
            kind = "title" if s.sab == "ICD9CM" else "synonym"
            stats[f"{kind}_edges"] += add_term(G, code, s.text, kind, f"{s.sab}/{s.tty}")
        node = G.nodes[code]
        if not node["description"]:
            name = syn.preferred_name(code)
            if name:
                node["description"], node["description_source"] = name, "umls"
    if stats["icd9_codes_not_in_graph"]:
        log.warning("%d ICD9CM codes in %s are not in the bundled ICD-9-CM (kept out)",
                    stats["icd9_codes_not_in_graph"], mrconso)
    return dict(stats)


def add_abbreviations(G: nx.DiGraph, lrabr: str | Path) -> dict[str, int]:
    """Attach each LRABR abbreviation to every code that has a term equal to its expansion."""
    codes_by_term: dict[str, list[str]] = defaultdict(list)
    for u, v, d in G.edges(data=True):
        if d["rel"] == HAS_TERM and d["kind"] != "abbreviation":
            codes_by_term[G.nodes[v]["norm"]].append(u)
    stats = defaultdict(int)
    for entry in iter_lrabr(lrabr):
        stats["lrabr_rows"] += 1
        codes = codes_by_term.get(normalize_term(entry.expansion))
        if not codes:
            continue
        stats["matched_rows"] += 1
        for code in codes:
            stats["abbreviation_edges"] += add_term(G, code, entry.abbreviation, "abbreviation",
                                                    f"LRABR/{entry.type}")
    return dict(stats)


def build_graph(mrconso: str | Path | None = None, lrabr: str | Path | None = None, *,
                keep_suppressed: bool = False, progress: bool = True,
                allow_empty: bool = False) -> nx.DiGraph:
    """The full graph: bundled ICD-9-CM, plus UMLS synonyms and LRABR abbreviations when given.

    Abbreviations are matched against titles and synonyms, so MRCONSO is read first. A source
    that adds nothing (empty, no English rows, nothing matching) is an error unless `allow_empty`:
    saving such a graph over a good one would silently lose every synonym.
    """
    G = icd9_graph()
    G.graph["sources"] = ["icd9cm-cms32 (bundled)"]
    if mrconso is not None:
        G.graph["umls"] = add_umls_synonyms(G, mrconso, keep_suppressed=keep_suppressed,
                                            progress=progress)
        G.graph["sources"].append(f"MRCONSO: {Path(mrconso).name}")
    if lrabr is not None:
        G.graph["lrabr"] = add_abbreviations(G, lrabr)
        G.graph["sources"].append(f"LRABR: {Path(lrabr).name}")
    empty = []
    if mrconso is not None and not G.graph["umls"].get("codes_with_synonyms"):
        u = G.graph["umls"]
        empty.append(f"MRCONSO {mrconso}: {u['rows_read']} rows read, {u['rows_english']} English and "
                     f"unsuppressed, 0 ICD9CM codes with synonyms")
    if lrabr is not None and not G.graph["lrabr"].get("abbreviation_edges"):
        a = G.graph["lrabr"]
        empty.append(f"LRABR {lrabr}: {a.get('lrabr_rows', 0)} rows read, {a.get('matched_rows', 0)} matching a term")
    if empty and not allow_empty:
        raise KeptError("; ".join(empty) + "; the graph would get nothing from it "
                        "(pass --allow-empty to build it anyway)")
    return G
