"""ICD-9-CM code formats: dotted (how the graph stores codes) and undotted (how CMS and MIMIC write them).

Diagnoses put the dot after 3 characters (`250.01`, `V45.81`) or 4 for E codes (`E878.8`);
procedures after 2 (`36.15`). Undotted, `3615` is both diagnosis 361.5 and procedure 36.15, so
converting an undotted code needs its kind. Dotted codes are unique across kinds (a diagnosis
category has 3 characters, a procedure category 2), which is why the graph keys nodes by them.
"""

from __future__ import annotations

import re

from kept.errors import KeptError

DX, PROC = "dx", "proc"
KINDS = (DX, PROC)

_DX_UNDOTTED = re.compile(r"^(?:\d{3,5}|V\d{2,4}|E\d{3,4})$")
_PROC_UNDOTTED = re.compile(r"^\d{2,4}$")
_DX_DOTTED = re.compile(r"^(?:\d{3}|V\d{2})(?:\.\d{1,2})?$|^E\d{3}(?:\.\d)?$")
_PROC_DOTTED = re.compile(r"^\d{2}(?:\.\d{1,2})?$")
_CATEGORY = re.compile(r"^(?:\d{3}|V\d{2}|E\d{3}|\d{2})$")  # categories carry no dot
_RANGE = re.compile(r"^([VE]?\d{2,3})-([VE]?\d{2,3})$")


def is_range(code: str) -> bool:
    """True for chapter / section ids such as `240-279`, `V01-V91` or procedure chapter `35-39`."""
    return bool(_RANGE.match(code))


def kind_of(code: str) -> str:
    """Kind (`dx` or `proc`) of a dotted code or range; raises KeptError if it is neither."""
    m = _RANGE.match(code)
    if m:
        return PROC if len(m.group(1)) == 2 else DX
    if _DX_DOTTED.match(code):
        return DX
    if _PROC_DOTTED.match(code):
        return PROC
    raise KeptError(f"not a dotted ICD-9-CM code: {code!r}")


def undotted(code: str) -> str:
    """`250.01` -> `25001`, `36.15` -> `3615` (the CMS / MIMIC form; loses the kind)."""
    return code.replace(".", "")


def dotted(code: str, kind: str) -> str:
    """Put the dot back into an undotted code of the given kind: (`25001`, dx) -> `250.01`."""
    code = code.strip().upper()
    if kind == DX:
        if not _DX_UNDOTTED.match(code):
            raise KeptError(f"not an undotted ICD-9-CM diagnosis code: {code!r}")
        head = 4 if code.startswith("E") else 3
    elif kind == PROC:
        if not _PROC_UNDOTTED.match(code):
            raise KeptError(f"not an undotted ICD-9-CM procedure code: {code!r}")
        head = 2
    else:
        raise KeptError(f"unknown code kind {kind!r} (expected one of {KINDS})")
    return code if len(code) <= head else f"{code[:head]}.{code[head:]}"


def normalize_code(code: str, kind: str | None = None) -> str:
    """Return the dotted form of `code`, written either way.

    A code that is already dotted, a range, or a category (which has no dot: `250`, `V45`, `36`)
    is checked and returned as is. Any other undotted code needs `kind` unless only one reading
    exists (`V4581`, `E8788`, 5-digit `25001` are diagnoses); `3615` without a kind is an error
    (diagnosis 361.5 or procedure 36.15), not a guess.
    """
    code = code.strip().upper()
    if "." in code or is_range(code) or (kind is None and _CATEGORY.match(code)):
        found = kind_of(code)
        if kind is not None and kind != found:
            raise KeptError(f"{code!r} is a {found} code, not {kind}")
        return code
    if kind is not None:
        return dotted(code, kind)
    readings = [k for k, rx in ((DX, _DX_UNDOTTED), (PROC, _PROC_UNDOTTED)) if rx.match(code)]
    if len(readings) == 1:
        return dotted(code, readings[0])
    if not readings:
        raise KeptError(f"not an ICD-9-CM code: {code!r}")
    raise KeptError(
        f"{code!r} is ambiguous without a dot: diagnosis {dotted(code, DX)} or procedure "
        f"{dotted(code, PROC)}; write the dot or give the kind"
    )


def depth_of(code: str) -> int:
    """Position in the hierarchy from the code's own form: 2 category, 3 fourth char, 4 fifth.

    Chapters (0) and sections (1) are ranges and get their depth from the hierarchy instead.
    """
    if is_range(code):
        raise KeptError(f"depth of range {code!r} comes from the hierarchy, not its form")
    head, _, tail = code.partition(".")
    return 2 + len(tail)
