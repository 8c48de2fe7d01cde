"""First stage: term index over a small ICD-9 subgraph with a tiny random BERT encoder, search,
per-code aggregation, recall@k and `kept coder retrieve` on a data set in the contract layout."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from tests.tiny import TINY_CODES, tiny_notes, write_set


def test_term_table_leaves_only_unless_all_codes(subgraph):
    from coder.retrieval.index import term_table
    from kgraph.query import terms_of

    leaves = term_table(subgraph)
    assert set(leaves["code"]) == {n for n, d in subgraph.nodes(data=True) if d.get("type") == "code" and d["leaf"]}
    assert "250" not in set(leaves["code"]) and "250.01" in set(leaves["code"])
    assert sorted(leaves[leaves.code == "250.01"]["term"]) == sorted(t.text for t in terms_of(subgraph, "250.01"))
    assert "250" in set(term_table(subgraph, all_codes=True)["code"])


def test_index_round_trip(index_dir, subgraph):
    from coder.retrieval.index import load_index, term_table

    ti = load_index(index_dir)
    meta = json.loads((index_dir / "index.json").read_text())
    assert meta["count"] == ti.index.ntotal == len(term_table(subgraph)) == len(ti.terms)
    assert meta["pooling"] == "cls" and meta["index_type"] == "flat" and meta["dim"] == 32
    assert list(ti.terms.columns) == ["code", "term", "kind"]
    assert [ti.codes[j] for j in ti.row_code] == ti.terms["code"].tolist()
    # the stored vectors are the encoder's unit vectors of each row's term
    from kept.encoder import load_encoder

    enc = load_encoder(meta["model"], "cls")
    rows = [0, 5, len(ti.terms) - 1]
    stored = np.stack([ti.index.reconstruct(r) for r in rows])
    np.testing.assert_allclose(stored, enc.embed(ti.terms["term"].iloc[rows].tolist()), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, atol=1e-5)


def test_missing_index_file_names_it(index_dir, tmp_path):
    from coder.retrieval.index import load_index
    from kept.errors import InputFileError

    with pytest.raises(InputFileError, match="terms.faiss"):
        load_index(tmp_path)


def test_flat_search_equals_numpy_brute_force(index_dir):
    from coder.retrieval.index import load_index

    ti = load_index(index_dir)
    x = ti.index.reconstruct_n(0, ti.index.ntotal)
    q = np.random.default_rng(0).normal(size=(7, x.shape[1])).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    sims, ids = ti.index.search(q, 10)
    brute = q @ x.T
    np.testing.assert_allclose(sims, -np.sort(-brute, axis=1)[:, :10], atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(brute, ids, axis=1), sims, atol=1e-5)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_find_the_exact_neighbours(kind):
    from coder.retrieval.index import IndexConfig, make_index

    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:50] + 0.01 * rng.normal(size=(50, 16)).astype(np.float32)
    exact = faiss.IndexFlatIP(16)
    exact.add(x)
    _, want = exact.search(q, 5)
    _, got = make_index(x, IndexConfig(index_type=kind, ivf_nprobe=64)).search(q, 5)
    assert (got[:, 0] == want[:, 0]).mean() >= 0.95


def test_aggregation_hand_example():
    from coder.retrieval.candidates import aggregate_hits

    # code 0: chunk 0 terms .9/.2, chunk 1 .5 -> max .9, mean-top(2) (.9+.5)/2 = .7
    # code 1: chunk 1 .8 only -> max .8, mean-top(2) .4
    # code 2: chunk 0 .3, chunk 1 .85, chunk 2 .84 -> max .85, mean-top(2) .845
    chunk = np.array([0, 0, 1, 1, 0, 1, 2])
    code = np.array([0, 0, 0, 1, 2, 2, 2])
    sim = np.array([.9, .2, .5, .8, .3, .85, .84], dtype=np.float32)
    codes, scores = aggregate_hits(chunk, code, sim, "max")
    assert codes.tolist() == [0, 2, 1]
    np.testing.assert_allclose(scores, [.9, .85, .8], atol=1e-6)
    codes, scores = aggregate_hits(chunk, code, sim, "mean-top", top_m=2)
    assert codes.tolist() == [2, 0, 1]
    np.testing.assert_allclose(scores, [.845, .7, .4], atol=1e-6)
    codes, scores = aggregate_hits(chunk, code, sim, "logsumexp", temperature=0.1)
    want = {c: 0.1 * np.log(np.exp(np.array(v) / 0.1).sum()) for c, v in {0: [.9, .5], 1: [.8], 2: [.3, .85, .84]}.items()}
    assert codes.tolist() == sorted(want, key=lambda c: -want[c])
    np.testing.assert_allclose(scores, sorted(want.values(), reverse=True), atol=1e-5)


def _brute_force_top(ti, enc, text, cfg, top_k):
    x = ti.index.reconstruct_n(0, ti.index.ntotal)
    c = enc.embed_ids(enc.chunk_ids(text, cfg.chunk_tokens, cfg.chunk_stride))
    best = (c @ x.T).max(axis=0)  # max over chunks, per term
    per_code = np.full(len(ti.codes), -np.inf)
    np.maximum.at(per_code, ti.row_code, best)  # max over the code's terms
    order = np.lexsort((np.arange(len(per_code)), -per_code))[:top_k]
    return order, per_code[order]


def test_search_max_is_exact_and_fills_top_k(index_dir):
    from coder.retrieval.candidates import RetrieveConfig, search_notes
    from coder.retrieval.index import load_index
    from kept.encoder import load_encoder

    ti = load_index(index_dir)
    enc = load_encoder(ti.meta["model"], ti.meta["pooling"])
    texts = [t for t, _ in tiny_notes(3, 7)]
    for k_terms in (0, 1):  # 0: automatic (exact by construction); 1: forces the widening loop
        cfg = RetrieveConfig(top_k=20, chunk_tokens=16, chunk_stride=8, k_terms=k_terms)
        found = search_notes(ti, enc, texts, cfg, progress=False)
        for text, (codes, scores) in zip(texts, found):
            want_codes, want_scores = _brute_force_top(ti, enc, text, cfg, 20)
            assert len(codes) == 20
            np.testing.assert_allclose(scores, want_scores, atol=1e-5)
            assert set(codes[scores > want_scores[-1] + 1e-5]) <= set(want_codes)
    allowed = np.isin(ti.codes, TINY_CODES)
    codes, _ = search_notes(ti, enc, texts[:1], RetrieveConfig(top_k=50, chunk_tokens=16, chunk_stride=8),
                            allowed, progress=False)[0]
    assert sorted(ti.codes[j] for j in codes) == sorted(c for c in TINY_CODES if c in ti.codes)


def test_chunks_overlap_and_cover_the_note(encoder_dir):
    from kept.encoder import load_encoder

    enc = load_encoder(encoder_dir, "mean")
    text = " ".join(["heart failure edema lasix"] * 30)
    ids = enc.tokenizer(text, add_special_tokens=False)["input_ids"]
    chunks = enc.chunk_ids(text, 16, 8)
    assert all(len(c) == 16 for c in chunks) and chunks[0] == ids[:16] and chunks[1] == ids[8:24]
    assert chunks[-1] == ids[-16:]
    assert len(enc.chunk_ids(text, 1000, 500)[0]) == 64 - 2  # capped at the encoder's positions
    v = enc.embed(["heart failure", "insulin"])
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_recall_at_k_hand_example():
    from coder.retrieval.candidates import recall_at_k

    gold = [["a", "b"], ["c"], []]
    ranked = [["a", "x", "b"], ["y", "z", "c"], ["a"]]
    r = recall_at_k(gold, ranked, ks=(1, 3))
    assert r["recall@1"] == pytest.approx(1 / 3) and r["recall@3"] == pytest.approx(1.0)
    assert r["doc_recall@1"] == pytest.approx((0.5 + 0) / 2)


def test_retrieve_writes_candidates_and_recall(index_dir, tmp_path):
    from coder.retrieval.candidates import RetrieveConfig, read_candidates, retrieve
    from kept.cli import main

    data = tmp_path / "data"
    write_set(data / "full", TINY_CODES + ["250.01", "428.1"],
              {"train": tiny_notes(4, 1), "dev": tiny_notes(5, 2), "test": tiny_notes(5, 3)})
    cfg = RetrieveConfig(top_k=5, chunk_tokens=16, chunk_stride=8)
    summary = retrieve(index_dir, data / "full", tmp_path / "cands", cfg, progress=False)
    test = read_candidates(tmp_path / "cands" / "candidates_test.parquet")
    assert len(test) == 5 and all(len(c) == 5 for c, _ in test.values())
    assert all(np.all(np.diff(s) <= 0) for _, s in test.values())
    assert set(c for cs, _ in test.values() for c in cs) <= set(TINY_CODES + ["250.01", "428.1"])
    rec = summary["splits"]["test"]
    assert set(rec) >= {"recall@5", "doc_recall@5", "docs", "seconds"}
    assert 0.0 <= rec["recall@5"] <= 1.0
    on_disk = json.loads((tmp_path / "cands" / "retrieval.json").read_text())
    assert on_disk["splits"]["test"]["recall@5"] == rec["recall@5"]
    # the CLI runs the same function
    assert main(["coder", "retrieve", "--index", str(index_dir), "--data", str(data / "full"), "--out",
                 str(tmp_path / "cli"), "--top-k", "5", "--chunk-tokens", "16", "--chunk-stride", "8",
                 "--splits", "test", "--no-progress"]) == 0
    assert read_candidates(tmp_path / "cli" / "candidates_test.parquet").keys() == test.keys()


class FakeGpuIndex:
    """Stands in for a faiss GPU index: records every k and refuses k above faiss-gpu's limit."""

    def __init__(self, index, limit):
        self.index, self.limit, self.ntotal, self.asked = index, limit, index.ntotal, []

    def search(self, x, k):
        self.asked.append(k)
        if k > self.limit:
            raise RuntimeError(f"GPU index only supports k <= {self.limit}")
        return self.index.search(x, k)


FakeGpuIndex.__name__ = "GpuIndexFlatIP"


def test_gpu_index_never_asked_more_than_its_limit(index_dir, monkeypatch):
    """faiss-gpu answers k <= 2048; the automatic k and the widening loop go past it on a large
    index: those searches must go to the CPU copy, with the same results."""
    import coder.retrieval.candidates as R
    import coder.retrieval.index as I
    from kept.encoder import load_encoder

    ti = I.load_index(index_dir)
    enc = load_encoder(ti.meta["model"], ti.meta["pooling"])
    texts = [t for t, _ in tiny_notes(2, 7)]
    limit = 8  # the index here is small: scale faiss-gpu's 2048 down with it
    monkeypatch.setattr(I, "GPU_MAX_K", limit)
    for k_terms in (0, 1):  # automatic k (top_k * terms per code > limit) and the widening loop
        cfg = R.RetrieveConfig(top_k=20, chunk_tokens=16, chunk_stride=8, k_terms=k_terms)
        want = R.search_notes(ti, enc, texts, cfg, progress=False)
        gpu = I.TermIndex(FakeGpuIndex(ti.index, limit), ti.terms, ti.meta, cpu_index=ti.index)
        got = R.search_notes(gpu, enc, texts, cfg, progress=False)
        assert max(gpu.index.asked, default=0) <= limit and (k_terms == 0 or gpu.index.asked)
        for (wc, ws), (gc, gs) in zip(want, got):
            assert wc.tolist() == gc.tolist() and np.allclose(ws, gs)
