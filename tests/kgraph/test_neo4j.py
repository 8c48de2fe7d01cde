"""The Neo4j path against a real Bolt server (ArcadeDB's Bolt plugin, in-process), never a mock."""

import os
import socket

import pytest

import kgraph
from kgraph import query
from kgraph.neo4j import Neo4jConfig, count_graph, push_graph, run_query
from tests.tiny import FIXTURES

UMLS = FIXTURES / "umls"
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
    G = kgraph.build_graph(UMLS / "MRCONSO.RRF", UMLS / "LRABR", progress=False)
    keep = {"240-279", "390-459", "35-39"}
    codes = [n for n, d in G.nodes(data=True) if d["type"] == "code"
             and ({n} | set(query.ancestors(G, n))) & keep]
    terms = {t for c in codes for t in G.successors(c) if G.nodes[t]["type"] == "term"}
    return G.subgraph(set(codes) | terms).copy()


def test_push_is_idempotent_and_queries_match_networkx(bolt_uri, small_graph):
    from neo4j import GraphDatabase

    G = small_graph
    cfg = Neo4jConfig(uri=bolt_uri, user="root", password=PASSWORD, database="kept", batch_size=500)
    first = push_graph(G, cfg, progress=False, sync=True)["database"]
    n_codes = sum(1 for _, d in G.nodes(data=True) if d["type"] == "code")
    n_terms = G.number_of_nodes() - n_codes
    assert first["Code"] == n_codes and first["Term"] == n_terms
    assert first["IS_A"] == sum(1 for *_, d in G.edges(data=True) if d["rel"] == "IS_A")
    assert first["HAS_TERM"] == sum(1 for *_, d in G.edges(data=True) if d["rel"] == "HAS_TERM")
    again = push_graph(G, cfg, progress=False)
    assert again["database"] == first == again["graph"]  # a second push changes nothing

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


def test_sync_removes_what_the_graph_no_longer_has(bolt_uri, small_graph):
    G = small_graph
    cfg = Neo4jConfig(uri=bolt_uri, user="root", password=PASSWORD, database="kept", batch_size=7)
    push_graph(G, cfg, progress=False)
    smaller = G.copy()
    leaf = "250.01"
    gone_terms = [t for t in smaller.successors(leaf) if smaller.in_degree(t) == 1]
    smaller.remove_nodes_from([leaf, *gone_terms])
    plain = push_graph(smaller, cfg, progress=False)  # add-only: the database keeps the old items
    assert plain["graph"]["Code"] == plain["database"]["Code"] - 1
    synced = push_graph(smaller, cfg, progress=False, sync=True)
    assert synced["database"] == synced["graph"]
    assert synced["removed"]["Code"] == 1 and synced["removed"]["Term"] == len(gone_terms)
    assert synced["removed"]["IS_A"] == 1 and synced["removed"]["HAS_TERM"] == G.out_degree(leaf) - 1
    push_graph(G, cfg, progress=False, sync=True)  # back to the full small graph for other tests


def test_unknown_database_is_one_line(bolt_uri, small_graph):
    from kept.errors import KeptError

    cfg = Neo4jConfig(uri=bolt_uri, user="root", password=PASSWORD, database="no_such_db")
    with pytest.raises(KeptError, match="no_such_db") as exc:
        push_graph(small_graph.subgraph(["250"]).copy(), cfg, progress=False)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("uri, message", [
    ("http://localhost:7474", "must start with one of bolt://"),
    ("bolt//localhost", "must start with one of"),
    ("bolt://", "malformed Neo4j URI"),
    ("bolt://localhost:notaport", "malformed Neo4j URI"),
])
def test_bad_uri_is_one_line(uri, message, capsys):
    from kept.cli import main

    assert main(["graph", "push", "--uri", uri, "--password", "x"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
