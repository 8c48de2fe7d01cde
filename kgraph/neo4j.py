"""The graph in Neo4j: files for `neo4j-admin database import`, and a push through the official driver.

The push runs `cypher/schema.cypher` first (constraints make MERGE an index lookup and keep a
second push from duplicating anything), then the `cypher/load_*.cypher` batches with the rows as
parameters: no Cypher is ever built from data.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

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


def push_graph(G: nx.DiGraph, config: Neo4jConfig, progress: bool = True) -> dict[str, int]:
    """Create constraints, then MERGE every node and edge in batches; safe to run twice."""
    from neo4j import GraphDatabase
    from neo4j.exceptions import AuthError, ServiceUnavailable

    t = graph_tables(G)
    codes = t["codes"]
    steps: list[tuple[str, list[dict]]] = [
        ("load_codes.cypher", _records(codes.drop(columns=["parent"]))),
        ("load_terms.cypher", _records(t["terms"])),
        ("load_is_a.cypher", _records(codes.loc[codes["parent"] != "", ["code", "parent"]])),
        ("load_has_term.cypher", _records(t["has_term"])),
    ]
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
                        session.execute_write(lambda tx, b=batch: tx.run(query, rows=b).consume())
                        bar.update(len(batch))
                    bar.close()
                return count_graph(session)
    except ServiceUnavailable as exc:
        raise KeptError(f"cannot reach Neo4j at {config.uri}: {exc}") from exc
    except AuthError as exc:
        raise KeptError(f"Neo4j at {config.uri} refused user {config.user!r}: {exc}") from exc


def count_graph(session) -> dict[str, int]:
    counts = {r["label"]: r["n"] for r in session.run(cypher_files.named_queries()["counts"])}
    for rel in ("IS_A", "HAS_TERM"):
        # Relationship types cannot be parameters; these two are constants of this module.
        counts[rel] = session.run(f"MATCH ()-[r:{rel}]->() RETURN count(r) AS n").single()["n"]
    return counts


def run_query(session, name: str, **params) -> list[dict]:
    """Run one named query of `cypher/queries.cypher` and return its rows as dicts."""
    return [dict(r) for r in session.run(cypher_files.named_queries()[name], **params)]
