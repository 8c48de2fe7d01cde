"""The one `kept` command. Each stage registers its own sub-commands; this file only wires them.

A stage module exposes `register(subparsers)` which adds its parsers and sets `func` on each
(a callable taking the parsed `argparse.Namespace` and returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from kept import __version__
from kept.errors import KeptError

# Order is the order of the help text; stages come in pipeline order.
STAGE_MODULES = (
    "kgraph.cli",
    "contrastive.cli",
    "coder.data_cli",
    "coder.cli",
    "coder.report",
    "kept.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kept", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"kept {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in STAGE_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # A stage not built yet must not break the others; anything else is a real bug.
            if exc.name == name:
                continue
            raise
        module.register(subparsers)
    return parser


def _quiet_libraries() -> None:
    """Keep kept's own progress bars and log lines readable: the libraries' load reports, weight-loading
    bars and banners are for debugging (`kept -v` shows them). Env vars, because transformers reads
    them when it is first imported, which happens later inside the stage functions."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.getLogger("faiss").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        _quiet_libraries()
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeptError as exc:
        # Expected failures (bad input files, missing paths) get one clear line, not a traceback.
        print(f"kept: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("kept: interrupted", file=sys.stderr)
        return 130
