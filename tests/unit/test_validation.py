"""Ticker lists as users write them: comma-separated, a list, or a JSON list typed into a text field."""

from __future__ import annotations

import pytest

from quant_engine.validation import parse_tickers


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
