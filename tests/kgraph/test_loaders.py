"""MRCONSO / LRABR readers on the real layouts: errors name the file and line."""

import gzip
import shutil

import pytest

from kept.errors import InputFileError
from kgraph.lexicon import iter_lrabr
from kgraph.umls import load_icd9_synonyms
from tests.tiny import FIXTURES

UMLS = FIXTURES / "umls"


def test_fixture_is_in_the_real_layout():
    for line in (UMLS / "MRCONSO.RRF").read_text().splitlines():
        assert line.count("|") == 18 and line.endswith("|")
    for line in (UMLS / "LRABR").read_text().splitlines():
        assert line.count("|") == 5 and line.endswith("|")


def test_synonyms_per_code():
    syn = load_icd9_synonyms(UMLS / "MRCONSO.RRF", progress=False)
    texts = {s.text for s in syn.strings["250.00"]}
    assert "Type II diabetes mellitus" in texts and "Diabetes Mellitus, Non-Insulin-Dependent" in texts
    assert "Diabetes mellitus tipo 2" not in texts  # LAT=SPA
    assert "Diabetes mellitus type 2 NOS" not in texts  # SUPPRESS=O
    assert syn.preferred_name("250.00") == "Diabetes Mellitus, Non-Insulin-Dependent"
    assert "240-279" in syn.strings  # UMLS writes the chapter as 240-279.99
    assert syn.rows_read == 22 and syn.rows_suppressed == 1 and syn.passes == 1


def test_unsorted_file_gives_the_same_answer_in_two_passes(tmp_path):
    lines = (UMLS / "MRCONSO.RRF").read_text().splitlines(keepends=True)
    shuffled = tmp_path / "MRCONSO.RRF"
    shuffled.write_text("".join(reversed(lines)))
    a = load_icd9_synonyms(UMLS / "MRCONSO.RRF", progress=False)
    b = load_icd9_synonyms(shuffled, progress=False)
    assert b.passes == 2
    assert {c: sorted(s.text for s in v) for c, v in a.strings.items()} == \
           {c: sorted(s.text for s in v) for c, v in b.strings.items()}


def test_gzipped_mrconso(tmp_path):
    gz = tmp_path / "MRCONSO.RRF.gz"
    with open(UMLS / "MRCONSO.RRF", "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    assert "250.00" in load_icd9_synonyms(gz, progress=False).strings


def test_malformed_mrconso_line_names_file_and_line(tmp_path):
    lines = (UMLS / "MRCONSO.RRF").read_text().splitlines(keepends=True)
    lines[4] = "C9000001|ENG|P|broken row\n"
    bad = tmp_path / "MRCONSO.RRF"
    bad.write_text("".join(lines))
    with pytest.raises(InputFileError) as e:
        load_icd9_synonyms(bad, progress=False)
    assert e.value.line == 5 and str(bad) in str(e.value)


def test_missing_files_say_what_they_should_be(tmp_path):
    with pytest.raises(InputFileError, match="MRCONSO"):
        load_icd9_synonyms(tmp_path / "MRCONSO.RRF")
    with pytest.raises(InputFileError, match="LRABR"):
        list(iter_lrabr(tmp_path / "LRABR"))


def test_lrabr_rows_and_errors(tmp_path):
    rows = list(iter_lrabr(UMLS / "LRABR"))
    assert rows[1].abbreviation == "DM2" and rows[1].type == "acronym"
    assert rows[1].expansion == "type 2 diabetes mellitus"
    bad = tmp_path / "LRABR"
    bad.write_text("E1|AA|acronym|E2|amino acid|\nE3|BB|nickname|E4|bee bee|\n")
    with pytest.raises(InputFileError, match=r"LRABR:2: .*nickname"):
        list(iter_lrabr(bad))
    bad.write_text("E1|AA|acronym|E2|amino acid\n")
    with pytest.raises(InputFileError, match=r":1: malformed"):
        list(iter_lrabr(bad))
