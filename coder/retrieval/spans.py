"""A note cut into spans with character offsets: the first stage's queries and its evidence.

Offsets index the text as given (not a preprocessed copy), so `kept coder predict` can point at
the exact words of the user's note that made a code a candidate.
"""

from __future__ import annotations

import re
from typing import Sequence

from kept.encoder import window_starts
from kept.errors import KeptError

__all__ = ["CHUNKINGS", "sentence_spans", "word_window_spans", "token_window_spans", "note_spans", "span_texts"]

CHUNKINGS = ("sentence", "words", "tokens")

# A sentence ends at . ; : ! ? followed by a space or the end: "fx distal radius nec-cl" and
# "2.5 mg" stay whole, while "chief complaint: X" splits off its section header.
_SENTENCE = re.compile(r"[^.;:!?\n]+(?:[.;:!?](?=\s|$))?")
_WORD = re.compile(r"\S+")


def word_window_spans(text: str, words: int = 12, stride: int = 6, offset: int = 0) -> list[tuple[int, int]]:
    """Windows of `words` words, a new one every `stride` words; the tail gets a window of its own."""
    if words < 1 or stride < 1:
        raise KeptError("span length and stride must be >= 1 word")
    w = [(m.start() + offset, m.end() + offset) for m in _WORD.finditer(text)]
    if not w:
        return []
    return [(w[a][0], w[min(a + words, len(w)) - 1][1]) for a in window_starts(len(w), words, stride)]


def sentence_spans(text: str, max_words: int = 24) -> list[tuple[int, int]]:
    """Sentences (stripped); one longer than `max_words` words is cut into overlapping windows of
    `max_words` so a run-on list (a discharge-diagnosis section) does not become one diluted query."""
    out: list[tuple[int, int]] = []
    for m in _SENTENCE.finditer(text):
        s = m.group()
        if not s.strip():
            continue
        lead = len(s) - len(s.lstrip())
        a, b = m.start() + lead, m.start() + len(s.rstrip())
        if len(s.split()) > max_words:
            out.extend(word_window_spans(text[a:b], max_words, max(1, max_words // 2), a))
        else:
            out.append((a, b))
    return out


def token_window_spans(text: str, tokenizer, tokens: int = 128, stride: int = 64) -> list[tuple[int, int]]:
    """The encoder's token windows (TermEncoder.chunk_ids) as character spans, via the fast
    tokenizer's offset mapping."""
    if tokens < 1 or stride < 1:
        raise KeptError("chunk length and stride must be >= 1 token")
    off = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    if not off:
        return []
    return [(off[a][0], off[min(a + tokens, len(off)) - 1][1]) for a in window_starts(len(off), tokens, stride)]


def note_spans(text: str, chunking: str = "sentence", size: int = 24, stride: int = 12,
               tokenizer=None) -> list[tuple[int, int]]:
    """Spans of a note: `sentence` (cut past `size` words), `words` (`size`/`stride` words) or
    `tokens` (`size`/`stride` tokens of `tokenizer`). A blank note gives one empty span."""
    if chunking == "sentence":
        spans = sentence_spans(text, size)
    elif chunking == "words":
        spans = word_window_spans(text, size, stride)
    elif chunking == "tokens":
        if tokenizer is None:
            raise KeptError("token chunking needs the encoder's tokenizer")
        spans = token_window_spans(text, tokenizer, size, stride)
    else:
        raise KeptError(f"unknown chunking {chunking!r}; choose one of {', '.join(CHUNKINGS)}")
    return spans or [(0, 0)]


def span_texts(text: str, spans: Sequence[tuple[int, int]]) -> list[str]:
    return [text[a:b] for a, b in spans]
