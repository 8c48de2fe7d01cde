"""Triplet mining inside a sampled batch, and streaming export of triplets to JSONL / Parquet / CSV.

Every (anchor term, positive term of the same code, negative term of another code) of a batch is a
triplet. Its kind comes from the graph, not from the sampler's roles: `parent` when the negative's
code is the anchor code's parent, `sibling` when both codes have the same parent, else `inter`.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from contrastive.sampling import BatchSampler, TermBatch
from kept.errors import KeptError
from kept.io import atomic_path

log = logging.getLogger(__name__)

KINDS = ("parent", "sibling", "inter")
PARENT, SIBLING, INTER = range(3)
FORMATS = ("jsonl", "parquet", "csv")
COLUMNS = ["batch", "level", "anchor_code", "anchor_term", "positive_term", "negative_code",
           "negative_term", "kind"]


@dataclass
class Triplets:
    """Slot indices into one batch: triplet t is (anchor[t], positive[t], negative[t]), kind[t]."""

    anchor: np.ndarray
    positive: np.ndarray
    negative: np.ndarray
    kind: np.ndarray  # int8: index into KINDS

    def __len__(self) -> int:
        return len(self.anchor)

    def counts(self) -> dict[str, int]:
        c = np.bincount(self.kind, minlength=len(KINDS))
        return {k: int(c[i]) for i, k in enumerate(KINDS)}


def triplet_kind(anchor_code: str, negative_code: str, parent: Mapping[str, str]) -> int:
    p = parent.get(anchor_code)
    if p is not None and negative_code == p:
        return PARENT
    if p is not None and parent.get(negative_code) == p:
        return SIBLING
    return INTER


def mine_triplets(batch: TermBatch, parent: Mapping[str, str],
                  norms: Mapping[str, frozenset[str]]) -> Triplets:
    """All triplets of `batch`. Anchors/positives are slots of codes at the batch's level (a parent
    one level up is only ever a negative: as an anchor its children would be `inter` negatives,
    contradicting their own `parent` triplets). Skipped: repeated slots (a code with < k terms;
    they would only duplicate triplets), (anchor, positive) pairs of equal text, and negatives
    whose text is also a term of the anchor's code (a shared term is no negative)."""
    by_code: dict[str, list[int]] = {}
    live = [s for s in range(len(batch)) if not batch.repeated[s]]
    for s in live:
        by_code.setdefault(batch.codes[s], []).append(s)
    a_idx, p_idx, n_idx, kinds = [], [], [], []
    for code, slots in by_code.items():
        if batch.roles[slots[0]] == "parent":
            continue
        own = norms.get(code, frozenset())
        negs = [s for s in live if batch.codes[s] != code and batch.norms[s] not in own]
        neg_kind = [triplet_kind(code, batch.codes[s], parent) for s in negs]
        for a in slots:
            for p in slots:
                if p == a or batch.norms[p] == batch.norms[a]:
                    continue
                a_idx += [a] * len(negs)
                p_idx += [p] * len(negs)
                n_idx += negs
                kinds += neg_kind
    return Triplets(np.asarray(a_idx, dtype=np.int64), np.asarray(p_idx, dtype=np.int64),
                    np.asarray(n_idx, dtype=np.int64), np.asarray(kinds, dtype=np.int8))


def sampler_triplets(sampler: BatchSampler, batch: TermBatch) -> Triplets:
    return mine_triplets(batch, sampler.parent, sampler.norms)


def triplet_rows(batch: TermBatch, t: Triplets) -> Iterator[dict]:
    for a, p, n, k in zip(t.anchor.tolist(), t.positive.tolist(), t.negative.tolist(), t.kind.tolist()):
        yield {"batch": batch.index, "level": batch.level, "anchor_code": batch.codes[a],
               "anchor_term": batch.texts[a], "positive_term": batch.texts[p],
               "negative_code": batch.codes[n], "negative_term": batch.texts[n], "kind": KINDS[k]}


def format_of(path: str | Path, fmt: str | None) -> str:
    """`fmt` if given, else from the file suffix (.parquet, .csv, anything else jsonl)."""
    if fmt:
        if fmt not in FORMATS:
            raise KeptError(f"unknown triplet format {fmt!r}; choose one of {', '.join(FORMATS)}")
        return fmt
    suffix = Path(path).suffix.lower().lstrip(".")
    return suffix if suffix in FORMATS else "jsonl"


class _ParquetSink:
    """Buffers rows into row groups so memory stays bounded by `row_group_size`, not the file."""

    def __init__(self, path: Path, row_group_size: int):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa = pa
        self.schema = pa.schema([("batch", pa.int64())] + [(c, pa.string()) for c in COLUMNS[1:]])
        self.writer = pq.ParquetWriter(str(path), self.schema, compression="zstd")
        self.size = row_group_size
        self.buf: dict[str, list] = {c: [] for c in COLUMNS}

    def write(self, row: dict) -> None:
        for c in COLUMNS:
            self.buf[c].append(row[c])
        if len(self.buf["batch"]) >= self.size:
            self.flush()

    def flush(self) -> None:
        if self.buf["batch"]:
            self.writer.write_table(self.pa.table(self.buf, schema=self.schema))
            self.buf = {c: [] for c in COLUMNS}

    def close(self) -> None:
        self.flush()
        self.writer.close()


def export_triplets(sampler: BatchSampler, out: str | Path, *, batches: int, fmt: str | None = None,
                    start: int = 0, progress: bool = True, row_group_size: int = 100_000) -> dict[str, int]:
    """Write the triplets of batches `start .. start+batches-1` to `out`, one row per triplet.

    Streams batch by batch (memory is one batch, or one Parquet row group), into a temp file renamed
    over `out` at the end. Returns counts per kind and in all."""
    from tqdm import tqdm

    if batches < 1:
        raise KeptError(f"--batches must be >= 1; got {batches}")
    fmt = format_of(out, fmt)
    counts = dict.fromkeys(KINDS, 0)
    with atomic_path(out) as tmp:
        fh = None
        if fmt == "parquet":
            sink = _ParquetSink(tmp, row_group_size)
            write = sink.write
        else:
            fh = open(tmp, "w", encoding="utf-8", newline="")
            if fmt == "csv":
                writer = csv.DictWriter(fh, fieldnames=COLUMNS)
                writer.writeheader()
                write = writer.writerow
            else:
                def write(row: dict) -> None:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        try:
            bar = tqdm(range(start, start + batches), desc="triplets", unit="batch", disable=not progress)
            for b in bar:
                batch = sampler.batch(b)
                t = sampler_triplets(sampler, batch)
                for row in triplet_rows(batch, t):
                    write(row)
                for k, v in t.counts().items():
                    counts[k] += v
                bar.set_postfix(triplets=sum(counts.values()), refresh=False)
        finally:
            if fmt == "parquet":
                sink.close()
            elif fh is not None:
                fh.close()
    counts["total"] = sum(counts[k] for k in KINDS)
    return counts
