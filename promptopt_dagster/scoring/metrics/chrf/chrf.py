"""chrF (and chrF++) as computed by sacrebleu, on a 0-1 scale, with sentence-level chrF per row.

Character n-gram F-score: kinder than BLEU to short answers, inflections and morphology-rich or
unsegmented languages (it needs no tokenizer, so Chinese or Arabic text scores sensibly). With
word_order=2 it is chrF++ (word unigrams and bigrams added). The aggregate is corpus chrF:
character n-gram statistics are summed over all rows and one F-score is computed from the sums,
exactly `sacrebleu.metrics.CHRF(...).corpus_score(predictions, [references]).score / 100` (what
`sacrebleu.corpus_chrf` returns). It is NOT the mean of the per-row scores. Per row:
`CHRF(...).sentence_score(prediction, [reference]).score / 100`.

Each row's n-gram statistics are extracted once with the CHRF object API
(`_extract_corpus_statistics`, the hook sacrebleu's own significance tests use) and scored both
summed and per row; the tests check both against sacrebleu's public functions.

Edge cases, as sacrebleu has them: whitespace is ignored (sacrebleu's default), an empty answer
scores 0.0, and so does an empty answer to an empty reference. Scores are capped at 1.0 against
float rounding (sacrebleu can return a hair over 100).

An `evaluate` metric module: `evaluate.load(<this directory>)`.
"""

import evaluate
from sacrebleu.metrics import CHRF

from promptopt_dagster.scoring.module_info import text_pair_info

_DESCRIPTION = "Corpus chrF (sacrebleu) / 100; per-row sentence chrF / 100 in `scores`."
_KWARGS = """
Args:
    predictions (list of str): model answers.
    references (list of str): reference answers, one per row.
    char_order (int): character n-gram order. Default 6.
    word_order (int): word n-gram order: 0 is chrF, 2 is chrF++. Default 0.
    beta (int): recall is beta times as important as precision. Default 2.
    lowercase (bool): compare lowercased. Default False.
Returns:
    chrf (float): corpus chrF / 100 (not the mean of `scores`);
    scores (list of float): sentence chrF / 100 per row.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Chrf(evaluate.Metric):
    def _info(self):
        return text_pair_info(
            _DESCRIPTION,
            _KWARGS,
            "Popovic, chrF: character n-gram F-score for automatic MT evaluation (WMT 2015); "
            "Popovic, chrF++ (WMT 2017)",
        )

    def _compute(self, predictions, references, char_order=6, word_order=0, beta=2, lowercase=False):
        metric = CHRF(char_order=char_order, word_order=word_order, beta=beta, lowercase=lowercase)
        if not predictions:
            return {"chrf": 0.0, "scores": []}
        stats = metric._extract_corpus_statistics(list(predictions), [list(references)])
        scores = [min(metric._compute_score_from_stats(s).score / 100, 1.0) for s in stats]
        return {"chrf": min(metric._aggregate_and_compute(stats).score / 100, 1.0), "scores": scores}
