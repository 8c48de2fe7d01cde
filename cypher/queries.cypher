// The questions `kept graph show` / `search` answer, for Neo4j users. Each query is named by a
// `// name:` line and takes parameters only ($code, $norm). kgraph.neo4j reads them by name.

// name: parent
MATCH (:Code {code: $code})-[:IS_A]->(p:Code)
RETURN p.code AS code;

// name: ancestors
MATCH path = (:Code {code: $code})-[:IS_A*1..]->(a:Code)
RETURN a.code AS code
ORDER BY length(path);

// name: children
MATCH (c:Code)-[:IS_A]->(:Code {code: $code})
RETURN c.code AS code
ORDER BY code;

// name: siblings
MATCH (me:Code {code: $code})-[:IS_A]->(p:Code)<-[:IS_A]-(s:Code)
WHERE s.code <> me.code
RETURN s.code AS code
ORDER BY code;

// name: terms
MATCH (:Code {code: $code})-[r:HAS_TERM]->(t:Term)
RETURN t.text AS text, t.norm AS norm, r.kind AS kind, r.source AS source
ORDER BY CASE r.kind WHEN 'title' THEN 0 WHEN 'synonym' THEN 1 ELSE 2 END, norm;

// name: codes_of_term
MATCH (c:Code)-[:HAS_TERM]->(:Term {norm: $norm})
RETURN c.code AS code
ORDER BY code;

// name: counts
MATCH (n)
RETURN labels(n)[0] AS label, count(*) AS n
ORDER BY label;
