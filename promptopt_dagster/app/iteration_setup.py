"""What one iteration works with, resolved once: its generation's settings and the dataset's rows, cut
into the parts the loop gives each step.

Every asset of an iteration needs some of it: the task model and dataset to answer, the confirm rows
to compare on, the select rows and demo pool to search with, the held-out rows to check for leakage,
the stop rules to decide. Resolving it in each asset repeated the same preamble six times and drew
an edge from the optimization's settings and rows to nearly every asset; resolving it once gives one
place to read how an iteration's rows were chosen, and a lineage graph that reads as the loop.

The parts of the dev split are disjoint: *select* rows choose among candidates (the optimizer sees
them), *confirm* rows accept or reject (the optimizer never sees them), *spare* rows are neither and
may be used by a race that wants more rows to choose on. When dev has fewer spare rows than the
settings' `spare_size`, *spare_train* train rows make up the difference: held out of the demo pool, so
no candidate is raced on a row it may carry as a demo. *train* is the demo pool's source (rows equal to
a held-out one removed); *test* is held out for the final report and only checked against.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from promptopt_dagster.app.datasets import COLUMNS, DatasetSplits, dev_parts, spare_rows
from promptopt_dagster.app.optimizations import OptimizationSpec
from promptopt_dagster.app.quality import drop_held_out
from promptopt_dagster.core.errors import DatasetError

#: the parts of an iteration's rows, in the order they are stored
PARTS = ("train", "select", "confirm", "spare", "spare_train", "test")


@dataclass(frozen=True)
class IterationSetup:
    spec: OptimizationSpec
    train: pd.DataFrame
    select: pd.DataFrame
    confirm: pd.DataFrame
    spare: pd.DataFrame
    spare_train: pd.DataFrame
    test: pd.DataFrame

    @classmethod
    def resolve(cls, spec: OptimizationSpec, splits: DatasetSplits) -> IterationSetup:
        """The parts of `splits` this generation's settings give (eval_size, select_size, seed): the same
        rows on every iteration and every rerun of the generation."""
        if splits.dev.empty:
            raise DatasetError(
                f"Dataset '{spec.dataset}' has no dev rows to evaluate prompts on. Add rows to its dev file "
                "and start the optimization again."
            )
        select, confirm = dev_parts(splits.dev, spec.eval_size, spec.select_size, spec.seed)
        spare = spare_rows(splits.dev, select, confirm)
        # a small dev split (atis_intent has 100 spare rows) gets the rest from train, drawn from the rows
        # that could be demos at all (none equal to a held-out row) and by the same seed every iteration
        short = max(0, spec.spare_size - len(spare))
        candidates = drop_held_out(splits.train, {"dev": splits.dev, "test": splits.test})
        spare_train = candidates.sample(n=min(short, len(candidates) // 2), random_state=spec.seed)
        train = splits.train[~splits.train["row_id"].isin(spare_train["row_id"])].reset_index(drop=True)
        return cls(spec, train, select, confirm, spare, spare_train.reset_index(drop=True), splits.test)

    @property
    def dataset(self) -> str:
        return self.spec.dataset

    @property
    def dev(self) -> pd.DataFrame:
        return pd.concat([self.select, self.confirm, self.spare], ignore_index=True)

    def race_rows(self) -> pd.DataFrame:
        """The spare rows an optimizer may race on: `spare_size` of them, dev rows first (sampled by the
        seed, so every iteration races on the same rows and a prompt raced before answers from the cache),
        then the held-out train rows."""
        size = self.spec.spare_size
        dev = self._spare_order().head(size)
        return pd.concat([dev, self.spare_train.head(max(0, size - len(dev)))], ignore_index=True)

    def _spare_order(self) -> pd.DataFrame:
        """The spare dev rows in the seed's order: race rows first, deciding rows after them."""
        return self.spare.sample(frac=1.0, random_state=self.spec.seed)

    def deciding_rows(self) -> pd.DataFrame:
        """Up to `spare_size` more spare dev rows, none of them race rows (sampled by the seed after those):
        the rows a race's last two may be raced again on. Empty where dev has no more (its spare rows all race)."""
        size = self.spec.spare_size
        return self._spare_order().iloc[size : 2 * size].reset_index(drop=True)

    def held_out(self) -> dict[str, pd.DataFrame]:
        """The rows no prompt may carry (leakage_gate), by the split they come from."""
        return {"dev": self.dev, "test": self.test}

    def demo_source(self) -> pd.DataFrame:
        """Train rows an optimizer may take demos from: none equal to a held-out row."""
        return drop_held_out(self.train, self.held_out())

    def to_frame(self) -> pd.DataFrame:
        """One table: every row with its part and its position in it, and the settings on each row, so that
        the setup is read back whole, in order, by any asset of the iteration."""
        frames = [
            getattr(self, part)[["row_id", *COLUMNS]].assign(part=part, position=range(len(getattr(self, part))))
            for part in PARTS
        ]
        out = pd.concat(frames, ignore_index=True)
        out["spec_json"] = self.spec.model_dump_json()
        return out[["part", "position", "row_id", *COLUMNS, "spec_json"]]

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> IterationSetup:
        if frame.empty:
            raise DatasetError("This iteration's setup has no rows: materialize iteration_setup for it first.")
        spec = OptimizationSpec.model_validate_json(frame["spec_json"].iloc[0])
        ordered = frame.sort_values(["part", "position"], kind="stable")
        parts = {part: ordered[ordered["part"] == part][["row_id", *COLUMNS]].reset_index(drop=True) for part in PARTS}
        return cls(spec, **parts)

    def sizes(self) -> dict[str, int]:
        return {part: len(getattr(self, part)) for part in PARTS}
