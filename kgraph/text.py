"""Term normalisation: the one rule by which titles, UMLS strings and LRABR expansions are matched."""

from __future__ import annotations

import re

_NON_ALNUM = re.compile(r"[^0-9a-z]+")


def normalize_term(text: str) -> str:
    """Lower-case, turn every run of non-alphanumerics into one space, strip.

    `Diabetes mellitus, type II` and `diabetes-mellitus type ii` both give
    `diabetes mellitus type ii`, so a synonym spelled with other punctuation is the same term.
    """
    return _NON_ALNUM.sub(" ", text.lower()).strip()
