"""The factory that picks a market data source by name.

Callers (ingestion, the CLI, tests) only ever see :class:`~quant_engine.data.base.MarketDataSource`:
a name and a ``fetch`` that returns validated bars. Which source backs it is a string chosen at the
edge, so the embedded synthetic market, Yahoo and a folder of CSV files are interchangeable.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from quant_engine.calendars import MarketTime
from quant_engine.data.base import MarketDataSource
from quant_engine.data.files import CsvSource, ParquetSource
from quant_engine.data.synthetic import SyntheticMarket

__all__ = ["SOURCE_NAMES", "UnknownSourceError", "make_source", "source_on"]


def _yfinance_source() -> type:
    from quant_engine.data.yfinance_source import YFinanceSource  # yfinance takes 0.3 s to import: only its users pay

    return YFinanceSource


_FACTORIES: dict[str, Callable[[], Callable[..., MarketDataSource]]] = {
    "synthetic": lambda: SyntheticMarket,
    "yfinance": _yfinance_source,
    "csv": lambda: CsvSource,
    "parquet": lambda: ParquetSource,
}
#: The names :func:`make_source` understands.
SOURCE_NAMES: tuple[str, ...] = tuple(_FACTORIES)


class UnknownSourceError(ValueError):
    """A source name that :func:`make_source` does not know, or options it does not take."""


def source_on(name: str, market_time: MarketTime, **options: Any) -> MarketDataSource:
    """The source ``name`` serving bars of ``market_time``'s calendar and bar size (``options`` as for
    :func:`make_source`: a file's ``path`` and reading options)."""
    options["calendar"] = market_time.calendar
    if name == "synthetic":
        options["freq"] = market_time.bar_size
    elif name == "yfinance":
        options["interval"] = market_time.bar_size
    return make_source(name, **options)


def make_source(name: str, **options: Any) -> MarketDataSource:
    """The market data source called ``name``, built with ``options``.

    Parameters
    ----------
    name : {"synthetic", "yfinance", "csv", "parquet"}
        ``synthetic`` is :class:`~quant_engine.data.synthetic.SyntheticMarket` (the embedded
        default), ``yfinance`` :class:`~quant_engine.data.yfinance_source.YFinanceSource`, ``csv``
        and ``parquet`` :class:`~quant_engine.data.files.CsvSource` /
        :class:`~quant_engine.data.files.ParquetSource` (which need ``path``).
    **options
        Keyword arguments of that class.

    Examples
    --------
    >>> source = make_source("synthetic", n_tickers=2, start="2024-01-01", end="2024-01-31")
    >>> source.fetch(["SYN01"], "2024-01-02", "2024-01-03")["ts"].dt.strftime("%Y-%m-%d %H:%M").tolist()
    ['2024-01-02 21:00', '2024-01-03 21:00']
    """
    if name not in _FACTORIES:
        raise UnknownSourceError(f"unknown data source {name!r}; use one of {', '.join(SOURCE_NAMES)}")
    factory = _FACTORIES[name]()
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as exc:
        raise UnknownSourceError(f"data source {name!r} cannot take options {sorted(options)}: {exc}") from exc
    return factory(**options)
