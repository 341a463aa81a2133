"""The promotion area: a person's request to serve an optimization's best prompt, or to roll back
(`promotion_audit`, `promoted_prompt`, the `promote_prompt` job, which no sensor runs), and prompts
written without scoring (`unscored_prompt`, `promptopt rewrite`)."""
