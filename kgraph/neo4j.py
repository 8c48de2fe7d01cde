"""The graph in Neo4j: files for `neo4j-admin database import`, and a push through the official driver.

The push runs `cypher/schema.cypher` first (constraints make MERGE an index lookup and keep a
second push from duplicating anything), then the `cypher/load_*.cypher` batches with the rows as
parameters: no Cypher is ever built from data. A plain push only adds and updates; `sync` then
removes what the graph no longer has (`cypher/sync.cypher`).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import networkx as nx
from tqdm import tqdm

from kept.errors import KeptError
from kept.io import atomic_write
from kgraph import cypher_files
from kgraph.store import graph_tables

log = logging.getLogger(__name__)


@dataclass
class Neo4jConfig:
    uri: str = "bolt://localhost:7687"
    user: str = "neo4j"
    password: str = ""
    database: str | None = None  # the server's default database
    batch_size: int = 5000


def export_neo4j_csv(G: nx.DiGraph, directory: str | Path) -> dict[str, int]:
    """Node and relationship files with neo4j-admin headers; returns rows written per file.

    Import with: neo4j-admin database import full --nodes=Code=codes.csv --nodes=Term=terms.csv
    --relationships=IS_A=is_a.csv --relationships=HAS_TERM=has_term.csv <database>
    """
    t = graph_tables(G)
    codes, terms, has_term = t["codes"], t["terms"], t["has_term"]
    out = Path(directory)
    files = {
        "codes.csv": (["code:ID(Code)", "kind", "level", "depth:int", "leaf:boolean", "description",
                       "short_title", "description_source"],
                      codes[["code", "kind", "level", "depth", "leaf", "description", "short_title",
                             "description_source"]].itertuples(index=False)),
        "terms.csv": (["norm:ID(Term)", "text"], terms[["norm", "text"]].itertuples(index=False)),
        "is_a.csv": ([":START_ID(Code)", ":END_ID(Code)"],
                     codes.loc[codes["parent"] != "", ["code", "parent"]].itertuples(index=False)),
        "has_term.csv": ([":START_ID(Code)", ":END_ID(Term)", "kind", "source"],
                         has_term[["code", "term", "kind", "source"]].itertuples(index=False)),
    }
    counts = {}
    for name, (header, rows) in files.items():
        with atomic_write(out / name) as fh:
            w = csv.writer(fh)
            w.writerow(header)
            n = 0
            for row in rows:
                w.writerow(["true" if v is True else "false" if v is False else v for v in row])
                n += 1
        counts[name] = n
    return counts


def _batches(rows: list[dict], size: int) -> Iterator[list[dict]]:
    for i in range(0, len(rows), size):
        yield rows[i:i + size]


def _records(df) -> list[dict]:
    # Plain Python values: the driver cannot pack numpy scalars.
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in df.to_dict("records")]


BOLT_SCHEMES = ("bolt", "bolt+s", "bolt+ssc", "neo4j", "neo4j+s", "neo4j+ssc")


def check_uri(uri: str) -> str:
    """Raise a one-line KeptError unless `uri` is a Bolt URI the driver can use (scheme://host[:port])."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise KeptError(f"malformed Neo4j URI {uri!r}: {exc}") from exc
    if parts.scheme not in BOLT_SCHEMES:
        hint = " (the browser's HTTP port is not the Bolt port, usually 7687)" if parts.scheme in ("http", "https") else ""
        raise KeptError(f"Neo4j URI {uri!r} must start with one of {', '.join(s + '://' for s in BOLT_SCHEMES)}{hint}")
    if not parts.hostname or (parts.path not in ("", "/")) or port == 0:
        raise KeptError(f"malformed Neo4j URI {uri!r}: expected scheme://host[:port], e.g. bolt://localhost:7687")
    return uri


def graph_counts(G: nx.DiGraph) -> dict[str, int]:
    """The same counts `count_graph` reads from a database, taken from the graph itself."""
    t = graph_tables(G)
    return {"Code": len(t["codes"]), "Term": len(t["terms"]),
            "IS_A": int((t["codes"]["parent"] != "").sum()), "HAS_TERM": len(t["has_term"])}


def push_graph(G: nx.DiGraph, config: Neo4jConfig, progress: bool = True, sync: bool = False
               ) -> dict[str, dict[str, int]]:
    """Create constraints, then MERGE every node and edge in batches; safe to run twice.

    With `sync`, nodes and edges the database has and the graph does not are then deleted (in
    batches, parameterised), so the database equals the graph. Returns {"graph": counts of the
    graph, "database": counts read back from the database, "removed": what sync deleted}.
    """
    from neo4j import GraphDatabase
    from neo4j.exceptions import AuthError, DriverError, Neo4jError, ServiceUnavailable

    check_uri(config.uri)
    t = graph_tables(G)
    codes = t["codes"]
    steps: list[tuple[str, list[dict]]] = [
        ("load_codes.cypher", _records(codes.drop(columns=["parent"]))),
        ("load_terms.cypher", _records(t["terms"])),
        ("load_is_a.cypher", _records(codes.loc[codes["parent"] != "", ["code", "parent"]])),
        ("load_has_term.cypher", _records(t["has_term"])),
    ]
    removed: dict[str, int] = {}
    try:
        with GraphDatabase.driver(config.uri, auth=(config.user, config.password)) as driver:
            driver.verify_connectivity()
            with driver.session(database=config.database) as session:
                for stmt in cypher_files.statements("schema.cypher"):
                    session.run(stmt).consume()
                for name, rows in steps:
                    query = cypher_files.statements(name)[0]
                    bar = tqdm(total=len(rows), desc=name.removesuffix(".cypher"), disable=not progress)
                    for batch in _batches(rows, config.batch_size):
                        session.execute_write(lambda tx, q=query, b=batch: tx.run(q, rows=b).consume())
                        bar.update(len(batch))
                    bar.close()
                if sync:
                    removed = _remove_stale(session, t, config.batch_size)
                db = count_graph(session)
    except ServiceUnavailable as exc:
        raise KeptError(f"cannot reach Neo4j at {config.uri}: {exc}") from exc
    except AuthError as exc:
        raise KeptError(f"Neo4j at {config.uri} refused user {config.user!r}: {exc}") from exc
    except Neo4jError as exc:
        code = exc.code or ""
        if "DatabaseNotFound" in code or (config.database and "database" in str(exc.message).lower()):
            raise KeptError(f"Neo4j at {config.uri} has no database {config.database!r}: "
                            f"{_one_line(exc.message)}") from exc
        raise KeptError(f"Neo4j at {config.uri}: {code or 'error'}: {_one_line(exc.message)}") from exc
    except (DriverError, ValueError) as exc:
        raise KeptError(f"Neo4j at {config.uri}: {_one_line(str(exc))}") from exc
    return {"graph": graph_counts(G), "database": db, "removed": removed}


def _one_line(text: str | None) -> str:
    return " ".join(str(text or "").split())


def _remove_stale(session, tables: dict, batch_size: int) -> dict[str, int]:
    """Delete the database's IS_A, HAS_TERM, Code and Term items the graph does not hold."""
    q = cypher_files.named_queries("sync.cypher")
    codes = tables["codes"]
    want_codes = set(codes["code"])
    want_terms = set(tables["terms"]["norm"])
    want_is_a = set(zip(codes["code"], codes["parent"]))
    want_has = set(zip(tables["has_term"]["code"], tables["has_term"]["term"]))
    stale = {
        "IS_A": [{"code": r["code"], "parent": r["parent"]} for r in session.run(q["db_is_a"])
                 if (r["code"], r["parent"]) not in want_is_a],
        "HAS_TERM": [{"code": r["code"], "term": r["term"]} for r in session.run(q["db_has_term"])
                     if (r["code"], r["term"]) not in want_has],
        "Code": [r["code"] for r in session.run(q["db_codes"]) if r["code"] not in want_codes],
        "Term": [r["norm"] for r in session.run(q["db_terms"]) if r["norm"] not in want_terms],
    }
    queries = {"IS_A": "delete_is_a", "HAS_TERM": "delete_has_term", "Code": "delete_codes",
               "Term": "delete_terms"}
    for what, rows in stale.items():
        for batch in _batches(rows, batch_size):
            session.execute_write(lambda tx, qq=q[queries[what]], b=batch: tx.run(qq, rows=b).consume())
    return {k: len(v) for k, v in stale.items()}


def count_graph(session) -> dict[str, int]:
    counts = {r["label"]: r["n"] for r in session.run(cypher_files.named_queries()["counts"])}
    for rel in ("IS_A", "HAS_TERM"):
        # Relationship types cannot be parameters; these two are constants of this module.
        counts[rel] = session.run(f"MATCH ()-[r:{rel}]->() RETURN count(r) AS n").single()["n"]
    return counts


def run_query(session, name: str, **params) -> list[dict]:
    """Run one named query of `cypher/queries.cypher` and return its rows as dicts."""
    return [dict(r) for r in session.run(cypher_files.named_queries()[name], **params)]
