"""Scorers: Hugging Face `evaluate` metric modules shipped inside the package and loaded by path."""

from promptopt_dagster.scoring.registry import ScoreResult, available_metrics, score

__all__ = ["ScoreResult", "available_metrics", "score"]
