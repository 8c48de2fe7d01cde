"""The Neo4j path against a real Bolt server (ArcadeDB's Bolt plugin, in-process), never a mock."""

import os
import socket
from pathlib import Path

import pytest

import kgraph
from kgraph import query
from kgraph.neo4j import Neo4jConfig, count_graph, push_graph, run_query

FIXTURES = Path(__file__).parent / "fixtures" / "umls"
PASSWORD = "kept-test-password"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def bolt_uri(tmp_path_factory):
    arcadedb = pytest.importorskip("arcadedb_embedded", reason="ArcadeDB (test extra) not installed")
    root = tmp_path_factory.mktemp("arcadedb")
    cwd = os.getcwd()
    os.chdir(root)  # ArcadeDB writes ./log relative to the working directory
    port = _free_port()
    try:
        server = arcadedb.create_server(str(root / "server"), root_password=PASSWORD, config={
            "server_plugins": "Bolt:com.arcadedb.bolt.BoltProtocolPlugin",
            "bolt_port": port, "http_port": _free_port(), "host": "127.0.0.1",
        })
        server.start()
        server.create_database("kept")
    finally:
        os.chdir(cwd)
    yield f"bolt://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="module")
def small_graph():
    """The fixture graph cut to one chapter of each kind: enough for every query, fast to push."""
    G = kgraph.build_graph(FIXTURES / "MRCONSO.RRF", FIXTURES / "LRABR", progress=False)
    keep = {"240-279", "390-459", "35-39"}
    codes = [n for n, d in G.nodes(data=True) if d["type"] == "code"
             and ({n} | set(query.ancestors(G, n))) & keep]
    terms = {t for c in codes for t in G.successors(c) if G.nodes[t]["type"] == "term"}
    return G.subgraph(set(codes) | terms).copy()


def test_push_is_idempotent_and_queries_match_networkx(bolt_uri, small_graph):
    from neo4j import GraphDatabase

    G = small_graph
    cfg = Neo4jConfig(uri=bolt_uri, user="root", password=PASSWORD, database="kept", batch_size=500)
    first = push_graph(G, cfg, progress=False)
    n_codes = sum(1 for _, d in G.nodes(data=True) if d["type"] == "code")
    n_terms = G.number_of_nodes() - n_codes
    assert first["Code"] == n_codes and first["Term"] == n_terms
    assert first["IS_A"] == sum(1 for *_, d in G.edges(data=True) if d["rel"] == "IS_A")
    assert first["HAS_TERM"] == sum(1 for *_, d in G.edges(data=True) if d["rel"] == "HAS_TERM")
    assert push_graph(G, cfg, progress=False) == first  # a second push changes nothing

    with GraphDatabase.driver(bolt_uri, auth=("root", PASSWORD)) as driver:
        with driver.session(database="kept") as s:
            assert count_graph(s) == first
            for code in ("250.01", "250.00", "36.15", "401.9", "249-259", "240-279"):
                assert [r["code"] for r in run_query(s, "ancestors", code=code)] == query.ancestors(G, code)
                assert [r["code"] for r in run_query(s, "parent", code=code)] == [p for p in [query.parent(G, code)] if p]
                assert [r["code"] for r in run_query(s, "children", code=code)] == query.children(G, code)
                assert [r["code"] for r in run_query(s, "siblings", code=code)] == query.siblings(G, code)
                got = [(r["text"], r["kind"]) for r in run_query(s, "terms", code=code)]
                assert got == [(t.text, t.kind) for t in query.terms_of(G, code)]
            assert [r["code"] for r in run_query(s, "codes_of_term", norm="dm2")] == ["250.00"]


def test_unreachable_server_is_a_clear_error():
    from kept.errors import KeptError

    with pytest.raises(KeptError, match="cannot reach Neo4j"):
        push_graph(kgraph.build_graph(progress=False).subgraph(["250"]).copy(),
                   Neo4jConfig(uri=f"bolt://127.0.0.1:{_free_port()}", password="x"), progress=False)
