"""coder.data: the data-set layout every stage shares, and how MIMIC-III or a synthetic corpus becomes it.

`datasets` (layout, read/write, the -50 and -rare50 rules), `notes` (preprocessing, section
truncation), `mimic` and `synth` (the two sources), `stats` (Table A.2), `cli` (`kept data ...`).
`kept_rare50/` holds KEPT's released rare-50 lists as package data (MIT, see its README.md).
"""
