"""The bundled ICD-9-CM hierarchy (CMS v32 titles, diagnoses and procedures), read from package data.

The CSVs are built once by `scripts/build_icd9_data.py` from the public CMS files; see that
script for where each title comes from.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from importlib import resources

from kgraph.codes import DX, PROC


@dataclass(frozen=True)
class Icd9Node:
    code: str  # dotted
    kind: str  # dx | proc
    parent: str  # dotted; "" for a chapter
    level: str  # chapter | section | category | code
    depth: int  # 0 chapter, 1 section, 2 category, 3 and 4 the 4th and 5th character
    leaf: bool  # billable
    short_title: str
    long_title: str
    title_source: str  # cms32 | icd9cm-tabular | icd9cm-vol3-chapter | none


@functools.lru_cache(maxsize=1)
def load_icd9_nodes() -> tuple[Icd9Node, ...]:
    """Every chapter, section, category and code of ICD-9-CM, diagnoses first, parents before children."""
    nodes = []
    for kind, name in ((DX, "icd9_dx.csv"), (PROC, "icd9_proc.csv")):
        with resources.files("kgraph.data").joinpath(name).open(encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                nodes.append(Icd9Node(
                    code=row["code"], kind=kind, parent=row["parent"], level=row["level"],
                    depth=int(row["depth"]), leaf=row["leaf"] == "True",
                    short_title=row["short_title"], long_title=row["long_title"],
                    title_source=row["title_source"],
                ))
    nodes.sort(key=lambda n: n.depth)
    return tuple(nodes)


@functools.lru_cache(maxsize=1)
def bundled_descriptions() -> dict[str, str]:
    """Dotted code -> long title for every node that has one (no graph needed)."""
    return {n.code: n.long_title for n in load_icd9_nodes() if n.long_title}
