"""Domain types and plain helpers every layer may use: errors, prompts, intervals, decisions, text.

The bottom layer: it imports nothing else of the project and nothing of Dagster (pyproject.toml's
import contract enforces both)."""
