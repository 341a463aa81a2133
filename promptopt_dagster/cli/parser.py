"""The `promptopt` parser: one-line flag errors, the help formatter every subcommand uses, and the registration
of the command families' subcommands.

It imports no command module: each command module imports `HelpFormatter` from here, and `dispatch` passes
their `add_commands` functions to `build_parser`, so the parser sits below the commands and nothing cycles.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from typing import Any

PROG = "promptopt"
DESCRIPTION = "The `promptopt` command: run an optimization headless, with the same assets the UI shows."

#: a command family's `add_commands`: it adds its subcommands to what `add_subparsers()` returned
Registrar = Callable[[Any], None]


class Parser(argparse.ArgumentParser):
    """A bad flag is one line naming the flag and the rule, like every other promptopt error."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default after its help, unless the default is None or False or the help already names it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser(registrars: Iterable[Registrar]) -> argparse.ArgumentParser:
    """The `promptopt` parser with each family's subcommands, in the order given (the order --help lists them)."""
    parser = Parser(prog=PROG, description=DESCRIPTION, formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in registrars:
        register(sub)
    return parser
