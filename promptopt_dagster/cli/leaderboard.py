"""`promptopt leaderboard DATASET`: print the dataset's leaderboard asset as last materialized.

A read command launches nothing: every final report (from `promptopt optimize` or the UI's sensor)
rematerializes its dataset's leaderboard, so the stored board is current, and this command loads it
through the asset's IO manager from the Dagster instance the UI shows (no webserver needed, no run
recorded, no model called).
"""

from __future__ import annotations

import argparse
import json

from promptopt_dagster.app.leaderboard import as_text
from promptopt_dagster.cli.parser import HelpFormatter
from promptopt_dagster.cli.runs import definitions_here


def add_commands(sub) -> None:
    """The `leaderboard` subcommand, on the `promptopt` parser's subparsers."""
    board = sub.add_parser(
        "leaderboard",
        formatter_class=HelpFormatter,
        help="rank every optimization of a dataset by its held-out test score, with cost",
        description="Print the dataset's leaderboard (one row per optimization and generation), "
        "as the last final report left it. Starts no run and calls no model.",
    )
    board.add_argument("dataset", metavar="DATASET", help="a dataset named in data/manifest.yaml")
    board.add_argument("--json", action="store_true", help="print the rows as JSON")


def leaderboard(args: argparse.Namespace) -> int:
    import dagster as dg  # start-up: dagster takes ~0.5 s to import; `promptopt --help` must not wait for it

    defs = definitions_here()
    defs.resources["project"].spec(args.dataset)  # names an unknown dataset and the manifest
    instance = dg.DagsterInstance.get()
    stored = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("leaderboard"), asset_partitions=[args.dataset]), limit=1
    ).records
    if not stored:
        board = None
    else:
        board = defs.load_asset_value("leaderboard", partition_key=args.dataset, instance=instance)
    if args.json:
        print(json.dumps([] if board is None else json.loads(board.to_json(orient="records")), indent=2))
    elif board is None:
        print(
            f"no optimization of {args.dataset} has a final report yet; run `promptopt optimize --dataset "
            f"{args.dataset}` (or `promptopt submit NAME` to the UI) first"
        )
    else:
        print(as_text(board))
    return 0
