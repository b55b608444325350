"""The embedded default market: synthetic bars with the statistical habits of real equities.

A model trained on white noise learns nothing and a model trained on an obvious signal learns too
much, so this market sits in between. It has the stylised facts a quant pipeline must survive —
regimes, volatility clustering, fat tails, correlation that rises in a crisis, volume that follows
volatility — plus a small, regime-dependent predictable component: an edge that is real, weak, and
breaks when the regime (or an injected :class:`Shift`) changes.

The model, per bar ``t`` and ticker ``i`` (log returns)::

    r[t,i] = mu[reg] + beta_i * b[reg] * f[t] + e[t,i] + k[reg] * m[t-1,i]
    f[t]   = sigma_m[reg] * sqrt(g_m[t])   * z_m[t]      (market factor, GARCH(1,1) on z_m)
    e[t,i] = sigma_e[reg] * s_i * sqrt(g_i[t]) * z_i[t]  (idiosyncratic, GARCH(1,1) on z_i)
    m[t,i] = r[t,i] + ... + r[t-4,i]                     (the 5-bar return: the predictive feature)

``reg`` is a Markov chain over calm / trending / crisis that switches once per session; ``z``
are unit-variance Student-t draws; volatilities and drifts scale with the bar's share of a regular
session (a half day's bar carries less variance), volatilities and ``k`` with the :class:`Shift`
multipliers in force.

Sessions and bars come from a real exchange calendar (:mod:`quant_engine.calendars`, NYSE by
default): no bar on a holiday, a half day that closes at 13:00 New York, closes that follow
daylight saving, each bar stamped at the instant it closed. The whole calendar is simulated once
per instance and sliced, so the bars of a (ticker, bar) never depend on the range or tickers a
caller asks for. Every random stream belongs to one ticker (or to
the market) and is read in time order, so ``SYN00`` is the same whether 5 or 50 tickers are
simulated, and a market with a later ``end`` only adds bars after the earlier one's last.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import numpy as np
import pandas as pd

from quant_engine.calendars import DEFAULT_CALENDAR, BarSize, CalendarError, MarketCalendar, get_calendar
from quant_engine.data.base import EmptyRangeError, TimeLike, check_tickers, resolve_range
from quant_engine.data.schema import validate_bars

REGIMES: tuple[str, ...] = ("calm", "trending", "crisis")
CALM, TRENDING, CRISIS = range(3)

#: Daily regime transition probabilities, row = today, column = tomorrow. Expected durations are
#: about 60 (calm), 40 (trending) and 25 (crisis) trading days; crises are ~10% of days.
TRANSITION = np.array(
    [
        [0.984, 0.012, 0.004],
        [0.020, 0.975, 0.005],
        [0.025, 0.015, 0.960],
    ]
)
#: Per-regime daily parameters: market-factor volatility, idiosyncratic volatility, drift, the
#: multiplier on every ticker's market beta (correlation rises in a crisis) and the edge ``k``.
MARKET_VOL = np.array([0.004, 0.010, 0.022])
IDIO_VOL = np.array([0.007, 0.015, 0.018])
DRIFT = np.array([0.0003, 0.0006, -0.002])
BETA_SCALE = np.array([1.0, 1.0, 1.2])
#: The edge: E[r_next | m] = k * m with m the last EDGE_LOOKBACK bar returns summed. Momentum in
#: trending, mean reversion in calm, nothing in a crisis. Since sd(m) ~ sqrt(5) sd(r), the
#: implied information coefficient is about k * sqrt(5): +0.11 trending, -0.07 calm. Calm, trending
#: and crisis differ clearly in volatility, so a model can tell the regimes apart from realised-vol
#: features and learn the sign flip; one that cannot sees the two edges cancel.
EDGE = np.array([-0.03, 0.05, 0.0])
EDGE_LOOKBACK = 5
GARCH_MARKET = (0.08, 0.90)  # (alpha, beta): persistence 0.98, half-life ~35 bars
GARCH_IDIO = (0.05, 0.90)
STUDENT_DOF = 5.0  # excess kurtosis 6 before GARCH and regimes add their own
#: Share of a daily bar's return that happens overnight (open vs previous close).
GAP_SHARE = 0.3
#: log volume = log(daily volume * bar share) + SURPRISE * (|r|/sd - E|z|) + LEVEL * log(sd / calm sd)
#: + NOISE * normal, centred so ``daily_volume`` is about a calm day's mean.
VOLUME_SURPRISE, VOLUME_LEVEL, VOLUME_NOISE = 0.4, 0.6, 0.3
#: The surprise saturates: a 20-sigma bar draws no more volume than a 6-sigma one.
MAX_VOLUME_SURPRISE = 6.0
_MEAN_ABS_T = 0.735  # E|z| of a unit-variance Student-t with STUDENT_DOF degrees of freedom

#: Bars x tickers above which simulating the whole calendar would need gigabytes.
MAX_CELLS = 5_000_000
#: Roles of the random streams (the first element of each SeedSequence spawn key). One stream per
#: role and ticker, each read in time order, so a later ``end`` only appends bars.
_TICKER_PARAMS, _REGIME_PATH, _MARKET_SHOCKS, _TICKER_SHOCKS, _GAP_NOISE, _VOLUME_NOISE, _HIGHS, _LOWS = range(8)

ShiftKind = Literal["covariate", "concept", "both"]
SHIFT_KINDS: tuple[str, ...] = ("covariate", "concept", "both")


@dataclass(frozen=True)
class Shift:
    """A change of the market's rules from the first bar on ``at`` (a UTC date) onwards.

    Parameters
    ----------
    at : str or date or Timestamp
        The first day the new rules hold.
    kind : {"covariate", "concept", "both"}
        ``covariate`` moves the inputs' distribution: every volatility (and so every return, range
        and the 5-bar momentum feature) is multiplied by ``vol_scale``, while the feature -> return
        relationship stays as it was. ``concept`` multiplies the edge coefficients by
        ``edge_scale`` (-1 flips momentum into reversal and back, 0 kills the edge) and leaves
        the inputs alone. ``both`` does both.
    vol_scale : float
        Volatility multiplier of a covariate shift, > 0.
    edge_scale : float
        Edge multiplier of a concept shift.

    Examples
    --------
    >>> Shift.parse("2022-01-03:concept:edge_scale=0")
    Shift(at=Timestamp('2022-01-03 00:00:00+0000', tz='UTC'), kind='concept', vol_scale=2.0, edge_scale=0.0)
    """

    at: pd.Timestamp
    kind: ShiftKind
    vol_scale: float = 2.0
    edge_scale: float = -1.0

    def __post_init__(self) -> None:
        try:
            day = pd.Timestamp(self.at)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"Shift at={self.at!r} is not a date") from exc
        day = day.tz_localize("UTC") if day.tzinfo is None else day.tz_convert("UTC")
        object.__setattr__(self, "at", day.normalize())
        if self.kind not in SHIFT_KINDS:
            raise ValueError(f"Shift kind={self.kind!r}; use one of {', '.join(SHIFT_KINDS)}")
        if not (math.isfinite(self.vol_scale) and self.vol_scale > 0):
            raise ValueError(f"Shift vol_scale={self.vol_scale!r} must be a finite number > 0")
        if not math.isfinite(self.edge_scale):
            raise ValueError(f"Shift edge_scale={self.edge_scale!r} must be a finite number")

    @property
    def volatility_multiplier(self) -> float:
        return self.vol_scale if self.kind in ("covariate", "both") else 1.0

    @property
    def edge_multiplier(self) -> float:
        return self.edge_scale if self.kind in ("concept", "both") else 1.0

    @classmethod
    def parse(cls, text: str) -> Shift:
        """A shift from ``DATE:KIND[:NAME=VALUE,...]``, the CLI's ``--shift`` format."""
        parts = text.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"--shift {text!r} must look like DATE:KIND or DATE:KIND:vol_scale=1.5,edge_scale=0")
        options: dict[str, float] = {}
        for item in filter(None, (parts[2].split(",") if len(parts) == 3 else [])):
            name, _, value = item.partition("=")
            if name not in ("vol_scale", "edge_scale"):
                raise ValueError(f"--shift {text!r}: unknown option {name!r}; use vol_scale or edge_scale")
            try:
                options[name] = float(value)
            except ValueError as exc:
                raise ValueError(f"--shift {text!r}: {name}={value!r} is not a number") from exc
        return cls(at=parts[0], kind=parts[1], **options)  # type: ignore[arg-type]


@dataclass(frozen=True)
class MarketParams:
    """The true parameters behind a :class:`SyntheticMarket`, for tests and documentation.

    Regime-indexed arrays follow :data:`REGIMES`; ticker-indexed arrays follow ``tickers``.
    """

    tickers: tuple[str, ...]
    transition: np.ndarray
    market_vol: np.ndarray
    idio_vol: np.ndarray
    drift: np.ndarray
    beta_scale: np.ndarray
    edge: np.ndarray
    edge_lookback: int
    garch_market: tuple[float, float]
    garch_idio: tuple[float, float]
    student_dof: float
    betas: np.ndarray = field(repr=False)
    idio_scale: np.ndarray = field(repr=False)
    start_price: np.ndarray = field(repr=False)
    daily_volume: np.ndarray = field(repr=False)

    @property
    def stationary_distribution(self) -> np.ndarray:
        """Long-run share of days in each regime."""
        values, vectors = np.linalg.eig(self.transition.T)
        vector = np.real(vectors[:, np.argmin(np.abs(values - 1.0))])
        return vector / vector.sum()


@dataclass(frozen=True)
class _Calendar:
    ts: pd.DatetimeIndex  # bar close times (UTC)
    day: np.ndarray  # index of each bar's session
    fraction: np.ndarray  # each bar's share of a regular session
    opens_session: np.ndarray  # the bar that carries the overnight gap
    days: pd.DatetimeIndex  # session labels (dates at the exchange)


@dataclass(frozen=True)
class _Paths:
    open: np.ndarray  # (T, N) and the rest alike
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray


def _student_t(rng: np.random.Generator, size: int | tuple[int, ...]) -> np.ndarray:
    """Student-t draws scaled to unit variance."""
    return rng.standard_t(STUDENT_DOF, size) * math.sqrt((STUDENT_DOF - 2.0) / STUDENT_DOF)


def _parse_freq(freq: str, calendar: MarketCalendar) -> BarSize:
    try:
        size = BarSize.parse(freq)
    except CalendarError as exc:
        raise ValueError(f"freq={freq!r} is not a bar length; use '1d', '1h', '30min', '5min', ...") from exc
    if size.minutes is not None and size.minutes >= calendar.regular_minutes:
        raise ValueError(
            f"freq={freq!r} must be '1d' or shorter than a regular {calendar.name} session "
            f"({calendar.regular_minutes} minutes)"
        )
    return size


class SyntheticMarket:
    """Synthetic daily or intraday bars for ``SYN00``..``SYNnn``, deterministic for a seed.

    Parameters
    ----------
    n_tickers : int
        How many tickers, named ``SYN00``, ``SYN01``, ... (zero-padded to at least two digits).
    seed : int
        Seed of every random stream; the market is a pure function of all the parameters.
    start, end : str or date or Timestamp
        Inclusive dates of the sessions to simulate.
    freq : str
        ``"1d"``: one bar per session, stamped at the session's close (20:00 UTC on a summer NYSE
        day, 21:00 in winter, 17:00 or 18:00 on a half day). An intraday length such as ``"1h"`` or
        ``"5min"``: bars over each session from its open, each stamped at its end (the last bar of
        a session may be shorter, ending at the close).
    calendar : str
        Exchange calendar of the sessions (:func:`quant_engine.calendars.get_calendar`): ``XNYS``
        (default), ``24/5`` for an FX-like market that trades around the clock on weekdays, ...
    shifts : sequence of Shift
        Regime-independent changes of the rules from a date on (see :class:`Shift`).

    Notes
    -----
    Prices start log-uniformly between 20 and 500 and are rounded to cents. ``ts`` is the time a
    bar's close is known, so a point-in-time join never sees a bar before it ended. See the module
    docstring for the model and :attr:`params` for the true parameters.

    Examples
    --------
    >>> market = SyntheticMarket(n_tickers=3, seed=1, start="2024-01-01", end="2024-03-31")
    >>> bars = market.fetch(None, "2024-01-02", "2024-01-05")
    >>> len(bars), sorted(bars["ticker"].unique())
    (12, ['SYN00', 'SYN01', 'SYN02'])
    >>> market = SyntheticMarket(n_tickers=1, start="2019-07-01", end="2019-07-31")
    >>> july = market.fetch(None, "2019-07-02", "2019-07-05")
    >>> [str(t) for t in july["ts"]]  # July 3 is a half day, July 4 a holiday
    ['2019-07-02 20:00:00+00:00', '2019-07-03 17:00:00+00:00', '2019-07-05 20:00:00+00:00']
    """

    name = "synthetic"

    def __init__(
        self,
        n_tickers: int = 20,
        seed: int = 7,
        start: TimeLike = "2010-01-01",
        end: TimeLike = "2030-12-31",
        freq: str = "1D",
        shifts: Sequence[Shift] = (),
        calendar: str = DEFAULT_CALENDAR,
    ) -> None:
        if isinstance(n_tickers, bool) or not isinstance(n_tickers, (int, np.integer)) or n_tickers < 1:
            raise ValueError(f"n_tickers={n_tickers!r} must be a whole number >= 1")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed={seed!r} must be a whole number >= 0")
        self.n_tickers = int(n_tickers)
        self.seed = int(seed)
        self.calendar = get_calendar(calendar)
        self.bar_size = _parse_freq(freq, self.calendar)
        self.freq = self.bar_size.name
        self.start, self.end = resolve_range(start, end)
        for shift in shifts:
            if not isinstance(shift, Shift):
                raise TypeError(f"shifts must hold Shift objects, got {shift!r}")
            if not self.start <= shift.at <= self.end:
                raise ValueError(
                    f"Shift at {shift.at.date()} is outside the simulated days {self.start.date()}..{self.end.date()}"
                )
        self.shifts = tuple(sorted(shifts, key=lambda s: s.at))
        width = max(2, len(str(self.n_tickers - 1)))
        self.tickers: tuple[str, ...] = tuple(f"SYN{i:0{width}d}" for i in range(self.n_tickers))
        cells = len(self._calendar.ts) * self.n_tickers
        if cells > MAX_CELLS:
            raise ValueError(
                f"{len(self._calendar.ts)} bars x {self.n_tickers} tickers = {cells} exceeds {MAX_CELLS}; "
                "narrow start/end or use a longer freq"
            )
        if len(self._calendar.ts) == 0:
            raise EmptyRangeError(f"no {self.calendar.name} session between {self.start.date()} and {self.end.date()}")

    def __repr__(self) -> str:
        return (
            f"SyntheticMarket(n_tickers={self.n_tickers}, seed={self.seed}, start='{self.start.date()}', "
            f"end='{self.end.date()}', freq={self.freq!r}, calendar={self.calendar.name!r}, "
            f"shifts={list(self.shifts)!r})"
        )

    # -- the calendar and the true parameters -------------------------------------------------

    @cached_property
    def _calendar(self) -> _Calendar:
        lo, hi = self.calendar.session_range(self.start, self.end)
        grid = self.calendar.bar_grid(self.bar_size, lo, hi)
        regular_ns = self.calendar.regular_minutes * 60 * 10**9
        return _Calendar(
            ts=grid.closes,
            day=grid.session - lo,
            fraction=(grid.close_ns - grid.start_ns) / regular_ns,
            opens_session=grid.start_ns == self.calendar.open_ns[grid.session],
            days=pd.DatetimeIndex(self.calendar.labels[lo:hi].astype("datetime64[ns]")),
        )

    def _ticker_rng(self, role: int, ticker: int) -> np.random.Generator:
        """One independent stream per (role, ticker): a ticker's draws ignore ``n_tickers``."""
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(role, ticker)))

    @cached_property
    def params(self) -> MarketParams:
        """The true parameters, including each ticker's beta, volatility scale and start price."""
        draws = np.array([self._ticker_rng(_TICKER_PARAMS, i).uniform(size=4) for i in range(self.n_tickers)])
        return MarketParams(
            tickers=self.tickers,
            transition=TRANSITION.copy(),
            market_vol=MARKET_VOL.copy(),
            idio_vol=IDIO_VOL.copy(),
            drift=DRIFT.copy(),
            beta_scale=BETA_SCALE.copy(),
            edge=EDGE.copy(),
            edge_lookback=EDGE_LOOKBACK,
            garch_market=GARCH_MARKET,
            garch_idio=GARCH_IDIO,
            student_dof=STUDENT_DOF,
            betas=0.6 + 0.9 * draws[:, 0],
            idio_scale=0.7 + 0.7 * draws[:, 1],
            start_price=np.exp(np.log(20.0) + (np.log(500.0) - np.log(20.0)) * draws[:, 2]),
            daily_volume=np.exp(np.log(3e5) + (np.log(3e7) - np.log(3e5)) * draws[:, 3]),
        )

    @cached_property
    def _day_regimes(self) -> np.ndarray:
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(_REGIME_PATH,)))
        uniforms = rng.uniform(size=len(self._calendar.days))
        cumulative = np.cumsum(TRANSITION, axis=1)
        regimes = np.empty(len(uniforms), dtype=np.int64)
        state = int(np.searchsorted(np.cumsum(self.params.stationary_distribution), uniforms[0]))
        regimes[0] = min(state, len(REGIMES) - 1)
        for d in range(1, len(uniforms)):
            regimes[d] = min(int(np.searchsorted(cumulative[regimes[d - 1]], uniforms[d])), len(REGIMES) - 1)
        return regimes

    def _shift_multipliers(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-day volatility and edge multipliers from the shifts in force."""
        days = self._calendar.days
        vol = np.ones(len(days))
        edge = np.ones(len(days))
        for shift in self.shifts:
            after = np.asarray(days >= shift.at.tz_localize(None))
            vol[after] *= shift.volatility_multiplier
            edge[after] *= shift.edge_multiplier
        return vol, edge

    # -- the simulation -------------------------------------------------------------------------

    @cached_property
    def _paths(self) -> _Paths:
        cal, p = self._calendar, self.params
        n_bars, n = len(cal.ts), self.n_tickers
        regime = self._day_regimes[cal.day]
        vol_mult, edge_mult = (m[cal.day] for m in self._shift_multipliers())
        root_fraction = np.sqrt(cal.fraction)
        market_sd = MARKET_VOL[regime] * vol_mult * root_fraction
        idio_sd = IDIO_VOL[regime] * vol_mult * root_fraction
        drift = DRIFT[regime] * cal.fraction
        edge = EDGE[regime] * edge_mult
        beta_scale = BETA_SCALE[regime]

        market_rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(_MARKET_SHOCKS,)))
        z_market = _student_t(market_rng, n_bars)
        z_idio = np.column_stack([_student_t(self._ticker_rng(_TICKER_SHOCKS, i), n_bars) for i in range(n)])

        def per_ticker(role: int, draw: str) -> np.ndarray:
            return np.column_stack([getattr(self._ticker_rng(role, i), draw)(size=n_bars) for i in range(n)])

        gap_noise, volume_noise = (
            per_ticker(_GAP_NOISE, "standard_normal"),
            per_ticker(_VOLUME_NOISE, "standard_normal"),
        )
        # 1 - U lies in (0, 1], so its log is finite.
        high_draws, low_draws = 1.0 - per_ticker(_HIGHS, "uniform"), 1.0 - per_ticker(_LOWS, "uniform")

        (a_m, b_m), (a_i, b_i) = GARCH_MARKET, GARCH_IDIO
        g_market, g_idio = 1.0, np.ones(n)
        returns = np.empty((n_bars, n))
        total_sd = np.empty((n_bars, n))
        window = np.zeros((EDGE_LOOKBACK, n))
        momentum = np.zeros(n)
        for t in range(n_bars):
            if t:
                g_market = (1 - a_m - b_m) + g_market * (a_m * z_market[t - 1] ** 2 + b_m)
                g_idio = (1 - a_i - b_i) + g_idio * (a_i * z_idio[t - 1] ** 2 + b_i)
            loading = p.betas * beta_scale[t] * market_sd[t]
            idio = p.idio_scale * idio_sd[t]
            r = (
                drift[t]
                + loading * math.sqrt(g_market) * z_market[t]
                + idio * np.sqrt(g_idio) * z_idio[t]
                + edge[t] * momentum
            )
            returns[t] = r
            total_sd[t] = np.sqrt(loading**2 * g_market + idio**2 * g_idio)
            slot = t % EDGE_LOOKBACK
            momentum += r - window[slot]
            window[slot] = r

        prev_close = p.start_price * np.exp(np.vstack([np.zeros((1, n)), np.cumsum(returns, axis=0)[:-1]]))
        close = prev_close * np.exp(returns)
        gap_share = np.where(cal.opens_session, GAP_SHARE, 0.0)[:, None]
        gap = gap_share * returns + np.sqrt(gap_share * (1 - gap_share)) * total_sd * gap_noise
        open_ = prev_close * np.exp(gap)
        # Highest and lowest excursions of a Brownian bridge between open and close (exact draw of
        # the maximum; the minimum is drawn independently, a close approximation).
        body = np.abs(returns - gap)
        diffusion = total_sd * np.sqrt(1 - gap_share)
        up = 0.5 * (-body + np.sqrt(body**2 - 2 * diffusion**2 * np.log(high_draws)))
        down = 0.5 * (-body + np.sqrt(body**2 - 2 * diffusion**2 * np.log(low_draws)))
        high = np.maximum(open_, close) * np.exp(up)
        low = np.minimum(open_, close) * np.exp(-down)
        # Volume: rises with the bar's surprise |r|/sd and with the volatility level.
        calm_sd = np.sqrt((p.betas * MARKET_VOL[CALM]) ** 2 + (p.idio_scale * IDIO_VOL[CALM]) ** 2)
        surprise = np.minimum(np.abs(returns) / total_sd, MAX_VOLUME_SURPRISE)
        level = np.log(total_sd / (calm_sd * root_fraction[:, None]))
        volume = (
            p.daily_volume
            * cal.fraction[:, None]
            * np.exp(
                VOLUME_SURPRISE * (surprise - _MEAN_ABS_T)
                + VOLUME_LEVEL * level
                + VOLUME_NOISE * volume_noise
                - 0.5 * VOLUME_NOISE**2
            )
        )

        def cents(x: np.ndarray) -> np.ndarray:
            return np.maximum(np.round(x, 2), 0.01)  # monotone, so OHLC order survives

        return _Paths(cents(open_), cents(high), cents(low), cents(close), np.round(volume))

    # -- the public face ------------------------------------------------------------------------

    def regimes(self) -> pd.DataFrame:
        """The true regime of every bar: columns ``ts`` (UTC) and ``regime`` (calm/trending/crisis)."""
        names = np.asarray(REGIMES, dtype=object)[self._day_regimes[self._calendar.day]]
        return pd.DataFrame({"ts": self._calendar.ts, "regime": pd.Categorical(names, categories=REGIMES)})

    def fetch(self, tickers: Sequence[str] | None, start: TimeLike, end: TimeLike) -> pd.DataFrame:
        """Validated bars of ``tickers`` (``None``: all) between ``start`` and ``end`` inclusive.

        Raises
        ------
        UnknownTickerError
            A ticker outside ``SYN00``..``SYNnn``.
        EmptyRangeError
            The range holds no bar of the simulated calendar.
        """
        names = check_tickers(tickers, self.tickers, "synthetic market")
        first, last = resolve_range(start, end)
        ts = self._calendar.ts
        lo, hi = ts.searchsorted(first, side="left"), ts.searchsorted(last, side="right")
        if lo >= hi:
            raise EmptyRangeError(
                f"synthetic market has no bars between {first} and {last}; it covers "
                f"{ts[0]} .. {ts[-1]} ({self.freq} bars, {self.calendar.name} sessions)"
            )
        columns = [self.tickers.index(t) for t in names]
        paths = self._paths
        n_rows = hi - lo
        frame = pd.DataFrame(
            {
                "ticker": np.repeat(np.asarray(names, dtype=object), n_rows),
                "ts": pd.DatetimeIndex(np.tile(ts[lo:hi].tz_localize(None).to_numpy(), len(columns)), tz="UTC"),
                **{
                    name: getattr(paths, name)[lo:hi, columns].T.ravel()
                    for name in ("open", "high", "low", "close", "volume")
                },
            }
        )
        bars, _ = validate_bars(frame)
        return bars
