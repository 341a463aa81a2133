"""promptopt_dagster: prompt optimization as partitioned Dagster assets.

The domain (core, llm, scoring, optimizers) imports no Dagster; `defs/` wires it into assets.
"""

__version__ = "0.1.0"
