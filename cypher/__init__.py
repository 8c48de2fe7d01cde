"""Cypher files for Neo4j (schema, batched loads, named queries); a package only so they ship as data."""
