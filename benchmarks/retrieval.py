"""First-stage retrieval: FAISS (flat / HNSW / IVF) against a numpy brute-force baseline in the same
run, over every term of the index (all ICD-9 leaf terms for the bundled graph), with the chunk
queries of N notes (3,372 = MIMIC-III-full test); then candidate recall@k on a synthetic full set.

    kept coder index --model MODEL --out IDX
    python benchmarks/retrieval.py --index IDX --data SYNTH/full --notes 3372

Prints one JSON line per result. Query vectors are the encoder's real chunk embeddings of the set's
notes (`--encode-notes` of them, timed: that is the encoder's cost); to reach N notes their chunk
vectors are reused cyclically (search cost depends on the number of queries, not their content).
`speedup_vs_numpy` = numpy seconds / method seconds; `recall_vs_exact` = share of the exact top-k
term ids an approximate index returns.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def numpy_topk(x: np.ndarray, q: np.ndarray, k: int, batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner product: matmul, argpartition, sort of the k (the obvious numpy way)."""
    sims = np.empty((len(q), k), dtype=np.float32)
    ids = np.empty((len(q), k), dtype=np.int64)
    for lo in range(0, len(q), batch):
        s = q[lo:lo + batch] @ x.T
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        ps = np.take_along_axis(s, part, axis=1)
        order = np.argsort(-ps, axis=1)
        ids[lo:lo + batch] = np.take_along_axis(part, order, axis=1)
        sims[lo:lo + batch] = np.take_along_axis(ps, order, axis=1)
    return sims, ids


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", required=True, help="folder from `kept coder index` (its vectors are reused)")
    ap.add_argument("--data", required=True, help="synthetic full set directory (train/dev/test.csv, codes.txt)")
    ap.add_argument("--notes", type=int, default=3372, help="notes whose chunks are searched (default 3372)")
    ap.add_argument("--encode-notes", type=int, default=100, help="notes actually embedded (timed)")
    ap.add_argument("--top-k", type=int, default=300)
    ap.add_argument("--chunk-tokens", type=int, default=128)
    ap.add_argument("--chunk-stride", type=int, default=64)
    ap.add_argument("--recall-splits", nargs="+", default=["dev", "test"])
    ap.add_argument("--aggregations", nargs="+", default=["max", "mean-top", "logsumexp"])
    ap.add_argument("--skip-recall", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import faiss

    from coder.data.datasets import read_codes, read_split
    from coder.retrieval.candidates import RetrieveConfig, recall_at_k, search_notes
    from coder.retrieval.index import IndexConfig, load_index, make_index
    from kept.encoder import load_encoder

    ti = load_index(args.index, gpu=False)
    x = ti.index.reconstruct_n(0, ti.index.ntotal)
    meta = ti.meta
    env = {"faiss": faiss.__version__, "cpus": os.cpu_count(), "faiss_gpus": faiss.get_num_gpus(),
           "terms": int(len(x)), "codes": len(ti.codes), "dim": int(x.shape[1]), "model": Path(meta["model"]).name}
    emit(result="term_embedding", seconds=meta.get("embed_seconds"), texts=meta.get("unique_texts"),
         texts_per_s=round(meta["unique_texts"] / meta["embed_seconds"], 1) if meta.get("embed_seconds") else None,
         max_length=meta["max_length"], note="from index.json (kept coder index)", **env)

    enc = load_encoder(meta["model"], meta["pooling"])
    docs = [d for s in ("test", "dev", "train") for d in read_split(args.data, s)][:args.encode_notes]
    pieces = [enc.chunk_ids(d.text, args.chunk_tokens, args.chunk_stride) for d in docs]
    flat_pieces = [p for ps in pieces for p in ps]
    q_real, t_enc = timed(enc.embed_ids, flat_pieces, 64)
    per_note = len(flat_pieces) / len(docs)
    emit(result="chunk_embedding", notes=len(docs), chunks=len(flat_pieces), chunks_per_note=round(per_note, 2),
         seconds=round(t_enc, 2), chunks_per_s=round(len(flat_pieces) / t_enc, 1),
         est_seconds_for_notes=round(t_enc / len(docs) * args.notes, 1), notes_target=args.notes)
    n_q = int(round(per_note * args.notes))
    q = np.ascontiguousarray(q_real[np.arange(n_q) % len(q_real)])
    k = min(args.top_k * max(ti.max_terms_per_code, 1), 4096, len(x))

    # ---- build
    _, t_np_build = timed(lambda: np.ascontiguousarray(x.copy()))
    emit(result="build", method="numpy", seconds=round(t_np_build, 4), terms=len(x), speedup_vs_numpy=1.0)
    indexes = {}
    for kind in ("flat", "hnsw", "ivf"):
        idx, t = timed(make_index, x, IndexConfig(index_type=kind))
        indexes[kind] = idx
        emit(result="build", method=f"faiss-{kind}", seconds=round(t, 4), terms=len(x),
             ratio_vs_numpy=round(t / max(t_np_build, 1e-9), 1))

    # ---- query
    (s_np, i_np), t_np = timed(numpy_topk, x, q, k)
    emit(result="query", method="numpy", queries=n_q, notes=args.notes, k=k, seconds=round(t_np, 2),
         queries_per_s=round(n_q / t_np, 1), speedup_vs_numpy=1.0)
    for kind, idx in indexes.items():
        (s_f, i_f), t = timed(idx.search, q, k)
        top = min(k, 50)
        rec = float(np.mean([len(set(a[:top]) & set(b[:top])) / top for a, b in zip(i_f[:2000], i_np[:2000])]))
        emit(result="query", method=f"faiss-{kind}", queries=n_q, notes=args.notes, k=k, seconds=round(t, 2),
             queries_per_s=round(n_q / t, 1), speedup_vs_numpy=round(t_np / t, 2),
             recall_vs_exact_at50=round(rec, 4), max_abs_score_diff=float(np.abs(s_f - s_np).max()))

    if args.skip_recall:
        return 0
    # ---- candidate recall on the synthetic full set (label space = its codes.txt)
    allowed = np.isin(np.asarray(ti.codes, dtype=str), read_codes(args.data))
    for agg in args.aggregations:
        for split in args.recall_splits:
            sdocs = read_split(args.data, split)
            cfg = RetrieveConfig(top_k=args.top_k, chunk_tokens=args.chunk_tokens, chunk_stride=args.chunk_stride,
                                 aggregate=agg)
            found, t = timed(search_notes, ti, enc, [d.text for d in sdocs], cfg, allowed, False)
            ranked = [[ti.codes[j] for j in c] for c, _ in found]
            rec = recall_at_k([d.labels for d in sdocs], ranked)
            emit(result="recall", aggregate=agg, split=split, docs=len(sdocs), seconds=round(t, 2),
                 label_space=int(allowed.sum()), **{k2: round(v, 4) for k2, v in rec.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
