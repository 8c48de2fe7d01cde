"""`kept data mimic` end to end on tiny MIMIC-III-layout fixtures, and the rare-50 rule."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from coder.data.datasets import Document, read_codes, read_split, select_rare50, top_codes, write_split
from coder.data.mimic import MimicConfig, prepare_mimic
from kept.cli import main
from kept.errors import InputFileError, KeptError
from tests.tiny import FIXTURES

FIX = FIXTURES / "mimic"
SMALL = MimicConfig(top_n=3, rare_n=2, progress=False, rare50="rule")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("mimic")
    meta = prepare_mimic(FIX, out, FIX / "splits", SMALL)
    return out, meta


def docs_by_id(set_dir: Path) -> dict[str, Document]:
    return {d.hadm_id: d for s in ("train", "dev", "test") for d in read_split(set_dir, s)}


def test_layout_and_split_files(built):
    out, meta = built
    for name in ("full", "50", "rare50"):
        for split in ("train", "dev", "test"):
            header = (out / name / f"{split}.csv").read_text().splitlines()[0]
            assert header == "SUBJECT_ID,HADM_ID,TEXT,LABELS,length"
        assert (out / name / "codes.txt").is_file()
    on_disk = json.loads((out / "dataset.json").read_text())
    assert on_disk["source"] == "mimic-iii" and on_disk["split_rule"].startswith("CAML")
    assert meta["sets"]["full"] == {"codes": 19, "train": 5, "dev": 1, "test": 2}
    full = out / "full"
    assert {d.hadm_id for d in read_split(full, "train")} == {"1001", "1002", "1004", "1006", "1008"}
    assert {d.hadm_id for d in read_split(full, "test")} == {"1003", "1009"}


def test_notes_are_concatenated_and_preprocessed(built):
    docs = docs_by_id(built[0] / "full")
    text = docs["1001"].text
    assert "nursingonly" not in text  # a Nursing note is not a discharge summary
    assert "addendumword" in text and text.index("chief complaint:") < text.index("addendumword")
    assert "[**" not in text and "\u2022" not in text and text == text.lower()
    assert "errornote" not in docs["1008"].text  # ISERROR=1 note dropped
    assert "1007" not in docs  # its only note is de-identification brackets: empty, dropped


def test_codes_get_their_dots_by_kind(built):
    docs = docs_by_id(built[0] / "full")
    assert docs["1001"].labels == ["414.01", "250.00", "V45.81", "401.9", "36.15", "39.61"]
    # undotted 9671 is diagnosis 967.1 and procedure 96.71: both kept, told apart
    assert docs["1003"].labels == ["967.1", "E878.8", "401.9", "E849.7", "96.71", "38.93"]
    assert docs["1005"].labels == ["427.31", "401.9", "V58.61"]  # SEQ_NUM order, not file order
    assert docs["1009"].labels == ["250.00", "401.9"]  # duplicate row counted once
    assert "V99.99" in docs["1008"].labels  # unknown to ICD-9-CM v32: kept, with a warning


def test_bad_rows_are_counted_not_silently_dropped(built):
    w = built[1]["warnings"]
    assert w["empty_discharge_summary_dropped"]["count"] == 1
    assert w["note_marked_iserror_dropped"]["count"] == 1
    assert w["dx_row_without_code"] == {"count": 1, "examples": ["DIAGNOSES_ICD.csv:24"]}
    assert w["dx_code_not_in_icd9cm_v32_kept"]["examples"] == ["DIAGNOSES_ICD.csv:23 V99.99"]
    assert w["full_split_id_without_document"]["examples"] == ["HADM_ID 1007"]
    assert built[1]["info"]["admissions_with_addenda_concatenated"] == 1


def test_top_and_rare_sets(built):
    out = built[0]
    # over train+dev+test: 401.9 labels 7 docs, 250.00 3, 427.31 and 428.0 2 each (tie: by code)
    assert read_codes(out / "50") == ["401.9", "250.00", "427.31"]
    docs50 = docs_by_id(out / "50")
    assert set(docs50) == {"1001", "1002", "1004", "1006", "1005", "1003", "1009"}  # CAML -50 ids
    assert docs50["1004"].labels == ["401.9"]
    # rare: 96.71 has ratio 1/1; 401.9 and 250.00 tie at 0.5 (seeded tie break)
    rare = read_codes(out / "rare50")
    assert rare[0] == "96.71" and rare[1] in {"401.9", "250.00"}
    for split in ("train", "dev", "test"):
        for d in read_split(out / "rare50", split):
            assert d.labels and set(d.labels) <= set(rare)


def test_cli_with_gzip_and_seeded_patient_split(tmp_path):
    mimic = tmp_path / "mimic"
    mimic.mkdir()
    for name in ("NOTEEVENTS", "DIAGNOSES_ICD", "PROCEDURES_ICD"):
        with open(FIX / f"{name}.csv", "rb") as src, gzip.open(mimic / f"{name}.csv.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
    out = tmp_path / "out"
    rc = main(["data", "mimic", "--mimic-dir", str(mimic), "--out", str(out), "--top-n", "3",
               "--rare-n", "1", "--seed", "3", "--no-progress"])
    assert rc == 0
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["split_rule"].startswith("seeded patient-level")
    subjects = [{d.subject_id for d in read_split(out / "full", s)} for s in ("train", "dev", "test")]
    assert sum(len(s) for s in subjects) == len(set().union(*subjects))  # no patient in two splits
    assert sum(meta["sets"]["full"][s] for s in ("train", "dev", "test")) == 11
    assert meta["rare50_variant"] == "kept"  # the default


def test_rare50_defaults_to_kepts_lists(tmp_path):
    from coder.data.mimic import read_kept_rare50

    codes, lists = read_kept_rare50()
    assert len(codes) == 50 and {s: len(v) for s, v in lists.items()} == {"train": 249, "dev": 20, "test": 142}
    assert all(set(c for *_, cs in v for c in cs) <= set(codes) for v in lists.values())
    meta = prepare_mimic(FIX, tmp_path, FIX / "splits", MimicConfig(progress=False))
    assert meta["rare50_variant"] == "kept" and meta["rare50_rule"].startswith("KEPT's released lists")
    assert read_codes(tmp_path / "rare50") == codes  # all 50, in KEPT's order
    docs = {s: {d.hadm_id: d for d in read_split(tmp_path / "rare50", s)} for s in ("train", "dev", "test")}
    # exactly the listed rare codes, not the admission's other codes (401.9, 250.00)
    assert docs["train"]["199748"].labels == ["955.1", "40.7"]
    assert docs["dev"]["117847"].labels == ["447.9"]
    assert docs["test"]["122116"].labels == ["550.11", "53.02"]  # listed twice by KEPT: once here
    assert "keptraretrain" in docs["train"]["199748"].text  # the admission's own note
    assert {s: len(d) for s, d in docs.items()} == {"train": 1, "dev": 1, "test": 1}
    w = meta["warnings"]
    assert w["rare50_listed_admission_without_document"]["count"] == 411 - 3
    # the fixture's CAML split files do not list these admissions: counted, not dropped
    assert w["rare50_listed_admission_not_in_train_full_split"]["examples"] == ["HADM_ID 199748"]
    # the other sets are as before
    assert meta["sets"]["full"] == {"codes": 19, "train": 5, "dev": 1, "test": 2}


def test_rare50_variant_is_checked_and_rule_is_a_flag(tmp_path):
    with pytest.raises(KeptError, match="rare50"):
        MimicConfig(rare50="paper")
    assert main(["data", "mimic", "--mimic-dir", str(FIX), "--out", str(tmp_path), "--splits", str(FIX / "splits"),
                 "--top-n", "3", "--rare-n", "2", "--rare50", "rule", "--no-progress"]) == 0
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["rare50_variant"] == "rule" and read_codes(tmp_path / "rare50")[0] == "96.71"


def test_missing_columns_name_the_file(tmp_path):
    for name in ("NOTEEVENTS", "PROCEDURES_ICD"):
        shutil.copy(FIX / f"{name}.csv", tmp_path / f"{name}.csv")
    (tmp_path / "DIAGNOSES_ICD.csv").write_text("ROW_ID,SUBJECT_ID,HADM_ID,ICD9_CODE\n1,2,3,4019\n")
    with pytest.raises(InputFileError, match=r"DIAGNOSES_ICD.csv:1: missing columns \['SEQ_NUM'\]"):
        prepare_mimic(tmp_path, tmp_path / "out", config=SMALL)
    rc = main(["data", "mimic", "--mimic-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert rc == 1


def test_read_split_reports_file_and_line(tmp_path):
    write_split(tmp_path, "train", [Document("1", "2", "a b", ["401.9"])])
    with open(tmp_path / "train.csv", "a") as fh:
        fh.write("1,3,text\n")
    with pytest.raises(InputFileError, match=r"train.csv:3"):
        read_split(tmp_path, "train")


def _docs(prefix: str, spec: dict[str, int]) -> list[Document]:
    """One document per occurrence: spec = {code: number of documents}."""
    out = []
    for code, n in spec.items():
        out += [Document("s", f"{prefix}{code}{i}", "text", [code, "COMMON"]) for i in range(n)]
    return out


def test_rare50_rule_on_a_hand_worked_example():
    train = _docs("tr", {"A": 1, "B": 2, "C": 4, "D": 1, "E": 5, "F": 3, "G": 2})
    test = _docs("te", {"A": 3, "B": 2, "C": 1, "D": 0, "E": 5, "F": 3, "H": 1})
    # totals: A 4, B 4, C 5, D 1 (no test), E 10 (not < 10), F 6, G 2 (no test), H 1 (no train),
    # COMMON 33 (not rare). Ratios: A 3.0, B 1.0, F 1.0, C 0.25.
    assert select_rare50(train, test, n=4) == select_rare50(train, test, n=4, seed=0)
    ranked = select_rare50(train, test, n=4)
    assert ranked[0] == "A" and set(ranked[1:3]) == {"B", "F"} and ranked[3] == "C"
    assert select_rare50(train, test, n=2, exclude=["A"])[0] in {"B", "F"}
    assert select_rare50(train, test, n=1, min_train=4) == ["C"]
    ties = {tuple(select_rare50(train, test, n=4, seed=s)[1:3]) for s in range(20)}
    assert ties == {("B", "F"), ("F", "B")}  # the seed, not the code string, breaks ties
    with pytest.raises(KeptError, match="only 4 codes"):
        select_rare50(train, test, n=5)
    assert top_codes(train + test, 2) == ["COMMON", "E"]
