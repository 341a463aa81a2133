"""Exact match after normalisation (first line, trim, case), with a 0/1 score per row.

An `evaluate` metric module: load it offline with `evaluate.load(<this directory>)`.
"""

import evaluate

from promptopt_dagster.scoring.module_info import text_pair_info
from promptopt_dagster.scoring.normalize import normalize_many

_DESCRIPTION = "Fraction of predictions equal to their reference after normalisation; per-row scores in `scores`."
_KWARGS = """
Args:
    predictions (list of str): model answers.
    references (list of str): expected answers.
    first_line (bool): keep only the first non-empty line of each text. Default True.
    ignore_case (bool): compare case-folded. Default True.
    strip (bool): trim whitespace and punctuation at both ends. Default True.
Returns:
    exact_match (float): mean of `scores`; scores (list of float): 1.0 or 0.0 per row.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class ExactMatch(evaluate.Metric):
    def _info(self):
        return text_pair_info(_DESCRIPTION, _KWARGS)

    def _compute(self, predictions, references, first_line=True, ignore_case=True, strip=True):
        options = dict(first_line=first_line, ignore_case=ignore_case, strip=strip)
        scores = (normalize_many(predictions, **options) == normalize_many(references, **options)).astype(float)
        return {"exact_match": float(scores.mean()) if len(scores) else 0.0, "scores": scores.tolist()}
