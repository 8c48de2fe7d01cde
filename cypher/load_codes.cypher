// One batch of code nodes. $rows: [{code, kind, level, depth, leaf, description, short_title, description_source}]
UNWIND $rows AS row
MERGE (c:Code {code: row.code})
SET c.kind = row.kind, c.level = row.level, c.depth = row.depth, c.leaf = row.leaf,
    c.description = row.description, c.short_title = row.short_title,
    c.description_source = row.description_source
