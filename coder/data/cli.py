"""`kept data mimic | synth | stats`: thin argparse wrappers over coder.data.mimic, .synth and .stats."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from kept.argtypes import nonnegative_float, positive_float, positive_int
from kept.cli import config_defaults, force_option, graph_option
from kept.config import load_config
from kept.errors import InputFileError
from kept.io import check_out_dir

log = logging.getLogger(__name__)


def read_code_list(path: str) -> tuple[str, ...]:
    """Codes one a line (dotted), `#` starts a comment: the rare-50 exclusion list."""
    p = Path(path)
    if not p.is_file():
        raise InputFileError(p, "file not found (expected a list of codes to exclude, one a line)")
    codes = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        code = line.split("#")[0].strip()
        if code:
            if " " in code or "," in code:
                raise InputFileError(p, f"expected one code per line, got {code!r}", line=i)
            codes.append(code)
    return tuple(codes)


def run_mimic(args: argparse.Namespace) -> int:
    from coder.data.mimic import MimicConfig, prepare_mimic

    exclude = read_code_list(args.rare_exclude) if args.rare_exclude else None
    cfg = load_config(MimicConfig, args.config, "mimic", {
        "seed": args.seed, "top_n": args.top_n, "rare_n": args.rare_n,
        "rare_max_count": args.rare_max_count, "rare_min_train": args.rare_min_train,
        "rare_exclude": exclude, "chunksize": args.chunksize, "rare50": args.rare50,
        "lowercase": False if args.keep_case else None, "progress": False if args.no_progress else None})
    start = time.perf_counter()
    check_out_dir(args.out, args.force)
    meta = prepare_mimic(args.mimic_dir, args.out, args.splits, cfg, force=args.force)
    _summary(args.out, meta, time.perf_counter() - start)
    return 0


def run_synth(args: argparse.Namespace) -> int:
    import kgraph
    from coder.data.synth import SynthConfig, prepare_synth

    cfg = load_config(SynthConfig, args.config, "synth", {
        "docs": args.docs, "seed": args.seed, "words_min": args.words_min,
        "words_max": args.words_max, "pool_size": args.pool_size, "zipf_s": args.zipf_s,
        "codes_mean": args.codes_mean, "top_n": args.top_n, "rare_n": args.rare_n,
        "rare_max_count": args.rare_max_count, "rare_min_train": args.rare_min_train,
        "rare_shape": args.rare_shape, "progress": False if args.no_progress else None})
    check_out_dir(args.out, args.force)
    start = time.perf_counter()
    G, graph_dir = kgraph.open_graph(args.graph)
    meta = prepare_synth(G, args.out, cfg, graph_dir=str(graph_dir or "bundled"), force=args.force)
    _summary(args.out, meta, time.perf_counter() - start)
    return 0


def run_stats(args: argparse.Namespace) -> int:
    from coder.data.stats import print_stats

    print(print_stats(args.data_dir, as_json=args.json, tokenizer=args.tokenizer))
    return 0


def _summary(out: str, meta: dict, seconds: float) -> None:
    sets = ", ".join(f"{k}: {v['codes']} codes, {v['train']}/{v['dev']}/{v['test']} docs"
                     for k, v in meta["sets"].items())
    print(f"wrote {meta['source']} data set to {out} in {seconds:.1f} s ({sets})")
    for name, problem in meta.get("set_problems", {}).items():
        print(f"{name}: {problem}", file=sys.stderr)
    warnings = meta.get("warnings", {})
    if warnings:
        print("warnings (also in dataset.json): " +
              ", ".join(f"{k}={v['count']}" for k, v in warnings.items()))


def _rare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, help="seed for splits, rare-50 tie breaks (default 0)")
    p.add_argument("--top-n", type=positive_int, help="size of the frequent-code set (default 50)")
    p.add_argument("--rare-n", type=positive_int, help="size of the rare-code set (default 50)")
    p.add_argument("--rare-max-count", type=positive_int,
                   help="rare codes have fewer occurrences than this (default 10)")
    p.add_argument("--rare-min-train", type=positive_int,
                   help="train shots a rare code needs (default 1, the paper's rule)")
    p.add_argument("--config", help="TOML file with the settings (a [mimic] or [synth] table)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    force_option(p)


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="prepare MIMIC-III or a synthetic corpus; statistics")
    sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    m = sub.add_parser("mimic", help="MIMIC-III-full, -50 and -rare50 from MIMIC-III v1.4 CSVs")
    m.add_argument("--mimic-dir", required=True,
                   help="folder with NOTEEVENTS, DIAGNOSES_ICD, PROCEDURES_ICD (.csv or .csv.gz)")
    m.add_argument("--out", required=True, help="output data-set folder")
    m.add_argument("--splits", help="folder with CAML's {train,dev,test}_{full,50}_hadm_ids.csv; "
                                    "without it a seeded patient-level split is made")
    m.add_argument("--rare50", choices=["kept", "rule"],
                   help="kept (default): KEPT's released 249/20/142 admissions and their rare codes; "
                        "rule: the paper's rule applied to this data (the --rare-* options)")
    m.add_argument("--rare-exclude", help="file of codes kept out of rare-50 (one a line; --rare50 rule)")
    m.add_argument("--keep-case", action="store_true", help="do not lower-case notes")
    m.add_argument("--chunksize", type=positive_int, help="NOTEEVENTS rows read at a time (default 20000)")
    _rare_args(m)
    m.set_defaults(func=run_mimic)
    config_defaults(m, "coder.data.mimic:MimicConfig")

    s = sub.add_parser("synth", help="licence-free synthetic discharge summaries in MIMIC's layout")
    graph_option(s)
    s.add_argument("--out", required=True, help="output data-set folder")
    s.add_argument("--docs", type=positive_int, help="number of notes (default 600)")
    s.add_argument("--words-min", type=positive_int, help="shortest note in words, as `data stats` counts them "
                                                          "(default 1500)")
    s.add_argument("--words-max", type=positive_int, help="longest note in words (default 4000); only a note whose "
                                                          "label mentions alone are longer passes it")
    s.add_argument("--pool-size", type=positive_int, help="leaf codes that can be labels (default 3000)")
    s.add_argument("--zipf-s", type=nonnegative_float, help="Zipf exponent over the code pool (default 1.0)")
    s.add_argument("--codes-mean", type=positive_float, help="mean labels per note (default 8)")
    s.add_argument("--rare-shape", choices=("mimic", "rule"),
                   help="rare50: mimic = its own notes in MIMIC-III-rare50's shape (250/20/142, one rare "
                        "code each; default); rule = the paper's rule over the corpus")
    _rare_args(s)
    s.set_defaults(func=run_synth)
    config_defaults(s, "coder.data.synth:SynthConfig")

    st = sub.add_parser("stats", help="Table A.2 statistics of a data set")
    st.add_argument("data_dir", help="data-set folder written by `kept data mimic` or `synth`")
    st.add_argument("--json", action="store_true", help="print JSON instead of a table")
    st.add_argument("--tokenizer", help="local tokenizer folder: count its tokens, not words")
    st.set_defaults(func=run_stats)
