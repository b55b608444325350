"""A small registered champion for bridge tests, trained on random feature rows (no ingestion)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb

from quant_engine.backends import make_model_registry
from quant_engine.features.registry import get_feature_set
from quant_engine.monitoring.run import record_baseline
from quant_engine.training.registry import ModelMetadata

FEATURES = get_feature_set("default").names


def register_model(home: Path, seed: int, *, promote: bool = True, vol_range: tuple[float, float] = (0.1, 0.4)) -> str:
    """Train a 5-round booster on seeded rows and register it (promoted unless told not to)."""
    rng = np.random.default_rng(seed)
    rows = pd.DataFrame(rng.normal(size=(300, len(FEATURES))), columns=FEATURES)
    rows["realized_vol_20"] = rng.uniform(*vol_range, size=len(rows))
    rows["label"] = (rows["log_return_5"] + 0.5 * rng.normal(size=len(rows)) > 0).astype(int)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 2, "seed": seed},
        xgb.DMatrix(rows[FEATURES].to_numpy(np.float32), label=rows["label"], feature_names=FEATURES),
        5,
    )
    path = home / f"model-{seed}.json"
    booster.save_model(str(path))
    registry = make_model_registry()
    version = registry.register(
        path,
        ModelMetadata(
            features=FEATURES,
            data_start="2021-01-01T00:00Z",
            data_end="2021-03-31T21:00Z",
            data_fingerprint=f"seed{seed}",
        ),
    )
    record_baseline(registry, version, booster, rows.iloc[:200], rows.iloc[200:], FEATURES)
    if promote:
        registry.promote(version, f"seed {seed}")
    return version


class FrameHistory:
    """``BarHistory``'s reading methods over an in-memory bar frame."""

    def __init__(self, bars: pd.DataFrame) -> None:
        self.frame = bars.sort_values(["ticker", "ts"]).reset_index(drop=True)

    def between(self, ticker: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        f = self.frame
        return f.loc[(f["ticker"] == ticker) & (f["ts"] >= start) & (f["ts"] <= end)].reset_index(drop=True)

    def last_bars(self, ticker: str, until: pd.Timestamp, count: int) -> pd.DataFrame:
        f = self.frame
        return f.loc[(f["ticker"] == ticker) & (f["ts"] <= until)].tail(count).reset_index(drop=True)


def session_ticks(bars: pd.DataFrame, *, post: bool = True) -> list:
    """Two regular ticks (mid-session, then at the bar's values) and a POST_MARKET tick per bar, in time order."""
    from quant_engine.bridge.ticks import MarketHours, Tick

    out = []
    for ts, group in bars.sort_values(["ts", "ticker"]).groupby("ts", sort=True):
        close_ms = int(ts.value // 1_000_000)
        rows = list(group.itertuples(index=False))
        out += [
            Tick(r.ticker, r.open, close_ms - 3 * 3_600_000, int(r.volume) // 2, r.open, r.open, r.open) for r in rows
        ]
        out += [Tick(r.ticker, r.close, close_ms - 60_000, int(r.volume), r.open, r.high, r.low) for r in rows]
        if post:
            out += [
                Tick(r.ticker, r.close, close_ms, int(r.volume), r.open, r.high, r.low, MarketHours.POST_MARKET)
                for r in rows
            ]
    return out
