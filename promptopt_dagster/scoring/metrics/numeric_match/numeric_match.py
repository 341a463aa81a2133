"""The last number in the answer equals the reference number (GSM8K-style math), 0/1 per row.

Math answers end with the result after a chain of working ("3 * 4 = 12, so she has 12 apples."),
so the LAST number of the answer is taken as its result and compared with the reference as a
number, within an absolute `tolerance`: "12", "12.0", "$12" and "12.00" all equal 12.

What counts as a number in an answer:
- integers and decimals: 12, 3.50, .5, and "12." at the end of a sentence (12; the full stop is not
  a decimal point);
- thousands separators with commas in groups of three: 1,234 and 1,234,567.89 ("1,23" is 1 and 23;
  "1,2,3" is three numbers, so its last number is 3);
- a sign: -3, +3, the Unicode minus sign (−3), and -$12 or $-12; a "-" right after a letter or
  digit is a hyphen or a subtraction, not a sign ("5-3" is 5 and 3; "COVID-19" is 19);
- a currency sign before ($12 is 12) and a percent sign after (50% is 50, not 0.5);
- digits of any script, as Python's \\d and Decimal read them (full-width ４２ is 42);
- a number glued to letters still counts (5kg is 5, "x2" is 2).
Not supported: fractions (1/2 is neither 1 nor 2: both sides of a slash between digits are
skipped, as are dates such as 3/4/2024), scientific notation (1e5 is 1 and 5), spelled-out numbers
("twelve") and spaces as thousands separators ("1 234" is 1 and 234).

The reference must be one number in the same notation ("400", "1,234", "-2.5", "$12", "50%",
surrounding whitespace allowed); anything else raises ValueError naming the row, because a
reference that is not a number would silently score every answer 0. Numbers are compared as
decimals (exact, however long), so the default tolerance 1e-6 only absorbs trailing digits.

An `evaluate` metric module: `evaluate.load(<this directory>)`.
"""

import re
from decimal import Decimal

import evaluate

from promptopt_dagster.scoring.module_info import text_pair_info
from promptopt_dagster.scoring.normalize import map_distinct

_DESCRIPTION = "Fraction of answers whose last number equals the reference number; per-row scores in `scores`."
_KWARGS = """
Args:
    predictions (list of str): model answers.
    references (list of str): expected numbers ("400", "1,234", "-2.5").
    tolerance (float): largest absolute difference still counted as equal. Default 1e-6.
        A string such as "1e-6" is accepted (YAML reads `tolerance: 1e-6` as a string).
Returns:
    numeric_match (float): mean of `scores`; scores (list of float): 1.0 or 0.0 per row;
    no_number_rate (float): fraction of answers with no number in them.
Raises:
    ValueError: a reference is not a number (the message names the row), or tolerance < 0.
"""

_SIGNS = "-+\u2212"  # \u2212 is the Unicode minus sign
_DIGITS = r"(?P<digits>\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d)|\d+(?:\.\d+)?|\.\d+)"
# A sign counts only where it cannot be a hyphen or a subtraction (not right after a letter or
# digit); a currency sign may carry its own sign after it ($-12).
_NUMBER = re.compile(rf"(?:(?<!\w)(?P<sign>[{_SIGNS}]))?(?:\$(?P<sign2>[{_SIGNS}])?)?{_DIGITS}")
_REFERENCE = re.compile(rf"\s*(?P<sign>[{_SIGNS}])?(?:\$(?P<sign2>[{_SIGNS}])?)?{_DIGITS}%?\s*")
_SLASH_BEFORE = re.compile(r"\d\s*/\s*$")
_SLASH_AFTER = re.compile(r"\s*/\s*\d")


def _value(match):
    value = Decimal(match["digits"].replace(",", ""))
    negative = (match["sign"] or "+") in "-\u2212"
    if match["sign2"]:
        negative ^= match["sign2"] in "-\u2212"
    return -value if negative else value


def last_number(text):
    """The last number in `text` as a Decimal, or None when it has none (see the module docstring)."""
    for match in reversed(list(_NUMBER.finditer(text))):
        start, end = match.span("digits")
        if _SLASH_AFTER.match(text, end) or _SLASH_BEFORE.search(text[max(0, start - 12) : start]):
            continue  # one side of a fraction or a date
        return _value(match)
    return None


def parse_reference(index, text):
    match = _REFERENCE.fullmatch(text or "")
    if match is None:
        raise ValueError(
            f"numeric_match: reference at row index {index} is not a number: {text!r}. "
            "Write references as plain numbers such as 400, 1,234 or -2.5."
        )
    return _value(match)


def _tolerance(tolerance):
    """The tolerance as a Decimal. A string is accepted: YAML reads `tolerance: 1e-6` as one."""
    try:
        value = None if isinstance(tolerance, bool) else Decimal(str(tolerance).strip())
    except (ArithmeticError, ValueError):
        value = None
    if value is None or not value.is_finite() or value < 0:
        raise ValueError(f"numeric_match: tolerance must be a number >= 0, not {tolerance!r}.")
    return value


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class NumericMatch(evaluate.Metric):
    def _info(self):
        return text_pair_info(_DESCRIPTION, _KWARGS)

    def compute(self, *, predictions=None, references=None, **kwargs):
        """`evaluate.Metric.compute`, with the options checked first.\n"""  # evaluate appends the args doc
        # Check before evaluate locks its cache file: an error raised inside _compute leaves that
        # lock held, and this module's next compute() then waits a second for it.
        _tolerance(kwargs.get("tolerance", 1e-6))
        for i, r in enumerate(references or []):
            parse_reference(i, r)
        return super().compute(predictions=predictions, references=references, **kwargs)

    def _compute(self, predictions, references, tolerance=1e-6):
        tol = _tolerance(tolerance)
        refs = [parse_reference(i, r) for i, r in enumerate(references)]
        scores, missing = [], 0
        for value, ref in zip(map_distinct(last_number, predictions), refs):
            if value is None:
                missing += 1
                scores.append(0.0)
            else:
                scores.append(float(abs(value - ref) <= tol))
        n = len(scores)
        return {
            "numeric_match": sum(scores) / n if n else 0.0,
            "scores": scores,
            "no_number_rate": missing / n if n else 0.0,
        }
