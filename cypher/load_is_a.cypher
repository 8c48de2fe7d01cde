// One batch of hierarchy edges, child -> parent. $rows: [{code, parent}]
UNWIND $rows AS row
MATCH (c:Code {code: row.code})
MATCH (p:Code {code: row.parent})
MERGE (c)-[:IS_A]->(p)
