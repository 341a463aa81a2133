"""The promotion area's definitions: unscored prompts, the promotion's audit and the served prompt, and
the job a person runs to promote or roll back."""

import dagster as dg

from promptopt_dagster.defs.names import PROMOTE_JOB
from promptopt_dagster.defs.partitions import dataset_partitions
from promptopt_dagster.defs.promotion.assets import promoted_prompt, promotion_audit
from promptopt_dagster.defs.promotion.unscored import unscored_prompt

promote_prompt = dg.define_asset_job(
    PROMOTE_JOB,
    selection=[promotion_audit, promoted_prompt],
    partitions_def=dataset_partitions,
    executor_def=dg.in_process_executor,
    description="A person's request to serve an optimization's best prompt (or to roll "
    "back): gated, audited, then written where applications read it. No "
    "sensor or schedule runs it.",
)


def definitions() -> dg.Definitions:
    """The area's assets and job, without resources (the code location adds them)."""
    return dg.Definitions(assets=[unscored_prompt, promotion_audit, promoted_prompt], jobs=[promote_prompt])
