"""`promptopt leaderboard DATASET`: materialize the dataset's leaderboard asset here, then print it.

It runs in this process like `optimize` (no webserver needed, no model called): the board is rebuilt
from the final reports in the warehouse and recorded as a run, so the UI shows the same table and plot.
"""

from __future__ import annotations

import argparse
import json


def add_command(sub) -> None:
    from promptopt_dagster.cli import _Help

    board = sub.add_parser("leaderboard", formatter_class=_Help,
                           help="rank every optimization of a dataset by its held-out test score, with cost",
                           description="Rebuild the dataset's leaderboard from the final reports (one row per "
                                       "optimization and generation) and print it. Calls no model.")
    board.add_argument("dataset", metavar="DATASET", help="a dataset named in data/manifest.yaml")
    board.add_argument("--json", action="store_true", help="print the rows as JSON")


def leaderboard(args: argparse.Namespace) -> int:
    from promptopt_dagster.cli import definitions_here, run_here
    from promptopt_dagster.core.errors import PromptOptError
    from promptopt_dagster.core.leaderboard import as_text
    from promptopt_dagster.defs.loop import LEADERBOARD_JOB

    definitions_here().resources["project"].spec(args.dataset)  # names an unknown dataset and the manifest
    result = run_here(LEADERBOARD_JOB, args.dataset, {"promptopt/dataset": args.dataset})
    if not result.success:
        raise PromptOptError(f"Run {result.run_id} ({LEADERBOARD_JOB} {args.dataset}) failed; open it in the "
                             "Dagster UI (`promptopt ui`) for the error.")
    board = result.output_for_node("leaderboard")
    if args.json:
        print(json.dumps(json.loads(board.to_json(orient="records")), indent=2))
    else:
        print(as_text(board))
    return 0
