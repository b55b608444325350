"""Walk-forward optimisation with combinatorial purged CV: dataset -> plan -> splits -> paths -> stats.

Each step is a function of a run folder (``quant_engine.runs.run_dir("wfo", run_id)``), reading
what earlier steps wrote there and writing its own files atomically, so the ``wfo_pipeline`` DAG
runs them as separate tasks (one mapped task per ``(trial, split)``), ``quant-engine wfo run``
runs them in one process, and a SageMaker Processing job runs :func:`run_split` on a copy.

Run folder
----------
``config.json``
    The validated :class:`WfoConfig` (``to_params`` form).
``dataset.parquet``
    One row per ``(ticker, ts)``, sorted by ``(ts, ticker)``: ``ticker, ts, t1, ret, label,
    fwd_ret_1, group`` and the feature columns; ``ret`` is the label's return, relative to the
    cross-sectional mean with ``label_target="excess"``. See :func:`build_dataset`.
``plan.json``, ``splits/split=<s>.npz``
    The CPCV splits (a role per dataset row: train, test, purged, embargoed), the path map and the
    list of ``(trial, split)`` tasks. See :func:`plan`.
``predictions/trial=<t>/split=<s>.parquet``
    Test predictions of one model. See :func:`run_split`.
``dataset.json``
    The dataset's summary (rows, tickers, first and last ``ts``, rows per group) and its
    ``annualisation``: the group's calendar and bar size, sessions a year x bars a session, the
    factor every annualised figure of the run uses.
``paths.parquet``, ``paths.json``, ``statistics.json``
    Per-path daily portfolio series of every trial, each path's metrics, and the statistics over
    them. See :func:`assemble` and :func:`statistics`.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import numbers
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quant_engine.config import Settings, get_settings
from quant_engine.storage.atomic import write_json_atomic, write_npz_atomic, write_parquet_atomic

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

log = logging.getLogger(__name__)

LABEL_KINDS: tuple[str, ...] = ("fixed", "triple_barrier")
#: What a label's return is measured against: nothing, or the mean of the run's tickers at ``ts``.
LABEL_TARGETS: tuple[str, ...] = ("absolute", "excess")
#: XGBoost settings a trial may set; anything else in a trial is a typo, not a silent default.
TRIAL_MODEL_KEYS: tuple[str, ...] = (
    "max_depth", "learning_rate", "n_estimators", "subsample", "colsample_bytree", "min_child_weight",
)
TRIAL_KEYS: tuple[str, ...] = (*TRIAL_MODEL_KEYS, "threshold")
#: Default trial grid: 2 depths x 2 learning rates, 4 trials from little to moderate capacity, sized
#: so the default run stays small. The edge is weak, so shallow, slow, heavily regularised trees
#: (``min_child_weight`` 100) find it and deeper, faster ones fit noise; the grid spans both so the
#: PBO and deflated Sharpe have a real choice to judge. Chosen on two other draws of the synthetic
#: market (seeds 1 and 2), never on the default one, whose results it would otherwise flatter.
DEFAULT_TRIAL_GRID: dict[str, list[Any]] = {
    "max_depth": [2, 3],
    "learning_rate": [0.03, 0.1],
    "n_estimators": [100],
    "min_child_weight": [100],
    "threshold": [0.0],
}
#: Row roles stored per split: train, test, purged (label overlaps a test block), embargoed.
TRAIN, TEST, PURGED, EMBARGOED = 0, 1, 2, 3
ROLE_NAMES: tuple[str, ...] = ("train", "test", "purged", "embargo")
KEY_COLUMNS: tuple[str, ...] = ("ticker", "ts", "t1", "ret", "label", "fwd_ret_1", "group")


class WfoConfigError(ValueError):
    """A walk-forward request that cannot run; the message names the parameter and the rule."""


# --- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    """One model configuration: XGBoost settings and the position threshold of its backtest."""

    max_depth: int = 3
    learning_rate: float = 0.1
    n_estimators: int = 60
    threshold: float = 0.0
    subsample: float = 1.0
    colsample_bytree: float = 1.0
    min_child_weight: float = 1.0

    def __post_init__(self) -> None:
        _check_int(f"max_depth={self.max_depth!r}", self.max_depth, 1, 12)
        _check_int(f"n_estimators={self.n_estimators!r}", self.n_estimators, 1, 5000)
        for name, low, high in (("learning_rate", 0.0, 1.0), ("subsample", 0.0, 1.0),
                                ("colsample_bytree", 0.0, 1.0)):
            value = getattr(self, name)
            if not _is_real(value) or not low < value <= high:
                raise WfoConfigError(f"{name}={value!r} must be a number in ({low:g}, {high:g}]")
        if not _is_real(self.min_child_weight) or self.min_child_weight < 0:
            raise WfoConfigError(f"min_child_weight={self.min_child_weight!r} must be a number >= 0")
        if not _is_real(self.threshold) or not 0.0 <= self.threshold < 0.5:
            raise WfoConfigError(
                f"threshold={self.threshold!r} must be in [0, 0.5): the distance from 0.5 a "
                "probability must exceed before the backtest takes a position"
            )

    @property
    def model_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in TRIAL_MODEL_KEYS}


@dataclass(frozen=True)
class LabelConfig:
    """How rows are labelled: a fixed horizon, or triple barriers with a vertical one at ``horizon``.

    ``target="excess"`` labels a row 1 when its return beats the mean return of the run's tickers
    over the same bars: the question a market-neutral book asks, which ticker beats the others,
    rather than which way the market goes. Only a fixed horizon has such a common span.
    """

    kind: str = "fixed"
    horizon: int = 1
    target: str = "excess"
    pt_mult: float | None = 2.0
    sl_mult: float | None = 2.0
    vol_window: int = 20

    def __post_init__(self) -> None:
        if self.kind not in LABEL_KINDS:
            raise WfoConfigError(f"label_kind={self.kind!r} is not a label kind; use one of {', '.join(LABEL_KINDS)}")
        if self.target not in LABEL_TARGETS:
            raise WfoConfigError(
                f"label_target={self.target!r} is not a label target; use one of {', '.join(LABEL_TARGETS)}"
            )
        if self.target == "excess" and self.kind != "fixed":
            raise WfoConfigError(
                f"label_target='excess' needs label_kind='fixed', not {self.kind!r}: triple-barrier labels end at "
                "different bars per ticker, so they share no cross-section to take the mean of; use "
                "label_target='absolute' with triple barriers"
            )
        _check_int(f"horizon={self.horizon!r}", self.horizon, 1, 252)
        _check_int(f"vol_window={self.vol_window!r}", self.vol_window, 2, 1000)
        for name in ("pt_mult", "sl_mult"):
            value = getattr(self, name)
            if value is not None and (not _is_real(value) or not value > 0):
                raise WfoConfigError(f"{name}={value!r} must be a positive number of volatilities, or null")

    @property
    def history_bars(self) -> int:
        """Bars before ``start`` a label needs (the volatility window of triple barriers)."""
        return self.vol_window + 1 if self.kind == "triple_barrier" else 0

    def labels(self, bars: pd.DataFrame) -> pd.DataFrame:
        """``ticker, ts, t1, ret, label`` for ``bars`` (sorted by ticker, ts).

        With the excess target ``ret`` is the return minus the mean return of all the tickers in
        ``bars`` at the same ``ts``, and ``label`` is ``ret > 0`` as for the absolute target.
        """
        from quant_engine.wfo.labels import LABEL_COLUMNS, fixed_horizon_labels, triple_barrier_labels

        if self.kind == "fixed":
            labels = fixed_horizon_labels(bars, self.horizon)
            if self.target == "excess":
                ret = labels["ret"] - labels.groupby("ts")["ret"].transform("mean")
                labels = labels.assign(ret=ret, label=(ret > 0).astype("int8"))
            return labels
        labels = triple_barrier_labels(bars, vol_window=self.vol_window, pt_mult=self.pt_mult,
                                       sl_mult=self.sl_mult, max_holding=self.horizon)
        return labels.loc[:, list(LABEL_COLUMNS)]


@dataclass(frozen=True)
class WfoConfig:
    """Everything a walk-forward run needs, validated.

    Parameters
    ----------
    start, end : Timestamp
        Inclusive UTC days of the sample.
    tickers : tuple of str, optional
        ``None``: every ticker the offline store holds in the range.
    feature_set : str
        Features to join from the offline store.
    label : LabelConfig
    n_groups, n_test_groups : int
        CPCV: ``C(n_groups, n_test_groups)`` splits, ``n_test_groups * n_splits / n_groups`` paths.
    embargo : int or str
        Bars (int) or a duration (``"5D"``) after each test block kept out of training.
    trials : tuple of Trial
    portfolio : str
        How the backtest turns probabilities into positions: ``market_neutral`` or ``directional``
        (see :mod:`quant_engine.wfo.backtest`).
    cost_bps : float
        Transaction cost per unit of position traded, in basis points.
    seed : int
        Seed of every model.
    min_group_rows : int
        Fewest rows a CPCV group may hold; a path made of smaller pieces says little.
    """

    start: pd.Timestamp
    end: pd.Timestamp
    tickers: tuple[str, ...] | None = None
    feature_set: str = "default"
    label: LabelConfig = field(default_factory=LabelConfig)
    n_groups: int = 6
    n_test_groups: int = 2
    embargo: int | str = "5D"
    trials: tuple[Trial, ...] = ()
    portfolio: str = "market_neutral"
    cost_bps: float = 5.0
    seed: int = 42
    min_group_rows: int = 100

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> WfoConfig:
        """Validate loosely typed parameters (DAG params, ``--conf`` JSON) into a config.

        Missing keys take :data:`DEFAULT_PARAMS`. Every rule that does not need data is checked here;
        :func:`build_dataset` and :func:`plan` check the rest (tickers, the range's data, group sizes,
        purging) before any model trains. Unknown keys are an error, so a misspelt parameter never
        falls back to its default.
        """
        from quant_engine.features.definitions import get_feature_set
        from quant_engine.timeutil import utc_day
        from quant_engine.validation import parse_tickers
        from quant_engine.wfo.backtest import PORTFOLIOS
        from quant_engine.wfo.splitters import CombinatorialPurgedCV

        if not isinstance(params, Mapping):
            raise WfoConfigError(f"parameters must be a JSON object, got {type(params).__name__}")
        unknown = sorted(set(params) - set(DEFAULT_PARAMS))
        if unknown:
            raise WfoConfigError(f"unknown parameter(s) {unknown}; known: {', '.join(DEFAULT_PARAMS)}")
        # null means "the default", except for a barrier multiplier, where it disables the barrier.
        given = {k: v for k, v in params.items() if v is not None or k in ("pt_mult", "sl_mult")}
        p = {**DEFAULT_PARAMS, **given}
        start, end = utc_day(p["start"], "start", error=WfoConfigError), utc_day(p["end"], "end", error=WfoConfigError)
        if end < start:
            raise WfoConfigError(f"end {end.date()} is before start {start.date()}: the date range is empty")
        try:
            get_feature_set(p["feature_set"])
        except ValueError as exc:
            raise WfoConfigError(str(exc)) from None
        label = LabelConfig(kind=p["label_kind"], horizon=p["horizon"], target=p["label_target"],
                            pt_mult=p["pt_mult"], sl_mult=p["sl_mult"], vol_window=p["vol_window"])
        n_groups = _check_int(f"n_groups={p['n_groups']!r}", p["n_groups"], 2, 30)
        n_test_groups = _check_int(f"n_test_groups={p['n_test_groups']!r}", p["n_test_groups"], 1, 29)
        if n_test_groups >= n_groups:
            raise WfoConfigError(
                f"n_test_groups={n_test_groups} must be smaller than n_groups={n_groups}: at least one group "
                "has to be left for training"
            )
        embargo = _parse_embargo(p["embargo"])
        try:
            CombinatorialPurgedCV(n_groups, n_test_groups, embargo=embargo)
        except (TypeError, ValueError) as exc:
            raise WfoConfigError(str(exc)) from None
        if p["portfolio"] not in PORTFOLIOS:
            raise WfoConfigError(
                f"portfolio={p['portfolio']!r} is not a portfolio construction; use one of {', '.join(PORTFOLIOS)}"
            )
        if not _is_real(p["cost_bps"]) or not 0 <= p["cost_bps"] <= 1000:
            raise WfoConfigError(f"cost_bps={p['cost_bps']!r} must be a number of basis points in [0, 1000]")
        return cls(
            start=start,
            end=end,
            tickers=parse_tickers(p["tickers"], error=WfoConfigError),
            feature_set=p["feature_set"],
            label=label,
            n_groups=n_groups,
            n_test_groups=n_test_groups,
            embargo=embargo,
            trials=_parse_trials(p["trials"]),
            portfolio=p["portfolio"],
            cost_bps=float(p["cost_bps"]),
            seed=_check_int(f"seed={p['seed']!r}", p["seed"], 0, 2**31 - 1),
            min_group_rows=_check_int(f"min_group_rows={p['min_group_rows']!r}", p["min_group_rows"], 1, 10**9),
        )

    def to_params(self) -> dict[str, Any]:
        """The JSON form, which :meth:`from_params` reads back into an equal config."""
        return {
            "start": str(self.start.date()),
            "end": str(self.end.date()),
            "tickers": list(self.tickers) if self.tickers else None,
            "feature_set": self.feature_set,
            "label_kind": self.label.kind,
            "horizon": self.label.horizon,
            "label_target": self.label.target,
            "pt_mult": self.label.pt_mult,
            "sl_mult": self.label.sl_mult,
            "vol_window": self.label.vol_window,
            "n_groups": self.n_groups,
            "n_test_groups": self.n_test_groups,
            "embargo": self.embargo,
            "trials": [asdict(t) for t in self.trials],
            "portfolio": self.portfolio,
            "cost_bps": self.cost_bps,
            "seed": self.seed,
            "min_group_rows": self.min_group_rows,
        }

    def splitter(self, t1: object | None = None):  # noqa: ANN201 - the splitter module is imported lazily
        """The CPCV splitter of this config, purging by ``t1``."""
        from quant_engine.wfo.splitters import CombinatorialPurgedCV

        return CombinatorialPurgedCV(self.n_groups, self.n_test_groups, embargo=self.embargo, t1=t1)


#: Every parameter :meth:`WfoConfig.from_params` accepts, with its default: the embedded synthetic
#: market as ``make run`` ingests it (2015-2024), 6 groups choose 2 (15 splits, 5 paths), 4 trials,
#: a market-neutral book and labels that ask whether a ticker beats the others over the next bar,
#: the horizon of the market's edge (on seeds 1 and 2 this beat 5-bar and absolute labels).
DEFAULT_PARAMS: dict[str, Any] = {
    "start": "2015-01-01",
    "end": "2024-12-31",
    "tickers": None,
    "feature_set": "default",
    "label_kind": "fixed",
    "horizon": 1,
    "label_target": "excess",
    "pt_mult": 2.0,
    "sl_mult": 2.0,
    "vol_window": 20,
    "n_groups": 6,
    "n_test_groups": 2,
    "embargo": "5D",
    "trials": DEFAULT_TRIAL_GRID,
    "portfolio": "market_neutral",
    "cost_bps": 5.0,
    "seed": 42,
    "min_group_rows": 100,
}


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(what: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise WfoConfigError(f"{what} must be a whole number")
    if not low <= value <= high:
        raise WfoConfigError(f"{what} must be between {low} and {high}")
    return int(value)


def _parse_embargo(value: object) -> int | str:
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, str)):
        raise WfoConfigError(f"embargo={value!r} must be a number of bars (5) or a duration ('5D')")
    return int(value) if isinstance(value, numbers.Integral) else value.strip()


def _parse_trials(value: object) -> tuple[Trial, ...]:
    """A list of trial objects, or a grid (object of lists) expanded to its Cartesian product."""
    if isinstance(value, Mapping):
        grid = {k: (v if isinstance(v, list) else [v]) for k, v in value.items()}
        empty = [k for k, v in grid.items() if not v]
        if empty:
            raise WfoConfigError(f"trial grid entries {empty} are empty lists; give at least one value each")
        keys = list(grid)
        value = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid.values())]
    if not isinstance(value, list) or not value:
        raise WfoConfigError("trials must be a non-empty list of objects or a grid object of lists")
    trials = []
    for i, spec in enumerate(value):
        if not isinstance(spec, Mapping):
            raise WfoConfigError(f"trial {i} is {spec!r}; each trial is an object such as {{'max_depth': 3}}")
        unknown = sorted(set(spec) - set(TRIAL_KEYS))
        if unknown:
            raise WfoConfigError(f"trial {i} has unknown setting(s) {unknown}; known: {', '.join(TRIAL_KEYS)}")
        try:
            trials.append(Trial(**spec))
        except WfoConfigError as exc:
            raise WfoConfigError(f"trial {i}: {exc}") from None
    if len(trials) < 2:
        raise WfoConfigError(
            f"{len(trials)} trial; give at least 2: PBO and the deflated Sharpe measure the selection among trials"
        )
    if len(trials) > 64:
        raise WfoConfigError(f"{len(trials)} trials; at most 64, each multiplies the number of model fits")
    duplicated = sorted({i for i, t in enumerate(trials) if trials.index(t) != i})
    if duplicated:
        raise WfoConfigError(f"trial(s) {duplicated} repeat an earlier trial; each trial must differ")
    return tuple(trials)


# --- run folder helpers --------------------------------------------------------------------------


def load_config(run_dir: Path) -> WfoConfig:
    """The config a run was built with."""
    return WfoConfig.from_params(json.loads((Path(run_dir) / "config.json").read_text()))


def load_plan(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "plan.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run the plan step first")
    return json.loads(path.read_text())


def split_path(run_dir: Path, split_id: int) -> Path:
    return Path(run_dir) / "splits" / f"split={split_id}.npz"


def prediction_path(root: Path, trial_id: int, split_id: int) -> Path:
    return Path(root) / "predictions" / f"trial={trial_id}" / f"split={split_id}.parquet"


# --- 1. dataset ----------------------------------------------------------------------------------


def build_dataset(config: WfoConfig, run_dir: Path, settings: Settings | None = None) -> dict[str, Any]:
    """Labels from the stored bars, features from the offline store by point-in-time join.

    Entities are the offline store's ``(ticker, event_time)`` rows inside ``[start, end]``. Labels
    need later prices: they come from the bars ingestion stored beside the features
    (:class:`~quant_engine.features.bar_history.BarHistory`), the very prices the features were
    computed from, so no run needs the source again; each label carries its end ``t1``, and labels
    whose horizon runs past ``end`` are dropped rather than peeking beyond the sample.
    ``fwd_ret_1`` is the next bar's return, which the backtest earns. Features are attached with
    :meth:`~quant_engine.features.offline_store.OfflineStore.point_in_time_join`, so no value
    stamped after a row's ``ts`` can reach it.

    Raises
    ------
    WfoConfigError
        Tickers the store does not hold in the range, a range without data, or groups smaller
        than ``config.min_group_rows``.
    """
    import numpy as np
    import pandas as pd

    from quant_engine.config import make_offline_store
    from quant_engine.features.bar_history import BarHistory
    from quant_engine.features.definitions import get_feature_set
    from quant_engine.features.ingest import bars_group_name, group_market_time

    settings = settings or get_settings()
    run_dir = Path(run_dir)
    first, last = config.start, config.end + pd.Timedelta(days=1) - pd.Timedelta(1, "ns")
    store = make_offline_store(settings)
    market_time = group_market_time(store)
    if market_time is None:
        raise WfoConfigError(
            f"the offline store (feature group {store.feature_group!r} under {settings.offline_store_dir}) is "
            "empty; run the market_data_ingestion DAG or `quant-engine ingest` first"
        )
    names = get_feature_set(config.feature_set).names
    missing_features = [n for n in names if n not in store.schema.feature_names]
    if missing_features:
        raise WfoConfigError(
            f"feature set {config.feature_set!r} needs {missing_features}, which feature group "
            f"{store.feature_group!r} does not hold; ingest with that feature set first"
        )
    keys = store.read(list(config.tickers) if config.tickers else None, first, last)[["ticker", "event_time"]]
    held = sorted(keys["ticker"].unique())
    _check_tickers_held(config, held, store)
    tickers = list(config.tickers) if config.tickers else held
    _check_cross_section(config, tickers)

    bars = BarHistory(make_offline_store(settings, bars_group_name(store.feature_group)), market_time).read(
        tickers, first, last, history_bars=config.label.history_bars)
    labels = config.label.labels(bars)
    close = bars[["ticker", "ts", "close"]]
    next_close = close.groupby("ticker", sort=False)["close"].shift(-1)
    fwd = close.assign(fwd_ret_1=next_close / close["close"] - 1.0).dropna(subset=["fwd_ret_1"])
    labelled = labels.merge(fwd[["ticker", "ts", "fwd_ret_1"]], on=["ticker", "ts"], how="inner")
    entities = keys.rename(columns={"event_time": "ts"}).merge(labelled, on=["ticker", "ts"], how="inner")
    if entities.empty:
        raise WfoConfigError(
            f"no row between {config.start.date()} and {config.end.date()} has both stored features and a "
            f"label with its full {config.label.horizon}-bar horizon in the stored bars; widen the range, or "
            "ingest the sessions after it"
        )
    entities = entities.sort_values(["ts", "ticker"], kind="stable").reset_index(drop=True)
    dataset = store.point_in_time_join(entities, names, entity_time_col="ts")
    incomplete = dataset[names].isna().any(axis=1).to_numpy()
    if incomplete.any():
        log.warning("dropping %d rows whose features are incomplete in the store", int(incomplete.sum()))
        dataset = dataset.loc[~incomplete].reset_index(drop=True)

    cv = config.splitter(dataset["t1"].to_numpy())
    frame_for_cv = pd.DataFrame(index=pd.DatetimeIndex(dataset["ts"]))
    try:
        groups = cv.row_groups(frame_for_cv)
    except ValueError as exc:
        raise WfoConfigError(f"the dataset cannot be split into {config.n_groups} groups: {exc}") from None
    dataset["group"] = groups.astype(np.int16)
    sizes = np.bincount(groups, minlength=config.n_groups)
    if sizes.min() < config.min_group_rows:
        raise WfoConfigError(
            f"too few samples per group: {len(dataset)} rows over {config.n_groups} groups leave group "
            f"{int(sizes.argmin())} with {int(sizes.min())} rows, fewer than min_group_rows="
            f"{config.min_group_rows}; widen the date range, add tickers or use fewer groups"
        )
    dataset["label"] = dataset["label"].astype(np.int8)
    dataset = dataset.loc[:, [*KEY_COLUMNS, *names]]
    write_parquet_atomic(dataset, run_dir / "dataset.parquet")
    write_json_atomic(run_dir / "config.json", config.to_params(), non_finite="null")
    summary = {
        "rows": len(dataset),
        "tickers": sorted(dataset["ticker"].unique()),
        "first_ts": str(dataset["ts"].iloc[0]),
        "last_ts": str(dataset["ts"].iloc[-1]),
        "features": names,
        "group_rows": sizes.tolist(),
        "positive_label_share": float(dataset["label"].mean()),
        "annualisation": market_time.annualisation(pd.Timestamp(dataset["ts"].iloc[-1]).year),
    }
    write_json_atomic(run_dir / "dataset.json", summary, non_finite="null")
    log.info("dataset: %d rows, %d tickers, %s .. %s", summary["rows"], len(summary["tickers"]),
             summary["first_ts"], summary["last_ts"])
    return summary


def _check_tickers_held(config: WfoConfig, held: Sequence[str], store: Any) -> None:
    span = f"between {config.start.date()} and {config.end.date()}"
    if config.tickers:
        missing = [t for t in config.tickers if t not in set(held)]
        if missing:
            anywhere = set(store.read(missing)["ticker"].unique())
            unknown = [t for t in missing if t not in anywhere]
            if unknown:
                raise WfoConfigError(
                    f"unknown ticker(s) {', '.join(unknown)}: not in the offline store (feature group "
                    f"{store.feature_group!r})"
                )
            raise WfoConfigError(f"ticker(s) {', '.join(missing)} have no stored features {span}")
    elif not held:
        raise WfoConfigError(f"the offline store (feature group {store.feature_group!r}) holds no rows {span}")


def _check_cross_section(config: WfoConfig, tickers: Sequence[str]) -> None:
    """A market-neutral book and an excess label compare tickers with each other: one is not enough."""
    needs = [f"portfolio={config.portfolio!r}"] if config.portfolio == "market_neutral" else []
    needs += [f"label_target={config.label.target!r}"] if config.label.target == "excess" else []
    if needs and len(tickers) < 2:
        raise WfoConfigError(
            f"{' and '.join(needs)} compare tickers with each other and need at least 2, got {list(tickers)}; "
            "add tickers, or use portfolio='directional' with label_target='absolute'"
        )


def load_dataset(run_dir: Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    import pandas as pd

    path = Path(run_dir) / "dataset.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; build the dataset first")
    return pd.read_parquet(path, columns=list(columns) if columns else None)


# --- 2. plan -------------------------------------------------------------------------------------


def split_roles(ts_ns: np.ndarray, t1_ns: np.ndarray, groups: np.ndarray,
                train: np.ndarray, test_groups: Sequence[int]) -> np.ndarray:
    """Role of every row in one split: train, test, purged or embargoed (int8 codes).

    A row outside train and test is *purged* when its label span ``[ts, t1]`` overlaps a test
    block (a run of adjacent test groups, from its first ``ts`` to its latest ``t1``); the other
    left-out rows are the embargo that follows a block.
    """
    import numpy as np

    roles = np.full(len(ts_ns), EMBARGOED, dtype=np.int8)
    roles[train] = TRAIN
    in_test = np.isin(groups, np.asarray(test_groups))
    roles[in_test] = TEST
    left_out = roles == EMBARGOED
    blocks: list[list[int]] = []
    for g in sorted(int(g) for g in test_groups):
        if blocks and blocks[-1][-1] == g - 1:
            blocks[-1].append(g)
        else:
            blocks.append([g])
    for block in blocks:
        rows = np.isin(groups, block)
        start, end = ts_ns[rows].min(), t1_ns[rows].max()
        roles[left_out & (ts_ns <= end) & (t1_ns >= start)] = PURGED
    return roles


def plan(run_dir: Path, settings: Settings | None = None) -> list[dict[str, int]]:
    """Fix the CPCV splits and the ``(trial, split)`` tasks; write ``plan.json`` and one ``.npz`` per split.

    The splitter checks every split before anything trains: one left without training rows by the
    purge and embargo raises here, as does a split whose training labels hold one class only.
    Predictions left by an earlier plan of the same run folder are removed. With the aws backend
    the run folder is also staged on S3 for the Processing jobs.

    Returns
    -------
    list of dict
        ``{"trial_id": t, "split_id": s}`` for every task, the mapped tasks' arguments.
    """
    import numpy as np
    import pandas as pd

    settings = settings or get_settings()
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    data = load_dataset(run_dir, ["ts", "t1", "label", "group"])
    ts = pd.DatetimeIndex(data["ts"])
    cv = config.splitter(data["t1"].to_numpy())
    try:
        splits = list(cv.split(pd.DataFrame(index=ts)))
    except ValueError as exc:
        raise WfoConfigError(f"the purge and embargo leave a split without training data: {exc}") from None
    ts_ns, t1_ns = ts.asi8, pd.DatetimeIndex(data["t1"]).asi8
    groups, labels = data["group"].to_numpy(), data["label"].to_numpy()
    split_rows = []
    for s, ((train, test), test_groups) in enumerate(zip(splits, cv.test_groups, strict=True)):
        classes = np.unique(labels[train])
        if len(classes) < 2:
            raise WfoConfigError(f"split {s} trains on labels of one class only ({classes.tolist()}); "
                                 "use a longer range or a different label")
        roles = split_roles(ts_ns, t1_ns, groups, train, test_groups)
        write_npz_atomic(split_path(run_dir, s), roles=roles, test_groups=np.asarray(test_groups))
        counts = np.bincount(roles, minlength=len(ROLE_NAMES))
        split_rows.append({"split_id": s, "test_groups": [int(g) for g in test_groups],
                           **{f"n_{name}": int(c) for name, c in zip(ROLE_NAMES, counts, strict=True)}})
    tasks = [{"trial_id": t, "split_id": s} for t in range(len(config.trials)) for s in range(cv.n_splits)]
    bounds = data.groupby("group")["ts"].agg(["min", "max"])
    payload = {
        "n_groups": config.n_groups,
        "n_test_groups": config.n_test_groups,
        "n_splits": cv.n_splits,
        "n_paths": cv.n_paths,
        "paths": cv.paths.tolist(),
        "splits": split_rows,
        "groups": [{"group": int(g), "first_ts": str(r["min"]), "last_ts": str(r["max"]),
                    "rows": int((groups == g).sum())} for g, r in bounds.iterrows()],
        "trials": [asdict(t) for t in config.trials],
        "tasks": tasks,
    }
    write_json_atomic(run_dir / "plan.json", payload, non_finite="null")
    # Predictions of an earlier plan of this run folder belong to other splits; a rerun starts clean.
    shutil.rmtree(run_dir / "predictions", ignore_errors=True)
    if settings.backend == "aws":
        from quant_engine.aws.processing import stage_run

        stage_run(run_dir, settings)
    log.info("plan: %d splits x %d trials = %d tasks, %d paths", cv.n_splits, len(config.trials),
             len(tasks), cv.n_paths)
    return tasks


# --- 3. one model per (trial, split) -------------------------------------------------------------


def run_split(run_dir: Path, trial_id: int, split_id: int, *, output_dir: Path | None = None) -> dict[str, Any]:
    """Train trial ``trial_id`` on split ``split_id``'s purged training rows and predict its test rows.

    Writes ``predictions/trial=<t>/split=<s>.parquet`` under ``output_dir`` (default: the run
    folder) with ``ticker, ts, prob, fwd_ret_1, t1, label, group``. The model is seeded and
    single-threaded, so a rerun writes the same bytes of predictions.
    """
    import numpy as np
    import xgboost as xgb

    run_dir = Path(run_dir)
    config = load_config(run_dir)
    if not 0 <= trial_id < len(config.trials):
        raise ValueError(f"trial_id={trial_id} is not a trial of this run (0..{len(config.trials) - 1})")
    split_file = split_path(run_dir, split_id)
    if not split_file.exists():
        raise FileNotFoundError(f"{split_file} does not exist; split_id={split_id} is not in the plan")
    trial = config.trials[trial_id]
    from quant_engine.features.definitions import get_feature_set

    names = get_feature_set(config.feature_set).names
    data = load_dataset(run_dir)
    with np.load(split_file) as stored:
        roles = stored["roles"]
    if len(roles) != len(data):
        raise ValueError(f"{split_file} has {len(roles)} rows but the dataset {len(data)}; rebuild the plan")
    train, test = np.flatnonzero(roles == TRAIN), np.flatnonzero(roles == TEST)
    features = data[names].to_numpy(dtype=np.float32)
    labels = data["label"].to_numpy()
    model = xgb.XGBClassifier(
        **trial.model_params, objective="binary:logistic", tree_method="hist",
        random_state=config.seed, n_jobs=1, eval_metric="logloss",
    )
    model.fit(features[train], labels[train])
    prob = model.predict_proba(features[test])[:, 1].astype(np.float64)
    out = data.iloc[test][["ticker", "ts", "fwd_ret_1", "t1", "label", "group"]].assign(prob=prob)
    path = write_parquet_atomic(out.loc[:, ["ticker", "ts", "prob", "fwd_ret_1", "t1", "label", "group"]],
                         prediction_path(output_dir or run_dir, trial_id, split_id))
    accuracy = float(((prob > 0.5) == (labels[test] == 1)).mean())
    return {"trial_id": trial_id, "split_id": split_id, "n_train": int(len(train)), "n_test": int(len(test)),
            "accuracy": accuracy, "path": str(path)}


def execute_split(run_dir: Path, trial_id: int, split_id: int, settings: Settings | None = None) -> dict[str, Any]:
    """Run one task where the backend says: here, or as a SageMaker Processing job with ``aws``."""
    settings = settings or get_settings()
    if settings.backend == "aws":
        from quant_engine.aws.processing import run_tasks_on_sagemaker

        run_tasks_on_sagemaker(run_dir, [(trial_id, split_id)], settings)
        path = prediction_path(run_dir, trial_id, split_id)
        if not path.exists():
            raise RuntimeError(f"the Processing job finished without writing {path.relative_to(run_dir)}")
        return {"trial_id": trial_id, "split_id": split_id, "path": str(path)}
    return run_split(run_dir, trial_id, split_id)


# --- 4. paths ------------------------------------------------------------------------------------


def assemble(run_dir: Path) -> dict[str, Any]:
    """Backtest every CPCV path of every trial; write ``paths.parquet`` and return the path summaries.

    ``paths.parquet`` holds one row per ``(trial, path, ts)`` with the portfolio's net ``return``,
    ``gross``, ``cost``, ``turnover`` and ``exposure``.
    """
    import numpy as np
    import pandas as pd

    from quant_engine.wfo.backtest import assemble_paths, backtest

    run_dir = Path(run_dir)
    config, plan_ = load_config(run_dir), load_plan(run_dir)
    periods_per_year = periods_per_year_of(run_dir)
    path_map = np.asarray(plan_["paths"])
    group_sizes = np.array([g["rows"] for g in plan_["groups"]])
    series, summaries = [], []
    for trial_id, trial in enumerate(config.trials):
        predictions = {}
        for s in range(plan_["n_splits"]):
            path = prediction_path(run_dir, trial_id, s)
            if not path.exists():
                raise FileNotFoundError(f"{path} is missing; task (trial {trial_id}, split {s}) has not run")
            predictions[s] = pd.read_parquet(path, columns=["ticker", "ts", "prob", "fwd_ret_1", "group"])
        for p, frame in enumerate(assemble_paths(predictions, path_map, group_sizes)):
            result = backtest(frame, threshold=trial.threshold, cost_bps=config.cost_bps,
                              portfolio=config.portfolio)
            series.append(pd.DataFrame({
                "trial": trial_id, "path": p, "ts": result.returns.index,
                "return": result.returns.to_numpy(), "gross": result.gross.to_numpy(),
                "cost": result.costs.to_numpy(), "turnover": result.turnover.to_numpy(),
                "exposure": result.exposure.to_numpy(),
            }))
            summaries.append({"trial": trial_id, "path": p, **result.summary(periods_per_year)})
    write_parquet_atomic(pd.concat(series, ignore_index=True), run_dir / "paths.parquet")
    write_json_atomic(run_dir / "paths.json", summaries, non_finite="null")
    return {"paths": len(summaries), "trials": len(config.trials)}


def periods_per_year_of(run_dir: Path) -> float:
    """Bars a year of the run's data (its calendar's sessions a year x bars a session), from ``dataset.json``."""
    summary = json.loads((Path(run_dir) / "dataset.json").read_text())
    return float(summary["annualisation"]["periods_per_year"])


# --- the whole pipeline in one process -----------------------------------------------------------


def run_pipeline(params: Mapping[str, Any], run_id: str | None = None, settings: Settings | None = None) -> Path:
    """Every step in order, as ``quant-engine wfo run`` does; returns the report folder.

    With the aws backend all model fits run as one SageMaker Processing job instead of locally.
    """
    from datetime import UTC, datetime

    from quant_engine.runs import run_dir as make_run_dir
    from quant_engine.wfo.report import write_report

    settings = settings or get_settings()
    config = WfoConfig.from_params(params)
    run_id = run_id or f"cli__{datetime.now(UTC):%Y%m%dT%H%M%S}"
    folder = make_run_dir("wfo", run_id, settings)
    build_dataset(config, folder, settings)
    tasks = plan(folder, settings)
    if settings.backend == "aws":
        from quant_engine.aws.processing import run_tasks_on_sagemaker

        run_tasks_on_sagemaker(folder, None, settings)
    else:
        from quant_engine.progress import Progress

        with Progress(len(tasks), "WFO (trial, split) fits") as progress:
            for task in tasks:
                run_split(folder, task["trial_id"], task["split_id"])
                progress.advance()
    assemble(folder)
    statistics(folder)
    return write_report(folder, settings=settings)


# --- 5. statistics -------------------------------------------------------------------------------

#: CSCV blocks for the PBO (Bailey et al. use 16): C(16, 8) = 12,870 in/out-of-sample combinations.
PBO_BLOCKS = 16


def statistics(run_dir: Path) -> dict[str, Any]:
    """Per-trial path Sharpes, the selected trial, PBO, PSR and deflated Sharpe; write ``statistics.json``.

    * A trial's score is the mean over paths of the paths' annualised Sharpe ratios (annualised
      with the calendar's bars a year, ``dataset.json``'s ``annualisation``); the best score is the
      *selected* trial.
    * Each trial's daily return series is the **mean over its paths** (every path is an
      out-of-sample history of the same days, so their mean is the trial's expected daily return
      across the CPCV resamplings). Those series, one column per trial, are the ``T x n_trials``
      matrix of the PBO by CSCV with :data:`PBO_BLOCKS` blocks.
    * PSR (against a Sharpe of 0) and the deflated Sharpe use the selected trial's series, its
      skewness and kurtosis; the deflation counts ``n_trials`` trials with the variance of the
      trials' per-period Sharpe ratios of the same series.
    """
    import numpy as np
    import pandas as pd

    from quant_engine.wfo.stats import (
        deflated_sharpe_ratio,
        probabilistic_sharpe_ratio,
        probability_of_backtest_overfitting,
        sharpe_moments,
        sharpe_ratio,
    )

    run_dir = Path(run_dir)
    config = load_config(run_dir)
    periods_per_year = periods_per_year_of(run_dir)
    path_rows = json.loads((run_dir / "paths.json").read_text())
    paths = pd.read_parquet(run_dir / "paths.parquet", columns=["trial", "path", "ts", "return"])
    wide = paths.pivot(index="ts", columns=["trial", "path"], values="return").sort_index()
    if wide.isna().any().any():
        raise ValueError("paths.parquet holds paths of different lengths; rerun the assemble step")
    trial_returns = wide.T.groupby(level="trial").mean().T.to_numpy()  # (T, n_trials)
    per_period = np.asarray(sharpe_ratio(trial_returns, periods_per_year=1), dtype=float)

    trials = []
    for t, trial in enumerate(config.trials):
        sharpes = np.array([r["sharpe"] for r in path_rows if r["trial"] == t], dtype=float)
        finite = sharpes[np.isfinite(sharpes)]
        trials.append({
            "trial": t,
            "params": asdict(trial),
            "path_sharpes": sharpes.tolist(),
            "mean_path_sharpe": float(finite.mean()) if len(finite) else math.nan,
            "std_path_sharpe": float(finite.std(ddof=1)) if len(finite) > 1 else math.nan,
            "sharpe_of_mean": float(per_period[t] * math.sqrt(periods_per_year)),
        })
    scores = np.array([t["mean_path_sharpe"] for t in trials])
    if not np.isfinite(scores).any():
        raise ValueError("no trial has a Sharpe ratio (every path is flat); lower the trials' thresholds")
    selected = int(np.nanargmax(scores))

    moments = sharpe_moments(trial_returns[:, selected])
    finite_sr = per_period[np.isfinite(per_period)]
    var_trial_sharpes = float(finite_sr.var(ddof=1)) if len(finite_sr) > 1 else 0.0
    n_blocks = min(PBO_BLOCKS, len(trial_returns) // 2 * 2)
    # A trial that stays flat in a block has no Sharpe ratio there; it ranks as 0 (no return, no risk).
    pbo = probability_of_backtest_overfitting(
        trial_returns, n_blocks=n_blocks,
        metric=lambda r: np.nan_to_num(np.asarray(sharpe_ratio(r, periods_per_year=1), dtype=float), nan=0.0),
    )
    result = {
        "selected_trial": selected,
        "selection": "highest mean over paths of the path Sharpe ratio",
        "pbo": pbo.pbo,
        "pbo_blocks": n_blocks,
        "pbo_combinations": pbo.n_combinations,
        "pbo_probability_of_loss": pbo.probability_of_loss,
        "pbo_degradation_slope": pbo.degradation_slope,
        "pbo_logits": pbo.logits.tolist(),
        "psr": float(probabilistic_sharpe_ratio(moments.observed_sr, 0.0, moments.n_obs, moments.skew,
                                                moments.kurtosis)),
        "deflated_sharpe": deflated_sharpe_ratio(moments.observed_sr, moments.n_obs, skew=moments.skew,
                                                 kurtosis=moments.kurtosis, n_trials=len(trials),
                                                 var_trial_sharpes=var_trial_sharpes),
        "selected_sharpe_per_period": moments.observed_sr,
        "selected_skew": moments.skew,
        "selected_kurtosis": moments.kurtosis,
        "n_observations": moments.n_obs,
        "n_trials": len(trials),
        "var_trial_sharpes_per_period": var_trial_sharpes,
        "trials": trials,
    }
    write_json_atomic(run_dir / "statistics.json", result, non_finite="null")
    log.info("statistics: selected trial %d, PBO %.3f, PSR %.3f, DSR %.3f", selected, result["pbo"],
             result["psr"], result["deflated_sharpe"])
    return json.loads((run_dir / "statistics.json").read_text())
