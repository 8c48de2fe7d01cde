"""The one `kept` command. Each stage registers its own sub-commands; this file only wires them.

A stage module exposes `register(subparsers)` which adds its parsers and sets `func` on each
(a callable taking the parsed `argparse.Namespace` and returning an exit code).
"""

from __future__ import annotations

import argparse
import dataclasses
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
    "coder.data.cli",
    "coder.cli",
    "coder.evaluation.cli",
    "kept.demo",
)


DESCRIPTION = ("kept: an ICD-9-CM / UMLS knowledge graph, hierarchical self-alignment pretraining (HSAP) "
               "and a prompt-based ICD coder (KEPT). Commands in pipeline order; `kept COMMAND --help` "
               "for each. Set KEPT_GRAPH=DIR once to make every command use your `kept graph build` graph.")


def _shown(default) -> bool:
    """Whether a default says something (0 does; None, a bare flag's False and SUPPRESS do not)."""
    return not (default is None or default is False or default == argparse.SUPPRESS)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option shows its default, except where there is nothing to show (None, a bare flag's
    False) or its help already states it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or not _shown(action.default)
                or not action.option_strings or isinstance(action, argparse._VersionAction)):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def _all_parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                yield from _all_parsers(sub)


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """One formatter for every parser, set here so stage modules need not pass it."""
    def formatter(p: argparse.ArgumentParser):
        def make(prog: str) -> HelpFormatter:
            _apply_config_defaults(p)
            return HelpFormatter(prog)
        return make

    for p in _all_parsers(parser):
        p.formatter_class = formatter(p)
        for action in p._actions:  # options with no help text still show their default
            if action.help is None and action.option_strings and _shown(action.default):
                action.help = "default: %(default)s"


def config_defaults(parser: argparse.ArgumentParser, cls: str, rename: dict[str, str] | None = None) -> None:
    """Options left at None so that a `--config` file can set them show the default of the config
    class `cls` ("module:Class"), imported only when help is printed (it may import torch)."""
    parser._kept_config = (cls, rename or {})


def graph_option(parser: argparse.ArgumentParser, purpose: str = "") -> None:
    """`--graph`, taken the same way by every command that reads the graph (else $KEPT_GRAPH, else
    the bundled graph: kgraph.store.chosen_graph)."""
    parser.add_argument("--graph", help=f"graph folder from `kept graph build`{purpose} "
                                        "(default: $KEPT_GRAPH, else the bundled ICD-9-CM graph)")


def force_option(parser: argparse.ArgumentParser) -> None:
    """`--force` of every command that replaces an --out folder (kept.io.check_out_dir)."""
    parser.add_argument("--force", action="store_true",
                        help="replace --out even if it is a file or a folder kept did not write")


def _apply_config_defaults(parser: argparse.ArgumentParser) -> None:
    spec, rename = parser.__dict__.pop("_kept_config", (None, {}))
    if spec is None:
        return
    module, name = spec.split(":")
    cls = getattr(importlib.import_module(module), name)
    defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    for action in parser._actions:
        name = rename.get(action.dest, action.dest)
        if action.default is not None or name not in defaults or "default" in (action.help or ""):
            continue
        value = defaults[name]
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
        shown = str(shown).replace("%", "%%")
        action.help = f"{action.help} (default: {shown})" if action.help else f"default: {shown}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kept", description=DESCRIPTION)
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
    _show_defaults(parser)
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
