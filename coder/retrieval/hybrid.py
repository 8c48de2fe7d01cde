"""First stage over note spans, with evidence: dense (FAISS), lexical (TF-IDF) or both fused.

A note is cut into spans (sentences by default, coder/retrieval/spans.py); every span is a query against
every term of every code, dense through the FAISS term index and lexical through coder/retrieval/lexical.py.
A (span, code) pair scores the code's best term in that span; a code scores its best span, and
that span (character offsets into the note as given) is the code's evidence.

Methods (`RetrieveConfig.method`):
  dense    cosine of the span and term embeddings
  lexical  TF-IDF cosine of span and term words and word pairs (ranks only codes with a term
           sharing a word with the note: may return fewer than top_k)
  hybrid   per pair (dense + w * lexical) / (1 + w), w = lexical_weight; best pair per code: a
           mention worded like a term and meaning it wins; a paraphrase still scores by its dense half
  rrf      reciprocal-rank fusion of the dense and lexical code rankings (sum of 1/(rrf_k + rank))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from tqdm import tqdm

from coder.retrieval.spans import note_spans, span_texts
from kept.errors import KeptError

__all__ = ["METHODS", "NoteHits", "best_per_code", "first_stage", "fuse_pairs", "load_lexical", "rrf_fuse",
           "search_spans"]

METHODS = ("dense", "lexical", "hybrid", "rrf")


@dataclass
class NoteHits:
    """One note's candidates: code indices (into TermIndex.codes) best first, their scores and
    the character span (start, end) of the note that gave each its score."""

    codes: np.ndarray
    scores: np.ndarray
    spans: np.ndarray  # (n, 2) int64


def best_pairs(span: np.ndarray, code: np.ndarray, sim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Max over terms per (span, code): (sorted unique keys span * C + code as int64, max sim)."""
    if sim.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    key = span.astype(np.int64) * (1 << 32) + code.astype(np.int64)
    order = np.lexsort((-sim, key))
    key, sim = key[order], sim[order]
    first = np.r_[True, key[1:] != key[:-1]]
    return key[first], sim[first].astype(np.float64)


def best_per_code(key: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best pair per code: (codes, scores, span indices), by score descending, ties by code."""
    if key.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64)
    span, code = key >> 32, key & 0xFFFFFFFF
    order = np.lexsort((-score, code))
    span, code, score = span[order], code[order], score[order]
    first = np.r_[True, code[1:] != code[:-1]]
    span, code, score = span[first], code[first], score[first]
    best = np.lexsort((code, -score))
    return code[best], score[best].astype(np.float32), span[best]


def fuse_pairs(dense: tuple[np.ndarray, np.ndarray], floor: np.ndarray, lexical: tuple[np.ndarray, np.ndarray],
               weight: float) -> tuple[np.ndarray, np.ndarray]:
    """(dense + weight * lexical) / (1 + weight) over the union of pairs. A pair outside a span's dense top hits gets
    that span's lowest returned cosine (`floor[span]`): an upper bound, so no pair is undersold;
    a pair with no shared word scores lexical 0."""
    keys = np.union1d(dense[0], lexical[0])
    d = floor[keys >> 32].astype(np.float64)
    hit = np.isin(keys, dense[0], assume_unique=True)
    d[hit] = dense[1][np.searchsorted(dense[0], keys[hit])]
    lx = np.zeros(len(keys))
    hit = np.isin(keys, lexical[0], assume_unique=True)
    lx[hit] = lexical[1][np.searchsorted(lexical[0], keys[hit])]
    # Divided by 1 + weight: the fused score stays on the cosine scale (<= 1) that the candidates
    # file promises and that rerank's (1 + s) / 2 stage-1 score assumes.
    return keys, (d + weight * lx) / (1.0 + weight)


def rrf_fuse(a: tuple[np.ndarray, np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray, np.ndarray],
             k: float = 60.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reciprocal-rank fusion of two (codes, scores, spans) rankings; a code keeps the span of the
    ranking that placed it higher. Codes absent from one ranking get nothing from it."""
    score: dict[int, float] = {}
    span: dict[int, tuple[int, int]] = {}  # code -> (best rank, span)
    for codes, _, spans in (a, b):
        for r, (c, s) in enumerate(zip(codes.tolist(), spans.tolist()), 1):
            score[c] = score.get(c, 0.0) + 1.0 / (k + r)
            if c not in span or r < span[c][0]:
                span[c] = (r, s)
    codes = np.array(sorted(score, key=lambda c: (-score[c], c)), dtype=np.int64)
    return (codes, np.array([score[c] for c in codes.tolist()], np.float32),
            np.array([span[c][1] for c in codes.tolist()], np.int64))


def _dense_pairs(ti, hits: tuple[np.ndarray, np.ndarray], allowed: np.ndarray | None):
    sims, ids = hits
    valid = ids >= 0  # HNSW / IVF pad short result lists with -1
    span = np.broadcast_to(np.arange(len(ids))[:, None], ids.shape)[valid]
    code, sim = ti.row_code[ids[valid]], sims[valid]
    floor = np.where(valid.any(1), np.where(valid, sims, np.inf).min(1), -1.0)
    if allowed is not None:
        keep = allowed[code]
        span, code, sim = span[keep], code[keep], sim[keep]
    return best_pairs(span, code, sim), floor


def _lexical_pairs(ti, lex, texts: Sequence[str], allowed: np.ndarray | None):
    m = lex.span_scores(texts)
    code = ti.row_code[m.col]
    keep = m.data > 0 if allowed is None else (m.data > 0) & allowed[code]
    return best_pairs(m.row[keep], code[keep], m.data[keep])


def _rank_note(ti, lex, texts, embs, hits, k: int, config, allowed, want: int):
    """(codes, scores, span indices) of one note's spans from its FAISS `hits` at `k`, searching
    again with twice the hits until `want` codes come back (as search_notes does) or the index is
    exhausted."""
    lexical = _lexical_pairs(ti, lex, texts, allowed) if config.method != "dense" else None
    if config.method == "lexical":
        return best_per_code(*lexical)
    n_total = int(ti.index.ntotal)
    while True:
        dense, floor = _dense_pairs(ti, hits, allowed)
        if config.method == "dense":
            ranked = best_per_code(*dense)
        elif config.method == "hybrid":
            ranked = best_per_code(*fuse_pairs(dense, floor, lexical, config.lexical_weight))
        else:
            ranked = rrf_fuse(best_per_code(*dense), best_per_code(*lexical), config.rrf_k)
        if len(ranked[0]) >= want or k >= n_total:
            return ranked
        k = min(2 * k, n_total)
        hits = ti.index.search(embs, k)


def search_spans(ti, encoder, lex, texts: Sequence[str], config, allowed: np.ndarray | None = None,
                 progress: bool = True) -> list[NoteHits]:
    """Top-k NoteHits per note. `ti` a TermIndex, `encoder` a TermEncoder (unused by `lexical`), `lex`
    a LexicalIndex (unused by `dense`), `config` a RetrieveConfig, `allowed` a mask over ti.codes.
    Notes go `config.batch_notes` at a time through the encoder and FAISS: one search call per
    batch, since FAISS's per-call cost dominates a single note's few dozen spans."""
    if config.method not in METHODS:
        raise KeptError(f"unknown retrieval method {config.method!r}; choose one of {', '.join(METHODS)}")
    want = min(config.top_k, len(ti.codes) if allowed is None else int(allowed.sum()))
    k = max(1, min(config.k_terms or config.top_k * max(ti.max_terms_per_code, 1), config.max_k_terms,
                   int(ti.index.ntotal)))
    tokenizer = getattr(encoder, "tokenizer", None)
    out: list[NoteHits] = []
    bar = tqdm(total=len(texts), desc="retrieving", disable=not progress, leave=False)
    for lo in range(0, len(texts), config.batch_notes):
        batch = texts[lo:lo + config.batch_notes]
        spans = [note_spans(t, config.chunking, *_span_size(config), tokenizer=tokenizer) for t in batch]
        pieces = [span_texts(t, sp) for t, sp in zip(batch, spans)]
        bounds = np.cumsum([0] + [len(p) for p in pieces])
        embs = sims = ids = None
        if config.method != "lexical":
            embs = encoder.embed([p for ps in pieces for p in ps], config.batch_size, max_length=_max_tokens(config))
            sims, ids = ti.index.search(embs, k)
        for i, text in enumerate(batch):
            a, b = bounds[i], bounds[i + 1]
            note = (embs[a:b], (sims[a:b], ids[a:b])) if embs is not None else (None, None)
            codes, scores, idx = _rank_note(ti, lex, pieces[i], *note, k, config, allowed, want)
            codes, scores, idx = codes[:want], scores[:want], idx[:want]
            out.append(NoteHits(codes, scores, np.asarray(spans[i], np.int64).reshape(-1, 2)[idx]))
        bar.update(len(batch))
    bar.close()
    return out


def _span_size(config) -> tuple[int, int]:
    if config.chunking == "tokens":
        return config.chunk_tokens, config.chunk_stride
    return config.span_words, config.span_stride


def _max_tokens(config) -> int:
    # Word spans: about 1.5 word pieces per clinical word, plus the two special tokens.
    return config.chunk_tokens + 2 if config.chunking == "tokens" else 2 * config.span_words + 2


def load_lexical(ti):
    """The TF-IDF half of the hybrid first stage, fitted on the index's own term table."""
    from coder.retrieval.lexical import build_lexical

    return build_lexical(ti.terms["term"].tolist())


def first_stage(ti, encoder, lex, texts: Sequence[str], config, allowed: np.ndarray | None = None,
                progress: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
    """(code indices, scores) per note: search_notes for dense token windows (exact, batched over
    notes), the span search above for every other method and chunking."""
    if config.method == "dense" and config.chunking == "tokens":
        from coder.retrieval.candidates import search_notes

        return search_notes(ti, encoder, texts, config, allowed, progress)
    return [(h.codes, h.scores) for h in search_spans(ti, encoder, lex, texts, config, allowed, progress)]
