"""Adversarial inputs through the real CLI: each is refused with rc != 0 and one stderr line that
names the file (and line or byte) or the argument; nothing the user owns is ever replaced."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from kept.cli import main
from tests.tiny import FIXTURES, TINY_CODES, write_set

UMLS = FIXTURES / "umls"
MIMIC = FIXTURES / "mimic"
LATIN1_ROW = b"C1|ENG|P|L1|PF|S1|Y|A1||||MSH|MH|D1|caf\xe9|0|N||\n"


def run(argv: list[str], capsys) -> tuple[int, list[str]]:
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse errors exit 2 after printing usage and one error line
        rc = exc.code
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return rc, err


def one_error(argv, capsys, *needles: str, rc: int = 1) -> str:
    got, err = run(argv, capsys)
    errors = [line for line in err if "error:" in line]
    assert got == rc and len(errors) == 1, (got, err)
    for n in needles:
        assert n in errors[0], (n, errors[0])
    if rc == 1:  # a KeptError: nothing but the error line (no traceback, no usage)
        assert [line for line in err if not line.startswith(("MRCONSO", "reading", "graph:"))] == errors, err
    return errors[0]


# --- data loss -----------------------------------------------------------------------------------

def test_out_never_replaces_a_folder_kept_did_not_write(tmp_path, capsys):
    user = tmp_path / "u"
    user.mkdir()
    (user / "important.txt").write_text("precious")
    one_error(["graph", "build", "--out", user], capsys, str(user), "not written by kept", "--force")
    assert (user / "important.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u"]  # no temp, no .old
    assert run(["graph", "build", "--out", user, "--force"], capsys)[0] == 0
    assert not (user / "important.txt").exists() and (user / ".kept").is_file()
    assert run(["graph", "build", "--out", user], capsys)[0] == 0  # kept's own folder: replaced
    (tmp_path / "empty").mkdir()
    assert run(["graph", "build", "--out", tmp_path / "empty"], capsys)[0] == 0


def test_out_never_replaces_a_file(tmp_path, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    one_error(["graph", "build", "--out", f], capsys, str(f), "not a folder")
    assert f.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_data_synth_out_is_protected(tmp_path, capsys):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "keep.csv").write_text("x")
    one_error(["data", "synth", "--out", user, "--docs", "5"], capsys, str(user), "not written by kept")
    assert (user / "keep.csv").exists()


@pytest.mark.parametrize("source, content, needles", [
    ("--mrconso", b"", ["MRCONSO", "0 rows read", "--allow-empty"]),
    ("--mrconso", b"".join(l.replace(b"|ENG|", b"|FRE|") + b"\n"
                           for l in (UMLS / "MRCONSO.RRF").read_bytes().splitlines()),
     ["MRCONSO", "0 English", "--allow-empty"]),
    ("--lrabr", b"", ["LRABR", "0 rows read", "--allow-empty"]),
])
def test_a_source_that_adds_nothing_keeps_the_old_graph(tmp_path, capsys, source, content, needles):
    good = tmp_path / "g"
    assert run(["graph", "build", "--mrconso", UMLS / "MRCONSO.RRF", "--out", good], capsys)[0] == 0
    before = (good / "has_term.parquet").read_bytes()
    bad = tmp_path / "source"
    bad.write_bytes(content)
    one_error(["graph", "build", source, bad, "--out", good], capsys, *needles)
    assert (good / "has_term.parquet").read_bytes() == before
    assert run(["graph", "build", source, bad, "--out", good, "--allow-empty"], capsys)[0] == 0


def test_utf8_bom_keeps_the_first_row(tmp_path):
    import kgraph

    rows = (UMLS / "MRCONSO.RRF").read_bytes()
    first_cui = rows.split(b"|", 1)[0]
    ordered = b"\n".join(sorted(rows.splitlines(), key=lambda r: r.split(b"|", 1)[0] != first_cui)) + b"\n"
    plain, bom = tmp_path / "plain.RRF", tmp_path / "bom.RRF"
    plain.write_bytes(ordered)
    bom.write_bytes(b"\xef\xbb\xbf" + ordered)
    a = kgraph.build_graph(plain, progress=False).graph["umls"]
    b = kgraph.build_graph(bom, progress=False).graph["umls"]
    assert a == b


# --- bad bytes, with their location ---------------------------------------------------------------

def _cut_gzip(data: bytes) -> bytes:
    z = gzip.compress(data * 50)
    return z[: len(z) // 2]


@pytest.mark.parametrize("name, data, needles", [
    ("m.RRF", LATIN1_ROW, ["m.RRF:1:", "0xe9", "offset 39", "UTF-8"]),
    ("m.RRF", (UMLS / "MRCONSO.RRF").read_bytes() + LATIN1_ROW,
     [f"m.RRF:{len((UMLS / 'MRCONSO.RRF').read_bytes().splitlines()) + 1}:", "UTF-8"]),
    ("bin.RRF", bytes(range(128, 256)) * 4, ["bin.RRF:1:", "not UTF-8"]),
    ("cut.RRF.gz", _cut_gzip((UMLS / "MRCONSO.RRF").read_bytes()), ["cut.RRF.gz", "cut off at byte"]),
    ("cut_no_gz_name.RRF", _cut_gzip((UMLS / "MRCONSO.RRF").read_bytes()), ["cut_no_gz_name.RRF", "cut off"]),
    ("fake.RRF.gz", b"not gzip at all", ["fake.RRF.gz", "corrupt gzip"]),
])
def test_bad_mrconso_bytes_name_file_and_line(tmp_path, capsys, name, data, needles):
    f = tmp_path / name
    f.write_bytes(data)
    one_error(["graph", "build", "--mrconso", f, "--out", tmp_path / "g"], capsys, *needles)
    assert not (tmp_path / "g").exists()


def test_gzip_without_gz_name_is_read(tmp_path, capsys):
    f = tmp_path / "MRCONSO.RRF"
    f.write_bytes(gzip.compress((UMLS / "MRCONSO.RRF").read_bytes()))
    assert run(["graph", "build", "--mrconso", f, "--out", tmp_path / "g"], capsys)[0] == 0


def test_bad_lrabr_bytes(tmp_path, capsys):
    f = tmp_path / "LRABR"
    f.write_bytes((UMLS / "LRABR").read_bytes() + b"E1|caf\xe9|acronym|E2|x|\n")
    n = len((UMLS / "LRABR").read_bytes().splitlines()) + 1
    one_error(["graph", "build", "--lrabr", f, "--out", tmp_path / "g"], capsys, f"LRABR:{n}:", "0xe9")


@pytest.mark.parametrize("how", ["latin1", "cut_gzip"])
def test_bad_noteevents(tmp_path, capsys, how):
    mimic = tmp_path / "mimic"
    shutil.copytree(MIMIC, mimic, ignore=shutil.ignore_patterns("splits"))
    notes = (MIMIC / "NOTEEVENTS.csv").read_bytes()
    if how == "latin1":
        (mimic / "NOTEEVENTS.csv").write_bytes(notes.replace(b"glucose was fine", b"glucose \xe9tait fine"))
        needles = ["NOTEEVENTS.csv:3:", "0xe9", "UTF-8"]
    else:
        (mimic / "NOTEEVENTS.csv").unlink()
        (mimic / "NOTEEVENTS.csv.gz").write_bytes(_cut_gzip(notes))
        needles = ["NOTEEVENTS.csv.gz", "cut off"]
    one_error(["data", "mimic", "--mimic-dir", mimic, "--out", tmp_path / "o", "--top-n", "3", "--rare-n", "1",
               "--no-progress"], capsys, *needles)


def _dataset(root: Path) -> Path:
    for s in ("full", "50", "rare50"):
        write_set(root / s, TINY_CODES, {"train": [("a b", ["401.9"])], "dev": [("c", [])], "test": [("d", [])]})
    return root


@pytest.mark.parametrize("damage, needles", [
    (lambda d: (d / "50" / "train.csv").write_bytes((d / "50" / "train.csv").read_bytes() + b"1,2,caf\xe9,401.9,1\n"),
     ["train.csv:3:", "0xe9"]),
    (lambda d: (d / "50" / "train.csv").write_bytes(b"\x00\x01\x02\xff\xfe" * 20), ["train.csv:1:", "not UTF-8"]),
    (lambda d: (d / "50" / "codes.txt").write_text(""), ["codes.txt", "no codes"]),
    (lambda d: (d / "50" / "codes.txt").write_text("401.9\n4280\n"), ["codes.txt:2:", "'4280'", "dotted"]),
])
def test_bad_set_files(tmp_path, capsys, damage, needles):
    d = _dataset(tmp_path / "data")
    damage(d)
    one_error(["data", "stats", d], capsys, *needles)


@pytest.mark.parametrize("damage, needles", [
    (lambda g: (g / "terms.parquet").write_bytes((g / "terms.parquet").read_bytes()[:100]),
     ["terms.parquet", "not a readable Parquet"]),
    (lambda g: (g / "has_term.parquet").unlink(), ["has_term.parquet", "file not found"]),
    (lambda g: (g / "meta.json").write_text('{"format_version": 1,\n'), ["meta.json:2:", "broken JSON"]),
])
def test_damaged_graph_folder(tmp_path, capsys, damage, needles):
    g = tmp_path / "g"
    assert run(["graph", "build", "--out", g], capsys)[0] == 0
    damage(g)
    one_error(["graph", "stats", "--graph", g], capsys, *needles)


# --- arguments ----------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, needle", [
    (["data", "synth", "--out", "x", "--top-n", "-3"], "--top-n: must be >= 1, got -3"),
    (["data", "synth", "--out", "x", "--rare-n", "-2"], "--rare-n: must be >= 1"),
    (["data", "synth", "--out", "x", "--words-min", "-5"], "--words-min: must be >= 1"),
    (["data", "synth", "--out", "x", "--pool-size", "0"], "--pool-size: must be >= 1"),
    (["data", "synth", "--out", "x", "--codes-mean", "0"], "--codes-mean: must be > 0"),
    (["data", "synth", "--out", "x", "--zipf-s", "nan"], "--zipf-s: expected a finite number"),
    (["data", "mimic", "--mimic-dir", "m", "--out", "x", "--top-n", "-3"], "--top-n: must be >= 1"),
    (["coder", "predict", "n.txt", "--checkpoint", "c", "--top", "-1"], "--top: must be >= 1"),
    (["coder", "predict", "n.txt", "--checkpoint", "c", "--top", "0"], "--top: must be >= 1"),
    (["coder", "predict", "n.txt", "--checkpoint", "c", "--threshold", "-1"], "--threshold: must be between 0 and 1"),
    (["coder", "eval", "--checkpoint", "c", "--data", "d", "--out", "o", "--ks", "0"], "--ks: expected comma-separated"),
    (["coder", "eval", "--checkpoint", "c", "--data", "d", "--out", "o", "--ks", "abc"], "--ks: expected comma-separated"),
    (["coder", "train", "--data", "d", "--model", "m", "--out", "o", "--epochs", "-1"], "--epochs: must be >= 0"),
    (["graph", "search", "x", "--limit", "0"], "--limit: must be >= 1"),
])
def test_bad_numbers_are_argparse_errors(argv, needle, capsys):
    one_error(argv, capsys, needle, rc=2)
