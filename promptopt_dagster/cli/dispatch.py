"""The `promptopt` console script: parse, set up logging, run the command, turn an error into one line and an
exit code. Each command family lives in its own module; this is the only module that imports them all."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from promptopt_dagster.cli import jobs, leaderboard, optimize, promote, rewrite, ui
from promptopt_dagster.cli.parser import build_parser
from promptopt_dagster.core.errors import PromptOptError
from promptopt_dagster.llm.progress import PROGRESS_ATTR, show_bars

#: the command families, in the order --help lists their subcommands
FAMILIES = (optimize, ui, leaderboard, rewrite, jobs, promote)

#: each subcommand's function: it gets the parsed arguments and returns the exit code
COMMANDS = {
    "optimize": optimize.optimize,
    "ui": ui.ui,
    "leaderboard": leaderboard.leaderboard,
    "rewrite": rewrite.rewrite,
    "promote": promote.promote,
    "rollback": promote.rollback,
    "render": promote.render,
    "submit": jobs.submit,
    "status": jobs.status,
    "cancel": jobs.cancel,
}


def promptopt_parser() -> argparse.ArgumentParser:
    """The `promptopt` parser with every family's subcommands."""
    return build_parser(family.add_commands for family in FAMILIES)


def setup_logging(args: argparse.Namespace) -> None:
    """One handler, on stderr: each promptopt log line is printed once. On a terminal, progress is a
    bar (llm/progress.py) and its log lines are kept out. llama.cpp's own messages show with --verbose; else
    `optimize` writes them to a file."""
    bars = sys.stderr.isatty()
    show_bars(bars)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("  %(message)s"))
    if bars:
        handler.addFilter(lambda record: not getattr(record, PROGRESS_ATTR, False))
    root = logging.getLogger("promptopt")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    native = logging.getLogger("promptopt.llama")
    verbose = bool(getattr(args, "verbose", False))
    native.propagate = verbose
    native.setLevel(logging.DEBUG)


def main(argv: list[str] | None = None) -> int:
    args = promptopt_parser().parse_args(argv)
    try:
        setup_logging(args)
        return COMMANDS[args.command](args)
    except PromptOptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before or between runs: nothing to mark
        print("interrupted.", file=sys.stderr)
        return 130


def run() -> None:
    """The console script. After a failed run DuckDB still holds native objects that the interpreter's
    shutdown reports as ~50 lines of 'nanobind: leaked ...' noise; every file and table is closed or
    flushed by then, so the process ends without that teardown."""
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
