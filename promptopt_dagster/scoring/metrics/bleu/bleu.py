"""BLEU as computed by sacrebleu, on a 0-1 scale, with sentence-level BLEU per row.

For translation-like tasks where answers are compared to a reference wording. The aggregate is
corpus BLEU: n-gram matches and lengths are summed over all rows and BLEU is computed once from
the sums, exactly `sacrebleu.corpus_bleu(predictions, [references]).score / 100`. It is NOT the mean
of the per-row scores (a short answer is punished through the corpus brevity penalty, and an
n-gram order with no match in one row does not zero the corpus), so `bleu` usually differs from
mean(`scores`). The per-row scores are `sacrebleu.sentence_bleu(prediction, [reference]).score /
100`: exponential smoothing and effective order (n-gram orders longer than the sentence are left
out), which is what sentence_bleu uses; sacrebleu's own docs warn that BLEU is meant for corpora.

Each row is tokenised and its n-grams counted once: the statistics sacrebleu's `corpus_score` and
`sentence_score` would each extract again are extracted once with the BLEU object API
(`_extract_corpus_statistics`, the hook sacrebleu's own significance tests use) and scored twice,
once summed and once per row. The tests check both against sacrebleu's public functions.

Edge cases, as sacrebleu has them: an empty answer scores 0.0, and so does an empty answer to an
empty reference. With the default "13a" tokenizer Chinese or Japanese text is one token per
space-separated run, so use tokenize="zh" or "char" for such data. 100 or more answers ending in
" ." make sacrebleu log a warning that the text looks tokenised. sacrebleu can return a hair over
100 for a perfect match (100.00000000000004, float rounding in the geometric mean): scores are
capped at 1.0 so they stay in [0, 1].

An `evaluate` metric module: `evaluate.load(<this directory>)`.
"""

import evaluate
from sacrebleu.metrics import BLEU

from promptopt_dagster.scoring.module_info import text_pair_info

_DESCRIPTION = "Corpus BLEU (sacrebleu) / 100; per-row sentence BLEU / 100 in `scores`."
_KWARGS = """
Args:
    predictions (list of str): model answers.
    references (list of str): reference answers, one per row.
    tokenize (str): sacrebleu tokenizer ("13a", "intl", "zh", "char", "none", ...). Default "13a".
    lowercase (bool): compare lowercased. Default False.
Returns:
    bleu (float): corpus BLEU / 100 (not the mean of `scores`);
    scores (list of float): sentence BLEU / 100 per row (smoothed, effective order);
    brevity_penalty, length_ratio (float): corpus brevity penalty and answer/reference length ratio;
    precisions (dict of str to float): corpus n-gram precisions / 100, keyed "1" to "4".
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Bleu(evaluate.Metric):
    def _info(self):
        return text_pair_info(
            _DESCRIPTION,
            _KWARGS,
            "Post, A Call for Clarity in Reporting BLEU Scores (WMT 2018); Papineni et al., BLEU (ACL 2002)",
        )

    def _compute(self, predictions, references, tokenize="13a", lowercase=False):
        corpus = BLEU(tokenize=tokenize, lowercase=lowercase)  # what corpus_bleu builds
        if not predictions:
            return {"bleu": 0.0, "scores": [], "brevity_penalty": 0.0, "length_ratio": 0.0, "precisions": {}}
        sentence = BLEU(tokenize=tokenize, lowercase=lowercase, effective_order=True)  # what sentence_bleu builds
        stats = corpus._extract_corpus_statistics(list(predictions), [list(references)])
        total = corpus._aggregate_and_compute(stats)
        scores = [min(sentence._compute_score_from_stats(s).score / 100, 1.0) for s in stats]
        return {
            "bleu": min(total.score / 100, 1.0),
            "scores": scores,
            "brevity_penalty": float(total.bp),
            "length_ratio": float(total.ratio),
            "precisions": {str(n + 1): p / 100 for n, p in enumerate(total.precisions)},
        }
