"""Argparse `type=` checks shared by every command: a bad size or number is an argparse error
(usage line + one message, exit 2) instead of a silently wrong result later."""

from __future__ import annotations

import argparse
import math
from typing import Callable, TypeVar

__all__ = ["positive_int", "nonnegative_int", "positive_float", "nonnegative_float", "probability",
           "positive_int_list"]

Number = TypeVar("Number", int, float)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _bounded(name: str, parse: Callable[[str], Number], ok: Callable[[Number], bool], rule: str,
             show_text: bool = False) -> Callable[[str], Number]:
    """A `type=` check: `parse` the text, then refuse a value outside `rule` (ints are shown parsed,
    floats as typed)."""
    def check(text: str) -> Number:
        value = parse(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text if show_text else value}")
        return value

    check.__name__ = check.__qualname__ = name
    return check


positive_int = _bounded("positive_int", _int, lambda v: v >= 1, ">= 1")
nonnegative_int = _bounded("nonnegative_int", _int, lambda v: v >= 0, ">= 0")
positive_float = _bounded("positive_float", _float, lambda v: v > 0, "> 0", show_text=True)
nonnegative_float = _bounded("nonnegative_float", _float, lambda v: v >= 0, ">= 0", show_text=True)
probability = _bounded("probability", _float, lambda v: 0.0 <= v <= 1.0, "between 0 and 1", show_text=True)


def positive_int_list(text: str) -> tuple[int, ...]:
    """Comma-separated integers >= 1, e.g. `5,8,15`."""
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {text!r}")
    try:
        return tuple(positive_int(p) for p in parts)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {text!r}") from None
