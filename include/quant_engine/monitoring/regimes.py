"""The market's volatility regime (calm / normal / stressed), for drift verdicts and live signals alike.

The drift monitor names the regime the market was in when quality moved; the bridge labels each
signal with the regime of its live volatility. Both read it from here, without the statistics of
:mod:`quant_engine.monitoring.concept_drift`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from quant_engine.storage.atomic import write_json_atomic
from quant_engine.timeutil import utc_timestamp
from quant_engine.validation import require_columns, utc_column, whole_number

__all__ = ["VOL_REGIMES", "VolRegimeState", "VolRegimeTracker", "market_proxy_returns"]

VOL_REGIMES: tuple[str, ...] = ("calm", "normal", "stressed")


def market_proxy_returns(bars: pd.DataFrame) -> pd.Series:
    """The equal-weighted mean 1-bar log return of the tickers in ``bars``, indexed by ``ts``."""
    bars = require_columns(bars, ("ticker", "ts", "close"), "bars")
    ts = utc_column(bars, "ts", "bars")
    close = bars.assign(ts=ts).pivot_table(index="ts", columns="ticker", values="close", aggfunc="last")
    returns = np.log(close).diff().iloc[1:]
    return returns.mean(axis=1, skipna=True).dropna().rename("market_return")


@dataclass(frozen=True)
class VolRegimeState:
    """The market's volatility regime as of a bar, as stored in the state file."""

    as_of: pd.Timestamp
    realized_vol: float
    percentile: float
    regime: str
    since: pd.Timestamp

    def to_dict(self) -> dict[str, Any]:
        """The state file's JSON content."""
        return {
            "as_of": self.as_of.isoformat(),
            "realized_vol": self.realized_vol,
            "percentile": self.percentile,
            "regime": self.regime,
            "since": self.since.isoformat(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VolRegimeState:
        """The state stored by :meth:`to_dict`."""
        return cls(
            as_of=utc_timestamp(data["as_of"], "as_of"),
            realized_vol=float(data["realized_vol"]),
            percentile=float(data["percentile"]),
            regime=str(data["regime"]),
            since=utc_timestamp(data["since"], "since"),
        )


class VolRegimeTracker:
    """Realised-volatility percentile of the market proxy -> calm / normal / stressed, kept in a JSON file.

    Parameters
    ----------
    path : Path or str
        The state file (written atomically).
    window : int
        Bars in the realised volatility (std of the proxy's log returns), >= 2.
    history : int
        Past realised-vol values the current one is ranked among, >= 2.
    calm_below, stressed_above : float
        Percentile cut-offs in (0, 1), ``calm_below < stressed_above``: below the first is calm, at or
        above the second stressed, between them normal.

    Notes
    -----
    ``percentile`` is the share of the last ``history`` realised-vol values (the current one
    included) that are at or below the current one. ``since`` is the first bar of the current run
    of the same regime, carried over from the stored state when the regime has not changed, so it
    survives restarts and reruns.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        window: int = 20,
        history: int = 252,
        calm_below: float = 0.3,
        stressed_above: float = 0.8,
    ) -> None:
        window, history = whole_number(window, "window", minimum=2), whole_number(history, "history", minimum=2)
        if not (0 < calm_below < stressed_above < 1):
            raise ValueError(
                f"calm_below={calm_below!r} and stressed_above={stressed_above!r} must satisfy "
                "0 < calm_below < stressed_above < 1"
            )
        self.path = Path(path)
        self.window, self.history = int(window), int(history)
        self.calm_below, self.stressed_above = float(calm_below), float(stressed_above)

    def read(self) -> VolRegimeState | None:
        """The stored state, or None before the first update."""
        if not self.path.exists():
            return None
        return VolRegimeState.from_dict(json.loads(self.path.read_text()))

    def classify(self, percentile: float) -> str:
        """The regime of a realised-vol percentile."""
        if percentile < self.calm_below:
            return VOL_REGIMES[0]
        return VOL_REGIMES[2] if percentile >= self.stressed_above else VOL_REGIMES[1]

    def regimes(self, returns: pd.Series) -> pd.DataFrame:
        """``realized_vol, percentile, regime`` at every bar of ``returns`` with enough history."""
        if (
            not isinstance(returns, pd.Series)
            or not isinstance(returns.index, pd.DatetimeIndex)
            or returns.index.tz is None
        ):
            raise ValueError("returns must be a pandas Series indexed by tz-aware timestamps (market_proxy_returns)")
        vol = returns.sort_index().rolling(self.window).std(ddof=1)
        pct = vol.rolling(self.history).rank(pct=True)
        out = pd.DataFrame({"realized_vol": vol, "percentile": pct}).dropna()
        out["regime"] = [self.classify(p) for p in out["percentile"]]
        return out

    def update(self, returns: pd.Series) -> VolRegimeState:
        """Classify the last bar of ``returns``, store it, and return it.

        Raises
        ------
        ValueError
            Fewer than ``window + history - 1`` returns, or a last bar older than the stored one.
        """
        table = self.regimes(returns)
        if table.empty:
            raise ValueError(
                f"the volatility regime needs {self.window + self.history - 1} returns "
                f"(window={self.window} + history={self.history} - 1), got {len(returns)}"
            )
        as_of = table.index[-1]
        previous = self.read()
        if previous is not None and as_of < previous.as_of:
            raise ValueError(
                f"returns end at {as_of}, before the stored state's {previous.as_of}; time must move forward"
            )
        regime = table["regime"].iloc[-1]
        runs = table["regime"].ne(table["regime"].shift()).cumsum()
        since = table.index[runs == runs.iloc[-1]][0]
        if previous is not None and previous.regime == regime and previous.since < since and runs.nunique() == 1:
            since = previous.since
        state = VolRegimeState(
            as_of=as_of,
            realized_vol=float(table["realized_vol"].iloc[-1]),
            percentile=float(table["percentile"].iloc[-1]),
            regime=regime,
            since=since,
        )
        write_json_atomic(self.path, state.to_dict())
        return state
