"""The scheduled universe, set once: ``QE_DEFAULT_SOURCE``, ``QE_DEFAULT_SOURCE_PATH``, ``QE_DEFAULT_TICKERS``."""

from __future__ import annotations

import pytest

from quant_engine.config import DATA_SOURCES, Settings, SettingsError


def test_without_the_variables_runs_read_every_synthetic_ticker() -> None:
    settings = Settings.from_env({})
    assert settings.run_defaults == {"source": "synthetic", "path": None, "tickers": None}


@pytest.mark.parametrize("written", ["GOOG,MSFT", " GOOG , MSFT ", '["GOOG", "MSFT"]'])
def test_the_universe_is_read_as_users_write_it(written: str) -> None:
    settings = Settings.from_env({"QE_DEFAULT_SOURCE": "YFinance", "QE_DEFAULT_TICKERS": written})
    assert settings.run_defaults == {"source": "yfinance", "path": None, "tickers": ["GOOG", "MSFT"]}


def test_a_file_source_takes_its_path() -> None:
    settings = Settings.from_env({"QE_DEFAULT_SOURCE": "csv", "QE_DEFAULT_SOURCE_PATH": "/data/bars.csv"})
    assert settings.run_defaults == {"source": "csv", "path": "/data/bars.csv", "tickers": None}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"QE_DEFAULT_SOURCE": "bloomberg"}, "QE_DEFAULT_SOURCE='bloomberg' is not a data source; use one of"),
        ({"QE_DEFAULT_SOURCE": "csv"}, "QE_DEFAULT_SOURCE=csv needs QE_DEFAULT_SOURCE_PATH"),
        ({"QE_DEFAULT_SOURCE_PATH": "/data/bars.csv"}, "QE_DEFAULT_SOURCE_PATH only applies to QE_DEFAULT_SOURCE=csv"),
        ({"QE_DEFAULT_SOURCE": "yfinance"}, "QE_DEFAULT_SOURCE=yfinance needs QE_DEFAULT_TICKERS"),
        ({"QE_DEFAULT_TICKERS": ",,"}, "QE_DEFAULT_TICKERS=',,' names no ticker; leave it empty for every ticker"),
        ({"QE_DEFAULT_TICKERS": '["GOOG",'}, "QE_DEFAULT_TICKERS='\\[\"GOOG\",' is not a valid JSON list"),
    ],
)
def test_a_setting_that_cannot_be_used_is_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_the_settings_know_every_data_source() -> None:
    from quant_engine.data.sources import SOURCE_NAMES

    assert sorted(DATA_SOURCES) == sorted(SOURCE_NAMES)
