// One batch of code -> term edges. $rows: [{code, term, kind, source}]
UNWIND $rows AS row
MATCH (c:Code {code: row.code})
MATCH (t:Term {norm: row.term})
MERGE (c)-[r:HAS_TERM]->(t)
SET r.kind = row.kind, r.source = row.source
