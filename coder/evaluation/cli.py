"""`kept report`: thin argument parsing over coder.evaluation.report."""

from __future__ import annotations

import argparse
import json

from coder.evaluation import report as R
from kept.io import finite_json


def run_report(args: argparse.Namespace) -> int:
    """CLI entry: print the report as text, or as JSON with --json (NaN written as null)."""
    result = R.report(args.runs, args.a, args.b, args.metrics, args.n_boot, args.seed)
    print(json.dumps(finite_json(result), indent=2) if args.json else R.format_report(result))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `kept report`."""
    p = subparsers.add_parser("report", help="median over seeds and bootstrap CIs of system differences",
                              description=R.__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", required=True, metavar="DIR",
                   help="run directories, or folders searched recursively for metrics.json")
    p.add_argument("--a", metavar="SYSTEM", help="baseline system (with --b: compare only these two)")
    p.add_argument("--b", metavar="SYSTEM", help="system compared with --a; differences are b - a")
    p.add_argument("--metric", dest="metrics", nargs="+", action="extend", metavar="NAME",
                   help=f"metrics to show (default: {' '.join(R.DEFAULT_METRICS)}); "
                        f"CIs for those supported (default: {' '.join(R.DEFAULT_CI_METRICS)})")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap random seed (default 0)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=run_report)
