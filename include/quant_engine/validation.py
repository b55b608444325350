"""Checks of loosely typed input, written once: counts, ranges, choices, ticker lists and frame columns.

Every public entry point (DAG params, CLI flags, constructors) reads its arguments through these,
so the same mistake gets the same message everywhere: the parameter's name, the value given and
what would be accepted. ``error`` picks the exception class, a ``ValueError`` subclass of the
caller's family (``WfoConfigError``, ``TrainingInputError``...), so callers keep their own type.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, TypeGuard

if TYPE_CHECKING:  # pandas only for the frame checks: settings read ticker lists without it
    import pandas as pd

__all__ = [
    "is_real",
    "is_whole",
    "one_of",
    "parse_tickers",
    "real_number",
    "require_columns",
    "utc_column",
    "whole_number",
]


def is_whole(value: object) -> TypeGuard[int]:
    """Whether ``value`` is an integer (a numpy one too) and not a bool.

    Use it, not ``isinstance(value, numbers.Integral)``, on a parameter annotated ``int``: mypy holds
    that no ``int`` is an ``Integral``, so it would skip, unchecked, the code after that test.
    """
    return not isinstance(value, bool) and isinstance(value, numbers.Integral)


def is_real(value: object) -> TypeGuard[float]:
    """Whether ``value`` is a real number (an int or a numpy one too) and not a bool; see :func:`is_whole`."""
    return not isinstance(value, bool) and isinstance(value, numbers.Real)


def _bounds(minimum: float | None, maximum: float | None, *, above: bool = False, below: bool = False) -> str:
    low = None if minimum is None else f"{'>' if above else '>='} {minimum:g}"
    high = None if maximum is None else f"{'<' if below else '<='} {maximum:g}"
    if low and high:
        return f"{low} and {high}"
    return low or high or ""


def whole_number(
    value: object,
    name: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    error: type[ValueError] = ValueError,
) -> int:
    """``value`` as an ``int`` within ``[minimum, maximum]``; a bool, a float or text is refused.

    Examples
    --------
    >>> whole_number(3, "keep", minimum=1)
    3
    >>> whole_number(0, "keep", minimum=1)
    Traceback (most recent call last):
    ...
    ValueError: keep=0 must be a whole number >= 1
    """
    whole = int(value) if is_whole(value) else None
    if whole is None or (minimum is not None and whole < minimum) or (maximum is not None and whole > maximum):
        bounds = _bounds(minimum, maximum)
        raise error(f"{name}={value!r} must be a whole number" + (f" {bounds}" if bounds else ""))
    return whole


def real_number(
    value: object,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    above: bool = False,
    below: bool = False,
    error: type[ValueError] = ValueError,
) -> float:
    """``value`` as a finite ``float`` within its bounds (``above``/``below``: the bound itself is excluded).

    Examples
    --------
    >>> real_number(0.5, "confidence", minimum=0, maximum=1, above=True, below=True)
    0.5
    >>> real_number(float("nan"), "alpha", minimum=0, above=True)
    Traceback (most recent call last):
    ...
    ValueError: alpha=nan must be a finite number > 0
    """
    number = float(value) if is_real(value) else math.nan
    ok = math.isfinite(number)
    if ok and minimum is not None:
        ok = number > minimum if above else number >= minimum
    if ok and maximum is not None:
        ok = number < maximum if below else number <= maximum
    if not ok:
        bounds = _bounds(minimum, maximum, above=above, below=below)
        raise error(f"{name}={value!r} must be a finite number" + (f" {bounds}" if bounds else ""))
    return number


def one_of(value: object, name: str, choices: Collection[str], *, error: type[ValueError] = ValueError) -> str:
    """``value`` if it is one of ``choices``.

    Examples
    --------
    >>> one_of("scale", "vol_policy", ("suppress", "scale"))
    'scale'
    """
    if not isinstance(value, str) or value not in choices:
        raise error(f"{name}={value!r} must be one of {', '.join(choices)}")
    return value


def parse_tickers(
    value: object, *, error: type[ValueError] = ValueError, name: str = "tickers"
) -> tuple[str, ...] | None:
    """Tickers as users write them: a comma-separated string, a list, or a JSON list in a string.

    ``None`` means every ticker. A string that starts with ``[`` is read as JSON (``'["GOOG",
    "MSFT"]'``, as typed into a form's text field or a shell flag), anything else as
    comma-separated names. A value that names no ticker at all (``""``, ``",,,"``, ``[]``) is an
    error, never "all": a form left with stray commas must not quietly widen a run to the whole
    universe. ``name`` is what the messages call the value (a parameter, a variable).

    Examples
    --------
    >>> parse_tickers("SYN00, SYN01,,SYN00"), parse_tickers(["A"]), parse_tickers('["A", "B"]')
    (('SYN00', 'SYN01'), ('A',), ('A', 'B'))
    >>> parse_tickers(None) is None
    True
    """
    if value is None:
        return None
    names: object = value
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            names = json.loads(value)
        except json.JSONDecodeError as exc:
            raise error(
                f'{name}={value!r} is not a valid JSON list ({exc.msg}); write ["GOOG", "MSFT"] or GOOG,MSFT'
            ) from None
    elif isinstance(value, str):
        names = value.split(",")
    if not isinstance(names, Sequence) or isinstance(names, str) or not all(isinstance(t, str) for t in names):
        raise error(f"{name}={value!r} must be a comma-separated string or a list of names")
    found = tuple(dict.fromkeys(t.strip() for t in names if t.strip()))
    if not found:
        raise error(f"{name}={value!r} names no ticker; leave it empty for every ticker")
    return found


def require_columns(frame: object, required: Sequence[str], what: str) -> pd.DataFrame:
    """``frame`` if it is a DataFrame holding every column of ``required``; ``what`` names it in the error."""
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} are missing column(s) {missing}; have {list(frame.columns)}")
    return frame


def utc_column(frame: pd.DataFrame, column: str, what: str) -> pd.Series:
    """``frame[column]`` as ``datetime64[ns, UTC]``; a naive or non-time column is an error."""
    import pandas as pd

    values = frame[column]
    if not isinstance(values.dtype, pd.DatetimeTZDtype):
        raise ValueError(f"{what} column {column!r} has dtype {values.dtype}; it must be tz-aware datetime64 (UTC)")
    return values.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")
