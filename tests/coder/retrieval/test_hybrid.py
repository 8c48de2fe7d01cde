"""Span first stage: spans with offsets, pair aggregation and fusion by hand, lexical/hybrid search
with evidence on the tiny index, `kept coder retrieve --method`, `kept coder predict --index` and
`kept graph search --semantic`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.tiny import TINY_CODES, tiny_notes, write_set


def test_sentence_spans_offsets_and_long_sentences():
    from coder.retrieval.spans import note_spans, sentence_spans, word_window_spans

    text = "Chief complaint: chest pain.  Admitted with acute kidney injury; improved.\n"
    spans = sentence_spans(text)
    assert [text[a:b] for a, b in spans] == ["Chief complaint:", "chest pain.", "Admitted with acute kidney injury;",
                                             "improved."]
    long = " ".join(f"w{i}" for i in range(30))
    cut = sentence_spans(long, max_words=10)
    assert [len(long[a:b].split()) for a, b in cut] == [10, 10, 10, 10, 10]
    assert long[cut[0][0]:cut[0][1]].split()[0] == "w0" and long[cut[-1][0]:cut[-1][1]].split()[-1] == "w29"
    assert word_window_spans("a b c", 2, 1) == [(0, 3), (2, 5)]
    assert note_spans("   ") == [(0, 0)]


def test_token_spans_match_encoder_chunks(encoder_dir):  # noqa: F811
    from coder.retrieval.spans import token_window_spans
    from kept.encoder import load_encoder

    enc = load_encoder(encoder_dir, "mean")
    text = " ".join(["heart failure edema lasix"] * 10)
    spans = token_window_spans(text, enc.tokenizer, 16, 8)
    chunks = enc.chunk_ids(text, 16, 8)
    assert len(spans) == len(chunks)
    for (a, b), ids in zip(spans, chunks):
        assert enc.tokenizer(text[a:b], add_special_tokens=False)["input_ids"] == ids


def test_pairs_fusion_and_rrf_by_hand():
    from coder.retrieval.hybrid import best_pairs, best_per_code, fuse_pairs, rrf_fuse

    # dense: span 0 -> code 1 .9 (two terms: .9, .2), code 2 .5; span 1 -> code 2 .8; floors .5 / .8
    dense = best_pairs(np.array([0, 0, 0, 1]), np.array([1, 1, 2, 2]), np.array([.9, .2, .5, .8]))
    codes, scores, spans = best_per_code(*dense)
    assert codes.tolist() == [1, 2] and spans.tolist() == [0, 1]
    np.testing.assert_allclose(scores, [.9, .8], atol=1e-6)
    # lexical: span 0 code 2 .6, span 1 code 3 .7 (code 3 has no dense pair in span 1: floor .8)
    lexical = best_pairs(np.array([0, 1]), np.array([2, 3]), np.array([.6, .7]))
    keys, fused = fuse_pairs(dense, np.array([.5, .8]), lexical, weight=1.0)
    codes, scores, spans = best_per_code(keys, fused)
    assert codes.tolist() == [3, 2, 1] and spans.tolist() == [1, 0, 0]
    np.testing.assert_allclose(scores, [1.5 / 2, 1.1 / 2, .9 / 2], atol=1e-6)
    a = (np.array([1, 2]), np.zeros(2), np.array([0, 1]))
    b = (np.array([2, 3]), np.zeros(2), np.array([5, 6]))
    codes, scores, spans = rrf_fuse(a, b, k=1)
    assert codes.tolist() == [2, 1, 3] and spans.tolist() == [5, 0, 6]
    np.testing.assert_allclose(scores, [1 / 3 + 1 / 2, 1 / 2, 1 / 3], atol=1e-6)


@pytest.mark.parametrize("method", ["lexical", "hybrid", "rrf", "dense"])
def test_search_spans_finds_named_code_with_evidence(index_dir, method):  # noqa: F811
    from coder.retrieval.candidates import RetrieveConfig
    from coder.retrieval.hybrid import load_lexical, search_spans
    from coder.retrieval.index import load_index
    from kept.encoder import load_encoder

    ti = load_index(index_dir)
    enc = load_encoder(ti.meta["model"], ti.meta["pooling"])
    title = ti.terms[ti.terms.code == "428.0"]["term"].iloc[0]
    text = f"Seen in clinic today. Admitted with {title}. Discharged home in stable condition."
    cfg = RetrieveConfig(top_k=7, method=method)
    hits = search_spans(ti, enc, load_lexical(ti), [text], cfg, progress=False)[0]
    assert len(hits.codes) == 7 and np.all(np.diff(hits.scores) <= 1e-6)
    for (a, b) in hits.spans:
        assert 0 <= a <= b <= len(text)
    # The random tiny encoder cannot be expected to find it, and RRF gives its ranking an equal say
    # (rank-only fusion: a random dense rank can push the lexical winner out of the top 3).
    if method in ("lexical", "hybrid"):
        got = [ti.codes[j] for j in hits.codes]
        assert "428.0" in got[:3]
        a, b = hits.spans[got.index("428.0")]
        assert title.lower() in text[a:b].lower()
    allowed = np.isin(ti.codes, ["428.0", "401.9"])
    hits = search_spans(ti, enc, load_lexical(ti), [text], cfg, allowed, progress=False)[0]
    assert sorted(ti.codes[j] for j in hits.codes) == ["401.9", "428.0"]


def test_retrieve_cli_methods(index_dir, tmp_path):  # noqa: F811
    from coder.retrieval.candidates import read_candidates
    from kept.cli import main

    data = write_set(tmp_path / "full", TINY_CODES, {"dev": tiny_notes(3, 2), "test": tiny_notes(4, 3)})
    for method in ("lexical", "rrf"):
        out = tmp_path / method
        assert main(["coder", "retrieve", "--index", str(index_dir), "--data", str(data), "--out", str(out),
                     "--top-k", "4", "--method", method, "--splits", "test", "--no-progress"]) == 0
        cands = read_candidates(out / "candidates_test.parquet")
        # lexical alone ranks only codes sharing a word with the note; the fusions fill top k
        assert len(cands) == 4 and all(len(c) == 4 or method == "lexical" and len(c) <= 4 for c, _ in cands.values())
        assert json.loads((out / "retrieval.json").read_text())["config"]["method"] == method


def test_semantic_graph_search(index_dir, capsys):  # noqa: F811
    from coder.retrieval.index import load_index
    from coder.retrieval.term_search import semantic_search
    from kept.cli import main

    ti = load_index(index_dir)
    title = ti.terms[ti.terms.code == "401.9"]["term"].iloc[0]
    hits = semantic_search(index_dir, title, limit=5)
    assert hits[0].code == "401.9" and hits[0].term == title and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert len({h.code for h in hits}) == 5 and all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    assert main(["graph", "search", title, "--semantic", "--index", str(index_dir), "--limit", "3", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["code"] == "401.9" and set(rows[0]) == {"code", "term", "kind", "score"}
    assert main(["graph", "search", "heart", "--semantic"]) == 1  # no --index: one-line error
    assert "--index" in capsys.readouterr().err


def test_predict_with_index_prints_evidence(coder_dir, index_dir, tmp_path, capsys):  # noqa: F811
    from coder.predict import predict_with_index
    from coder.retrieval.candidates import RetrieveConfig
    from coder.retrieval.index import load_index
    from kept.cli import main

    ti = load_index(index_dir)
    title = ti.terms[ti.terms.code == "584.9"]["term"].iloc[0]
    # a long note: the first stage reads every span, offsets index the text as given
    text = "Seen today.\n" + "Vitals stable, afebrile. " * 300 + f"Admitted with [**name**] {title}. Home."
    preds = predict_with_index(coder_dir, index_dir, text, RetrieveConfig(top_k=6, method="lexical"), threshold=0)
    assert 1 <= len(preds) <= 6 and all(a.probability >= b.probability for a, b in zip(preds, preds[1:]))
    p = next(p for p in preds if p.code == "584.9")
    assert text[p.start:p.end] == p.evidence and title.lower() in p.evidence.lower() and p.stage1_rank == 1
    note = tmp_path / "note.txt"
    note.write_text(text, encoding="utf-8")
    args = ["coder", "predict", str(note), "--checkpoint", str(coder_dir), "--index", str(index_dir),
            "--top-k", "6", "--threshold", "0"]
    assert main(args + ["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"code", "probability", "description", "evidence", "start", "end", "stage1_score"} <= set(rows[0])
    assert main(args) == 0
    assert "evidence [" in capsys.readouterr().out


def test_predict_with_a_candidate_reranker_prints_the_fused_score(coder_dir, index_dir, tmp_path):  # noqa: F811
    """A reranker trained on candidates stores its dev-tuned fusion weight; predict scores as rerank does."""
    import shutil

    from coder.predict import predict_with_index
    from coder.retrieval.candidates import RetrieveConfig

    reranker = tmp_path / "reranker"
    shutil.copytree(coder_dir, reranker)
    info = json.loads((reranker / "kept_coder.json").read_text())
    info["candidate_training"] = {"stage1_weight": 0.4}
    (reranker / "kept_coder.json").write_text(json.dumps(info))
    text = "Admitted with acute kidney failure and atrial fibrillation; home on day three."
    cfg = RetrieveConfig(top_k=6, method="lexical")
    alone = {p.code: p for p in predict_with_index(coder_dir, index_dir, text, cfg, threshold=0)}
    fused = predict_with_index(reranker, index_dir, text, cfg, threshold=0)
    assert {p.code for p in fused} == set(alone)
    for p in fused:
        a = alone[p.code]
        assert p.stage1_score == a.stage1_score
        assert p.probability == pytest.approx(0.4 * (1 + a.stage1_score) / 2 + 0.6 * a.probability, abs=1e-6)
