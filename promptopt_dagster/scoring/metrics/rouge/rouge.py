"""ROUGE-1, ROUGE-2 and ROUGE-L F-measures as computed by Google's `rouge_score` package.

For free-text answers (summaries, explanations) where exact match is too strict: ROUGE counts the
reference's words and word pairs found in the answer (rouge1, rouge2) and the longest common word
subsequence (rougeL). Every number equals `rouge_scorer.RougeScorer([...], use_stemmer=...)
.score(reference, prediction)[type].fmeasure` (the tests check each row, with and without the
stemmer). The texts are tokenised by rouge_score's own tokenizer and the F-measure is rouge_score's
`scoring.fmeasure`; only the counting is done here, once per row for all three types, and the
rougeL longest common subsequence is found with a bit-parallel algorithm (Hyyro 2004) instead of
rouge_score's pure-Python table, which is quadratic in time and memory: 1.4 s for one pair of
2,000-word texts, against milliseconds here. The LCS length is an integer either way, so the
scores are the same floats.

What rouge_score does that you may not expect, kept as it is so the numbers match everyone else's:
- Its tokenizer lowercases and keeps only ASCII letters and digits: "café" becomes "caf", and text
  in any non-Latin script (Chinese, Arabic, Russian, emoji...) has no tokens at all and scores 0.0
  even against an identical reference. Use chrf for such data. The detail `no_token_rate` is the
  fraction of rows where a non-blank answer or reference has no tokens, so the zeros show.
- A row where either side has no tokens scores 0.0, two empty strings included.
- Punctuation and case never count; the Porter stemmer (use_stemmer=True) only touches words of
  more than 3 letters.

The aggregates are plain means of the per-row F-measures. (The Hub's `rouge` metric, with its
default use_aggregator=True, reports the median of rouge_score's BootstrapAggregator resamples: an
estimate close to this mean, not equal to it.)

An `evaluate` metric module: `evaluate.load(<this directory>)`.
"""

from collections import Counter
from functools import lru_cache

import evaluate
from rouge_score import scoring
from rouge_score import tokenize as rouge_tokenize

from promptopt_dagster.scoring.module_info import text_pair_info

_TYPES = ("rouge1", "rouge2", "rougeL")

_DESCRIPTION = "ROUGE-1/2/L F-measures (rouge_score's); per-row scores of `rouge_type` in `scores`."
_KWARGS = """
Args:
    predictions (list of str): model answers.
    references (list of str): expected answers.
    rouge_type (str): "rouge1", "rouge2" or "rougeL": the type behind `rouge` and `scores`. Default "rougeL".
    use_stemmer (bool): Porter-stem words before matching. Default False.
Returns:
    rouge (float): mean F-measure of `rouge_type`; scores (list of float): its F-measure per row;
    rouge1, rouge2, rougeL (float): mean F-measure of each type;
    no_token_rate (float): fraction of rows where a non-blank answer or reference has no tokens (scored 0.0).
Note: rouge_score's tokenizer keeps only ASCII letters and digits; non-Latin text scores 0.0.
"""


class _CachedStemmer:
    """nltk's PorterStemmer with a cache: the same words come back row after row."""

    def __init__(self):
        from nltk.stem import porter

        self.stem = lru_cache(maxsize=1 << 16)(porter.PorterStemmer().stem)


def _ngram_f(target_tokens, prediction_tokens, n):
    """rouge_score.rouge_scorer._score_ngrams(...).fmeasure, same operations in the same order."""
    target = Counter(zip(*(target_tokens[i:] for i in range(n))))
    prediction = Counter(zip(*(prediction_tokens[i:] for i in range(n))))
    overlap = sum(min(count, prediction[gram]) for gram, count in target.items())
    precision = overlap / max(sum(prediction.values()), 1)
    recall = overlap / max(sum(target.values()), 1)
    return scoring.fmeasure(precision, recall)


def _lcs_length(a, b):
    """Length of the longest common subsequence of two token lists (bit-parallel, Hyyro 2004)."""
    positions = {}
    for i, token in enumerate(a):
        positions[token] = positions.get(token, 0) | (1 << i)
    mask = (1 << len(a)) - 1
    v = mask
    for token in b:
        u = v & positions.get(token, 0)
        v = ((v + u) | (v - u)) & mask
    return len(a) - v.bit_count()


def _lcs_f(target_tokens, prediction_tokens):
    """rouge_score.rouge_scorer._score_lcs(...).fmeasure."""
    if not target_tokens or not prediction_tokens:
        return 0.0
    lcs = _lcs_length(target_tokens, prediction_tokens)
    return scoring.fmeasure(lcs / len(prediction_tokens), lcs / len(target_tokens))


def _check_type(rouge_type):
    if rouge_type not in _TYPES:
        raise ValueError(f"rouge: rouge_type must be one of {', '.join(_TYPES)}, not {rouge_type!r}.")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Rouge(evaluate.Metric):
    def _info(self):
        return text_pair_info(
            _DESCRIPTION,
            _KWARGS,
            "Lin, ROUGE: A Package for Automatic Evaluation of Summaries (2004); "
            "https://github.com/google-research/google-research/tree/master/rouge",
        )

    def compute(self, *, predictions=None, references=None, **kwargs):
        """`evaluate.Metric.compute`, with the options checked first.\n"""  # evaluate appends the args doc
        # Check before evaluate locks its cache file: an error raised inside _compute leaves that
        # lock held, and this module's next compute() then waits a second for it.
        _check_type(kwargs.get("rouge_type", "rougeL"))
        return super().compute(predictions=predictions, references=references, **kwargs)

    def _compute(self, predictions, references, rouge_type="rougeL", use_stemmer=False):
        _check_type(rouge_type)
        stemmer = _CachedStemmer() if use_stemmer else None
        # Bounded: repeated references (and answers) are tokenised once without holding every text.
        tokenize = lru_cache(maxsize=4096)(lambda text: rouge_tokenize.tokenize(text, stemmer))

        per_type = {t: [] for t in _TYPES}
        no_tokens = 0
        for p, r in zip(predictions, references):
            pt, rt = tokenize(p), tokenize(r)
            if (not pt and p.strip()) or (not rt and r.strip()):
                no_tokens += 1
            per_type["rouge1"].append(_ngram_f(rt, pt, 1))
            per_type["rouge2"].append(_ngram_f(rt, pt, 2))
            per_type["rougeL"].append(_lcs_f(rt, pt))
        n = len(per_type["rougeL"])
        means = {t: sum(s) / n if n else 0.0 for t, s in per_type.items()}
        return {
            "rouge": means[rouge_type],
            "scores": per_type[rouge_type],
            **means,
            "no_token_rate": no_tokens / n if n else 0.0,
        }
