"""First stage for the full label space: a note's overlapping chunks searched in the term index
(coder.retrieval.index), hits aggregated per code into candidates; `retrieve` writes them for a
set's splits with their recall.

Candidates (`candidates_{split}.parquet`): one row per (note, candidate) with hadm_id (str),
code (str), score (float32, the aggregated cosine), rank (1 = best), rows in rank order per note.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from coder.retrieval.index import TermIndex, load_index, search_index, to_gpu, use_gpu
from kept.encoder import TermEncoder, load_encoder
from kept.errors import InputFileError, KeptError
from kept.io import atomic_path, atomic_write, dump_json

__all__ = ["RetrieveConfig", "aggregate_hits", "search_notes", "recall_at_k", "write_candidates",
           "read_candidates", "retrieve"]

log = logging.getLogger(__name__)

AGGREGATIONS = ("max", "mean-top", "logsumexp")
RECALL_KS = (50, 100, 300)


@dataclass
class RetrieveConfig:
    top_k: int = 300  # candidates per note (the paper's stage 1 hands 300 to the reranker)
    chunk_tokens: int = 128  # note window; see TermEncoder.chunk_ids for why short
    chunk_stride: int = 64
    k_terms: int = 0  # term hits per chunk; 0 = top_k * max terms per code (exact for `max`)
    max_k_terms: int = 4096  # cap on the automatic k_terms (FAISS's heap cost grows with k)
    aggregate: str = "max"  # max | mean-top | logsumexp (see aggregate_hits)
    top_m: int = 3  # chunks averaged by mean-top
    temperature: float = 0.05  # logsumexp temperature (cosine units)
    batch_notes: int = 32
    batch_size: int = 64  # chunks per encoder batch
    # Span first stage (coder/retrieval/hybrid.py); method "dense" with chunking "tokens" is search_notes.
    method: str = "hybrid"  # dense | lexical | hybrid | rrf (docs/retrieval.md has the measurements)
    chunking: str = "sentence"  # sentence | words | tokens (chunk_tokens / chunk_stride)
    span_words: int = 24  # words per span (a longer sentence is cut into windows of this size)
    span_stride: int = 12  # words between window starts (chunking "words" and long sentences)
    lexical_weight: float = 1.0  # hybrid: (dense cosine + weight * TF-IDF cosine) / (1 + weight)
    rrf_k: float = 60.0  # rrf: sum over rankings of 1 / (rrf_k + rank)


def aggregate_hits(chunk: np.ndarray, code: np.ndarray, sim: np.ndarray, method: str = "max",
                   top_m: int = 3, temperature: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Per-code scores from one note's hits (chunk index, code index, cosine), best first.

    Within a chunk a code scores its best term (max over terms). Across chunks:
      max        best chunk: one clear mention is enough (the default; exact under truncation, below)
      mean-top   sum of the code's `top_m` best chunk scores / top_m (chunks without a hit count 0):
                 rewards codes mentioned in several places, damps one-off lookalikes
      logsumexp  T * log(sum over chunks of exp(score / T)): a soft max between the two
    A sum of per-term scores is not offered: it favours codes with many synonyms.
    Returns (code indices, scores) sorted by score descending, ties by code index.
    """
    if method not in AGGREGATIONS:
        raise KeptError(f"unknown aggregation {method!r}; choose one of {', '.join(AGGREGATIONS)}")
    if sim.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    # Max over terms per (chunk, code): sort by key then score descending, keep each key's first.
    order = np.lexsort((-sim, code, chunk))
    c, k, s = chunk[order], code[order], sim[order]
    first = np.r_[True, (c[1:] != c[:-1]) | (k[1:] != k[:-1])]
    k, s = k[first], s[first].astype(np.float64)
    order = np.lexsort((-s, k))
    k, s = k[order], s[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    codes = k[starts]
    if method == "max":
        scores = s[starts]
    elif method == "mean-top":
        sizes = np.diff(np.r_[starts, len(k)])
        group = np.repeat(np.arange(len(starts)), sizes)
        first_m = np.arange(len(k)) - np.repeat(starts, sizes) < top_m  # rows are best-first per code
        scores = np.bincount(group[first_m], weights=s[first_m], minlength=len(starts)) / top_m
    else:
        top = s[starts]  # shift by each code's max for a stable log-sum-exp
        shifted = np.exp((s - np.repeat(top, np.diff(np.r_[starts, len(k)]))) / temperature)
        scores = top + temperature * np.log(np.add.reduceat(shifted, starts))
    best = np.lexsort((codes, -scores))
    return codes[best], scores[best].astype(np.float32)


def search_notes(ti: TermIndex, encoder: TermEncoder, texts: Sequence[str], config: RetrieveConfig | None = None,
                 allowed: np.ndarray | None = None, progress: bool = True
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Top-k (code indices into ti.codes, scores) per note; `allowed` masks ti.codes (label space).

    Why k_terms = top_k * (max terms per code) makes `max` exact for the top k: take a true top-k
    code c whose best pair is (chunk j, term t) with cosine s. Every term scoring above s in chunk j
    belongs to a code scoring above s, so to one of fewer than k codes, each with at most T terms:
    fewer than k*T terms outrank t in chunk j, and t is in chunk j's top k*T hits. When a note still
    yields fewer than top_k codes (few terms hit, or the label-space mask removed many), its chunks
    are searched again with twice the hits until top_k codes come back or the index is exhausted.
    """
    config = config or RetrieveConfig()
    n_total = int(ti.index.ntotal)
    k_terms = config.k_terms or min(config.top_k * max(ti.max_terms_per_code, 1), config.max_k_terms)
    k_terms = max(1, min(k_terms, n_total))
    want = min(config.top_k, len(ti.codes) if allowed is None else int(allowed.sum()))
    results: list[tuple[np.ndarray, np.ndarray]] = []
    bar = tqdm(total=len(texts), desc="retrieving", disable=not progress, leave=False)
    for lo in range(0, len(texts), config.batch_notes):
        batch = texts[lo:lo + config.batch_notes]
        pieces = [encoder.chunk_ids(t, config.chunk_tokens, config.chunk_stride) for t in batch]
        owner = np.repeat(np.arange(len(batch)), [len(p) for p in pieces])
        embs = encoder.embed_ids([p for ps in pieces for p in ps], config.batch_size)
        sims, ids = search_index(ti, embs, k_terms)
        for i in range(len(batch)):
            rows = np.flatnonzero(owner == i)
            s, r, k = sims[rows], ids[rows], k_terms
            while True:
                valid = r >= 0  # HNSW / IVF pad short result lists with -1
                chunk = np.broadcast_to(np.arange(len(rows))[:, None], r.shape)[valid]
                codes, scores = aggregate_hits(chunk, ti.row_code[r[valid]], s[valid], config.aggregate,
                                               config.top_m, config.temperature)
                if allowed is not None:
                    keep = allowed[codes]
                    codes, scores = codes[keep], scores[keep]
                if len(codes) >= want or k >= n_total:
                    break
                k = min(2 * k, n_total)
                s, r = search_index(ti, embs[rows], k)
            results.append((codes[:want], scores[:want]))
        bar.update(len(batch))
    bar.close()
    return results


def recall_at_k(gold: Sequence[Sequence[str]], ranked: Sequence[Sequence[str]],
                ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """Candidate recall: `recall@k` = gold codes inside their note's top k / all gold codes (pooled);
    `doc_recall@k` = the same share per note, averaged over notes with >= 1 gold code."""
    out: dict[str, float] = {}
    total = sum(len(set(g)) for g in gold)
    for k in ks:
        hits = [len(set(g) & set(r[:k])) for g, r in zip(gold, ranked)]
        per_doc = [h / len(set(g)) for h, g in zip(hits, gold) if g]
        out[f"recall@{k}"] = sum(hits) / total if total else float("nan")
        out[f"doc_recall@{k}"] = float(np.mean(per_doc)) if per_doc else float("nan")
    return out


def write_candidates(path: str | Path, hadm_ids: Sequence[str], codes: Sequence[Sequence[str]],
                     scores: Sequence[np.ndarray]) -> Path:
    n = [len(c) for c in codes]
    df = pd.DataFrame({
        "hadm_id": np.repeat(np.asarray(hadm_ids, dtype=str), n),
        "code": np.concatenate([np.asarray(c, dtype=str) for c in codes]) if codes else np.zeros(0, str),
        "score": np.concatenate(scores).astype(np.float32) if scores else np.zeros(0, np.float32),
        "rank": np.concatenate([np.arange(1, m + 1, dtype=np.int32) for m in n]) if n else np.zeros(0, np.int32),
    })
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return Path(path)


def read_candidates(path: str | Path) -> dict[str, tuple[list[str], np.ndarray]]:
    """hadm_id -> (codes in rank order, scores)."""
    p = Path(path)
    if not p.is_file():
        raise InputFileError(p, "file not found (expected candidates from `kept coder retrieve`)")
    df = pd.read_parquet(p)
    missing = {"hadm_id", "code", "score", "rank"} - set(df.columns)
    if missing:
        raise InputFileError(p, f"missing columns {sorted(missing)}")
    df = df.astype({"hadm_id": str, "code": str}).sort_values(["hadm_id", "rank"], kind="stable")
    return {h: (g["code"].tolist(), g["score"].to_numpy(np.float32)) for h, g in df.groupby("hadm_id", sort=False)}


def retrieve(index_dir: str | Path, set_dir: str | Path, out_dir: str | Path, config: RetrieveConfig | None = None,
             splits: Sequence[str] = ("dev", "test"), model: str | Path | None = None,
             restrict: bool = True, gpu: bool | None = None, device: str = "auto",
             max_docs: int | None = None, progress: bool = True) -> dict:
    """Candidates for each split of a set directory, their recall@50/100/300, in `out_dir`.

    `restrict`: rank only the set's own label list (codes.txt), as the full-MIMIC setting does;
    without it every indexed code competes and gold codes outside the index count as misses.
    """
    from coder.data.datasets import read_codes, read_split

    config = config or RetrieveConfig()
    ti = load_index(index_dir, False)
    encoder = load_encoder(model or ti.meta["model"], ti.meta["pooling"], device)
    if use_gpu(gpu):  # on the encoder's GPU
        ti.index, ti.cpu_index = to_gpu(ti.index, encoder.device), ti.index
    if encoder.dim != ti.meta["dim"]:
        raise KeptError(f"encoder dim {encoder.dim} differs from the index's {ti.meta['dim']}")
    from coder.retrieval.hybrid import first_stage, load_lexical

    lex = load_lexical(ti) if config.method in ("lexical", "hybrid", "rrf") else None
    label_space = read_codes(set_dir)
    allowed = np.isin(np.asarray(ti.codes, dtype=str), label_space) if restrict else None
    summary = {"index": str(index_dir), "set": str(set_dir), "restrict": restrict, "config": asdict(config),
               "indexed_codes": len(ti.codes), "label_space": len(label_space),
               "label_space_indexed": int(allowed.sum()) if allowed is not None else None, "splits": {}}
    for split in splits:
        docs = read_split(set_dir, split)[:max_docs]
        t0 = time.perf_counter()
        found = first_stage(ti, encoder, lex, [d.text for d in docs], config, allowed, progress)
        seconds = time.perf_counter() - t0
        ranked = [[ti.codes[j] for j in codes] for codes, _ in found]
        write_candidates(Path(out_dir) / f"candidates_{split}.parquet", [d.hadm_id for d in docs], ranked,
                         [s for _, s in found])
        gold = [d.labels for d in docs]
        indexed = set(ti.codes)
        n_gold = sum(len(set(g)) for g in gold)
        rec = recall_at_k(gold, ranked, tuple(k for k in RECALL_KS if k <= config.top_k) or (config.top_k,))
        summary["splits"][split] = {"docs": len(docs), "seconds": round(seconds, 2), **rec,
                                    "gold_indexed_share": (sum(len(set(g) & indexed) for g in gold) / n_gold
                                                           if n_gold else float("nan"))}
        log.info("%s: %d notes in %.1f s; %s", split, len(docs), seconds,
                 ", ".join(f"{k} {v:.3f}" for k, v in rec.items() if k.startswith("recall")))
    with atomic_write(Path(out_dir) / "retrieval.json") as fh:
        dump_json(summary, fh, indent=1)
    return summary
