"""The `promptopt` command line: one module per command family, `main` parses and dispatches."""

from promptopt_dagster.cli.commands import main, run

__all__ = ["main", "run"]
