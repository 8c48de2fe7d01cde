"""Sampler invariants on the bundled ICD-9-CM graph, triplet kinds checked against the graph, export."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from contrastive.sampling import BatchSampler, SamplerConfig, heldout_split
from contrastive.triplets import KINDS, export_triplets, sampler_triplets
from kept.errors import KeptError
from kgraph.query import parent, siblings, terms_of


@pytest.fixture(scope="module")
def heldout(G):
    return heldout_split(G, 0.1, seed=0)


@pytest.fixture(scope="module")
def sampler(G, heldout):
    return BatchSampler(G, SamplerConfig(i=8, j=4, k=2, seed=0), exclude=heldout)


def test_batches_have_n_slots_and_cycle_levels(G, sampler):
    L = len(sampler.levels)
    assert ("proc", 2) not in sampler.levels  # procedure categories have no title: nothing to draw
    assert L == 5
    for b in range(3 * L):
        batch = sampler.batch(b)
        assert len(batch) == 8 * 4 * 2
        kind, depth = sampler.level_of(b)
        assert sampler.levels[b % L] == (kind, depth)
        for code, role in zip(batch.codes, batch.roles):
            d = G.nodes[code]
            assert d["kind"] == kind or role == "parent"
            assert d["depth"] == (depth - 1 if role == "parent" else depth)
            assert terms_of(G, code), "a code with no term was drawn"
        groups = {}
        for code, g in zip(batch.codes, batch.groups):
            groups.setdefault(g, set()).add(code)
        assert len(groups) == 8 and all(len(c) == 4 for c in groups.values())
        # no code twice in a batch: each code has exactly k slots
        assert all(batch.codes.count(c) == 2 for c in set(batch.codes))


def test_reproducible_and_streams_differ(G, heldout, sampler):
    again = BatchSampler(G, SamplerConfig(seed=0), exclude=heldout)
    assert again.batch(7).texts == sampler.batch(7).texts
    assert BatchSampler(G, SamplerConfig(seed=1), exclude=heldout).batch(7).codes != sampler.batch(7).codes
    assert BatchSampler(G, SamplerConfig(seed=0), exclude=heldout, stream=1).batch(7).codes != sampler.batch(7).codes


def test_every_triplet_kind_is_right_by_the_graph(G, sampler):
    seen = set()
    for b in range(10):
        batch = sampler.batch(b)
        t = sampler_triplets(sampler, batch)
        assert len(t) > 0
        for a, p, n, k in zip(t.anchor, t.positive, t.negative, t.kind):
            ac, pc, nc = batch.codes[a], batch.codes[p], batch.codes[n]
            assert ac == pc != nc
            assert batch.texts[a] != batch.texts[p]
            own = {x.norm for x in terms_of(G, ac)}
            assert batch.norms[a] in own and batch.norms[p] in own and batch.norms[n] not in own
            expected = "parent" if nc == parent(G, ac) else "sibling" if nc in siblings(G, ac) else "inter"
            assert KINDS[k] == expected, (ac, nc)
            seen.add(expected)
    assert seen == set(KINDS)


def test_heldout_codes_and_terms_never_sampled(G, heldout, sampler):
    cats = [n for n, d in G.nodes(data=True) if d.get("type") == "code" and d["depth"] == 2]
    assert abs(len(heldout.categories) - 0.1 * len(cats)) <= 2
    c = sorted(heldout.categories)[0]
    assert all(ch in heldout.codes for ch in G.predecessors(c))  # descendants come along
    assert heldout_split(G, 0.1, seed=0) == heldout
    for b in range(200):
        batch = sampler.batch(b)
        assert not set(batch.codes) & heldout.codes
        assert not set(batch.norms) & heldout.term_norms


def test_codes_with_fewer_than_k_terms_are_padded_not_shrunk(G):
    s = BatchSampler(G, SamplerConfig(i=4, j=3, k=3, seed=3))
    for b in range(10):
        batch = s.batch(b)
        assert len(batch) == 4 * 3 * 3
        for code in set(batch.codes):
            slots = [x for x, c in enumerate(batch.codes) if c == code]
            n_terms = len(terms_of(G, code))
            assert sum(batch.repeated[x] for x in slots) == max(0, 3 - n_terms)
        t = sampler_triplets(s, batch)
        used = set(t.anchor) | set(t.positive) | set(t.negative)
        assert not any(batch.repeated[x] for x in used)


def test_bad_config_is_a_clear_error():
    with pytest.raises(KeptError):
        SamplerConfig(k=1)


def _rows_jsonl(p: Path):
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()]


def test_export_three_formats_read_back(sampler, tmp_path):
    import pandas as pd

    counts = {}
    for fmt in ("jsonl", "csv", "parquet"):
        counts[fmt] = export_triplets(sampler, tmp_path / f"t.{fmt}", batches=3, progress=False)
    assert counts["jsonl"] == counts["csv"] == counts["parquet"]
    rows = _rows_jsonl(tmp_path / "t.jsonl")
    assert len(rows) == counts["jsonl"]["total"]
    with open(tmp_path / "t.csv", newline="", encoding="utf-8") as fh:
        csv_rows = list(csv.DictReader(fh))
    pq = pd.read_parquet(tmp_path / "t.parquet").to_dict("records")
    assert len(csv_rows) == len(pq) == len(rows)
    for r, c, q in zip(rows[::97], csv_rows[::97], pq[::97]):
        assert r == {**c, "batch": int(c["batch"])} == {**q, "batch": int(q["batch"])}
    assert {r["batch"] for r in rows} == {0, 1, 2}
    assert sum(r["kind"] == "sibling" for r in rows) == counts["jsonl"]["sibling"]


def test_export_is_atomic_on_crash(sampler, tmp_path, monkeypatch):
    out = tmp_path / "t.jsonl"
    real = sampler.batch

    def failing(index):
        if index == 2:
            raise RuntimeError("disk on fire")
        return real(index)

    monkeypatch.setattr(sampler, "batch", failing)
    with pytest.raises(RuntimeError):
        export_triplets(sampler, out, batches=5, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_export(tmp_path, capsys):
    from kept.cli import main

    out = tmp_path / "t.parquet"
    assert main(["triplets", "export", "--out", str(out), "--batches", "2", "--i", "2", "--j", "3",
                 "--k", "2", "--seed", "5", "--holdout-fraction", "0.1"]) == 0
    import pandas as pd

    df = pd.read_parquet(out)
    assert list(df.columns) == ["batch", "level", "anchor_code", "anchor_term", "positive_term",
                                "negative_code", "negative_term", "kind"]
    assert "wrote" in capsys.readouterr().out
