"""Ticker lists as users write them (comma-separated, a list, or a JSON list typed into a text field), and
the number tests the constructors share."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from quant_engine.validation import is_real, is_whole, parse_tickers, real_number


@pytest.mark.parametrize(
    "written",
    [
        "GOOG,MSFT",
        " GOOG , MSFT ,",
        ["GOOG", "MSFT"],
        ("GOOG", "MSFT", "GOOG"),
        '["GOOG", "MSFT"]',
        ' [ "GOOG","MSFT"] ',
    ],
)
def test_every_way_of_writing_two_tickers_names_the_same_two(written: object) -> None:
    assert parse_tickers(written) == ("GOOG", "MSFT")


def test_none_means_every_ticker() -> None:
    assert parse_tickers(None) is None


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("", "tickers='' names no ticker; leave it empty for every ticker"),
        (",,", "tickers=',,' names no ticker"),
        ([], "names no ticker"),
        ("[]", "names no ticker"),
        ('["GOOG", "MSFT"', "is not a valid JSON list"),
        ('["GOOG", 3]', "must be a comma-separated string or a list of names"),
        (3, "must be a comma-separated string or a list of names"),
        ({"GOOG": 1}, "must be a comma-separated string or a list of names"),
    ],
)
def test_what_names_no_ticker_is_refused_with_the_value(written: object, message: str) -> None:
    class Mine(ValueError):
        pass

    with pytest.raises(Mine, match=message):
        parse_tickers(written, error=Mine)


@pytest.mark.parametrize(
    ("value", "whole", "real"),
    [
        (3, True, True),
        (np.int64(3), True, True),
        (2.5, False, True),
        (np.float32(2.5), False, True),
        (Fraction(1, 3), False, True),
        (True, False, False),
        (np.bool_(True), False, False),
        ("3", False, False),
        (None, False, False),
        (1 + 0j, False, False),
    ],
)
def test_numbers_are_told_apart_from_bools_and_text(value: object, whole: bool, real: bool) -> None:
    assert (is_whole(value), is_real(value)) == (whole, real)


def test_a_real_number_is_bounded_as_the_float_it_returns() -> None:
    # Just below the bound as a fraction, but the float it rounds to (what the caller gets) is the bound
    just_below = Fraction(1 / 3) - Fraction(1, 10**30)
    assert float(just_below) == 1 / 3
    with pytest.raises(ValueError, match=r"share=.* must be a finite number < 0.333333"):
        real_number(just_below, "share", maximum=1 / 3, below=True)
    assert real_number(just_below, "share", maximum=1 / 3) == 1 / 3
    with pytest.raises(ValueError, match=r"share=True must be a finite number"):
        real_number(True, "share")
