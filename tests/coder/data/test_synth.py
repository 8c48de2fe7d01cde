"""The licence-free synthetic corpus: layout, long tail, language-only mentions, hard negatives."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

import kgraph
from coder.data.datasets import SPLITS, read_codes, read_split
from coder.data.notes import preprocess, truncate_sections
from coder.data.stats import dataset_stats
from coder.data.synth import NEG_DX, SynthConfig, generate_corpus, make_note, prepare_synth, term_variants
from kept.cli import main
from kgraph.codes import undotted
from tests.tiny import FIXTURES

UMLS = FIXTURES / "umls"
SMALL = SynthConfig(docs=60, words_min=150, words_max=300, pool_size=400, codes_mean=5,
                    top_n=10, rare_n=5, progress=False)
TOKEN = re.compile(r"[a-z0-9]+(?:\.[a-z0-9]+)*")


@pytest.fixture(scope="module")
def graph():
    return kgraph.build_graph(mrconso=UMLS / "MRCONSO.RRF", lrabr=UMLS / "LRABR", progress=False)


@pytest.fixture(scope="module")
def corpus(graph, tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    meta = prepare_synth(graph, out, SMALL)
    return out, meta


def all_docs(set_dir: Path):
    return [d for s in SPLITS for d in read_split(set_dir, s)]


def test_same_layout_as_mimic(corpus):
    out, meta = corpus
    assert json.loads((out / "dataset.json").read_text())["source"] == "synthetic"
    assert meta["sets"]["full"]["train"] == 45 and meta["sets"]["full"]["dev"] == 6
    assert len(read_codes(out / "50")) == 10 and len(read_codes(out / "rare50")) == 5
    for name in ("full", "50", "rare50"):
        codes = set(read_codes(out / name))
        for d in all_docs(out / name):
            assert set(d.labels) <= codes and (d.labels or name == "full")
    docs = all_docs(out / "full")
    assert len({d.hadm_id for d in docs}) == 60


def test_no_note_contains_a_code_string(corpus):
    for d in all_docs(corpus[0] / "full"):
        tokens = set(TOKEN.findall(d.text.lower()))
        forms = {f.lower() for c in d.labels for f in (c, undotted(c))}
        assert not tokens & forms, (d.hadm_id, tokens & forms)


def test_labels_are_leaves_with_a_long_tail(corpus, graph):
    docs = all_docs(corpus[0] / "full")
    counts = Counter(c for d in docs for c in d.labels)
    assert all(graph.nodes[c]["leaf"] for c in counts)
    singletons = sum(1 for n in counts.values() if n == 1)
    assert singletons > len(counts) / 2  # most codes are rare
    assert counts.most_common(1)[0][1] >= 10 * sorted(counts.values())[len(counts) // 2]


def test_every_label_is_mentioned_in_a_section_the_paper_keeps(corpus, graph):
    for d in all_docs(corpus[0] / "full")[:20]:
        kept = truncate_sections(d.text, limit=50, hard_cut=False)
        for c in d.labels:
            forms = [preprocess(v) for v in term_variants(graph, c)]
            assert any(f in kept for f in forms), (d.hadm_id, c)
        assert SMALL.words_min * 0.8 <= len(d.text.split()) <= SMALL.words_max * 1.3


def test_synonyms_abbreviations_and_hard_negatives(graph):
    seen: Counter = Counter()
    neg_phrases = [t.split("{")[0].strip().lower() for t in NEG_DX if not t.startswith("{")]
    cfg = SynthConfig(words_min=50, words_max=60, negatives_mean=3)
    pool = ["250.00", "401.9", "428.0"]
    for seed in range(30):
        text = preprocess(make_note(graph, ["250.00", "401.9"], pool, cfg, random.Random(seed)))
        for form in ("niddm", "dm2", "htn", "hbp", "high blood pressure", "type 2 diabetes mellitus"):
            seen[form] += form in text.split() or f" {form} " in f" {text} "
        seen["negated"] += any(p in text for p in neg_phrases) or "was ruled out" in text
        sib_terms = [preprocess(t) for s in ("250.01", "250.02", "401.0", "401.1")
                     for t in term_variants(graph, s)]
        seen["sibling"] += any(t in text for t in sib_terms)
    assert seen["htn"] or seen["hbp"]  # LRABR abbreviations
    assert seen["niddm"] or seen["dm2"]
    assert seen["high blood pressure"] or seen["type 2 diabetes mellitus"]  # UMLS synonyms
    assert seen["negated"] >= 15 and seen["sibling"] >= 15


def test_seeded(graph):
    cfg = SynthConfig(docs=8, words_min=100, words_max=120, pool_size=300, progress=False)
    one, two = generate_corpus(graph, cfg), generate_corpus(graph, cfg)
    assert one == two
    other = generate_corpus(graph, SynthConfig(**{**cfg.__dict__, "seed": 1}))
    assert other != one


def test_rare_rule_that_cannot_be_met_writes_the_rest_and_says_what_to_change(graph, tmp_path):
    meta = prepare_synth(graph, tmp_path, SynthConfig(docs=10, words_min=50, words_max=60, rare_shape="rule",
                                                      progress=False))
    assert set(meta["sets"]) == {"full", "50"} and not (tmp_path / "rare50").exists()
    assert (tmp_path / "full" / "train.csv").is_file() and (tmp_path / "50" / "codes.txt").is_file()
    problem = meta["set_problems"]["rare50"]
    assert "not written" in problem and "rare-50 rule needs 50" in problem and "--rare-n" in problem


def test_note_length_bounds_hold(graph):
    cfg = SynthConfig(docs=40, words_min=200, words_max=400, pool_size=300, codes_mean=4, progress=False)
    lengths = [d.length for docs in generate_corpus(graph, cfg).values() for d in docs]
    assert min(lengths) >= 200 and max(lengths) <= 400


def test_cli_synth_then_stats(graph, tmp_path, capsys):
    gdir = kgraph.save_graph(graph, tmp_path / "graph")
    out = tmp_path / "data"
    rc = main(["data", "synth", "--graph", str(gdir), "--out", str(out), "--docs", "60",
               "--words-min", "150", "--words-max", "300", "--pool-size", "400",
               "--codes-mean", "5", "--top-n", "10", "--rare-n", "5", "--no-progress"])
    assert rc == 0
    capsys.readouterr()
    assert main(["data", "stats", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats == dataset_stats(out)
    assert stats["full"]["train"]["docs"] == 45 and stats["rare50"]["train"]["codes_present"] == 5
    assert main(["data", "stats", str(out)]) == 0
    table = capsys.readouterr().out
    assert "#Doc" in table and "Shots/code mean" in table and "rare50" in table


def test_default_settings_give_full_top50_and_rare50(graph, tmp_path):
    # Labels and splits do not depend on note length, so short notes test the default draw.
    cfg = SynthConfig(words_min=20, words_max=30, progress=False)
    meta = prepare_synth(graph, tmp_path, cfg)
    assert meta["sets"]["50"]["codes"] == 50 and meta["sets"]["rare50"]["codes"] == 50
    assert meta["sets"]["full"] == {**meta["sets"]["full"], "train": 450, "dev": 60, "test": 90}
    train50 = Counter(c for d in read_split(tmp_path / "50", "train") for c in d.labels)
    assert min(train50.values()) >= 5  # every frequent code has shots to learn from
    # rare50 in MIMIC-III-rare50's shape (Table A.2): 250 / 20 / 142 notes, one rare code each,
    # 5 train shots per code, codes the corpus's label pool never uses
    assert meta["sets"]["rare50"] == {"codes": 50, "train": 250, "dev": 20, "test": 142}
    rare = {s: read_split(tmp_path / "rare50", s) for s in SPLITS}
    assert all(len(d.labels) == 1 for s in SPLITS for d in rare[s])
    shots = Counter(d.labels[0] for d in rare["train"])
    assert set(shots.values()) == {5} and set(shots) == set(read_codes(tmp_path / "rare50"))
    assert {d.labels[0] for d in rare["test"]} <= set(shots)
    full = {c for s in SPLITS for d in read_split(tmp_path / "full", s) for c in d.labels}
    assert not full & set(shots)
    assert "MIMIC-III-rare50's shape" in meta["rare50_rule"]


def test_a_failed_write_keeps_the_old_data_set_whole(tmp_path, monkeypatch):
    """The data set is written as one folder and renamed into place: a crash half-way leaves the
    previous data set as it was and no temp folder."""
    import coder.data.datasets as cd

    out = tmp_path / "data"
    argv = ["data", "synth", "--out", str(out), "--docs", "60", "--words-min", "50", "--words-max", "80",
            "--pool-size", "40", "--top-n", "5", "--rare-n", "2", "--no-progress"]
    assert main(argv) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = []
    real = cd.write_codes

    def crash_on_second_set(set_dir, codes):
        calls.append(set_dir)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(set_dir, codes)

    monkeypatch.setattr(cd, "write_codes", crash_on_second_set)
    with pytest.raises(OSError):
        main([*argv[:-1], "--seed", "5", "--no-progress"])
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
