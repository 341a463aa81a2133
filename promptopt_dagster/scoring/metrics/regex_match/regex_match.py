"""1.0 per row when the answer matches a regular expression: format checks with no reference.

For tasks where the right answer has a shape rather than a wording: "ends with a citation",
"an ISO date", "one of A-D". The pattern comes from the scorer's options in data/manifest.yaml;
references are ignored (the `evaluate` features still require the column, so pass them anyway).

mode "search" (default) looks for the pattern anywhere in the raw answer, as `re.search`;
"fullmatch" requires the whole answer, stripped of surrounding whitespace, to match, as
`re.fullmatch`. `flags` is a string of Python's inline flag letters: i (ignore case), m (^ and $
at every line), s (. matches newlines), x (verbose), a (ASCII-only \\w, \\d...).

An `evaluate` metric module: `evaluate.load(<this directory>)`.
"""

import re

import evaluate

from promptopt_dagster.scoring.module_info import text_pair_info

_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE, "a": re.ASCII}
_MODES = ("search", "fullmatch")

_DESCRIPTION = "Fraction of answers matching `pattern`; per-row scores in `scores`. References are ignored."
_KWARGS = """
Args:
    predictions (list of str): model answers.
    references (list of str): ignored.
    pattern (str): a Python regular expression. Required.
    mode (str): "search" (anywhere in the answer) or "fullmatch" (the whole stripped answer). Default "search".
    flags (str, optional): inline flag letters, any of "imsxa", e.g. "i" or "is".
Returns:
    regex_match (float): mean of `scores`; scores (list of float): 1.0 or 0.0 per row.
Raises:
    ValueError: no pattern, an invalid pattern, an unknown mode or flag.
"""


def compile_pattern(pattern, flags=None):
    if pattern is None or pattern == "":
        raise ValueError(
            "regex_match needs a pattern: set `options: {pattern: ...}` for this scorer in "
            "data/manifest.yaml, e.g. options: {pattern: '^[A-D]$', mode: fullmatch}."
        )
    if not isinstance(pattern, str):
        raise ValueError(f"regex_match: pattern must be a string, not {type(pattern).__name__} ({pattern!r}).")
    value = 0
    for letter in flags or "":
        if letter not in _FLAGS:
            raise ValueError(
                f"regex_match: unknown flag {letter!r} in flags={flags!r}; use letters from {''.join(_FLAGS)}."
            )
        value |= _FLAGS[letter]
    try:
        return re.compile(pattern, value)
    except re.error as exc:
        raise ValueError(f"regex_match: invalid regular expression {pattern!r}: {exc}") from None


def _check_mode(mode):
    if mode not in _MODES:
        raise ValueError(f"regex_match: mode must be one of {', '.join(_MODES)}, not {mode!r}.")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class RegexMatch(evaluate.Metric):
    def _info(self):
        return text_pair_info(_DESCRIPTION, _KWARGS)

    def compute(self, *, predictions=None, references=None, **kwargs):
        """`evaluate.Metric.compute`, with the options checked first.\n"""  # evaluate appends the args doc
        # Check before evaluate locks its cache file: an error raised inside _compute leaves that
        # lock held, and this module's next compute() then waits a second for it.
        compile_pattern(kwargs.get("pattern"), kwargs.get("flags"))
        _check_mode(kwargs.get("mode", "search"))
        return super().compute(predictions=predictions, references=references, **kwargs)

    def _compute(self, predictions, references, pattern=None, mode="search", flags=None):
        regex = compile_pattern(pattern, flags)
        _check_mode(mode)
        if mode == "search":
            scores = [float(regex.search(p) is not None) for p in predictions]
        else:  # fullmatch
            scores = [float(regex.fullmatch(p.strip()) is not None) for p in predictions]
        n = len(scores)
        return {"regex_match": sum(scores) / n if n else 0.0, "scores": scores}
