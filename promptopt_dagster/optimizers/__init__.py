"""Optimizers propose a refined prompt version; the platform, not the optimizer, decides to accept it."""

from promptopt_dagster.optimizers.base import Evaluation, Evaluator, Optimizer, OptimizerContext, Proposal
from promptopt_dagster.optimizers.registry import get_optimizer

__all__ = ["Evaluation", "Evaluator", "Optimizer", "OptimizerContext", "Proposal", "get_optimizer"]
