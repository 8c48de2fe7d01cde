// `kept graph push --sync`: what the database holds, and batches that remove what the graph no
// longer has. Each query is named by a `// name:` line and takes parameters only ($rows).

// name: db_codes
MATCH (c:Code)
RETURN c.code AS code;

// name: db_terms
MATCH (t:Term)
RETURN t.norm AS norm;

// name: db_is_a
MATCH (c:Code)-[:IS_A]->(p:Code)
RETURN c.code AS code, p.code AS parent;

// name: db_has_term
MATCH (c:Code)-[:HAS_TERM]->(t:Term)
RETURN c.code AS code, t.norm AS term;

// name: delete_is_a
UNWIND $rows AS row
MATCH (:Code {code: row.code})-[r:IS_A]->(:Code {code: row.parent})
DELETE r;

// name: delete_has_term
UNWIND $rows AS row
MATCH (:Code {code: row.code})-[r:HAS_TERM]->(:Term {norm: row.term})
DELETE r;

// name: delete_codes
UNWIND $rows AS code
MATCH (c:Code {code: code})
DETACH DELETE c;

// name: delete_terms
UNWIND $rows AS norm
MATCH (t:Term {norm: norm})
DETACH DELETE t;
