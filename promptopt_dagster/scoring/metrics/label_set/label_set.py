"""1.0 per row when the whole answer is one of the labels: did the model obey "answer with one word"?

Stricter than `accuracy`, which maps "Positive, because the review praises..." to positive: here
only an answer that is exactly a label after normalisation (first non-empty line, trimmed of
surrounding whitespace and punctuation, case-folded) counts, so "Positive." and " POSITIVE" pass,
while "Positive, because..." and "The answer is positive" fail. Whether the label is the right
one does not matter (that is accuracy's job); the reference is used only for the default label
set. An empty label never counts, so an empty answer always scores 0.0.

An `evaluate` metric module: `evaluate.load(<this directory>)`.
"""

import evaluate

from promptopt_dagster.scoring.module_info import text_pair_info
from promptopt_dagster.scoring.normalize import map_distinct, normalize

_DESCRIPTION = "Fraction of answers that are exactly one of the labels after normalisation; per-row in `scores`."
_KWARGS = """
Args:
    predictions (list of str): model answers.
    references (list of str): expected labels (used only for the default label set).
    labels (list of str, optional): the label set; default: the distinct references.
Returns:
    label_set (float): mean of `scores`; scores (list of float): 1.0 or 0.0 per row.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class LabelSet(evaluate.Metric):
    def _info(self):
        return text_pair_info(_DESCRIPTION, _KWARGS)

    def _compute(self, predictions, references, labels=None):
        allowed = {normalize(label) for label in (labels if labels else set(references))}
        allowed.discard("")
        scores = [float(ok) for ok in map_distinct(lambda p: normalize(p) in allowed, predictions)]
        n = len(scores)
        return {"label_set": sum(scores) / n if n else 0.0, "scores": scores}
