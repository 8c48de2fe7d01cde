"""The term index of the first stage: a FAISS inner-product index over the embeddings of every term
of every code (titles, synonyms, abbreviations), built with the same encoder that embeds the notes.

Index directory (written whole or not at all):
    terms.faiss     the FAISS index; row i is the embedding of terms.parquet row i
    terms.parquet   row -> code, term (surface text), kind (title | synonym | abbreviation)
    index.json      model path, pooling, dim, index type, max_length, counts
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd

from kept.encoder import load_encoder
from kept.errors import InputFileError, KeptError
from kept.io import atomic_dir, check_out_dir

try:
    import faiss
except ImportError:  # the `cpu` or `gpu` extra brings it; say which instead of a traceback
    faiss = None

__all__ = ["IndexConfig", "TermIndex", "term_table", "make_index", "to_gpu", "use_gpu", "search_index",
           "build_index", "save_index", "load_index", "require_faiss"]

log = logging.getLogger(__name__)


INDEX_TYPES = ("flat", "hnsw", "ivf")
INDEX_FILE, TERMS_FILE, META_FILE = "terms.faiss", "terms.parquet", "index.json"
GPU_MAX_K = 2048  # faiss-gpu returns at most this many results per query (k-select limit)


def require_faiss() -> None:
    if faiss is None:
        raise KeptError("FAISS is not installed: pip install faiss-cpu (or faiss-gpu on a CUDA machine), "
                        "or `pip install kept[cpu]` / `kept[gpu]`")


@dataclass
class IndexConfig:
    """How terms are embedded and indexed. Exact inner product (`flat`) is the default: at ~35k
    terms it is faster than HNSW and has no recall loss (MODELS.md)."""

    pooling: str = "auto"  # auto (sentence-transformers folders say theirs, else cls) | cls | mean
    max_length: int = 32  # tokens per term; SapBERT uses 25, ICD long titles rarely need more
    batch_size: int = 128
    index_type: str = "flat"  # flat (exact) | hnsw | ivf
    hnsw_m: int = 32
    hnsw_ef_search: int = 512
    ivf_nlist: int = 0  # 0 = about 4 * sqrt(number of terms)
    ivf_nprobe: int = 32
    all_codes: bool = False  # index every code node, not only billable leaves (labels are leaves)
    gpu: bool | None = None  # None = use a GPU when faiss sees one (flat and ivf only)
    device: str = "auto"  # torch device for the encoder


@dataclass
class TermIndex:
    """A loaded index: FAISS index, its term table, the code list and row -> code position."""

    index: faiss.Index
    terms: pd.DataFrame
    meta: dict
    codes: list[str] = field(init=False)
    row_code: np.ndarray = field(init=False)
    cpu_index: faiss.Index | None = field(default=None, repr=False)  # a GPU index's CPU copy (k > GPU_MAX_K)

    def __post_init__(self) -> None:
        cat = pd.Categorical(self.terms["code"])
        self.codes = [str(c) for c in cat.categories]
        self.row_code = np.asarray(cat.codes, dtype=np.int64)

    @property
    def max_terms_per_code(self) -> int:
        return int(np.bincount(self.row_code).max()) if len(self.row_code) else 0


def term_table(G: nx.DiGraph, all_codes: bool = False) -> pd.DataFrame:
    """One row per (code, term): the code's titles, synonyms and abbreviations (kgraph.terms_of)."""
    from kgraph.query import terms_of

    rows = []
    for node, d in G.nodes(data=True):
        if d.get("type") != "code" or not (all_codes or d.get("leaf")):
            continue
        seen = set()
        for t in terms_of(G, node):
            if t.norm and t.norm not in seen:
                seen.add(t.norm)
                rows.append((node, t.text, t.kind))
        if not seen and d.get("description"):  # no term node: fall back to the title itself
            rows.append((node, d["description"], "title"))
    if not rows:
        raise KeptError("the graph has no codes with terms to index")
    return pd.DataFrame(rows, columns=["code", "term", "kind"]).sort_values(["code", "kind", "term"],
                                                                             ignore_index=True)


def use_gpu(wanted: bool | None) -> bool:
    n = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if wanted and n == 0:
        raise KeptError("--gpu asked for a GPU index but faiss sees no GPU (install faiss-gpu)")
    return n > 0 if wanted is None else bool(wanted)


def make_index(embs: np.ndarray, config: IndexConfig) -> faiss.Index:
    """An inner-product FAISS index over unit vectors (inner product = cosine)."""
    require_faiss()
    if config.index_type not in INDEX_TYPES:
        raise KeptError(f"unknown index type {config.index_type!r}; choose one of {', '.join(INDEX_TYPES)}")
    x = np.ascontiguousarray(embs, dtype=np.float32)
    d = x.shape[1]
    if config.index_type == "flat":
        index = faiss.IndexFlatIP(d)
    elif config.index_type == "hnsw":
        index = faiss.IndexHNSWFlat(d, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = config.hnsw_ef_search
    else:
        nlist = config.ivf_nlist or max(1, min(len(x) // 39, int(4 * math.sqrt(len(x)))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        index.nprobe = min(config.ivf_nprobe, nlist)
    index.add(x)
    return index


_GPU_RESOURCES: dict[int, object] = {}  # one StandardGpuResources per GPU, alive as long as its indexes


def to_gpu(index: faiss.Index, device=None) -> faiss.Index:
    """The same index on one GPU: the encoder's (`device`, a torch device or GPU number; default 0),
    not a copy on every visible GPU. Flat and IVF; HNSW has no GPU version."""
    if isinstance(index, faiss.IndexHNSW):
        log.info("HNSW has no GPU version in faiss: searching on CPU")
        return index
    gpu = device if isinstance(device, int) else (getattr(device, "index", None) or 0)
    if gpu not in _GPU_RESOURCES:
        _GPU_RESOURCES[gpu] = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(_GPU_RESOURCES[gpu], gpu, index)


def is_gpu_index(index) -> bool:
    return "Gpu" in type(index).__name__


def search_index(ti: TermIndex, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`ti.index.search`, except that k above faiss-gpu's limit (GPU_MAX_K) goes to the index's CPU
    copy: the GPU index would fail (the widening loop in search_notes asks for up to every term)."""
    if k > GPU_MAX_K and is_gpu_index(ti.index):
        if ti.cpu_index is None:
            ti.cpu_index = faiss.index_gpu_to_cpu(ti.index)
        return ti.cpu_index.search(x, k)
    return ti.index.search(x, k)


def build_index(model_path: str | Path, out_dir: str | Path, graph: nx.DiGraph | None = None,
                config: IndexConfig | None = None, progress: bool = True, force: bool = False,
                graph_dir: str | Path | None = None) -> TermIndex:
    """Embed every term of every (leaf) code and write the index directory `out_dir`;
    `graph_dir` (where `graph` came from; None: bundled) is recorded in index.json."""
    import kgraph

    check_out_dir(out_dir, force)  # before the embedding, which is the slow part

    config = config or IndexConfig()
    G = graph if graph is not None else kgraph.build_graph()
    terms = term_table(G, config.all_codes)
    encoder = load_encoder(model_path, config.pooling, config.device)
    t0 = time.perf_counter()
    # Many codes share a term (short titles, synonyms): embed each distinct text once.
    unique, inverse = np.unique(terms["term"].to_numpy(dtype=str), return_inverse=True)
    embs = encoder.embed(list(unique), config.batch_size, progress, "embedding terms",
                         max_length=config.max_length)[inverse]
    t_embed = time.perf_counter() - t0
    t0 = time.perf_counter()
    index = make_index(embs, config)
    t_index = time.perf_counter() - t0
    meta = {"format": 1, "model": str(Path(model_path).resolve()), "pooling": encoder.pooling,
            "dim": encoder.dim, "index_type": config.index_type, "max_length": config.max_length,
            "count": int(index.ntotal), "codes": int(terms["code"].nunique()), "all_codes": config.all_codes,
            "graph": str(graph_dir) if graph_dir else "bundled",
            "term_kinds": {k: int(v) for k, v in terms["kind"].value_counts().sort_index().items()},
            "unique_texts": int(len(unique)), "embed_seconds": round(t_embed, 3),
            "index_seconds": round(t_index, 3), "config": asdict(config)}
    ti = TermIndex(index, terms, meta)
    save_index(ti, out_dir, force=force)
    if use_gpu(config.gpu):
        ti.index, ti.cpu_index = to_gpu(index, encoder.device), index
    log.info("indexed %d terms of %d codes in %.1f s (+%.2f s index)", index.ntotal, meta["codes"], t_embed, t_index)
    return ti


def save_index(ti: TermIndex, out_dir: str | Path, force: bool = False) -> None:
    index = ti.index
    if "Gpu" in type(index).__name__:  # faiss writes CPU indexes only
        index = faiss.index_gpu_to_cpu(index)
    with atomic_dir(out_dir, force=force) as tmp:
        faiss.write_index(index, str(tmp / INDEX_FILE))
        ti.terms.to_parquet(tmp / TERMS_FILE, index=False)
        (tmp / META_FILE).write_text(json.dumps(ti.meta, indent=1), encoding="utf-8")


def load_index(index_dir: str | Path, gpu: bool | None = None, device=None) -> TermIndex:
    require_faiss()
    d = Path(index_dir)
    for name in (INDEX_FILE, TERMS_FILE, META_FILE):
        if not (d / name).is_file():
            raise InputFileError(d / name, "file not found (expected a `kept coder index` directory)")
    try:
        meta = json.loads((d / META_FILE).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputFileError(d / META_FILE, f"not valid JSON: {exc.msg}", exc.lineno) from None
    index = faiss.read_index(str(d / INDEX_FILE))
    terms = pd.read_parquet(d / TERMS_FILE)
    if len(terms) != index.ntotal:
        raise InputFileError(d / TERMS_FILE, f"{len(terms)} rows but the index holds {index.ntotal} vectors")
    terms["code"] = terms["code"].astype(str)
    if use_gpu(gpu):
        gpu_index = to_gpu(index, device)
        if gpu_index is not index:
            return TermIndex(gpu_index, terms, meta, cpu_index=index)
    return TermIndex(index, terms, meta)
