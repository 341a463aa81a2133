"""1.0 per row when the answer is valid JSON (optionally: an object with given keys).

For prompts whose output feeds a program: an answer that does not parse is worthless whatever it
says. References are ignored (the `evaluate` features still require the column).

- strip_code_fence (default True): models like to wrap JSON in a Markdown fence, so an answer that
  is, as a whole, one fenced block (```json ... ``` or ``` ... ```, any info string, on one line
  or several) is judged on the block's content. Prose around the fence still makes the answer
  invalid: a program reading the answer would choke on it too.
- require_object (default False): only a JSON object ({...}) counts, not a list, string or number.
- required_keys (optional list): the answer must be an object holding every one of these keys at
  its top level; giving keys implies require_object.
Surrounding whitespace is allowed. Python's json module also accepts NaN, Infinity and -Infinity,
which are not JSON; they count as invalid here. Duplicate keys are accepted (the last one wins),
as in most parsers.

An `evaluate` metric module: `evaluate.load(<this directory>)`.
"""

import json
import re

import evaluate

from promptopt_dagster.scoring.module_info import text_pair_info

# ``` then an optional info string (json, JSON, javascript...) then the content, then ```: all of the answer.
_FENCE = re.compile(r"\s*```[ \t]*(?:[A-Za-z][\w+.-]*(?=\s))?(.*?)```\s*", re.DOTALL)

_DESCRIPTION = "Fraction of answers that parse as JSON (optionally an object with required keys); per-row in `scores`."
_KWARGS = """
Args:
    predictions (list of str): model answers.
    references (list of str): ignored.
    strip_code_fence (bool): judge the content of an answer that is one ```json fenced block. Default True.
    require_object (bool): only a JSON object counts. Default False.
    required_keys (list of str, optional): top-level keys the object must have (implies require_object).
Returns:
    json_valid (float): mean of `scores`; scores (list of float): 1.0 or 0.0 per row;
    parse_rate (float): fraction of answers that parse as any JSON value, whatever the other checks say.
"""


def _reject_constant(name):
    raise ValueError(f"{name} is not JSON")


def parse_json(text, strip_code_fence=True):
    """(True, value) when `text` is JSON, else (False, None)."""
    if strip_code_fence:
        fenced = _FENCE.fullmatch(text)
        if fenced:
            text = fenced.group(1)
    try:
        return True, json.loads(text, parse_constant=_reject_constant)
    except ValueError:  # json.JSONDecodeError is a ValueError
        return False, None
    except RecursionError:  # absurdly deep nesting
        return False, None


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class JsonValid(evaluate.Metric):
    def _info(self):
        return text_pair_info(_DESCRIPTION, _KWARGS)

    def _compute(self, predictions, references, strip_code_fence=True, require_object=False, required_keys=None):
        if isinstance(required_keys, str):
            required_keys = [required_keys]
        keys = list(required_keys or [])
        need_object = require_object or bool(keys)
        scores, parsed = [], 0
        for p in predictions:
            ok, value = parse_json(p, strip_code_fence)
            parsed += ok
            if ok and need_object:
                ok = isinstance(value, dict) and all(k in value for k in keys)
            scores.append(float(ok))
        n = len(scores)
        return {"json_valid": sum(scores) / n if n else 0.0, "scores": scores, "parse_rate": parsed / n if n else 0.0}
