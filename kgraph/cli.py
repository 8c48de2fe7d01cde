"""`kept graph ...`: build, inspect, search and export the knowledge graph."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import networkx as nx

from kept.argtypes import positive_int
from kept.cli import force_option, graph_option
from kgraph import query


def _graph(args: argparse.Namespace) -> nx.DiGraph:
    """--graph, else $KEPT_GRAPH, else the bundled ICD-9-CM graph (built in memory in < 1 s)."""
    from kgraph.store import open_graph

    return open_graph(args.graph)[0]


def cmd_build(args: argparse.Namespace) -> int:
    from kept.io import check_out_dir
    from kgraph.graph import build_graph
    from kgraph.store import save_graph

    check_out_dir(args.out, args.force)  # before the build, which takes minutes on a full UMLS
    t0 = time.perf_counter()
    G = build_graph(args.mrconso, args.lrabr, keep_suppressed=args.keep_suppressed,
                    allow_empty=args.allow_empty)
    save_graph(G, args.out, force=args.force)
    s = query.stats(G)
    print(f"built {s['nodes']:,} nodes, {s['edges']:,} edges in {time.perf_counter() - t0:.1f} s -> {args.out}")
    for key in ("umls", "lrabr"):
        if key in G.graph:
            print(f"  {key}: " + ", ".join(f"{k}={v:,}" for k, v in G.graph[key].items()))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    G = _graph(args)
    code = query.resolve(G, args.code, args.kind)
    d = G.nodes[code]
    anc = query.ancestors(G, code)
    info = {
        "code": code, "kind": d["kind"], "level": d["level"], "billable": bool(d["leaf"]),
        "description": d["description"] or "(no title in the source data)",
        "ancestors": [(a, G.nodes[a]["description"] or "(no title in the source data)") for a in anc],
        "children": query.children(G, code), "siblings": query.siblings(G, code),
        "terms": {k: [t.text for t in query.terms_of(G, code, (k,))] for k in ("title", "synonym", "abbreviation")},
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{code}  [{d['kind']}, {d['level']}{', billable' if d['leaf'] else ''}]  {info['description']}")
    print("ancestors: " + (" → ".join([code, *anc]) if anc else "(none: a chapter)"))
    for a, desc in info["ancestors"]:
        print(f"  {a:<10} {desc}")
    for label in ("children", "siblings"):
        items = info[label]
        shown = ", ".join(items[:20]) + (f", ... ({len(items)} in all)" if len(items) > 20 else "")
        print(f"{label}: {shown or '(none)'}")
    for kind, texts in info["terms"].items():
        if texts:
            print(f"{kind}s:")
            for t in texts:
                print(f"  - {t}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    G = _graph(args)
    if args.semantic:
        return _semantic_search(G, args)
    hits = query.search(G, args.text, limit=args.limit)
    if not hits:
        print(f"no term matches {args.text!r}")
        return 1
    for code, text, kind in hits:
        print(f"{code:<10} {kind:<12} {text}    ({G.nodes[code]['description']})")
    return 0


def _semantic_search(G: nx.DiGraph, args: argparse.Namespace) -> int:
    from kept.errors import KeptError

    if not args.index:
        raise KeptError("--semantic needs --index IDX (a folder from `kept coder index`)")
    # Imported here, not at the top: the term index and its encoder belong to the coder stage, and
    # kgraph must stay importable without it.
    from coder.retrieval.term_search import semantic_search

    hits = semantic_search(args.index, args.text, limit=args.limit, model=args.model)
    if args.json:
        print(json.dumps([h.__dict__ for h in hits], indent=1))
        return 0 if hits else 1
    for h in hits:
        desc = G.nodes[h.code].get("description", "") if h.code in G else ""
        print(f"{h.code:<10} {h.score:.3f}  {h.kind:<12} {h.term}    ({desc})")
    return 0 if hits else 1


def cmd_stats(args: argparse.Namespace) -> int:
    G = _graph(args)
    s = query.stats(G)
    print(json.dumps(s, indent=2) if args.json else "\n".join(f"{k:<24} {v:>10,}" for k, v in s.items()))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    G = _graph(args)
    if args.format == "rdf":
        from kgraph.rdf import export_rdf

        out = Path(args.out)
        n = export_rdf(G, out)
        print(f"wrote {n:,} triples (SKOS Turtle) to {out}")
    else:
        from kgraph.neo4j import export_neo4j_csv

        counts = export_neo4j_csv(G, args.out)
        print(f"wrote neo4j-admin import files to {args.out}: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from kgraph.neo4j import Neo4jConfig, check_uri, push_graph

    check_uri(args.uri)  # before loading the graph
    G = _graph(args)
    password = args.password if args.password is not None else os.environ.get("NEO4J_PASSWORD", "")
    cfg = Neo4jConfig(uri=args.uri, user=args.user, password=password, database=args.database,
                      batch_size=args.batch_size)
    result = push_graph(G, cfg, sync=args.sync)

    def fmt(counts: dict) -> str:
        return ", ".join(f"{k} {v:,}" for k, v in counts.items())

    print(f"pushed to {args.uri}{' (sync)' if args.sync else ''}")
    print(f"  graph:    {fmt(result['graph'])}")
    print(f"  database: {fmt(result['database'])}")
    if args.sync:
        print(f"  removed:  {fmt(result['removed'])}")
    elif result["database"] != result["graph"]:
        print("  the database holds items the graph does not (an earlier push?); "
              "--sync removes them")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("graph", help="build, query and export the ICD-9-CM / UMLS graph")
    sub = p.add_subparsers(dest="graph_command", metavar="ACTION", required=True)

    def with_graph(sp):
        graph_option(sp)
        return sp

    b = sub.add_parser("build", help="build the graph and save it to a directory")
    b.add_argument("--mrconso", help="UMLS MRCONSO.RRF (.gz accepted): synonyms")
    b.add_argument("--lrabr", help="SPECIALIST Lexicon LRABR: abbreviations")
    b.add_argument("--keep-suppressed", action="store_true", help="keep SUPPRESS=O/E/Y rows")
    b.add_argument("--out", required=True, help="output directory (replaced atomically)")
    force_option(b)
    b.add_argument("--allow-empty", action="store_true",
                   help="build even when MRCONSO or LRABR adds nothing (empty, no English rows)")
    b.set_defaults(func=cmd_build)

    s = with_graph(sub.add_parser("show", help="a code's description, ancestors, children, siblings, terms"))
    s.add_argument("code", help="dotted or undotted code: 250.01, 25001, 36.15")
    s.add_argument("--kind", choices=["dx", "proc"], help="needed for undotted codes read both ways (3615)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_show)

    q = with_graph(sub.add_parser("search", help="codes whose terms match a text"))
    q.add_argument("text")
    q.add_argument("--limit", type=positive_int, default=20)
    q.add_argument("--semantic", action="store_true",
                   help="nearest terms by meaning from a term index (--index) instead of word matching")
    q.add_argument("--index", help="folder from `kept coder index` (with --semantic)")
    q.add_argument("--model", help="query encoder (default: the one the index was built with)")
    q.add_argument("--json", action="store_true", help="with --semantic: code, term, kind, score as JSON")
    q.set_defaults(func=cmd_search)

    st = with_graph(sub.add_parser("stats", help="node and edge counts"))
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_stats)

    e = with_graph(sub.add_parser("export", help="RDF (SKOS Turtle) or neo4j-admin import CSVs"))
    e.add_argument("--format", choices=["rdf", "neo4j-csv"], required=True)
    e.add_argument("--out", required=True, help="a .ttl file for rdf, a directory for neo4j-csv")
    e.set_defaults(func=cmd_export)

    pu = with_graph(sub.add_parser("push", help="load the graph into Neo4j through the official driver"))
    pu.add_argument("--uri", required=True, help="bolt://host:7687 or neo4j://...")
    pu.add_argument("--user", default="neo4j")
    pu.add_argument("--password", help="default: $NEO4J_PASSWORD")
    pu.add_argument("--database", help="default: the server's default database")
    pu.add_argument("--batch-size", type=positive_int, default=5000)
    pu.add_argument("--sync", action="store_true",
                    help="also delete codes, terms and edges the graph no longer has (default: add and update only)")
    pu.set_defaults(func=cmd_push)
