"""The point-in-time dataset of a walk-forward run, and of training and monitoring alike.

Rows are the offline store's ``(ticker, event_time)`` rows in the range; labels come from the bars
stored beside the features (the very prices the features were computed from); features are
attached by the offline store's point-in-time join, so no value stamped after a row's ``ts`` can
reach it. :func:`build_dataset` writes ``dataset.parquet``, ``config.json`` and ``dataset.json``
into a run folder (see :mod:`quant_engine.wfo.run_folder`).

``dataset.parquet`` is sorted by time and cut into row groups of whole bars (a calendar month, at most
:data:`~quant_engine.wfo.dataset_file.ROW_GROUP_ROWS` rows) by :mod:`quant_engine.wfo.dataset_file`, so
one split's fit reads the row groups its rows fall in and the columns it uses, not the whole panel.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from quant_engine.features.bar_history import BarHistory
from quant_engine.features.ingest import group_market_time
from quant_engine.features.offline_store import OfflineStore
from quant_engine.features.registry import get_feature_set
from quant_engine.storage.atomic import write_json_atomic
from quant_engine.wfo.config import WfoConfig, WfoConfigError
from quant_engine.wfo.dataset_file import write_dataset
from quant_engine.wfo.run_folder import KEY_COLUMNS

__all__ = ["build_dataset"]

log = logging.getLogger(__name__)


def build_dataset(config: WfoConfig, run_dir: Path, store: OfflineStore, bar_store: OfflineStore) -> dict[str, Any]:
    """Labels from the stored bars, features from the offline store by point-in-time join.

    Entities are the offline store's ``(ticker, event_time)`` rows inside ``[start, end]``. Labels
    need later prices: they come from the bars ingestion stored beside the features
    (:class:`~quant_engine.features.bar_history.BarHistory`), the very prices the features were
    computed from, so no run needs the source again; each label carries its end ``t1``, and labels
    whose horizon runs past ``end`` are dropped rather than peeking beyond the sample.
    ``fwd_ret_1`` is the next bar's return, which the backtest earns. Features are attached with
    :meth:`~quant_engine.features.offline_store.OfflineStore.point_in_time_join`, so no value
    stamped after a row's ``ts`` can reach it.

    Parameters
    ----------
    config : WfoConfig
    run_dir : Path
        The run folder the dataset is written to.
    store, bar_store : OfflineStore
        The feature group and its bars group (``quant_engine.backends.make_offline_store``).

    Raises
    ------
    WfoConfigError
        Tickers the store does not hold in the range, a range without data, or groups smaller
        than ``config.min_group_rows``.
    """
    run_dir = Path(run_dir)
    first, last = config.start, config.end + pd.Timedelta(days=1) - pd.Timedelta(1, "ns")
    market_time, schema = group_market_time(store), store.schema
    if market_time is None or schema is None:
        raise WfoConfigError(
            f"the offline store (feature group {store.feature_group!r} in {store.fs!r}) is "
            "empty; run the market_data_ingestion DAG or `quant-engine ingest` first"
        )
    names = get_feature_set(config.feature_set).names
    missing_features = [n for n in names if n not in schema.feature_names]
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

    bars = BarHistory(bar_store, market_time).read(tickers, first, last, history_bars=config.label.history_bars)
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

    groups = _row_groups(config, dataset)
    dataset["group"] = groups.astype(np.int16)
    sizes = np.bincount(groups[groups >= 0])
    _check_group_sizes(config, dataset, sizes)
    dataset["label"] = dataset["label"].astype(np.int8)
    dataset = dataset.loc[:, [*KEY_COLUMNS, *names]]
    write_dataset(dataset, run_dir / "dataset.parquet")
    write_json_atomic(run_dir / "config.json", config.to_params(), non_finite="null")
    summary = {
        "rows": len(dataset),
        "tickers": sorted(dataset["ticker"].unique()),
        "first_ts": str(dataset["ts"].iloc[0]),
        "last_ts": str(dataset["ts"].iloc[-1]),
        "features": names,
        "group_rows": sizes.tolist(),
        "untested_rows": int((groups < 0).sum()),
        "positive_label_share": float(dataset["label"].mean()),
        "annualisation": market_time.annualisation(pd.Timestamp(dataset["ts"].iloc[-1]).year),
    }
    write_json_atomic(run_dir / "dataset.json", summary, non_finite="null")
    log.info(
        "dataset: %d rows, %d tickers, %s .. %s",
        summary["rows"],
        len(summary["tickers"]),
        summary["first_ts"],
        summary["last_ts"],
    )
    return summary


def _row_groups(config: WfoConfig, dataset: pd.DataFrame) -> np.ndarray:
    """The splitter's group of every row: CPCV group, K-fold fold or walk-forward test window (-1: never tested)."""
    cv = config.splitter(dataset["t1"].to_numpy())
    frame_for_cv = pd.DataFrame(index=pd.DatetimeIndex(dataset["ts"]))
    try:
        groups = cv.row_groups(frame_for_cv)
    except ValueError as exc:
        if config.splitter_kind == "walk_forward":
            raise WfoConfigError(
                f"the dataset ({frame_for_cv.index.nunique()} bars from {dataset['ts'].iloc[0]} to "
                f"{dataset['ts'].iloc[-1]}) cannot be split by the walk-forward: {exc}"
            ) from None
        raise WfoConfigError(f"the dataset cannot be split into {config.n_groups} groups: {exc}") from None
    return np.asarray(groups)


def _check_group_sizes(config: WfoConfig, dataset: pd.DataFrame, sizes: np.ndarray) -> None:
    """Every group (fold, test window) holds at least ``min_group_rows`` rows.

    A walk-forward's last test window holds what is left of the data and may be shorter: it is one
    more stretch of the single path, not a path of its own, so it is exempt.
    """
    if config.splitter_kind == "walk_forward":
        checked = sizes[:-1]
        if len(checked) and checked.min() < config.min_group_rows:
            window = int(checked.argmin())
            first = dataset.loc[dataset["group"] == window, "ts"].iloc[0]
            raise WfoConfigError(
                f"too few samples per test window: walk-forward test window {window} (from {first}) holds "
                f"{int(checked.min())} rows, fewer than min_group_rows={config.min_group_rows}; use a longer "
                "test_window, add tickers or lower min_group_rows"
            )
        return
    if sizes.min() < config.min_group_rows:
        what = "groups" if config.splitter_kind == "cpcv" else "folds"
        raise WfoConfigError(
            f"too few samples per group: {len(dataset)} rows over {config.n_groups} {what} leave group "
            f"{int(sizes.argmin())} with {int(sizes.min())} rows, fewer than min_group_rows="
            f"{config.min_group_rows}; widen the date range, add tickers or use fewer groups"
        )


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
