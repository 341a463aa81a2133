"""`promptopt rewrite`: a zero-shot MetaPrompt rewrite of a prompt, with no rows at all.

For a task that has no labeled data yet. The result is an unscored prompt version: it is marked so in
its JSON (`metadata.scored: false` and a warning) and in what this command prints, and it stays out of
`best_prompts/` until an optimization has scored it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from promptopt_dagster.app.datasets import load_manifest
from promptopt_dagster.app.settings import get_settings
from promptopt_dagster.cli.parser import HelpFormatter
from promptopt_dagster.core.errors import PromptOptError
from promptopt_dagster.core.prompts import PromptVersion
from promptopt_dagster.defs.home import ensure_dagster_home


def add_commands(sub) -> None:
    """The `rewrite` subcommand, on the `promptopt` parser's subparsers."""
    rewrite = sub.add_parser(
        "rewrite",
        formatter_class=HelpFormatter,
        help="rewrite a prompt from guidelines alone (zero-shot MetaPrompt); the result is unscored",
        description="Ask the optimizer model (PROMPTOPT_OPTIMIZER__*) to rewrite a prompt for "
        "clarity and answer format, shown no data rows. Writes an unscored prompt "
        "version; score it with `promptopt optimize` once you have rows.",
    )
    which = rewrite.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--dataset",
        metavar="NAME",
        help="rewrite this dataset's initial prompt, with its labels and "
        "description from data/manifest.yaml (its rows are not used)",
    )
    which.add_argument("--prompt", type=Path, metavar="FILE", help="a prompt JSON file (system_prompt, output_prompt)")
    rewrite.add_argument("--labels", help="with --prompt: the allowed answers, comma-separated")
    rewrite.add_argument("--description", default="", help="what the task is, in a sentence")
    rewrite.add_argument("--guidelines", default="", help="one more guideline for the rewrite")
    rewrite.add_argument(
        "--out",
        type=Path,
        metavar="PATH",
        help="where to write the unscored version (default: .promptopt/unscored_prompts/NAME.json)",
    )


def rewrite(args: argparse.Namespace) -> int:
    # start-up: the model client stack (response cache, sqlite3, retry engine) and MetaPrompt's parsers cost
    # ~12 ms, which only `rewrite` needs, not every `promptopt` command
    from promptopt_dagster.llm.factory import build_client
    from promptopt_dagster.optimizers.metaprompt import MetaPromptOptimizer

    settings = get_settings()
    if args.dataset:
        specs = load_manifest(settings.manifest_path)
        if args.dataset not in specs:
            raise PromptOptError(
                f"--dataset {args.dataset!r} is not in {settings.manifest_path}; known: {', '.join(sorted(specs))}."
            )
        spec = specs[args.dataset]
        prompt = PromptVersion.load(settings.prompts_dir / spec.initial_prompt)
        labels, descriptions, name = spec.labels, spec.label_descriptions, args.dataset
        description = args.description or spec.description
    else:
        prompt = PromptVersion.load(args.prompt)
        labels = [x.strip() for x in (args.labels or "").split(",") if x.strip()]
        descriptions, name, description = {}, args.prompt.stem, args.description
    client = build_client(settings.optimizer, settings.model_dir, settings.llm_threads, settings.llm_cache)
    proposal = MetaPromptOptimizer(guidelines=args.guidelines).rewrite(
        prompt, client, labels, descriptions, description, scored=False
    )
    if proposal.prompt is None:
        raise PromptOptError(f"no rewrite: {proposal.rejected_reason}.")
    out = args.out or settings.state_dir / "unscored_prompts" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(json.loads(proposal.prompt.to_json()), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    _record_in_dagster(name, proposal.prompt, out, client.model_key)
    print(
        f"UNSCORED prompt version v{proposal.prompt.version} (no row has judged it) written to {out}:\n"
        f"  system_prompt: {proposal.prompt.system_prompt}\n  output_prompt: {proposal.prompt.output_prompt!r}\n"
        "Score it on rows with `promptopt optimize` (use it as the dataset's initial prompt) before you ship it.\n"
        "The Dagster UI lists it under the asset unscored_prompt.",
        flush=True,
    )
    return 0


def _record_in_dagster(name: str, prompt, path: Path, written_by: str) -> None:
    # start-up: these import dagster (~0.5 s); `promptopt --help` must not wait for it
    import dagster as dg

    from promptopt_dagster.defs.promotion.unscored import record_unscored

    ensure_dagster_home(get_settings().dagster_home)
    with dg.DagsterInstance.get() as instance:
        record_unscored(instance, name, prompt, path.resolve(), written_by)
