"""The evidence view of a note: each prompt reads, instead of the whole note, the sentence of the note
that best matches each of its codes (`CoderConfig.note_view = "evidence"`).

Why: with the whole note after a 50-code prompt, a mask has to find the one mention of its code among
a thousand tokens, and on a CPU budget the coder never learns to (docs/coder.md, "Does the prompted
coder learn?"). The term index already knows where a code is mentioned: the first stage scores every
(sentence, code term) pair by dense cosine plus TF-IDF cosine (coder/retrieval/hybrid.py). Here the
same pair score picks, per code, its best sentence of the note; the prompt `desc [MASK]. sentence`
then asks the masked LM whether that sentence states the code. The knowledge (synonyms,
abbreviations, the HSAP encoder) chooses where to look; the prompted coder decides.

Scores are exact: every sentence against every term of the prompt's codes, no FAISS cut-off, so a
code's evidence does not depend on which other codes share its prompt.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from coder.retrieval.candidates import RetrieveConfig
from coder.retrieval.spans import note_spans
from kept.errors import KeptError

__all__ = ["NOTE_VIEWS", "EvidenceFinder", "load_finder", "prompt_views", "join_evidence"]

log = logging.getLogger(__name__)

NOTE_VIEWS = ("note", "evidence")
# the first stage's own settings (RetrieveConfig): sentence cap and (dense + w * lexical) / (1 + w)
SPAN_WORDS, LEXICAL_WEIGHT = RetrieveConfig.span_words, RetrieveConfig.lexical_weight

Evidence = dict[str, tuple[int, int, float]]  # code -> (start, end, score) in the note as given


@dataclass
class EvidenceFinder:
    """Best sentence per code with a term index's encoder, terms and TF-IDF vectoriser."""

    encoder: object  # kept.encoder.TermEncoder
    terms: object  # pandas DataFrame (code, term, kind): the index's term table
    lexical: object  # coder.retrieval.lexical.LexicalIndex over those terms
    term_tokens: int = 32  # the index's own cut of a term (index.json max_length), so vectors match it
    rows: dict[str, np.ndarray] = field(init=False, repr=False)
    _vectors: dict[int, np.ndarray] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        codes = self.terms["code"].to_numpy(dtype=str)
        order = np.argsort(codes, kind="stable")
        bounds = np.flatnonzero(np.r_[True, codes[order][1:] != codes[order][:-1], True])
        self.rows = {codes[order[a]]: order[a:b] for a, b in zip(bounds[:-1], bounds[1:])}

    def _term_vectors(self, rows: np.ndarray) -> np.ndarray:
        """Dense term vectors, embedded on first use and kept (a reranker meets new codes per note)."""
        new = [int(r) for r in rows if int(r) not in self._vectors]
        if new:
            texts = self.terms["term"].to_numpy(dtype=str)[new]
            for r, v in zip(new, self.encoder.embed(list(texts), max_length=self.term_tokens)):
                self._vectors[r] = v
        return np.stack([self._vectors[int(r)] for r in rows]) if len(rows) else np.zeros((0, self.encoder.dim))

    def find(self, texts: Sequence[str], codes: Sequence[Sequence[str]]) -> list[Evidence]:
        """Per note, its best sentence for each of its codes (a code with no indexed term is left out)."""
        if len(texts) != len(codes):
            raise KeptError(f"{len(texts)} notes but {len(codes)} code lists")
        wanted = sorted({c for cs in codes for c in cs})
        missing = [c for c in wanted if c not in self.rows]
        if missing:
            log.warning("%d codes have no term in the evidence index: their prompts read no evidence (e.g. %s)",
                        len(missing), missing[:3])
        spans = [note_spans(t, "sentence", SPAN_WORDS) for t in texts]
        pieces = [t[a:b] for t, sp in zip(texts, spans) for a, b in sp]
        embs = self.encoder.embed(pieces, max_length=2 * SPAN_WORDS + 2) if pieces else None
        lex = self.lexical.vectorizer.transform(pieces) if pieces else None
        out, lo = [], 0
        for text, sp, cs in zip(texts, spans, codes):
            hi = lo + len(sp)
            out.append(self._best(sp, embs[lo:hi], lex[lo:hi], [c for c in cs if c in self.rows]))
            lo = hi
        return out

    def _best(self, spans, embs: np.ndarray, lex, codes: list[str]) -> Evidence:
        if not codes:
            return {}
        rows = np.concatenate([self.rows[c] for c in codes])
        owner = np.repeat(np.arange(len(codes)), [len(self.rows[c]) for c in codes])
        pair = embs @ self._term_vectors(rows).T  # (spans, terms)
        pair = (pair + LEXICAL_WEIGHT * (lex @ self.lexical.matrix[rows].T).toarray()) / (1 + LEXICAL_WEIGHT)
        per_code = np.full((len(spans), len(codes)), -np.inf, dtype=np.float64)
        np.maximum.at(per_code.T, owner, pair.T)  # best term of each code, per span
        best = per_code.argmax(axis=0)
        return {c: (int(spans[s][0]), int(spans[s][1]), float(per_code[s, j]))
                for j, (c, s) in enumerate(zip(codes, best))}


def join_evidence(text: str, evidence: Evidence, codes: Sequence[str]) -> str:
    """The text a prompt of `codes` reads: their evidence sentences in note order, overlapping ones
    (word windows of a long sentence) merged, so no word is read twice."""
    merged: list[list[int]] = []
    for a, b in sorted({evidence[c][:2] for c in codes if c in evidence}):
        if merged and a < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return " ".join(text[a:b] for a, b in merged)


def prompt_views(finder: EvidenceFinder, texts: Sequence[str], prompts: Sequence) -> list[list[str]]:
    """views[d][k]: what prompt k (an EncodedPrompt) reads for note d."""
    union = sorted({c for p in prompts for c in p.codes})
    evidence = finder.find(texts, [union] * len(texts))
    return [[join_evidence(t, ev, p.codes) for p in prompts] for t, ev in zip(texts, evidence)]


@functools.lru_cache(maxsize=2)
def load_finder(index_dir: str) -> EvidenceFinder:
    """The finder of a term index folder (`kept coder index`), loaded once per process."""
    from coder.retrieval.hybrid import load_lexical
    from coder.retrieval.index import load_index
    from kept.encoder import load_encoder

    if not index_dir:
        raise KeptError("note_view evidence needs a term index: --evidence-index INDEX_DIR (from `kept coder index`)")
    ti = load_index(Path(index_dir), gpu=False)
    encoder = load_encoder(ti.meta["model"], ti.meta.get("pooling", "auto"))
    return EvidenceFinder(encoder, ti.terms, load_lexical(ti), int(ti.meta.get("max_length", 32)))
