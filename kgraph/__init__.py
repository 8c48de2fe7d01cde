"""kgraph: the ICD-9-CM / UMLS knowledge graph (NetworkX by default, Neo4j and RDF as exports)."""

from __future__ import annotations

__all__ = ["build_graph", "load_graph", "save_graph", "open_graph", "chosen_graph"]


def __getattr__(name: str):
    # Lazy so that `import kgraph.codes` stays light (no networkx / pandas import).
    if name == "build_graph":
        from kgraph.graph import build_graph

        return build_graph
    if name in ("load_graph", "save_graph", "open_graph", "chosen_graph"):
        from kgraph import store

        return getattr(store, name)
    raise AttributeError(name)
