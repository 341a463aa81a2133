"""The `promptopt` command line: one module per command family, `dispatch` parses and runs the command."""

from promptopt_dagster.cli.dispatch import main, run

__all__ = ["main", "run"]
