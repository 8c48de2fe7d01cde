// One batch of term nodes. $rows: [{norm, text}]
UNWIND $rows AS row
MERGE (t:Term {norm: row.norm})
SET t.text = row.text
