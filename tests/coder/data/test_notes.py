"""Note preprocessing and the paper's section-based truncation (Table A.1)."""

from __future__ import annotations

import pytest

from coder.data.notes import KEEP_HEADERS, preprocess, split_sections, truncate_sections, word_count

# A note in MIMIC's shape: the seven kept sections (MIMIC spellings) and five dropped ones,
# each with a marker word so the test can see which survived.
SECTIONS = [
    ("Admission Date", "admitmarker [**2151-7-16**]", False),
    ("Chief Complaint", "ccmarker chest pain", True),
    ("Major Surgical or Invasive Procedure", "procmarker cabg", True),
    ("History of Present Illness", "hpimarker exertional angina", True),
    ("Past Medical History", "pmhmarker hypertension", True),
    ("Social History", "socmarker lives alone", False),
    ("Physical Exam", "exammarker " + "lungs clear " * 400, False),
    ("Pertinent Results", "labmarker " + "wbc 7.2 " * 400, False),
    ("Brief Hospital Course", "coursemarker diuresed", True),
    ("Discharge Medications", "medmarker metoprolol", False),
    ("Discharge Diagnosis", "dxmarker coronary artery disease", True),
    ("Discharge Condition", "condmarker stable", True),
    ("Followup Instructions", "fumarker see pcp", False),
]
RAW = "\n\n".join(f"{h}:\n{body}" for h, body, _ in SECTIONS)


def test_preprocess_drops_deid_odd_characters_and_spaces():
    raw = "Seen by Dr. [**Last Name (STitle) 123**] on\n[**2151-7-16**].\tBP 120/80 \u2022 T 98.6\u00b0F"
    assert preprocess(raw) == "seen by dr. on . bp 120/80 t 98.6 f"
    assert preprocess(raw, lowercase=False) == "Seen by Dr. on . BP 120/80 T 98.6 F"
    # a bracket spanning lines is still one de-identification span
    assert preprocess("a [**Name\nPattern**] b") == "a b"


def test_short_note_is_returned_unchanged():
    text = preprocess(RAW)
    assert truncate_sections(text, limit=10_000) == text


@pytest.mark.parametrize("lowercase", [True, False])
def test_truncation_keeps_every_listed_header_and_drops_the_rest(lowercase):
    text = preprocess(RAW, lowercase=lowercase)
    assert word_count(text) > 1000
    out = truncate_sections(text, limit=1000)
    for header, body, kept in SECTIONS:
        marker = body.split()[0]
        assert (marker in out) == kept, f"{header}: expected kept={kept}"
        if kept:
            assert (header.lower() if lowercase else header) + ":" in out
    # one check per paper header, so a typo in any pattern fails here
    found = {name for name, _ in split_sections(text)}
    assert set(KEEP_HEADERS) <= found
    assert word_count(out) <= 1000


def test_paper_spellings_of_headers_are_recognised():
    text = ("intro. chief complaint: a. procedure: b. history of present illness: c. "
            "past medical history: d. brief hospital course: e. discharge diagnoses: f. "
            "discharge condition: g. discharge instructions: h " + "pad " * 50)
    out = truncate_sections(text, limit=40)
    assert out.split() == ("chief complaint: a. procedure: b. history of present illness: c. "
                           "past medical history: d. brief hospital course: e. discharge diagnoses: "
                           "f. discharge condition: g.").split()


def test_length_function_and_hard_cut():
    text = preprocess(RAW)
    chars = len  # a stand-in "tokenizer": one unit per character
    out = truncate_sections(text, limit=300, length=chars)
    assert len(out) <= 300 and out.startswith("chief complaint: ccmarker")
    # without the hard cut the kept sections come back whole, even if still too long
    whole = truncate_sections(text, limit=300, length=chars, hard_cut=False)
    assert len(whole) > 300 and "condmarker" in whole


def test_note_without_headers_is_cut_at_a_word_boundary():
    out = truncate_sections("word " * 50, limit=10)
    assert out == " ".join(["word"] * 10)


def test_keep_subset_and_unknown_header():
    text = preprocess(RAW)
    out = truncate_sections(text, limit=1000, keep=["chief complaint"])
    assert out == "chief complaint: ccmarker chest pain"
    with pytest.raises(ValueError, match="past eedical history"):
        truncate_sections(text, limit=10, keep=["past eedical history"])
