"""First-stage candidate recall and query time per method on a set's split (docs/retrieval.md).

    kept coder index --model MODEL --out IDX
    python benchmarks/first_stage.py --index IDX --data SYNTH/full --split test

Prints one JSON line per method: recall@50/100/300 (pooled over gold codes), doc_recall@300 and
the seconds to retrieve the split's notes, span encoding included (`encode_seconds`: span
embeddings are computed once per chunking and reused by the later methods of that chunking, whose
seconds are then search only); the TF-IDF fit of the term table is timed apart as `lexical_fit`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# name -> RetrieveConfig fields
METHODS = {
    "dense-tokens128": dict(method="dense", chunking="tokens", chunk_tokens=128, chunk_stride=64),
    "dense-tokens32": dict(method="dense", chunking="tokens", chunk_tokens=32, chunk_stride=16),
    "dense-sentence": dict(method="dense", chunking="sentence"),
    "dense-words12": dict(method="dense", chunking="words", span_words=12, span_stride=6),
    "lexical-sentence": dict(method="lexical", chunking="sentence"),
    "hybrid-sentence": dict(method="hybrid", chunking="sentence"),
    "hybrid-words12": dict(method="hybrid", chunking="words", span_words=12, span_stride=6),
    "rrf-sentence": dict(method="rrf", chunking="sentence"),
}


class CachedEncoder:
    """The encoder with span embeddings computed once per chunking: methods sharing a chunking
    then differ only in their search time. `prepare` encodes (timed, charged to the first method
    of each chunking, as `encode_seconds`); later methods of that chunking report 0 there."""

    def __init__(self, encoder) -> None:
        self.encoder, self.tokenizer, self.cache = encoder, encoder.tokenizer, {}

    def prepare(self, texts, config) -> float:
        from coder.retrieval.hybrid import _max_tokens, _span_size
        from coder.retrieval.spans import note_spans, span_texts

        pieces = [p for t in texts for p in span_texts(t, note_spans(t, config.chunking, *_span_size(config)))]
        todo = [p for p in dict.fromkeys(pieces) if (p, _max_tokens(config)) not in self.cache]
        t0 = time.perf_counter()
        if todo:
            for p, v in zip(todo, self.encoder.embed(todo, 64, max_length=_max_tokens(config))):
                self.cache[(p, _max_tokens(config))] = v
        return time.perf_counter() - t0

    def encode(self, texts, max_length=32, batch_size=64, *args, **kwargs):
        import numpy as np

        return np.stack([self.cache[(t, max_length)] for t in texts])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", required=True)
    ap.add_argument("--data", required=True, help="set directory (train/dev/test.csv, codes.txt)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--max-docs", type=int)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import numpy as np

    from coder.data.datasets import read_codes, read_split
    from coder.retrieval.candidates import RetrieveConfig, recall_at_k
    from coder.retrieval.hybrid import first_stage, load_lexical
    from coder.retrieval.index import load_index
    from kept.encoder import load_encoder

    ti = load_index(args.index, gpu=False)
    encoder = load_encoder(ti.meta["model"], ti.meta["pooling"], "cpu")
    t0 = time.perf_counter()
    lex = load_lexical(ti)
    print(json.dumps({"result": "lexical_fit", "terms": len(ti.terms), "seconds": round(time.perf_counter() - t0, 2)}),
          flush=True)
    allowed = np.isin(np.asarray(ti.codes, dtype=str), read_codes(args.data))
    docs = read_split(args.data, args.split)[:args.max_docs]
    gold = [d.labels for d in docs]
    cached = CachedEncoder(encoder)
    for name in args.methods:
        config = replace(RetrieveConfig(top_k=300), **METHODS[name])
        t0 = time.perf_counter()
        spans_encoded = config.chunking != "tokens" and config.method != "lexical"
        encode_s = cached.prepare([d.text for d in docs], config) if spans_encoded else 0.0
        found = first_stage(ti, cached if config.chunking != "tokens" else encoder, lex, [d.text for d in docs],
                            config, allowed, progress=False)
        seconds = time.perf_counter() - t0
        rec = recall_at_k(gold, [[ti.codes[j] for j in c] for c, _ in found])
        print(json.dumps({"result": "first_stage", "method": name, "notes": len(docs),
                          **{k: round(v, 4) for k, v in rec.items() if k.startswith("recall@")},
                          "doc_recall@300": round(rec["doc_recall@300"], 4), "seconds": round(seconds, 2),
                          "ms_per_note": round(1000 * seconds / max(len(docs), 1), 1),
                          "encode_seconds": round(encode_s, 2),
                          "config": METHODS[name]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
