"""`kept coder index | retrieve | rerank`: the full-label-space pipeline (docs/retrieval.md)."""

from __future__ import annotations

import argparse
import json
import logging

from kept.argtypes import probability
from kept.cli import force_option, graph_option

log = logging.getLogger(__name__)


def cmd_index(args: argparse.Namespace) -> int:
    import kgraph
    from coder.retrieval.index import IndexConfig, build_index

    config = IndexConfig(pooling=args.pooling, max_length=args.max_length, batch_size=args.batch_size,
                         index_type=args.index_type, all_codes=args.all_codes, gpu=args.gpu, device=args.device)
    G, graph_dir = kgraph.open_graph(args.graph)
    ti = build_index(args.model, args.out, G, config, progress=not args.no_progress, force=args.force,
                     graph_dir=graph_dir)
    m = ti.meta
    kinds = ", ".join(f"{k} {v:,}" for k, v in m.get("term_kinds", {}).items())
    print(f"{m['count']} terms ({kinds}) of {m['codes']} codes -> {args.out} ({m['index_type']}, dim {m['dim']}, "
          f"{m['pooling']} pooling; embedding {m['embed_seconds']:.1f} s, index {m['index_seconds']:.2f} s)")
    return 0


def cmd_retrieve(args: argparse.Namespace) -> int:
    from coder.retrieval.candidates import RetrieveConfig, retrieve

    config = RetrieveConfig(top_k=args.top_k, chunk_tokens=args.chunk_tokens, chunk_stride=args.chunk_stride,
                            k_terms=args.k_terms, aggregate=args.aggregate, top_m=args.top_m,
                            temperature=args.temperature, batch_size=args.batch_size, method=args.method,
                            chunking=args.chunking, span_words=args.span_words, span_stride=args.span_stride,
                            lexical_weight=args.lexical_weight, rrf_k=args.rrf_k)
    out = args.out or args.index
    summary = retrieve(args.index, args.data, out, config, splits=args.splits, model=args.model,
                       restrict=not args.all_codes, gpu=args.gpu, device=args.device, max_docs=args.max_docs,
                       progress=not args.no_progress)
    for split, s in summary["splits"].items():
        rec = "  ".join(f"{k} {v:.4f}" for k, v in s.items() if k.startswith("recall@"))
        print(f"{split:<5} {s['docs']:>6} notes  {rec}  ({s['seconds']:.1f} s)")
    print(f"candidates and retrieval.json in {out}")
    return 0


def cmd_rerank(args: argparse.Namespace) -> int:
    from coder.retrieval.rerank import format_comparison, run_rerank

    ks = tuple(int(k) for k in args.ks.split(","))
    results = run_rerank(args.candidates, args.data, args.out, args.model, k=args.top_k, ks=ks,
                         device=args.device, max_docs=args.max_docs, progress=not args.no_progress,
                         prompt_codes=args.prompt_codes, stage1_weight=args.stage1_weight)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print(format_comparison(results))
        print(f"runs in {args.out}/<system>/ (metrics.json, test_scores.npz)")
    return 0


def add_index(coder_subparsers: argparse._SubParsersAction) -> None:
    p = coder_subparsers.add_parser("index", help="embed every term of every code into a FAISS index")
    p.add_argument("--model", required=True, help="encoder checkpoint folder (HSAP output or any HF encoder)")
    graph_option(p)
    p.add_argument("--out", required=True, help="index folder (terms.faiss, terms.parquet, index.json)")
    force_option(p)
    p.add_argument("--pooling", default="auto", choices=("auto", "cls", "mean"),
                   help="auto: mean for sentence-transformers folders that say so, else cls (HSAP)")
    p.add_argument("--max-length", type=int, default=32, help="tokens per term (default 32)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--index-type", default="flat", choices=("flat", "hnsw", "ivf"),
                   help="flat = exact inner product (default)")
    p.add_argument("--all-codes", action="store_true", help="index every code, not only billable leaves")
    p.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=None,
                   help="GPU FAISS index (default: when faiss sees a GPU)")
    p.add_argument("--device", default="auto", help="torch device for the encoder")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_index)


def add_retrieve(coder_subparsers: argparse._SubParsersAction) -> None:
    p = coder_subparsers.add_parser("retrieve", help="top-k candidate codes per note from a term index")
    p.add_argument("--index", required=True, help="folder from `kept coder index`")
    p.add_argument("--data", required=True, help="set directory (e.g. DATA/full)")
    p.add_argument("--out", help="folder for candidates_<split>.parquet and retrieval.json (default: --index)")
    p.add_argument("--splits", nargs="+", default=["dev", "test"], choices=("train", "dev", "test"))
    p.add_argument("--top-k", type=int, default=300)
    p.add_argument("--method", default="hybrid", choices=("dense", "lexical", "hybrid", "rrf"),
                   help="hybrid (default): dense + TF-IDF cosine per span; dense: FAISS only; lexical: TF-IDF "
                        "only; rrf: reciprocal-rank fusion of the two (docs/retrieval.md)")
    p.add_argument("--chunking", default="sentence", choices=("sentence", "words", "tokens"),
                   help="note spans: sentences (default), word windows, or token windows (--chunk-tokens)")
    p.add_argument("--span-words", type=int, default=24,
                   help="words per span; longer sentences are cut into windows (default 24)")
    p.add_argument("--span-stride", type=int, default=12, help="words between window starts (default 12)")
    p.add_argument("--lexical-weight", type=float, default=1.0, help="hybrid: (dense + w * TF-IDF) / (1 + w) (default 1)")
    p.add_argument("--rrf-k", type=float, default=60.0, help="rrf: 1 / (k + rank) (default 60)")
    p.add_argument("--chunk-tokens", type=int, default=128, help="note window in tokens (default 128)")
    p.add_argument("--chunk-stride", type=int, default=64, help="a new window every N tokens (default 64)")
    p.add_argument("--k-terms", type=int, default=0, help="term hits per chunk (0 = top-k x terms per code)")
    p.add_argument("--aggregate", default="max", choices=("max", "mean-top", "logsumexp"))
    p.add_argument("--top-m", type=int, default=3, help="chunks averaged by mean-top")
    p.add_argument("--temperature", type=float, default=0.05, help="logsumexp temperature")
    p.add_argument("--batch-size", type=int, default=64, help="chunks per encoder batch")
    p.add_argument("--model", help="encoder folder (default: the one the index was built with)")
    p.add_argument("--all-codes", action="store_true",
                   help="rank every indexed code, not only the set's label list (codes.txt)")
    p.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--max-docs", type=int, help="only the first N notes per split")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_retrieve)


def add_rerank(coder_subparsers: argparse._SubParsersAction) -> None:
    p = coder_subparsers.add_parser("rerank", help="rescore candidates with the prompted coder; evaluate both stages")
    p.add_argument("--candidates", required=True,
                   help="folder (or a file in it) with candidates_dev.parquet and candidates_test.parquet")
    p.add_argument("--data", required=True, help="set directory the candidates were retrieved for")
    p.add_argument("--model", help="coder checkpoint (OUT/best of `kept coder train`); omit: stage 1 only")
    p.add_argument("--out", required=True, help="folder for <system>/metrics.json, test_scores.npz")
    p.add_argument("--top-k", type=int, default=300, help="candidates reranked per note (default 300)")
    p.add_argument("--prompt-codes", type=int,
                   help="candidates per prompt (default: the checkpoint's, 50); lower it when the prompt "
                        "leaves no room for the note")
    p.add_argument("--stage1-weight", type=probability, metavar="W",
                   help="the first stage's weight in the fused score, W * stage 1 + (1 - W) * reranker "
                        "(default: tuned on dev; 0: the reranker alone)")
    p.add_argument("--ks", default="8,15", help="k of P@k and R@k (default 8,15)")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-docs", type=int, help="only the first N dev and test notes")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_rerank)


# What `kept coder` adds from here (coder/cli.py), in the order its help lists them.
COMMANDS = (add_index, add_retrieve, add_rerank)
