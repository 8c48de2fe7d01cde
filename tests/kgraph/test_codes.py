"""kgraph.codes: dotted and undotted ICD-9-CM codes, their kind and depth."""

import pytest

from kept.errors import KeptError
from kgraph.codes import depth_of, kind_of, normalize_code, undotted


@pytest.mark.parametrize("raw,kind,expected", [
    ("25001", "dx", "250.01"), ("V4581", "dx", "V45.81"), ("E8788", "dx", "E878.8"),
    ("0010", "dx", "001.0"), ("3615", "proc", "36.15"), ("3615", "dx", "361.5"),
    ("391", "proc", "39.1"), ("36", "proc", "36"), ("250", "dx", "250"),
])
def test_undotted_to_dotted_needs_and_uses_kind(raw, kind, expected):
    assert normalize_code(raw, kind) == expected
    assert undotted(expected) == raw


@pytest.mark.parametrize("raw,expected", [
    ("25001", "250.01"), ("V4581", "V45.81"), ("E8788", "E878.8"), ("250.01", "250.01"),
    ("36.15", "36.15"), ("250", "250"), ("36", "36"), ("240-279", "240-279"), (" v45.81 ", "V45.81"),
])
def test_unambiguous_codes_normalise_without_kind(raw, expected):
    assert normalize_code(raw) == expected


def test_ambiguous_undotted_code_is_an_error_not_a_guess():
    with pytest.raises(KeptError, match="ambiguous.*361.5.*36.15"):
        normalize_code("3615")


def test_kind_mismatch_and_garbage_are_errors():
    with pytest.raises(KeptError, match="not proc"):
        normalize_code("250.01", "proc")
    with pytest.raises(KeptError):
        normalize_code("ABC")


def test_kind_and_depth_from_the_dotted_form():
    assert kind_of("36.15") == "proc" and kind_of("036.1") == "dx"
    assert kind_of("35-39") == "proc" and kind_of("V01-V91") == "dx"
    assert [depth_of(c) for c in ("250", "250.0", "250.01", "E878.8", "36.15")] == [2, 3, 4, 3, 4]
