"""Export the graph as SKOS in Turtle (rdflib).

Codes are `skos:Concept`s under the BioPortal ICD9CM namespace, so the URIs line up with other
ICD-9-CM RDF: `skos:broader` to the parent, `skos:prefLabel` the description, `skos:altLabel` every
other title and synonym, `kept:abbreviation` the LRABR abbreviations (SKOS has no property for
them, and folding them into altLabel would lose the distinction HSAP trains on).
"""

from __future__ import annotations

from pathlib import Path

import networkx as nx
from rdflib import Graph, Literal, Namespace, URIRef
from rdflib.namespace import RDF, SKOS, XSD

from kept.io import atomic_path
from kgraph.graph import HAS_TERM, IS_A

ICD9 = Namespace("http://purl.bioontology.org/ontology/ICD9CM/")
PROC = Namespace("http://purl.bioontology.org/ontology/ICD9CM/proc/")
KEPT = Namespace("https://github.com/kept-icd/kept/ns#")
SCHEME = URIRef("http://purl.bioontology.org/ontology/ICD9CM")


def code_uri(code: str, kind: str) -> URIRef:
    # Procedure chapters (`00-00`, `35-39`) would collide with nothing, but keeping procedures in a
    # sub-namespace keeps every procedure URI unambiguous when a user strips the dot.
    return PROC[code] if kind == "proc" else ICD9[code]


def to_rdf(G: nx.DiGraph) -> Graph:
    g = Graph()
    g.bind("skos", SKOS)
    g.bind("icd9", ICD9)
    g.bind("icd9proc", PROC)
    g.bind("kept", KEPT)
    g.add((SCHEME, RDF.type, SKOS.ConceptScheme))
    uri = {n: code_uri(n, d["kind"]) for n, d in G.nodes(data=True) if d["type"] == "code"}
    for n, u in uri.items():
        d = G.nodes[n]
        g.add((u, RDF.type, SKOS.Concept))
        g.add((u, SKOS.inScheme, SCHEME))
        g.add((u, SKOS.notation, Literal(n)))
        g.add((u, KEPT.kind, Literal(d["kind"])))
        g.add((u, KEPT.level, Literal(d["level"])))
        g.add((u, KEPT.depth, Literal(int(d["depth"]), datatype=XSD.integer)))
        g.add((u, KEPT.billable, Literal(bool(d["leaf"]))))
        if d["description"]:
            g.add((u, SKOS.prefLabel, Literal(d["description"], lang="en")))
    for a, b, d in G.edges(data=True):
        if d["rel"] == IS_A:
            g.add((uri[a], SKOS.broader, uri[b]))
        elif d["rel"] == HAS_TERM:
            text = G.nodes[b]["text"]
            if d["kind"] == "abbreviation":
                g.add((uri[a], KEPT.abbreviation, Literal(text, lang="en")))
            elif text != G.nodes[a]["description"]:
                g.add((uri[a], SKOS.altLabel, Literal(text, lang="en")))
    return g


def export_rdf(G: nx.DiGraph, path: str | Path, fmt: str = "turtle") -> int:
    """Write the graph as RDF; returns the number of triples."""
    g = to_rdf(G)
    with atomic_path(path) as tmp:
        g.serialize(destination=str(tmp), format=fmt, encoding="utf-8")
    return len(g)
