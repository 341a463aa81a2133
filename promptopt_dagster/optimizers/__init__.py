"""Optimizers propose a refined prompt version; the platform, not the optimizer, decides to accept it."""

from promptopt_dagster.optimizers.base import Optimizer, OptimizerInput, Proposal, get_optimizer

__all__ = ["Optimizer", "OptimizerInput", "Proposal", "get_optimizer"]
