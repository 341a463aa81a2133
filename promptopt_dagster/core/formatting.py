"""Numbers as a person reads them: one set of helpers for every score, gain, interval and dollar amount.

Kept free of pandas and Dagster, so the CLI can format its lines without paying for those imports.
"""

from __future__ import annotations

import math

NO_CANDIDATE = "no candidate survived"


def missing(value) -> bool:
    """None, NaN or pandas' NA (told by its type name, so this module needs no pandas)."""
    return value is None or type(value).__name__ == "NAType" or (isinstance(value, float) and math.isnan(value))


def fmt_score(value, digits: int = 4) -> str:
    """0.24749999999999872 -> "0.2475"; None or NaN -> "n/a"."""
    return "n/a" if missing(value) else f"{float(value):.{digits}f}"


def fmt_signed(value, digits: int = 4) -> str:
    """A gain or a bound of one: "+0.2475", "-0.0100"."""
    return "n/a" if missing(value) else f"{float(value):+.{digits}f}"


def fmt_interval(bounds, signed: bool = False, digits: int = 4) -> str:
    """ "[0.5400, 0.6800]", or with signs for a gain's interval "[+0.2475, +0.3100]"; "" when there is none."""
    if not bounds or any(missing(b) for b in bounds):
        return ""
    one = fmt_signed if signed else fmt_score
    return f"[{one(bounds[0], digits)}, {one(bounds[1], digits)}]"


def fmt_dollars(value) -> str:
    """ "$0.0123"."""
    return "n/a" if missing(value) else f"${float(value):.4f}"


def fmt_refined(value) -> str:
    """A refined prompt's score, or what an iteration without one had: no candidate survived its checks."""
    return NO_CANDIDATE if missing(value) else fmt_score(value)
