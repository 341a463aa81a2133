"""Classification accuracy over string labels, with a 0/1 score per row.

The answer is mapped to the label it starts with after normalisation ("Positive." -> positive);
an answer naming no label is wrong. An `evaluate` metric module: `evaluate.load(<this directory>)`.
"""

import evaluate

from promptopt_dagster.scoring.module_info import text_pair_info
from promptopt_dagster.scoring.normalize import normalize_many, to_label_many

_DESCRIPTION = "Fraction of answers whose label equals the reference label; per-row scores in `scores`."
_KWARGS = """
Args:
    predictions (list of str): model answers.
    references (list of str): expected labels.
    labels (list of str, optional): the label set; default: the distinct references.
Returns:
    accuracy (float): mean of `scores`; scores (list of float): 1.0 or 0.0 per row;
    invalid_rate (float): fraction of answers that name no label.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Accuracy(evaluate.Metric):
    def _info(self):
        return text_pair_info(_DESCRIPTION, _KWARGS)

    def _compute(self, predictions, references, labels=None):
        refs = normalize_many(references)
        labels = list(labels) if labels else sorted(set(refs))
        mapped = to_label_many(predictions, labels)
        scores = (mapped == refs).astype(float)
        n = len(scores)
        return {
            "accuracy": float(scores.mean()) if n else 0.0,
            "scores": scores.tolist(),
            "invalid_rate": float(sum(m is None for m in mapped)) / n if n else 0.0,
        }
