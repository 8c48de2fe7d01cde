"""kgraph.rdf: the graph as SKOS Turtle, read back with rdflib."""

import rdflib
from rdflib.namespace import SKOS

import kgraph
from kgraph import query
from kgraph.rdf import ICD9, KEPT, PROC, export_rdf
from tests.tiny import FIXTURES

UMLS = FIXTURES / "umls"


def test_rdf_round_trip_and_skos_shape(tmp_path):
    G = kgraph.build_graph(UMLS / "MRCONSO.RRF", UMLS / "LRABR", progress=False)
    # Two chapters keep the test fast; the full export is the same code on more nodes.
    keep = {"240-279", "35-39"}
    codes = [n for n, d in G.nodes(data=True) if d["type"] == "code"
             and ({n} | set(query.ancestors(G, n))) & keep]
    terms = {t for c in codes for t in G.successors(c) if G.nodes[t]["type"] == "term"}
    sub = G.subgraph(set(codes) | terms)
    n = export_rdf(sub, tmp_path / "g.ttl")
    back = rdflib.Graph().parse(tmp_path / "g.ttl", format="turtle")
    assert len(back) == n > 1000
    assert (ICD9["250.01"], SKOS.broader, ICD9["250.0"]) in back
    assert (PROC["36.15"], SKOS.broader, PROC["36.1"]) in back
    assert (ICD9["250.00"], KEPT.abbreviation, rdflib.Literal("DM2", lang="en")) in back
    assert (ICD9["250.00"], SKOS.altLabel, rdflib.Literal("Type 2 diabetes mellitus", lang="en")) in back
    labels = list(back.objects(ICD9["250.01"], SKOS.prefLabel))
    assert [str(x) for x in labels] == [G.nodes["250.01"]["description"]]
