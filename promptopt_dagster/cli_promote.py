"""`promptopt promote / rollback / render`: serve a best prompt with approval, take it back, see what it sends.

promote and rollback run the `promote_prompt` job in this process, as `optimize` runs its jobs, so the
request, its gates and the audit row are the same as from the UI's launchpad and show up there.
"""

from __future__ import annotations

import argparse
import getpass
import json


def add_commands(sub) -> None:
    from promptopt_dagster.cli import _Help

    promote = sub.add_parser("promote", formatter_class=_Help,
                             help="serve an optimization's best prompt where applications read it (gated, audited)",
                             description="Score the optimization's best prompt and the prompt served now on the "
                                         "same held-out test rows; if it is not worse (beyond --margin), has no "
                                         "held-out row in it and its placeholders are intact, write it to "
                                         "<prompts dir>/promoted/<dataset>.json. Every request, blocked or not, is "
                                         "a row of the promotion_audit table.")
    promote.add_argument("optimization", metavar="OPTIMIZATION", help="an optimization with a final report")
    promote.add_argument("--note", default="", help="why: kept in the audit table")
    promote.add_argument("--margin", type=float, default=0.0,
                         help="how far below the served prompt's test score the candidate may be (default: 0)")
    promote.add_argument("--by", default="", help="who approves (default: the user running the command)")

    rollback = sub.add_parser("rollback", formatter_class=_Help,
                              help="serve again the prompt that was served before the current one (audited)",
                              description="Restore the previously promoted prompt of a dataset through the same "
                                          "job, gates and audit as a promotion.")
    rollback.add_argument("dataset", metavar="DATASET", help="a dataset named in data/manifest.yaml")
    rollback.add_argument("--note", default="", help="why: kept in the audit table")
    rollback.add_argument("--by", default="", help="who approves (default: the user running the command)")

    render = sub.add_parser("render", formatter_class=_Help,
                            help="print exactly what the model receives from the promoted prompt for one input",
                            description="Read <prompts dir>/promoted/<dataset>.json (nothing else: the file is "
                                        "self-contained) and print the text, or the chat turns, sent for INPUT.")
    render.add_argument("dataset", metavar="DATASET", help="a dataset with a promoted prompt")
    render.add_argument("input", metavar="INPUT", help="the input to fill in for {user_input}")


def promote(args: argparse.Namespace) -> int:
    from promptopt_dagster.cli import definitions_here
    from promptopt_dagster.core.errors import PromptOptError

    definitions_here()  # the partitions below come from the manifest and optimizations.yaml it loads
    from promptopt_dagster.defs.partitions import DATASET_OF

    if args.optimization not in DATASET_OF:
        raise PromptOptError(f"unknown optimization {args.optimization!r}; known: {', '.join(sorted(DATASET_OF))}.")
    return _request(DATASET_OF[args.optimization], {"action": "promote", "optimization": args.optimization,
                                                    "note": args.note, "margin": args.margin}, args.by)


def rollback(args: argparse.Namespace) -> int:
    from promptopt_dagster.cli import definitions_here

    definitions_here().resources["project"].spec(args.dataset)  # names an unknown dataset
    return _request(args.dataset, {"action": "rollback", "note": args.note}, args.by)


def render(args: argparse.Namespace) -> int:
    from promptopt_dagster.cli import definitions_here
    from promptopt_dagster.core.errors import PromptOptError
    from promptopt_dagster.core.promotion import current_path
    from promptopt_dagster.core.promotion import render as render_document
    from promptopt_dagster.core.storage import read_text

    path = current_path(definitions_here().resources["project"].promoted_dir(), args.dataset)
    try:
        document = json.loads(read_text(path))
    except FileNotFoundError:
        raise PromptOptError(f"{path} does not exist: no prompt of {args.dataset!r} is promoted. "
                             "Run `promptopt promote OPTIMIZATION` first.") from None
    print(render_document(document, args.input))
    return 0


def _request(dataset: str, config: dict, by: str) -> int:
    from promptopt_dagster.cli import _failure_message, run_here
    from promptopt_dagster.core.errors import PromptOptError
    from promptopt_dagster.defs.loop import PROMOTE_JOB

    result = run_here(PROMOTE_JOB, dataset, {"promptopt/dataset": dataset},
                      ops={"promotion_audit": {"config": {**config, "requested_by": by or getpass.getuser()}}})
    audited = result.output_for_node("promotion_audit") if _has_output(result, "promotion_audit") else None
    if audited is None:  # failed before any request was recorded (unknown optimization, no final report, ...)
        raise PromptOptError(f"{config['action']} of {dataset}: {_failure_message(result)}")
    last = audited.sort_values("event_id").iloc[-1]
    line = (f"{last['action']} {last['prompt_id']} (optimization {last['optimization']}, test {last['metric']} "
            f"{last['candidate_score']:.4f}"
            + (f" vs served {last['current_score']:.4f}" if last["current_score"] == last["current_score"] else "")
            + f"): {str(last['verdict']).upper()}: {last['reason']}")
    print(line)
    if not result.success:
        return 1
    served = result.output_for_node("promoted_prompt").iloc[0]
    print(f"serving {served['prompt_id']} at {served['path']} (copy: {served['version_path']})")
    return 0


def _has_output(result, node: str) -> bool:
    return any(e.is_successful_output and e.step_key == node for e in result.all_events)
