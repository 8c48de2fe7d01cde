"""Tests of kgraph/: building the graph, its queries, store, Neo4j and RDF exports."""
