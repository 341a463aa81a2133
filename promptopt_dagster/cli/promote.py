"""`promptopt promote / rollback / render`: serve a best prompt with approval, take it back, see what it sends.

promote and rollback run the `promote_prompt` job in this process, as `optimize` runs its jobs, so the
request, its gates and the audit row are the same as from the UI's launchpad and show up there.

Exit codes: 0 the request was approved and is served; 1 it was refused (a gate said no, or a rollback had
nothing earlier to restore): one line on stdout with both scores and the reason, and a `blocked` row in
the audit (1 also when an approved prompt could not be written: an `error:` line says why); 2 it could not be judged (an unknown name, nothing to promote yet): one `error:` line on
stderr that says what to run, and nothing is recorded or served.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys

import pandas as pd

from promptopt_dagster.app.promotion import current_path
from promptopt_dagster.app.promotion import render as render_document
from promptopt_dagster.cli.parser import HelpFormatter
from promptopt_dagster.cli.runs import definitions_here, run_here, step_failure_text
from promptopt_dagster.core.errors import PromptOptError
from promptopt_dagster.core.storage import read_text
from promptopt_dagster.defs.names import PROMOTE_JOB


def add_commands(sub) -> None:
    """The `promote`, `rollback` and `render` subcommands, on the `promptopt` parser's subparsers."""
    promote = sub.add_parser(
        "promote",
        formatter_class=HelpFormatter,
        help="serve an optimization's best prompt where applications read it (gated, audited)",
        description="Score the optimization's best prompt and the prompt served now on the "
        "same held-out test rows; if it is not worse (beyond --margin), has no "
        "held-out row in it and its placeholders are intact, write it to "
        "<prompts dir>/promoted/<dataset>.json. Every request, blocked or not, is "
        "a row of the promotion_audit table.",
    )
    promote.add_argument("optimization", metavar="OPTIMIZATION", help="an optimization with a final report")
    promote.add_argument("--note", default="", help="why: kept in the audit table")
    promote.add_argument(
        "--margin",
        type=float,
        default=0.0,
        help="how far below the served prompt's test score the candidate may be (default: 0)",
    )
    promote.add_argument("--by", default="", help="who approves (default: the user running the command)")
    promote.add_argument(
        "--force",
        action="store_true",
        help="promote even if it scores below the served prompt (the audit records the override)",
    )

    rollback = sub.add_parser(
        "rollback",
        formatter_class=HelpFormatter,
        help="serve again the prompt that was served before the current one (audited)",
        description="Restore the version served before the current one through the same "
        "job, gates and audit as a promotion; repeated, it steps back through "
        "the history (after promotions A, B, C: B, then A, then a refusal). Both "
        "are scored on the test rows of the restored version's optimization: a "
        "worse one is refused unless --force.",
    )
    rollback.add_argument("dataset", metavar="DATASET", help="a dataset named in data/manifest.yaml")
    rollback.add_argument("--note", default="", help="why: kept in the audit table")
    rollback.add_argument("--by", default="", help="who approves (default: the user running the command)")
    rollback.add_argument(
        "--force",
        action="store_true",
        help="roll back even if the restored version scores below the served one (audited)",
    )

    render = sub.add_parser(
        "render",
        formatter_class=HelpFormatter,
        help="print exactly what the model receives from the promoted prompt for one input",
        description="Read <prompts dir>/promoted/<dataset>.json (nothing else: the file is "
        "self-contained) and print the text, or the chat turns, sent for INPUT.",
    )
    render.add_argument("dataset", metavar="DATASET", help="a dataset with a promoted prompt")
    render.add_argument("input", metavar="INPUT", help="the input to fill in for {user_input}")


def promote(args: argparse.Namespace) -> int:
    definitions_here()  # the partitions below come from the manifest and optimizations.yaml it loads
    from promptopt_dagster.defs.partitions import DATASET_OF  # start-up: defs.partitions imports dagster (~0.5 s)

    if args.optimization not in DATASET_OF:
        raise PromptOptError(f"unknown optimization {args.optimization!r}; known: {', '.join(sorted(DATASET_OF))}.")
    return _request(
        DATASET_OF[args.optimization],
        {
            "action": "promote",
            "optimization": args.optimization,
            "note": args.note,
            "margin": args.margin,
            "force": args.force,
        },
        args.by,
    )


def rollback(args: argparse.Namespace) -> int:
    definitions_here().resources["project"].spec(args.dataset)  # names an unknown dataset
    return _request(args.dataset, {"action": "rollback", "note": args.note, "force": args.force}, args.by)


def render(args: argparse.Namespace) -> int:
    path = current_path(definitions_here().resources["project"].promoted_dir(), args.dataset)
    try:
        document = json.loads(read_text(path))
    except FileNotFoundError:
        raise PromptOptError(
            f"{path} does not exist: no prompt of {args.dataset!r} is promoted. "
            "Run `promptopt promote OPTIMIZATION` first."
        ) from None
    print(render_document(document, args.input))
    return 0


def _request(dataset: str, config: dict, by: str) -> int:
    result = run_here(
        PROMOTE_JOB,
        dataset,
        {"promptopt/dataset": dataset},
        ops={"promotion_audit": {"config": {**config, "requested_by": by or getpass.getuser()}}},
    )
    audited = result.output_for_node("promotion_audit") if _has_output(result, "promotion_audit") else None
    if audited is None:  # no request could be judged (nothing to promote yet, ...): nothing recorded
        raise PromptOptError(f"{config['action']} {config.get('optimization') or dataset}: {step_failure_text(result)}")
    last = audited.sort_values("event_id").iloc[-1]
    print(_verdict_line(last))
    if last["verdict"] != "approved":
        return 1
    if not result.success or not _has_output(result, "promoted_prompt"):  # e.g. the prompts dir is not writable
        print(
            f"error: {config['action']} {dataset} was approved, but serving it failed: {step_failure_text(result)}",
            file=sys.stderr,
        )
        return 1
    served = result.output_for_node("promoted_prompt").iloc[0]
    print(f"serving {served['prompt_id']} at {served['path']} (copy: {served['version_path']})")
    return 0


def _verdict_line(last) -> str:
    """One line: what was asked, the scores compared, the verdict and why."""

    def known(value) -> bool:
        return value is not None and not pd.isna(value)

    verdict = f"{str(last['verdict']).upper()}: {last['reason']}"
    if not known(last["prompt_id"]):  # a rollback with nothing to restore
        return f"{last['action']} of {last['dataset']}: {verdict}"
    target = "to " if last["action"] == "rollback" else ""
    scores = f"test {last['metric']} {last['candidate_score']:.4f}" + (
        f" vs served {last['current_score']:.4f}" if known(last["current_score"]) else ""
    )
    return f"{last['action']} {target}{last['prompt_id']} (optimization {last['optimization']}, {scores}): {verdict}"


def _has_output(result, node: str) -> bool:
    return any(e.is_successful_output and e.step_key == node for e in result.all_events)
