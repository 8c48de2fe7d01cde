"""Save a graph to a directory of Parquet tables and load it back (the whole ICD-9 graph in < 1 s).

Layout: `codes.parquet` (one row per code node, with its parent), `terms.parquet`,
`has_term.parquet` (code, term norm, kind, source) and `meta.json`. The directory is written
beside the target and renamed into place, so a crash never leaves half a graph.

Which graph a command uses is decided here, once, for every command: its `--graph` flag, else
`$KEPT_GRAPH`, else the bundled titles-only ICD-9-CM graph (`chosen_graph`, `open_graph`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import networkx as nx
import pandas as pd

from kept import __version__
from kept.errors import InputFileError
from kept.io import atomic_dir
from kgraph.graph import HAS_TERM, IS_A, term_id

__all__ = ["save_graph", "load_graph", "graph_tables", "chosen_graph", "graph_label", "graph_source",
           "open_graph", "GRAPH_ENV"]

GRAPH_ENV = "KEPT_GRAPH"
CODE_COLUMNS = ["code", "kind", "level", "depth", "leaf", "description", "short_title",
                "description_source", "parent"]
FORMAT_VERSION = 1


def graph_tables(G: nx.DiGraph) -> dict[str, pd.DataFrame]:
    """The graph as three tables (also what the Neo4j and CSV exports write)."""
    parents = {u: v for u, v, d in G.edges(data=True) if d["rel"] == IS_A}
    codes = [
        {"code": n, **{c: d[c] for c in CODE_COLUMNS[1:-1]}, "parent": parents.get(n, "")}
        for n, d in G.nodes(data=True) if d["type"] == "code"
    ]
    terms = [{"norm": d["norm"], "text": d["text"]} for _, d in G.nodes(data=True) if d["type"] == "term"]
    has_term = [
        {"code": u, "term": G.nodes[v]["norm"], "kind": d["kind"], "source": d["source"]}
        for u, v, d in G.edges(data=True) if d["rel"] == HAS_TERM
    ]
    return {
        "codes": pd.DataFrame(codes, columns=CODE_COLUMNS),
        "terms": pd.DataFrame(terms, columns=["norm", "text"]),
        "has_term": pd.DataFrame(has_term, columns=["code", "term", "kind", "source"]),
    }


def save_graph(G: nx.DiGraph, directory: str | Path, force: bool = False) -> Path:
    """Write the graph's tables and meta.json; replaces only a folder kept wrote unless `force`."""
    directory = Path(directory)
    tables = graph_tables(G)
    with atomic_dir(directory, force=force) as tmp:
        for name, df in tables.items():
            df.to_parquet(tmp / f"{name}.parquet", index=False)
        meta = {
            "format_version": FORMAT_VERSION, "kept_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "counts": {k: len(v) for k, v in tables.items()},
            "graph": {k: v for k, v in G.graph.items()},
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return directory


def _table(directory: Path, name: str, columns: list[str]) -> pd.DataFrame:
    """One Parquet table of a graph folder; a missing, cut-off or foreign file is one clear error."""
    path = directory / f"{name}.parquet"
    if not path.is_file():
        raise InputFileError(path, "file not found (a kept graph folder has codes, terms and has_term "
                                   "tables); rebuild it with `kept graph build`")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a damaged file
        raise InputFileError(path, f"not a readable Parquet table ({type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0] if str(exc) else 'damaged'}); "
                                   "rebuild the graph") from exc
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputFileError(path, f"missing columns {missing}; rebuild the graph")
    return df


def load_graph(directory: str | Path) -> nx.DiGraph:
    directory = Path(directory)
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        raise InputFileError(directory, "not a kept graph directory (no meta.json); "
                                        "build one with `kept graph build --out DIR`")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise InputFileError(meta_path, f"not UTF-8 JSON ({exc.reason}); rebuild the graph") from exc
    except json.JSONDecodeError as exc:
        raise InputFileError(meta_path, f"broken JSON: {exc.msg} (column {exc.colno}); rebuild the graph",
                             line=exc.lineno) from exc
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        meta = meta if isinstance(meta, dict) else {}
        raise InputFileError(meta_path, f"graph format {meta.get('format_version')} is not "
                                        f"{FORMAT_VERSION}; rebuild it with this version of kept")
    codes = _table(directory, "codes", CODE_COLUMNS)
    terms = _table(directory, "terms", ["norm", "text"])
    has_term = _table(directory, "has_term", ["code", "term", "kind", "source"])

    G = nx.DiGraph(**meta.get("graph", {}))
    attrs = codes.drop(columns=["parent"]).to_dict("records")
    G.add_nodes_from((a.pop("code"), {"type": "code", **a}) for a in attrs)
    G.add_nodes_from((term_id(n), {"type": "term", "norm": n, "text": t})
                     for n, t in zip(terms["norm"], terms["text"]))
    isa = codes[codes["parent"] != ""]
    G.add_edges_from((c, p, {"rel": IS_A}) for c, p in zip(isa["code"], isa["parent"]))
    G.add_edges_from(
        (c, term_id(t), {"rel": HAS_TERM, "kind": k, "source": s})
        for c, t, k, s in zip(has_term["code"], has_term["term"], has_term["kind"], has_term["source"])
    )
    return G


def chosen_graph(flag: str | Path | None = None) -> str | None:
    """The graph directory a command uses: `flag` (its --graph), else $KEPT_GRAPH, else None (the
    bundled graph). A named directory must hold a kept graph, so a typo fails the same way everywhere."""
    path = str(flag) if flag else (os.environ.get(GRAPH_ENV) or None)
    if path is not None and not (Path(path) / "meta.json").is_file():
        source = graph_source(flag)
        what = "does not exist" if not Path(path).exists() else "is not a kept graph directory (no meta.json)"
        raise InputFileError(path, f"the graph named by {source} {what}; "
                                   "build one with `kept graph build --out DIR`")
    return path


def graph_label(path: str | None, source: str = "") -> str:
    """How a command names the graph it uses, in one line; `source` says who chose it."""
    if path is None:
        return f"bundled ICD-9-CM titles only (no --graph, no ${GRAPH_ENV}; no UMLS synonyms or abbreviations)"
    return f"{path}" + (f" (from {source})" if source else "")


def graph_source(flag: str | Path | None) -> str:
    return "--graph" if flag else f"${GRAPH_ENV}"


def open_graph(flag: str | Path | None = None, announce: bool = True) -> tuple[nx.DiGraph, str | None]:
    """(graph, its directory or None for the bundled one), chosen by `chosen_graph`; with `announce`,
    says on stderr which graph it is."""
    from kgraph.graph import build_graph

    path = chosen_graph(flag)
    if announce:
        print(f"graph: {graph_label(path, graph_source(flag))}", file=sys.stderr)
    return (load_graph(path) if path else build_graph(progress=False)), path
