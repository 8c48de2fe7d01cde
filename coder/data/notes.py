"""Discharge-summary text: the paper's preprocessing and its section-based truncation.

Preprocessing (MISSION.md, as KEPT/CAML): drop de-identification brackets `[** ... **]`, turn
every character that is not an ASCII letter, digit or punctuation mark into a space, collapse
whitespace, lower-case (optional; KEPT lower-cases). Punctuation is kept, so the `header:` colons
survive and the flattened text can still be cut into sections.

Truncation (paper, Table A.1): a note longer than the model's limit keeps only the sections whose
headers are chief complaint, procedure, history of present illness, past medical history, brief
hospital course, discharge diagnosis and discharge condition. The length function is a parameter
so the coder can pass a tokenizer's token count instead of the default word count.
"""

from __future__ import annotations

import re
import string
from typing import Callable, Sequence

_DEID = re.compile(r"\[\*\*.*?\*\*\]", re.DOTALL)
_NOT_KEPT_CHAR = re.compile(r"[^0-9A-Za-z" + re.escape(string.punctuation) + r"]")
_SPACES = re.compile(r"\s+")


def preprocess(text: str, lowercase: bool = True) -> str:
    """The paper's note preprocessing; see the module docstring for the exact rule."""
    text = _DEID.sub(" ", text)
    text = _NOT_KEPT_CHAR.sub(" ", text)
    text = _SPACES.sub(" ", text).strip()
    return text.lower() if lowercase else text


def word_count(text: str) -> int:
    """Whitespace tokens: the `length` column of the CAML layout."""
    return len(text.split())


# The paper's kept headers (Table A.1) with the spellings MIMIC-III actually uses. Keys are the
# paper's names; "procedure" is written "Major Surgical or Invasive Procedure:" in MIMIC.
KEEP_HEADERS: dict[str, str] = {
    "chief complaint": r"chief complaints?",
    "procedure": r"(?:major surgical (?:or|and) invasive )?procedures?",
    "history of present illness": r"history of (?:the )?present illness",
    "past medical history": r"past medical history",
    "brief hospital course": r"(?:brief )?hospital course",
    "discharge diagnosis": r"discharge diagnos[ie]s",
    "discharge condition": r"discharge condition",
}

# Other MIMIC-III discharge-summary headers: they end a kept section but are themselves dropped.
OTHER_HEADERS: tuple[str, ...] = (
    "admission date", "discharge date", "date of birth", "sex", "service", "allergies",
    "attending", "social history", "family history", "past surgical history", "physical exam",
    "physical examination", "review of systems", "pertinent results", "labs", "imaging",
    "medications on admission", "admission medications", "discharge medications",
    "discharge disposition", "facility", "discharge instructions", "followup instructions",
    "follow-up instructions", "completed by", "addendum",
)


def _header_regex(keep: Sequence[str]) -> tuple[re.Pattern[str], dict[str, str]]:
    unknown = [h for h in keep if h not in KEEP_HEADERS]
    if unknown:
        raise ValueError(f"unknown section headers {unknown}; known: {sorted(KEEP_HEADERS)}")
    patterns = {name: rx for name, rx in KEEP_HEADERS.items()}
    patterns.update({h: re.escape(h) for h in OTHER_HEADERS})
    # One named group per header; longest patterns first so "past medical history" is not
    # read as some shorter header that it ends with.
    ordered = sorted(patterns.items(), key=lambda kv: -len(kv[1]))
    groups = {f"h{i}": name for i, (name, _) in enumerate(ordered)}
    alt = "|".join(f"(?P<h{i}>{rx})" for i, (_, rx) in enumerate(ordered))
    return re.compile(rf"(?<![0-9a-z])(?:{alt})\s*:", re.IGNORECASE), groups


def split_sections(text: str) -> list[tuple[str | None, str]]:
    """(header name, section text including its header) in order; text before the first header
    has name None. Header names are the keys of KEEP_HEADERS or entries of OTHER_HEADERS."""
    rx, groups = _header_regex(tuple(KEEP_HEADERS))
    out: list[tuple[str | None, str]] = []
    starts = [(m.start(), groups[m.lastgroup]) for m in rx.finditer(text)]
    if not starts or starts[0][0] > 0:
        out.append((None, text[: starts[0][0] if starts else len(text)]))
    for i, (pos, name) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else len(text)
        out.append((name, text[pos:end]))
    return out


def _cut_to(text: str, limit: int, length: Callable[[str], int]) -> str:
    """Longest word prefix of `text` whose length is <= limit (binary search: log n calls)."""
    words = text.split()
    lo, hi = 0, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if length(" ".join(words[:mid])) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def truncate_sections(text: str, limit: int = 8192, length: Callable[[str], int] = word_count,
                      keep: Sequence[str] = tuple(KEEP_HEADERS), hard_cut: bool = True) -> str:
    """Fit `text` into `limit` units of `length` the paper's way.

    A note that fits is returned unchanged. A longer one keeps only the sections named in `keep`
    (default: all seven of Table A.1), in their order; a note with none of them keeps its text.
    If the result is still too long and `hard_cut` is set, its tail is cut at a word boundary.
    """
    if length(text) <= limit:
        return text
    wanted = set(keep)
    _header_regex(tuple(keep))  # validates the names
    kept = [body.strip() for name, body in split_sections(text) if name in wanted]
    out = " ".join(kept) if kept else text
    if hard_cut and length(out) > limit:
        out = _cut_to(out, limit, length)
    return out
