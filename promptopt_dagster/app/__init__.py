"""The application layer: what a user's optimization is and does, built from the layers below it.

Optimizations and their settings, datasets, preflight gates, migration, promotion, the leaderboard
and reports. It knows nothing of Dagster's assets (defs/) or of the command line (cli/), which sit on
top of it; it may use core, llm, scoring and optimizers.
"""
