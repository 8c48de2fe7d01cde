// Constraints and indexes for the kept graph (Neo4j 5). Run before any load; each is idempotent.
// Statements are separated by semicolons; `kgraph.neo4j` runs them one by one.
CREATE CONSTRAINT code_id IF NOT EXISTS FOR (c:Code) REQUIRE c.code IS UNIQUE;
CREATE CONSTRAINT term_norm IF NOT EXISTS FOR (t:Term) REQUIRE t.norm IS UNIQUE;
CREATE INDEX code_depth IF NOT EXISTS FOR (c:Code) ON (c.depth);
