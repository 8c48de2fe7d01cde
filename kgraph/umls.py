"""Stream UMLS `MRCONSO.RRF` and collect the English synonyms of every ICD-9-CM code.

MRCONSO has 18 pipe-separated columns and a trailing pipe, no header. ICD-9-CM codes reach
concepts through rows with `SAB=ICD9CM`; every other English string of those concepts (SNOMED CT,
MeSH, ...) becomes a synonym of the code. A full release has ~16M rows: the file is read one line
at a time and only the English rows of the current concept are held. Releases are sorted by CUI,
so one pass suffices; an unsorted file (a user's own subset) is detected and costs a second pass.
"""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from kept.errors import InputFileError, require_file
from kept.io import input_error, open_text

log = logging.getLogger(__name__)

MRCONSO_COLUMNS = (
    "CUI", "LAT", "TS", "LUI", "STT", "SUI", "ISPREF", "AUI", "SAUI",
    "SCUI", "SDUI", "SAB", "TTY", "CODE", "STR", "SRL", "SUPPRESS", "CVF",
)
CUI, LAT, TS, STT, ISPREF, SAB, TTY, CODE, STR, SUPPRESS = 0, 1, 2, 4, 6, 11, 12, 13, 14, 16
SUPPRESSED = frozenset("OEY")  # obsolete, suppressed by editors, suppressed by the source
_N_FIELDS = len(MRCONSO_COLUMNS) + 1  # the trailing pipe leaves one empty field
_UMLS_RANGE = re.compile(r"^([VE]?\d+)-([VE]?\d+)(?:\.\d+)?$")  # UMLS writes chapters as 240-279.99


@dataclass(frozen=True)
class UmlsString:
    text: str
    cui: str
    sab: str
    tty: str
    preferred: bool  # the concept's preferred English name (TS=P, STT=PF, ISPREF=Y)


@dataclass
class Icd9Synonyms:
    """What MRCONSO says about ICD-9-CM codes: their concepts' English strings."""

    strings: dict[str, list[UmlsString]] = field(default_factory=lambda: defaultdict(list))
    rows_read: int = 0
    rows_english: int = 0
    rows_suppressed: int = 0
    passes: int = 1

    def preferred_name(self, code: str) -> str | None:
        for s in self.strings.get(code, ()):
            if s.preferred:
                return s.text
        return None


def icd9_code(code: str) -> str:
    """The graph's id for an ICD9CM `CODE` value (chapters come as `240-279.99`)."""
    m = _UMLS_RANGE.match(code)
    if m and "-" in code:
        return f"{m.group(1)}-{m.group(2)}"
    return code


def _rows(path: Path, progress: bool, desc: str) -> Iterator[list[str]]:
    """Yield every row split into fields; stop at the first malformed line with its number."""
    size = os.path.getsize(path)
    with input_error(path, "UMLS MRCONSO.RRF, UTF-8 text (.gz accepted)"), open_text(path) as fh, tqdm(total=size, unit="B", unit_scale=True, desc=desc,
                                     disable=not progress, mininterval=1.0) as bar:
        pending = 0
        for lineno, line in enumerate(fh, 1):
            pending += len(line)
            if pending > 1 << 22:
                bar.update(pending)
                pending = 0
            f = line.rstrip("\r\n").split("|")
            if len(f) != _N_FIELDS or f[-1]:
                raise InputFileError(
                    path, f"malformed MRCONSO row: expected {len(MRCONSO_COLUMNS)} pipe-separated "
                    f"columns and a trailing pipe, found {len(f) - 1} separators", line=lineno)
            if not f[CUI] or not f[STR]:
                raise InputFileError(path, "malformed MRCONSO row: empty CUI or STR", line=lineno)
            yield f
        bar.update(pending)


def load_icd9_synonyms(
    path: str | Path,
    *,
    languages: tuple[str, ...] = ("ENG",),
    keep_suppressed: bool = False,
    progress: bool = True,
) -> Icd9Synonyms:
    """Collect, per ICD-9-CM code, every string in `languages` of the concepts it maps to."""
    path = require_file(path, "UMLS MRCONSO.RRF (pipe-separated concept names)")
    langs = frozenset(languages)
    out = Icd9Synonyms()
    group: list[list[str]] = []
    cui_prev = ""
    unsorted = False
    icd9_cuis: dict[str, set[str]] = defaultdict(set)

    def flush(rows: list[list[str]]) -> None:
        codes = {icd9_code(r[CODE]) for r in rows if r[SAB] == "ICD9CM"}
        for code in codes:
            out.strings[code].extend(_strings(rows))

    for f in _rows(path, progress, "MRCONSO"):
        out.rows_read += 1
        if f[LAT] not in langs:
            continue
        if not keep_suppressed and f[SUPPRESS] in SUPPRESSED:
            out.rows_suppressed += 1
            continue
        out.rows_english += 1
        cui = f[CUI]
        if f[SAB] == "ICD9CM":
            icd9_cuis[cui].add(icd9_code(f[CODE]))
        if unsorted:
            continue
        if cui != cui_prev:
            if cui < cui_prev:
                unsorted = True
                continue
            flush(group)
            group = []
            cui_prev = cui
        group.append(f)
    if not unsorted:
        flush(group)
        return out

    # A concept's rows were not adjacent: gather the strings of the known concepts in a second pass.
    log.warning("%s is not sorted by CUI; reading it a second time", path)
    out.strings.clear()
    out.passes = 2
    for f in _rows(path, progress, "MRCONSO (pass 2)"):
        if f[LAT] in langs and f[CUI] in icd9_cuis and (keep_suppressed or f[SUPPRESS] not in SUPPRESSED):
            for code in icd9_cuis[f[CUI]]:
                out.strings[code].extend(_strings([f]))
    return out


def _strings(rows: list[list[str]]) -> list[UmlsString]:
    return [
        UmlsString(text=r[STR], cui=r[CUI], sab=r[SAB], tty=r[TTY],
                   preferred=r[TS] == "P" and r[STT] == "PF" and r[ISPREF] == "Y")
        for r in rows
    ]

