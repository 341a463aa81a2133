"""Macro F1 over a label set, with a 0/1 correctness score per row.

Accuracy hides a classifier that always answers the majority label; macro F1 weighs every label
equally, so it does not. Answers are mapped to labels exactly as the `accuracy` module does (the
label the normalised answer starts with, "Positive." -> positive). An answer naming no label is
wrong: it falls in a class outside the label set, so it is a false negative for the true label and
a false positive for no label, as in scikit-learn when `labels=` is given.

The aggregate equals `sklearn.metrics.f1_score(y_true, y_pred, labels=labels, average="macro",
zero_division=0)` on the normalised references and mapped answers, where `labels` are the labels
of the set that some reference or some answer has (the tests check it). A label no row has and no
answer names is left out of the mean, as scikit-learn does without `labels=`: its F1 is undefined,
and counting it as 0 scored the rows, not the prompt. On atis_intent the 500 test rows hold no
`flight_time` while the confirm rows hold one, so the same prompt's macro F1 was capped at 7/8 on
test and not on confirm, a 9-point "drop" that no prompt could avoid. It is computed here from
per-label counts rather than by calling scikit-learn: the counts are a few lines, importing
scikit-learn costs about a second, and scikit-learn refuses an empty label set where this module
returns 0.0.

F1 has no per-row form, so the per-row `scores` are correctness: 1.0 when the mapped label equals
the normalised reference, else 0.0 (their mean is accuracy, not F1). An empty label never counts:
an empty reference belongs to no class, so its row scores 0.0 and can only add a false positive.

An `evaluate` metric module: `evaluate.load(<this directory>)`.
"""

import evaluate

from promptopt_dagster.scoring.module_info import text_pair_info
from promptopt_dagster.scoring.normalize import normalize, normalize_many, to_label_many

_DESCRIPTION = "Macro F1 over the label set (unmapped answers are wrong); per-row correctness in `scores`."
_KWARGS = """
Args:
    predictions (list of str): model answers.
    references (list of str): expected labels.
    labels (list of str, optional): the label set; default: the sorted distinct normalised references.
Returns:
    f1 (float): macro F1 over the labels (scikit-learn's, zero_division=0);
    scores (list of float): 1.0 when the answer's label equals the reference, else 0.0;
    per_label (dict of str to float): F1 of each label some row or answer has (the others have none);
    precision, recall (float): macro means over the same labels.
"""


def _label_set(labels, refs):
    if labels:
        ordered = dict.fromkeys(normalize(label) for label in labels)  # de-duplicated, order kept
    else:
        ordered = dict.fromkeys(sorted(set(refs)))
    ordered.pop("", None)
    return list(ordered)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class F1(evaluate.Metric):
    def _info(self):
        return text_pair_info(_DESCRIPTION, _KWARGS)

    def _compute(self, predictions, references, labels=None):
        refs = normalize_many(references)
        labels = _label_set(labels, refs)
        mapped = to_label_many(predictions, labels) if labels else [None] * len(refs)
        tp = dict.fromkeys(labels, 0)
        fp = dict.fromkeys(labels, 0)
        fn = dict.fromkeys(labels, 0)
        scores = []
        for m, r in zip(mapped, refs):
            if m is not None and m == r:
                tp[m] += 1
                scores.append(1.0)
                continue
            scores.append(0.0)
            if m is not None:
                fp[m] += 1
            if r in fn:
                fn[r] += 1
        per_label, precisions, recalls = {}, [], []
        for label in labels:
            t, f_p, f_n = tp[label], fp[label], fn[label]
            if not t + f_p + f_n:  # no row has it and no answer names it: undefined, left out
                continue
            precisions.append(t / (t + f_p) if t + f_p else 0.0)
            recalls.append(t / (t + f_n) if t + f_n else 0.0)
            per_label[label] = 2 * t / (2 * t + f_p + f_n)
        k = len(per_label)
        return {
            "f1": sum(per_label.values()) / k if k else 0.0,
            "scores": scores,
            "per_label": per_label,
            "precision": sum(precisions) / k if k else 0.0,
            "recall": sum(recalls) / k if k else 0.0,
        }
