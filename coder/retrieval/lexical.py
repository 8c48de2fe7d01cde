"""Lexical half of the first stage: TF-IDF cosine between a note's spans and every indexed term.

Dense term embeddings blur near-identical titles (all "closed fracture of ..." codes sit together)
and a pooled window dilutes a short mention, so a note that names a code with the code's own words
can still miss it. Word and word-pair overlap weighted by rarity finds those mentions exactly; the
dense score keeps paraphrases. The vectoriser is fitted on the index's own term table when the
index is loaded (about a second for 35k terms), so an index folder needs no extra file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.sparse as sp

__all__ = ["LexicalIndex", "build_lexical"]

TOKEN_PATTERN = r"(?u)\b\w+\b"  # single letters and digits count: "type ii", "stage 4"


@dataclass
class LexicalIndex:
    """A fitted TF-IDF vectoriser and the (terms x vocabulary) matrix of unit rows."""

    vectorizer: object
    matrix: sp.csr_matrix

    def span_scores(self, texts: Sequence[str]) -> sp.coo_matrix:
        """(spans x terms) cosine, sparse: only pairs sharing a word or word pair are stored."""
        q = self.vectorizer.transform(list(texts))
        return (q @ self.matrix.T).tocoo()


def build_lexical(terms: Sequence[str], ngram_max: int = 2) -> LexicalIndex:
    """Fit TF-IDF (words and word pairs, sublinear tf, idf over the term list) on the terms."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    unique, inverse = np.unique(np.asarray(terms, dtype=str), return_inverse=True)
    vec = TfidfVectorizer(lowercase=True, token_pattern=TOKEN_PATTERN, ngram_range=(1, ngram_max),
                          sublinear_tf=True, dtype=np.float32)
    m = vec.fit_transform(list(unique))
    return LexicalIndex(vec, m[inverse].tocsr())
