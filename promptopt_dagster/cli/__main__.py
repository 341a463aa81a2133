"""`python -m promptopt_dagster.cli`: the same as the `promptopt` command."""

from promptopt_dagster.cli.dispatch import run

run()
