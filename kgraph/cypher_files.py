"""Read the Cypher shipped in the `cypher` package: schema statements, load batches, named queries."""

from __future__ import annotations

import re
from importlib import resources


def read(name: str) -> str:
    return resources.files("cypher").joinpath(name).read_text(encoding="utf-8")


def _strip_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))


def statements(name: str) -> list[str]:
    """The semicolon-separated statements of a file, comments dropped."""
    return [s.strip() for s in _strip_comments(read(name)).split(";") if s.strip()]


def named_queries(name: str = "queries.cypher") -> dict[str, str]:
    """`// name: X` blocks of a file, keyed by X."""
    out = {}
    for block in re.split(r"^// name:\s*", read(name), flags=re.M)[1:]:
        qname, _, body = block.partition("\n")
        out[qname.strip()] = _strip_comments(body).strip().rstrip(";").strip()
    return out
